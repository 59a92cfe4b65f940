"""Domain events: the one seam between the conversation engine and the apps that react to it.

The state machine publishes these after its transaction commits; `escalation` and
`dashboard` subscribe in their `AppConfig.ready`. Nothing here knows who listens.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, TypeVar
from uuid import UUID

from django.db import transaction

if TYPE_CHECKING:
    from conversations.models import Message

logger = logging.getLogger(__name__)

ChangeKind = Literal[
    "started",
    "claimed",
    "resumed",
    "released",
    "closed",
    "handed_off",
    "wait_expired",
    "specialist_changed",
    "mode_applied",
]


@dataclass(frozen=True)
class MessagePosted:
    conversation_id: UUID
    message_id: int
    seq: int
    role: str
    # The message as it was stored, with its conversation and service: subscribers (in the
    # process that posted it) read nothing again.
    message: Message = field(compare=False, repr=False)


@dataclass(frozen=True)
class CustomerMessagesReceived:
    """The worker took up customer messages (a batch the web stored, or one), before the AI
    answers them.

    Delivered with `deliver_now` (not after a commit): subscribers do the slow checks there,
    so that their outcome (a hand-off) comes before the AI's reply, and their transient errors
    make the task retry.
    """

    # The messages as the task read them, each with its conversation, service and escalation
    # policy. A subscriber that changes a conversation (a hand-off) reads it again into
    # `message.conversation`.
    messages: tuple[Message, ...] = field(compare=False, repr=False)


@dataclass(frozen=True)
class AiRepliesDrafted:
    """AI replies about to be stored, inside the transaction that posts them.

    Delivered with `deliver_now`: a subscriber fills in what it decides about each reply
    (escalation: whether it is a non-answer), so that the insert stores it and nothing is
    updated afterwards. It must not touch the database.
    """

    messages: tuple[Message, ...] = field(compare=False, repr=False)


@dataclass(frozen=True)
class ConversationChanged:
    conversation_id: UUID
    change: ChangeKind
    # Whether the change left the conversation paused with nobody holding it, where the
    # publisher knows (a conversation started in an AI mode is not): subscribers need not
    # read it to find out. None: read it.
    paused_unheld: bool | None = None


@dataclass(frozen=True)
class FeedbackGiven:
    conversation_id: UUID
    message_id: int
    value: str


@dataclass(frozen=True)
class HumanRequested:
    conversation_id: UUID
    message_id: int | None
    source: Literal["button", "words"]


@dataclass(frozen=True)
class ServiceModeChanged:
    service_id: int
    mode: str
    previous: str


DomainEvent = (
    MessagePosted
    | CustomerMessagesReceived
    | AiRepliesDrafted
    | ConversationChanged
    | FeedbackGiven
    | HumanRequested
    | ServiceModeChanged
)
E = TypeVar("E", bound=DomainEvent)

_subscribers: dict[type, list[Callable]] = defaultdict(list)


def subscribe(event_type: type[E], handler: Callable[[E], None]) -> None:
    """Call `handler(event)` after commit for every published event of `event_type`."""
    if handler not in _subscribers[event_type]:
        _subscribers[event_type].append(handler)


def unsubscribe(event_type: type[E], handler: Callable[[E], None]) -> None:
    if handler in _subscribers[event_type]:
        _subscribers[event_type].remove(handler)


def publish(event: DomainEvent) -> None:
    """Deliver `event` to its subscribers once the current transaction commits."""
    transaction.on_commit(lambda: _deliver(event))


def deliver_now(event: DomainEvent) -> None:
    """Call `event`'s subscribers at once, letting their errors reach the caller (a task)."""
    for handler in list(_subscribers[type(event)]):
        handler(event)


def _deliver(event: DomainEvent) -> None:
    for handler in list(_subscribers[type(event)]):
        # One failing subscriber must not cost the others their event, nor the customer
        # the message that was already stored.
        try:
            handler(event)
        except Exception:
            logger.exception("subscriber %s failed on %r", handler, event)
