"""The console's projection of conversations: cards and counters, read in constant queries."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TypedDict

from django.contrib.auth import get_user_model
from django.db.models import Count, Exists, F, OuterRef, Q, QuerySet, Value
from django.db.models.functions import Coalesce

from conversations.models import Conversation, Service, Status
from conversations.protocol import display_name
from escalation.models import Flag, Reason
from handoff.db import CompiledQuery

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


# One row per card, read with `values_list`: building 2,000 model instances (with their
# service, specialist, visitor and agent) was most of a snapshot's time.
CARD_COLUMNS = (
    "pk",
    "service__slug",
    "version",
    "ai_paused",
    "specialist__name",
    "visitor__city",
    "visitor__region",
    "visitor__country",
    "opening_question",
    "started_at",
    "last_activity_at",
    "message_count",
    "claimed_by_id",
    "claimed_by__first_name",
    "claimed_by__last_name",
    "claimed_by__username",
    "waiting_since",
    "status",
)


def _reason_rows(conversations: QuerySet[Conversation] | object) -> QuerySet[Flag]:
    """(conversation id, reason) of the conversations' unacknowledged flags, each once.

    `conversations` may be a queryset (a subquery: one short statement however many) or
    what `CompiledQuery` passes for a list of ids.
    """
    if isinstance(conversations, QuerySet):
        conversations = conversations.order_by().values("pk")
    # Unordered: the flags' own ordering would add its column to the DISTINCT.
    return (
        unacknowledged_flags()
        .filter(conversation__in=conversations)
        .order_by()
        .values_list("conversation_id", "reason")
        .distinct()
    )


def _cards_with_status(rows, reason_rows) -> list[tuple[Card, str]]:
    found: dict[str, set[str]] = defaultdict(set)
    for conversation_id, reason in reason_rows:
        found[str(conversation_id)].add(reason)
    names: dict[tuple, str] = {}
    return [
        (_card(row, sorted(found.get(str(row[0]), ()), key=REASON_ORDER.index), names), row[-1])
        for row in rows
    ]


def _card(row: tuple, reasons: list[str], names: dict[tuple, str]) -> Card:
    (
        pk,
        service,
        version,
        ai_paused,
        specialist,
        city,
        region,
        country,
        opening_question,
        started_at,
        last_activity_at,
        message_count,
        claimed_by_id,
        first_name,
        last_name,
        username,
        waiting_since,
        _status,
    ) = row
    return {
        "id": str(pk),
        "service": service,
        "version": version,
        "status": "paused" if ai_paused else "ai_active",
        "specialist": specialist,
        "location": {"city": city, "region": region, "country": country},
        "opening_question": opening_question,
        "started_at": started_at.isoformat(),
        "last_activity_at": last_activity_at.isoformat(),
        "message_count": message_count,
        "claimed_by": {
            "id": claimed_by_id,
            # An unsaved user holding the three columns: the name comes from the one rule.
            "name": _name(names, first_name, last_name, username),
        }
        if claimed_by_id
        else None,
        "needs_attention": bool(reasons),
        "reasons": reasons,
        "waiting_since": waiting_since.isoformat() if waiting_since else None,
    }


def _name(names: dict[tuple, str], *columns: str) -> str:
    """`display_name` of an agent from its columns (the few agents repeat: build each once)."""
    if columns not in names:
        first_name, last_name, username = columns
        user = get_user_model()(first_name=first_name, last_name=last_name, username=username)
        names[columns] = display_name(user)
    return names[columns]


def cards_with_status(conversations: QuerySet[Conversation]) -> list[tuple[Card, str]]:
    """Each conversation's card and status (open or closed), in two queries however many."""
    rows = list(conversations.values_list(*CARD_COLUMNS))
    return _cards_with_status(rows, _reason_rows(conversations) if rows else ())


# The hubs read a few cards many times a second: these two reads are compiled once.
_card_rows_by_id = CompiledQuery(
    lambda ids: Conversation.objects.filter(pk__in=ids).order_by().values_list(*CARD_COLUMNS)
)
_reason_rows_by_id = CompiledQuery(_reason_rows)


def cards_by_id(ids: Sequence[str]) -> list[tuple[Card, str]]:
    """`cards_with_status` of the conversations with these ids (those that exist)."""
    rows = _card_rows_by_id(ids) if ids else []
    return _cards_with_status(rows, _reason_rows_by_id(ids) if rows else ())


def cards(conversations: QuerySet[Conversation]) -> list[Card]:
    """Cards for a queryset of conversations, in two queries however many there are."""
    return [card for card, _ in cards_with_status(conversations)]


def card(conversation_id) -> Card | None:
    found = cards(Conversation.objects.filter(pk=conversation_id))
    return found[0] if found else None


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
