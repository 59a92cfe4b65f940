"""The console's projection of conversations: cards and counters, read in constant queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TypedDict

from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Coalesce

from conversations.models import Conversation, Service, Status
from conversations.protocol import display_name
from escalation.models import Flag, Reason

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
REASON_ORDER = [reason.value for reason in Reason]


class Location(TypedDict):
    city: str
    region: str
    country: str


class ClaimedBy(TypedDict):
    id: int
    name: str


class Card(TypedDict):
    id: str
    service: str
    version: int
    status: str  # "ai_active" | "paused"
    specialist: str | None
    location: Location
    opening_question: str
    started_at: str
    last_activity_at: str
    message_count: int
    claimed_by: ClaimedBy | None
    needs_attention: bool
    reasons: list[str]
    waiting_since: str | None


class Counters(TypedDict):
    active: int
    needs_attention: int
    paused: int


class ServiceInfo(TypedDict):
    slug: str
    name: str
    mode: str


def unacknowledged_flags() -> QuerySet[Flag]:
    """Flags raised since the conversation's last take-over (none at all if never taken)."""
    return Flag.objects.filter(
        created_at__gt=Coalesce(F("conversation__attention_acknowledged_at"), Value(EPOCH))
    )


def _needs_attention() -> Exists:
    return Exists(
        Flag.objects.filter(
            conversation=OuterRef("pk"),
            created_at__gt=Coalesce(OuterRef("attention_acknowledged_at"), Value(EPOCH)),
        )
    )


def card_queryset() -> QuerySet[Conversation]:
    return Conversation.objects.select_related("service", "specialist", "visitor", "claimed_by")


def _reasons_by_conversation(ids: Iterable) -> dict[str, list[str]]:
    found: dict[str, set[str]] = defaultdict(set)
    rows = unacknowledged_flags().filter(conversation_id__in=list(ids))
    for conversation_id, reason in rows.values_list("conversation_id", "reason").distinct():
        found[str(conversation_id)].add(reason)
    return {key: sorted(value, key=REASON_ORDER.index) for key, value in found.items()}


def to_card(conversation: Conversation, reasons: list[str]) -> Card:
    visitor = conversation.visitor
    return {
        "id": str(conversation.id),
        "service": conversation.service.slug,
        "version": conversation.version,
        "status": "paused" if conversation.ai_paused else "ai_active",
        "specialist": conversation.specialist.name if conversation.specialist_id else None,
        "location": {"city": visitor.city, "region": visitor.region, "country": visitor.country},
        "opening_question": conversation.opening_question,
        "started_at": conversation.started_at.isoformat(),
        "last_activity_at": conversation.last_activity_at.isoformat(),
        "message_count": conversation.message_count,
        "claimed_by": {
            "id": conversation.claimed_by_id,
            "name": display_name(conversation.claimed_by),
        }
        if conversation.claimed_by_id
        else None,
        "needs_attention": bool(reasons),
        "reasons": reasons,
        "waiting_since": conversation.waiting_since.isoformat()
        if conversation.waiting_since
        else None,
    }


def cards(conversations: QuerySet[Conversation]) -> list[Card]:
    """Cards for a queryset of conversations, in two queries however many there are."""
    rows = list(conversations.select_related("service", "specialist", "visitor", "claimed_by"))
    reasons = _reasons_by_conversation(c.pk for c in rows)
    return [to_card(c, reasons.get(str(c.pk), [])) for c in rows]


def card(conversation_id) -> Card | None:
    conversation = card_queryset().filter(pk=conversation_id).first()
    if conversation is None:
        return None
    return to_card(
        conversation, _reasons_by_conversation([conversation.pk]).get(str(conversation.pk), [])
    )


def open_conversations() -> QuerySet[Conversation]:
    return Conversation.objects.filter(status=Status.OPEN).order_by("-last_activity_at")


def with_needs_attention(queryset: QuerySet[Conversation]) -> QuerySet[Conversation]:
    return queryset.annotate(needs_attention=_needs_attention())


def counters() -> Counters:
    """The stats bar, in one query: open, open with an unacknowledged flag, open and paused."""
    totals = Conversation.objects.filter(status=Status.OPEN).aggregate(
        active=Count("pk"),
        needs_attention=Count("pk", filter=Q(_needs_attention())),
        paused=Count("pk", filter=Q(ai_paused=True)),
    )
    return {key: totals[key] for key in ("active", "needs_attention", "paused")}


def service_info(service: Service) -> ServiceInfo:
    return {"slug": service.slug, "name": service.name, "mode": service.mode}


def snapshot() -> dict:
    """Everything a console needs on connect, in a constant number of queries."""
    services = list(Service.objects.order_by("name"))
    all_cards = cards(open_conversations())
    by_service: dict[str, list[Card]] = defaultdict(list)
    for item in all_cards:
        by_service[item["service"]].append(item)
    return {
        "type": "snapshot",
        "counters": counters(),
        "services": [
            {**service_info(s), "conversations": by_service.get(s.slug, [])} for s in services
        ],
    }


class MessagePayload(TypedDict):
    seq: int
    role: str
    text: str
    created_at: str
    client_id: str | None
    author: str | None
    specialist: str | None
    feedback: str | None
    sentiment: float | None
    non_answer: bool | None


def message_payload(message) -> MessagePayload:
    """A transcript message as consoles and the API see it (widget fields plus scores)."""
    from conversations.protocol import message_frame

    frame = message_frame(message)
    return {
        "seq": frame["seq"],
        "role": frame["role"],
        "text": frame["text"],
        "created_at": frame["created_at"],
        "client_id": frame["client_id"],
        "author": frame["author"],
        "specialist": frame["specialist"],
        "feedback": frame["feedback"],
        "sentiment": message.sentiment,
        "non_answer": message.non_answer,
    }
