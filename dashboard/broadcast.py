"""The console's wire format (SPEC §5) and the only code that sends it.

Every console event is built here, from the database after commit, and sent to one of two
groups: `console` (every agent console: cards, counters, modes, attention) and the watchers
of one conversation (its messages). Layer messages are typed `console.event`; a client can
never choose what is sent to a group.
"""

from __future__ import annotations

import logging
from typing import Literal, TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer

from conversations.models import Message, Service, Status
from dashboard import cards
from escalation.models import Flag

logger = logging.getLogger(__name__)

CONSOLE_GROUP = "console"
PREVIEW_LENGTH = 140


class CardEvent(TypedDict):
    type: Literal["card"]
    card: cards.Card


class CardRemovedEvent(TypedDict):
    type: Literal["card_removed"]
    id: str
    service: str


class CountersEvent(TypedDict):
    type: Literal["counters"]
    counters: cards.Counters


class ServiceEvent(TypedDict):
    type: Literal["service"]
    service: cards.ServiceInfo


class AttentionEvent(TypedDict):
    type: Literal["attention"]
    conversation_id: str
    service: str
    service_name: str
    reasons: list[str]
    labels: list[str]
    new: bool
    preview: str


class MessageEvent(TypedDict):
    type: Literal["message"]
    conversation_id: str
    message: cards.MessagePayload


ConsoleEvent = (
    CardEvent | CardRemovedEvent | CountersEvent | ServiceEvent | AttentionEvent | MessageEvent
)


def watch_group(conversation_id) -> str:
    return f"console.c.{conversation_id}"


def _send(group: str, event: ConsoleEvent) -> None:
    # After commit: a layer that is down must not undo what was stored; consoles resync.
    try:
        async_to_sync(get_channel_layer().group_send)(
            group, {"type": "console.event", "event": event}
        )
    except Exception:
        logger.exception("could not publish %s to %s", event["type"], group)


def card_event(conversation_id) -> CardEvent | CardRemovedEvent | None:
    card = cards.card(conversation_id)
    if card is None:
        return None
    if cards.Conversation.objects.filter(pk=conversation_id, status=Status.CLOSED).exists():
        return {"type": "card_removed", "id": card["id"], "service": card["service"]}
    return {"type": "card", "card": card}


def send_card(conversation_id) -> None:
    """Send the conversation's current card, or its removal once it is closed."""
    event = card_event(conversation_id)
    if event is not None:
        _send(CONSOLE_GROUP, event)


def send_counters() -> None:
    _send(CONSOLE_GROUP, {"type": "counters", "counters": cards.counters()})


def send_service(service: Service) -> None:
    _send(CONSOLE_GROUP, {"type": "service", "service": cards.service_info(service)})


def send_message(message: Message) -> None:
    """A new transcript line, for the consoles watching its conversation."""
    _send(
        watch_group(message.conversation_id),
        {
            "type": "message",
            "conversation_id": str(message.conversation_id),
            "message": cards.message_payload(message),
        },
    )


def send_attention(flag: Flag, *, new: bool) -> None:
    """A toast on every console (and a sound when `new`): a flag was just raised."""
    conversation = flag.conversation
    preview = flag.message.text if flag.message_id else conversation.opening_question
    _send(
        CONSOLE_GROUP,
        {
            "type": "attention",
            "conversation_id": str(conversation.id),
            "service": conversation.service.slug,
            "service_name": conversation.service.name,
            "reasons": [flag.reason],
            "labels": [flag.get_reason_display()],
            "new": new,
            "preview": preview[:PREVIEW_LENGTH],
        },
    )
