"""The conversation state machine: the only code that changes a conversation (SPEC §3).

Every function here checks the current state, raises a domain error the API and consumers
turn into the contract's codes, writes an audit event, and leaves its side effects
(broadcasts, tasks, domain events) to run after the transaction commits.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing
from django.db import connection, transaction
from django.db.models import F, OuterRef, Subquery
from django.utils import timezone

from conversations import events, protocol
from conversations.models import (
    MAX_MESSAGE_LENGTH,
    AuditAction,
    AuditEvent,
    Conversation,
    Feedback,
    Message,
    Mode,
    Role,
    Service,
    Specialist,
    Status,
    Visitor,
)
from handoff.db import CompiledQuery, insert_rows, update_fields

logger = logging.getLogger(__name__)

VISITOR_TOKEN_SALT = "handoff.visitor"
MAX_PROFILE_BYTES = 4096

TEXT_JOINED = "{name} has joined the conversation."
TEXT_HANDOFF = "I'm connecting you with a member of our team."
TEXT_HUMAN_ONLY = "A member of our team will reply here shortly."
TEXT_NO_HUMANS = (
    "I'm sorry, there are no members of our team available in this chat. "
    "I'll keep helping you here as best I can."
)
TEXT_AI_BACK = "You're chatting with our virtual assistant again."
TEXT_RELEASED = (
    "{name} has left the conversation. Another member of our team will be with you shortly."
)
TEXT_WAIT_EXPIRED = (
    "I'm sorry, nobody from our team is available right now. "
    "Our virtual assistant will keep helping you in the meantime."
)
TEXT_CLOSED = "This conversation has been closed."


# --- Domain errors -------------------------------------------------------------------------


class HandoffError(Exception):
    """A request the state machine refuses; `code` is the contract's error code."""

    code = "invalid"
    status = 400

    def __init__(self, detail: str = "") -> None:
        super().__init__(detail or self.default_detail())
        self.detail = detail or self.default_detail()

    def default_detail(self) -> str:
        return self.code.replace("_", " ").capitalize() + "."


class EmptyText(HandoffError):
    code = "empty"

    def default_detail(self) -> str:
        return "The message is empty."


class TextTooLong(HandoffError):
    code = "too_long"
    status = 413

    def default_detail(self) -> str:
        return f"Messages are limited to {MAX_MESSAGE_LENGTH} characters."


class ConversationClosed(HandoffError):
    code = "closed"
    status = 409

    def default_detail(self) -> str:
        return "This conversation is closed."


class ModeDisallows(HandoffError):
    code = "mode_disallows"
    status = 409

    def default_detail(self) -> str:
        return "The service's mode does not allow this."


class AlreadyClaimed(HandoffError):
    code = "already_claimed"
    status = 409

    def __init__(self, holder: str) -> None:
        self.holder = holder
        super().__init__(f"{holder} is already handling this conversation.")


class NotClaimer(HandoffError):
    code = "not_claimer"
    status = 403

    def default_detail(self) -> str:
        return "Only the agent handling this conversation can do that."


class BadSeq(HandoffError):
    code = "bad_seq"

    def default_detail(self) -> str:
        return "There is no AI message with that seq in this conversation."


class PostAlone(Exception):
    """A group commit left this post to be stored on its own: its conversation is held
    by another transaction (a take-over, say), or was started by one meanwhile."""


class BadClientId(HandoffError):
    code = "bad_client_id"

    def default_detail(self) -> str:
        return "client_id must be a string of 1 to 64 characters."


# --- Helpers ---------------------------------------------------------------------------------


def is_admin(user: AbstractBaseUser | None) -> bool:
    """Admins change modes and may resume, release or close any conversation."""
    return bool(
        user
        and user.is_active
        and (user.is_superuser or user.has_perm("conversations.change_service"))
    )


def is_agent(user: AbstractBaseUser | None) -> bool:
    """Agents are staff or members of the `Agents` group."""
    if not (user and user.is_authenticated and user.is_active):
        return False
    return user.is_staff or user.groups.filter(name="Agents").exists()


def clean_text(text: object) -> str:
    """Return the message text, or raise `EmptyText` / `TextTooLong`."""
    if not isinstance(text, str) or not text.strip():
        raise EmptyText()
    # NUL cannot be stored in PostgreSQL text and means nothing in a chat; a lone UTF-16
    # surrogate cannot be encoded at all, so it becomes U+FFFD (pairs are rejoined).
    text = _scrub(text)
    if not text.strip():
        raise EmptyText()
    if len(text) > MAX_MESSAGE_LENGTH:
        raise TextTooLong()
    return text


def _audit_event(
    action: str,
    *,
    conversation: Conversation | None = None,
    service: Service | None = None,
    actor: AbstractBaseUser | None = None,
    actor_kind: str = "system",
    **detail,
) -> AuditEvent:
    """The audit row for `action`, unsaved: `_audit` stores one, a batch stores many at once."""
    return AuditEvent(
        action=action,
        actor=actor,
        actor_kind=actor_kind if actor is None else ("admin" if is_admin(actor) else "agent"),
        service=service or (conversation.service if conversation else None),
        conversation=conversation,
        detail=detail,
    )


def _audit(action: str, **kwargs) -> None:
    _audit_event(action, **kwargs).save(force_insert=True)


def _locked(conversation_id) -> Conversation:
    """Lock the conversation row for the rest of the transaction (seq and claim read-then-write)."""
    return (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("service", "claimed_by")
        .get(pk=conversation_id)
    )


APPEND_FIELDS = ["message_count", "last_activity_at", "version"]


def _next_message(conversation: Conversation, **fields) -> Message:
    """The locked conversation's next message, unsaved; seq is gapless in commit order.

    Counts it on the conversation in memory: the caller saves `APPEND_FIELDS`, then calls
    `_announce` once the message is stored.
    """
    conversation.message_count += 1
    conversation.last_activity_at = timezone.now()
    conversation.version += 1
    return Message(conversation=conversation, seq=conversation.message_count, **fields)


def _store_appended(
    messages: list[Message], audits: list[AuditEvent], fields: list[str] = APPEND_FIELDS
) -> None:
    """Store messages from `_next_message` with their conversations' `fields` and the audit
    rows, one statement each whatever their number, and announce the messages after commit."""
    insert_rows(messages)
    update_fields(list({m.conversation_id: m.conversation for m in messages}.values()), fields)
    insert_rows(audits)
    for message in messages:
        _announce(message)


def _posted_audit(message: Message, actor_kind: str) -> AuditEvent:
    return _audit_event(
        AuditAction.MESSAGE_POSTED,
        conversation=message.conversation,
        actor=message.author,
        actor_kind=actor_kind,
        seq=message.seq,
        role=message.role,
    )


def _announce(message: Message) -> None:
    """After commit: the stored message to its conversation's sockets, then to subscribers.

    In that order, so that what a subscriber does about the message (a non-answer that
    hands the conversation off) reaches the widget after the message itself.
    """
    transaction.on_commit(lambda: protocol.send_message(message))
    events.publish(
        events.MessagePosted(
            conversation_id=message.conversation_id,
            message_id=message.pk,
            seq=message.seq,
            role=message.role,
            message=message,
        )
    )


def _append(
    conversation: Conversation,
    *,
    role: str,
    text: str,
    author: AbstractBaseUser | None = None,
    specialist: Specialist | None = None,
    confidence: float | None = None,
    evidence: dict | None = None,
    actor_kind: str = "system",
) -> Message:
    """Store the next message of a locked conversation."""
    message = _next_message(
        conversation,
        role=role,
        text=text,
        author=author,
        specialist=specialist,
        confidence=confidence,
        evidence=evidence or {},
    )
    _store_appended([message], [_posted_audit(message, actor_kind)])
    return message


def _changed(
    conversation: Conversation, change: events.ChangeKind, *, paused_unheld: bool | None = None
) -> None:
    events.publish(
        events.ConversationChanged(
            conversation_id=conversation.id, change=change, paused_unheld=paused_unheld
        )
    )
    transaction.on_commit(lambda: protocol.send_status(conversation))


def _set_paused(conversation: Conversation, *, waiting: bool, now: datetime) -> None:
    conversation.ai_paused = True
    conversation.ai_epoch += 1
    conversation.waiting_since = (conversation.waiting_since or now) if waiting else None
    conversation.version += 1
    conversation.save(update_fields=["ai_paused", "ai_epoch", "waiting_since", "version"])


def _enqueue_worker_turns(messages: list[Message]) -> None:
    """After commit, the worker's turn on each customer message: its slow checks, then the
    AI's answer. One task for the messages of one batch, enqueued without waiting for the
    broker (the next batch would wait for it)."""
    from conversations import tasks

    turns = [[str(m.conversation_id), m.pk, m.conversation.ai_epoch] for m in messages]
    if len(turns) == 1:
        transaction.on_commit(lambda: tasks.dispatch_soon(tasks.generate_ai_reply, *turns[0]))
    else:
        transaction.on_commit(lambda: tasks.dispatch_soon(tasks.generate_ai_replies, turns))


def ai_should_answer(conversation: Conversation) -> bool:
    return (
        conversation.status == Status.OPEN
        and not conversation.ai_paused
        and conversation.service.ai_answers
    )


# --- Visitors --------------------------------------------------------------------------------


def visitor_token_for(visitor: Visitor) -> str:
    return signing.dumps({"v": str(visitor.id), "s": visitor.service_id}, salt=VISITOR_TOKEN_SALT)


def visitor_from_token(*, service: Service, token: object) -> Visitor | None:
    """The visitor a token names, or None for a forged, foreign or unknown token."""
    if not isinstance(token, str) or not token or len(token) > 300:
        return None
    if _scrub(token) != token:
        return None  # NUL or a lone surrogate: not ours, and the signer cannot even encode it
    try:
        payload = signing.loads(token, salt=VISITOR_TOKEN_SALT)
    except signing.BadSignature:
        return None
    if not isinstance(payload, dict) or payload.get("s") != service.id:
        return None
    return Visitor.objects.filter(pk=payload.get("v"), service=service).first()


def _scrub(text: str) -> str:
    return text.replace("\x00", "").encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def _clean_json(value: object, depth: int = 0) -> object:
    if depth > 6:
        raise ValueError("too deep")
    if isinstance(value, str):
        return _scrub(value)
    if isinstance(value, dict):
        return {_scrub(str(k)): _clean_json(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean_json(v, depth + 1) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    raise ValueError("not JSON")


def clean_profile(profile: object) -> dict:
    """Keep a small JSON object the host page passed; anything else becomes {}."""
    if not isinstance(profile, dict):
        return {}
    try:
        cleaned = _clean_json(profile)
        encoded = json.dumps(cleaned, allow_nan=False)
    except (TypeError, ValueError):
        return {}
    return cleaned if len(encoded) <= MAX_PROFILE_BYTES else {}


def visitor_identify(
    *,
    service: Service,
    token: object,
    location: dict[str, str] | None = None,
    timezone_name: str = "",
    profile: object = None,
) -> tuple[Visitor, str]:
    """Return the token's visitor, or a new one, and a token for it; refresh what we know."""
    visitor = visitor_from_token(service=service, token=token)
    profile = clean_profile(profile)
    fields: dict = {}
    if profile:
        fields["profile"] = profile
        for key in ("name", "email"):
            value = profile.get(key)
            if isinstance(value, str) and value.strip():
                fields[key] = value.strip()[:200]
    if location and any(location.values()):
        fields.update(
            {key: (location.get(key) or "")[:100] for key in ("city", "region", "country")}
        )
    if (
        isinstance(timezone_name, str)
        and len(timezone_name) <= 64
        and _scrub(timezone_name) == timezone_name  # PostgreSQL stores neither NUL nor \ud800
    ):
        fields["timezone"] = timezone_name
    if "email" in fields and ("@" not in fields["email"] or len(fields["email"]) > 254):
        del fields["email"]
    if visitor is None:
        visitor = Visitor.objects.create(service=service, **fields)
    elif fields:
        for key, value in fields.items():
            setattr(visitor, key, value)
        visitor.save(update_fields=[*fields, "last_seen_at"])
    return visitor, visitor_token_for(visitor)


def open_conversation_for(*, visitor: Visitor) -> Conversation | None:
    return (
        Conversation.objects.select_related("service", "claimed_by")
        .filter(visitor=visitor, service_id=visitor.service_id, status=Status.OPEN)
        .first()
    )


# --- Customer actions ------------------------------------------------------------------------


def _locked_open(visitor: Visitor) -> Conversation | None:
    """The visitor's open conversation, locked for the rest of the transaction, if any."""
    try:
        # At most one (`one_open_conversation_per_visitor`): nothing to order.
        return (
            Conversation.objects.select_for_update(of=("self",))
            .select_related("service", "claimed_by")
            .get(visitor=visitor, service_id=visitor.service_id, status=Status.OPEN)
        )
    except Conversation.DoesNotExist:
        return None


def _open_or_start(*, visitor: Visitor, opening_question: str) -> Conversation:
    """Lock the visitor's open conversation, starting one if there is none."""
    existing = _locked_open(visitor)
    if existing is not None:
        return existing
    started = _start_conversations([(visitor, opening_question)])
    if not started:  # another socket of the visitor started it meanwhile
        return _locked_open(visitor)
    _audit(AuditAction.CONVERSATION_STARTED, conversation=started[0], actor_kind="visitor")
    return started[0]


def _start_conversations(firsts: list[tuple[Visitor, str]]) -> list[Conversation]:
    """Start a conversation for each (visitor, opening question), in one insert; those it
    started. A visitor who has an open conversation already (another transaction may hold
    it) is left out. Their audit rows are the caller's."""
    if not firsts:
        return []
    service_ids = {visitor.service_id for visitor, _ in firsts}
    specialists = {
        pk: Specialist.objects.filter(service_id=pk).order_by("position", "name").first()
        for pk in service_ids
    }
    conversations = [
        Conversation(
            service_id=visitor.service_id,
            visitor=visitor,
            specialist=specialists[visitor.service_id],
            opening_question=text[:MAX_MESSAGE_LENGTH],
        )
        # In visitor order, so that two transactions starting conversations for the same
        # visitors never wait for each other in a circle.
        for visitor, text in sorted(firsts, key=lambda first: str(first[0].pk))
    ]
    # A visitor's second open conversation is not inserted (one_open_conversation_per_visitor).
    Conversation.objects.bulk_create(conversations, ignore_conflicts=True)
    inserted = set(
        Conversation.objects.filter(pk__in=[c.pk for c in conversations])
        .order_by()
        .values_list("pk", flat=True)
    )
    conversations = [c for c in conversations if c.pk in inserted]
    # Decide on service rows read now, not `visitor.service`: a socket's visitor caches its
    # service across mode changes. The insert waits for a mode change that holds the service
    # row, so this read sees its outcome.
    services = Service.objects.select_related("escalation_policy").in_bulk(service_ids)
    now = timezone.now()
    for conversation in conversations:
        conversation.service = services[conversation.service_id]
        if conversation.service.mode == Mode.HUMAN_ONLY:
            # Human Only: the conversation waits for a person from its first message, silently.
            _set_paused(conversation, waiting=True, now=now)
        # A batch may start dozens: none of them need be read again to see if it waits.
        _changed(conversation, "started", paused_unheld=conversation.ai_paused)
    return conversations


@dataclass(frozen=True)
class Posted:
    message: Message
    created: bool


@dataclass(frozen=True)
class CustomerPost:
    """A customer's message as it arrived, for `conversation_post_customer_messages`."""

    visitor: Visitor
    text: object
    client_id: object


def _checked_client_id(client_id: object) -> str:
    if not isinstance(client_id, str) or not 1 <= len(client_id) <= 64:
        raise BadClientId()
    if _scrub(client_id) != client_id:
        raise BadClientId()  # NUL or a lone surrogate: it could be neither stored nor matched
    return client_id


def _stored_with_client_id(visitor: Visitor, client_id: str) -> Message | None:
    stored = Message.objects.filter(
        conversation__visitor=visitor, role=Role.USER, client_id=client_id
    )
    if not stored.exists():  # nearly always: ask the cheap question first
        return None
    return stored.select_related("specialist", "author").first()


_client_ids_stored = CompiledQuery(
    lambda visitor_ids, client_ids: (
        Message.objects.filter(
            conversation__visitor_id__in=visitor_ids, role=Role.USER, client_id__in=client_ids
        )
        .order_by()
        .values_list("conversation__visitor_id", "client_id", "pk")
    ),
    "uuid",
    "text",
)


def _stored_with_client_ids(visitor_ids, client_ids) -> dict[tuple[int, str], Message]:
    """The visitors' messages already stored under these client ids, by (visitor, client id)."""
    found = _client_ids_stored(visitor_ids, client_ids)
    if not found:  # nearly always: the cheap question first
        return {}
    messages = Message.objects.select_related("specialist", "author").in_bulk(
        [pk for *_, pk in found]
    )
    return {(visitor_id, client_id): messages[pk] for visitor_id, client_id, pk in found}


def conversation_post_customer_message(
    *, visitor: Visitor, text: object, client_id: object
) -> Posted:
    """Store the customer's message once per `client_id` and let the AI answer if it may."""
    (outcome,) = conversation_post_customer_messages(
        [CustomerPost(visitor, text, client_id)], alone=True
    )
    if isinstance(outcome, Exception):
        raise outcome
    return outcome


def conversation_post_customer_messages(
    posts: Sequence[CustomerPost], *, alone: bool = False
) -> list[Posted | Exception]:
    """Store customer messages that arrived together in one transaction (group commit).

    Each post gets, in order, what posting it alone gives: its `Posted`, or the error it
    raises. However many there are, the batch costs one lock query, one resend check and
    one insert each for messages, counts and audit rows, so a web process under load
    stores what arrived while its previous batch committed at a fraction of the cost per
    message. If the batch fails in the database, each post is tried on its own: one post's
    failure costs the others nothing.

    A batch starts the conversations of first messages itself, and never waits for a row
    lock: a post whose conversation another transaction holds (a take-over, say) gets
    `PostAlone`, to be posted with `alone=True`, which waits for the lock. (Starting one
    waits only for another transaction starting one for the same visitor: a twin frame.)
    """
    outcomes: list[Posted | Exception | None] = [None] * len(posts)
    checked = []
    for index, post in enumerate(posts):
        try:
            client_id = _checked_client_id(post.client_id)
            checked.append((index, post.visitor, client_id, clean_text(post.text)))
        except HandoffError as error:
            outcomes[index] = error
    batches = [checked] if checked else []
    while batches:
        batch = batches.pop(0)
        try:
            with transaction.atomic():
                _store_customer_messages(batch, outcomes, alone=alone)
        except Exception as error:
            if len(batch) == 1:
                outcomes[batch[0][0]] = error
                continue
            logger.warning(
                "a batch of %d customer messages failed; storing each alone",
                len(batch),
                exc_info=True,
            )
            batches = [[item] for item in batch]
    return outcomes


def _share_services(conversations) -> None:
    """One `Service` object per service for a batch's conversations, so that what is read
    through it after commit (the escalation policy, say) is read once per batch."""
    shared: dict[int, Service] = {}
    for conversation in conversations:
        conversation.service = shared.setdefault(conversation.service_id, conversation.service)


def _locked_open_of_visitors(*, wait: bool) -> CompiledQuery:
    """The visitors' open conversations, locked; without waiting for rows another
    transaction holds unless `wait` (a batch skips them)."""
    return CompiledQuery(
        lambda visitor_ids: (
            Conversation.objects.select_for_update(of=("self",), skip_locked=not wait)
            # With the escalation policy, which screening reads after commit.
            .select_related("service__escalation_policy", "claimed_by")
            .filter(visitor_id__in=visitor_ids, status=Status.OPEN)
            .order_by("pk")
        )
    )


# By `alone`: a post stored alone waits for its conversation's lock.
_locked_open_conversations = {
    True: _locked_open_of_visitors(wait=True),
    False: _locked_open_of_visitors(wait=False),
}


def _store_customer_messages(checked: list[tuple], outcomes: list, *, alone: bool) -> None:
    visitors = {visitor.pk for _, visitor, _, _ in checked}
    # Locked in id order, so that batches in two processes never wait for each other in a
    # circle. A visitor has at most one open conversation.
    open_by_visitor = {
        conversation.visitor_id: conversation
        for conversation in _locked_open_conversations[alone](visitors)
    }
    _share_services(open_by_visitor.values())
    # Checked under the conversations' locks: a twin frame may have just committed.
    stored = _stored_with_client_ids(visitors, {client_id for _, _, client_id, _ in checked})
    started: list[Conversation] = []
    if not alone:
        firsts: dict[int, tuple[Visitor, str]] = {}
        for _, visitor, client_id, text in checked:
            if visitor.pk not in open_by_visitor and (visitor.pk, client_id) not in stored:
                firsts.setdefault(visitor.pk, (visitor, text))
        started = _start_conversations(list(firsts.values()))
        open_by_visitor.update((conversation.visitor_id, conversation) for conversation in started)
    appended: list[Message] = []
    for index, visitor, client_id, text in checked:
        repeat = stored.get((visitor.pk, client_id))
        if repeat is None and visitor.pk not in open_by_visitor:
            if not alone:
                outcomes[index] = PostAlone()  # another transaction holds its conversation
                continue
            # Not a resend of a message stored before the last conversation closed: start one.
            open_by_visitor[visitor.pk] = _open_or_start(visitor=visitor, opening_question=text)
            repeat = _stored_with_client_id(visitor, client_id)  # a twin frame started it
        if repeat is not None:
            outcomes[index] = Posted(message=repeat, created=False)
            continue
        conversation = open_by_visitor[visitor.pk]
        if not conversation.opening_question:
            conversation.opening_question = text
        message = _next_message(conversation, role=Role.USER, text=text, client_id=client_id)
        stored[visitor.pk, client_id] = message
        appended.append(message)
        outcomes[index] = Posted(message=message, created=True)
    if not appended:
        return
    audits = [
        *(
            _audit_event(
                AuditAction.CONVERSATION_STARTED, conversation=conversation, actor_kind="visitor"
            )
            for conversation in started
        ),
        *(_posted_audit(message, "visitor") for message in appended),
    ]
    _store_appended(appended, audits, [*APPEND_FIELDS, "opening_question"])
    _enqueue_worker_turns(appended)


def message_give_feedback(*, visitor: Visitor, seq: object, value: object) -> Message:
    """Record the customer's thumbs up or down on an AI message of their open conversation."""
    if value not in Feedback.values:
        raise HandoffError("value must be 'up' or 'down'.")
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise BadSeq()
    conversation = open_conversation_for(visitor=visitor)
    if conversation is None:
        raise BadSeq()
    with transaction.atomic():
        message = (
            Message.objects.select_for_update()
            .filter(conversation=conversation, seq=seq, role=Role.AI)
            .first()
        )
        if message is None:
            raise BadSeq()
        if message.feedback == value:
            return message
        message.feedback = value
        message.save(update_fields=["feedback"])
        _audit(
            AuditAction.FEEDBACK,
            conversation=conversation,
            actor_kind="visitor",
            seq=seq,
            value=value,
        )
        events.publish(
            events.FeedbackGiven(
                conversation_id=conversation.id, message_id=message.pk, value=str(value)
            )
        )
    return message


def conversation_request_human(
    *,
    visitor: Visitor | None = None,
    conversation: Conversation | None = None,
    source: Literal["button", "words"] = "button",
    message: Message | None = None,
) -> Conversation:
    """The customer asks for a person: hand off, or say politely that nobody is here."""
    with transaction.atomic():
        if conversation is None:
            conversation = _open_or_start(visitor=visitor, opening_question="")
        else:
            conversation = _locked(conversation.pk)
        if conversation.status != Status.OPEN:
            raise ConversationClosed()
        service = conversation.service
        _audit(
            AuditAction.HELP_REQUESTED,
            conversation=conversation,
            actor_kind="visitor",
            source=source,
        )
        if service.mode == Mode.AI_ONLY:
            # The polite "no" is the answer: drop an AI reply still being written to it.
            conversation.ai_epoch += 1
            conversation.save(update_fields=["ai_epoch"])
            _append(conversation, role=Role.SYSTEM, text=TEXT_NO_HUMANS)
            return conversation
        events.publish(
            events.HumanRequested(
                conversation_id=conversation.id,
                message_id=message.pk if message else None,
                source=source,
            )
        )
        if not conversation.ai_paused:
            _hand_off(conversation, reason="help_requested")
    return conversation


def conversation_hand_off(*, conversation: Conversation, reason: str) -> bool:
    """Pause the AI and queue the conversation for a human; False if nothing changed."""
    with transaction.atomic():
        conversation = _locked(conversation.pk)
        if (
            conversation.status != Status.OPEN
            or conversation.ai_paused
            or conversation.service.mode != Mode.HUMAN_SUPPORTED
        ):
            return False
        _hand_off(conversation, reason=reason)
    return True


def _hand_off(conversation: Conversation, *, reason: str) -> None:
    _append(conversation, role=Role.SYSTEM, text=TEXT_HANDOFF, actor_kind="ai")
    _set_paused(conversation, waiting=True, now=timezone.now())
    _audit(AuditAction.HANDED_OFF, conversation=conversation, actor_kind="system", reason=reason)
    _changed(conversation, "handed_off")
    if conversation.service.handoff_wait_seconds:
        from conversations import tasks

        conversation_id = str(conversation.id)
        transaction.on_commit(
            lambda: tasks.dispatch_later(
                tasks.expire_handoff_wait,
                conversation_id,
                countdown=conversation.service.handoff_wait_seconds,
            )
        )


def conversation_end_by_customer(*, visitor: Visitor) -> Conversation | None:
    """The customer ends the chat; returns the closed conversation, or None if none was open."""
    conversation = open_conversation_for(visitor=visitor)
    if conversation is None:
        return None
    return _close(conversation, actor=None, actor_kind="visitor", reason="customer")


# --- The AI ----------------------------------------------------------------------------------


def ai_reply_needed(*, conversation: Conversation, reply_to: Message) -> bool:
    """Whether a reply to `reply_to` is worth generating (read without the lock).

    Not if the AI answered it already (a task delivered twice), nor if the customer has
    written since: that message's own task answers, and this reply would be dropped as
    superseded when posted, so it is dropped (and audited) before the responder spends
    anything on it. A worker that fell behind thus catches up instead of answering
    questions nobody waits for. Posting checks everything again under the lock.
    """
    if conversation.message_count <= reply_to.seq:
        return True  # nothing said since: the common case, without a query
    later = set(
        conversation.messages.filter(seq__gt=reply_to.seq, role__in=(Role.AI, Role.USER))
        .order_by()
        .values_list("role", flat=True)
        .distinct()
    )
    if Role.USER in later and Role.AI not in later:
        _audit(
            AuditAction.AI_REPLY_DROPPED,
            conversation=conversation,
            actor_kind="ai",
            reply_to=reply_to.seq,
            reason="superseded",
        )
    return not later


@dataclass(frozen=True)
class AiReply:
    """The AI's answer to `reply_to`, for `conversation_post_ai_messages`."""

    conversation_id: object
    reply_to: Message
    epoch: int
    text: str
    specialist: Specialist | None
    confidence: float | None = None
    non_answer: bool | None = None
    evidence: dict | None = None


def conversation_post_ai_message(
    *,
    conversation_id,
    reply_to: Message,
    epoch: int,
    text: str,
    specialist: Specialist | None,
    confidence: float | None = None,
    non_answer: bool | None = None,
    evidence: dict | None = None,
) -> Message | None:
    """Post the AI's reply to `reply_to`, or drop it if the conversation moved on."""
    reply = AiReply(
        conversation_id, reply_to, epoch, text, specialist, confidence, non_answer, evidence
    )
    return conversation_post_ai_messages([reply])[0]


_locked_for_replies = CompiledQuery(
    lambda ids: (
        Conversation.objects.select_for_update(of=("self",))
        .select_related("service", "claimed_by", "specialist")
        .filter(pk__in=ids)
        .order_by("pk")
    )
)


def conversation_post_ai_messages(replies: Sequence[AiReply]) -> list[Message | None]:
    """Post the AI's replies in one transaction: each its message, or None if it was dropped.

    The rows' locks serialise this with take-overs: a pause that commits first bumps the
    epoch, and a reply generated before it is dropped rather than talking over a human.
    Locked in id order, like the customer messages' batches, so that no two wait in a circle.
    """
    if not replies:
        return []
    texts: list[str | None] = []
    for reply in replies:
        try:
            texts.append(clean_text(reply.text)[:MAX_MESSAGE_LENGTH])
        except HandoffError:
            logger.warning("the AI's reply to seq %s was empty; dropped", reply.reply_to.seq)
            texts.append(None)
    outcomes: list[Message | None] = []
    with transaction.atomic():
        locked = {
            str(conversation.pk): conversation
            for conversation in _locked_for_replies(
                {str(reply.conversation_id) for reply in replies}
            )
        }
        _share_services(locked.values())
        appended: list[Message] = []
        audits: list[AuditEvent] = []
        answered: dict[str, int] = {}  # conversation -> the seq it answered in this batch
        specialists_changed = False
        for reply, text in zip(replies, texts, strict=True):
            conversation = locked[str(reply.conversation_id)]
            reason = _reply_dropped_because(conversation, reply, answered)
            if reason or text is None:
                if reason:
                    audits.append(
                        _audit_event(
                            AuditAction.AI_REPLY_DROPPED,
                            conversation=conversation,
                            actor_kind="ai",
                            reply_to=reply.reply_to.seq,
                            reason=reason,
                        )
                    )
                outcomes.append(None)
                continue
            specialist = reply.specialist
            if specialist is not None and specialist.pk != conversation.specialist_id:
                audits.append(
                    _audit_event(
                        AuditAction.SPECIALIST_CHANGED,
                        conversation=conversation,
                        actor_kind="ai",
                        previous=conversation.specialist.name if conversation.specialist else None,
                        specialist=specialist.name,
                    )
                )
                conversation.specialist = specialist  # saved with the counts below
                specialists_changed = True
            message = _next_message(
                conversation,
                role=Role.AI,
                text=text,
                specialist=specialist or conversation.specialist,
                confidence=reply.confidence,
                # The responder's own verdict travels in the evidence; escalation decides
                # `non_answer`.
                evidence={**(reply.evidence or {}), "non_answer": reply.non_answer},
            )
            answered[str(conversation.pk)] = reply.reply_to.seq
            appended.append(message)
            audits.append(_posted_audit(message, "ai"))
            outcomes.append(message)
        if appended:
            events.deliver_now(events.AiRepliesDrafted(messages=tuple(appended)))
        _store_appended(
            appended,
            audits,
            [*APPEND_FIELDS, "specialist"] if specialists_changed else APPEND_FIELDS,
        )
    return outcomes


def _reply_dropped_because(
    conversation: Conversation, reply: AiReply, answered: dict[str, int]
) -> str | None:
    """Why the locked conversation takes no reply to `reply.reply_to` now, if it does not."""
    reply_to = reply.reply_to
    if not ai_should_answer(conversation):
        return "paused_or_closed"
    if conversation.ai_epoch != reply.epoch:
        return "paused_since"
    if str(conversation.pk) in answered:  # twice in one batch: a task delivered again
        return (
            "already_answered" if answered[str(conversation.pk)] == reply_to.seq else "superseded"
        )
    if conversation.message_count <= reply_to.seq:
        return None  # the common case: nothing was said since, without a query
    latest_user_seq = (
        conversation.messages.filter(role=Role.USER)
        .order_by("-seq")
        .values_list("seq", flat=True)
        .first()
    )
    if latest_user_seq != reply_to.seq:
        return "superseded"
    if conversation.messages.filter(seq__gt=reply_to.seq, role=Role.AI).exists():
        return "already_answered"
    return None


# --- Agent actions ---------------------------------------------------------------------------


def conversation_take_over(*, conversation: Conversation, agent: AbstractBaseUser) -> Conversation:
    """Claim the conversation for `agent`: exactly one of any number of racing agents wins."""
    # Someone already holding an open conversation is seen on a plain read: the losers of a
    # race that get here after the winner's commit answer with one query, not a transaction
    # and a lock wait. (Its service is not AI Only: switching to it releases every claim.)
    current = Conversation.objects.select_related("service", "claimed_by").get(pk=conversation.pk)
    if current.status == Status.OPEN and current.claimed_by_id is not None:
        return _claim_settled(current, agent)
    with transaction.atomic():
        if _shared_service_mode(conversation.service_id) == Mode.AI_ONLY:
            raise ModeDisallows("Agents cannot take over conversations in AI Only mode.")
        now = timezone.now()
        # The conditional update is the claim: concurrent updaters queue on the row lock and
        # re-check `claimed_by IS NULL` against the winner's row, so only one updates a row.
        # It must filter this table's columns only: a join would turn the check into a
        # subquery evaluated before the wait, and every waiter would win.
        won = Conversation.objects.filter(
            pk=conversation.pk, status=Status.OPEN, claimed_by__isnull=True
        ).update(
            claimed_by=agent,
            claimed_at=now,
            attention_acknowledged_at=now,
            ai_paused=True,
            ai_epoch=F("ai_epoch") + 1,
            waiting_since=None,
            version=F("version") + 1,
        )
        if not won:
            # The update waited for the winner and saw its commit; a plain read sees it too.
            # No lock: the losers of a race answer side by side instead of one by one.
            conversation = Conversation.objects.select_related("service", "claimed_by").get(
                pk=conversation.pk
            )
            if conversation.status != Status.OPEN:
                raise ConversationClosed()
            return _claim_settled(conversation, agent)
        conversation = _locked(conversation.pk)
        name = protocol.display_name(agent)
        _append(conversation, role=Role.SYSTEM, text=TEXT_JOINED.format(name=name))
        _audit(AuditAction.TAKEN_OVER, conversation=conversation, actor=agent)
        _changed(conversation, "claimed")
    return conversation


def _claim_settled(conversation: Conversation, agent: AbstractBaseUser) -> Conversation:
    """A take-over of an open conversation someone holds: itself if it is `agent`."""
    if conversation.claimed_by_id == agent.pk:
        return conversation
    if conversation.claimed_by_id is None:  # claimed and given up again meanwhile
        raise AlreadyClaimed("A colleague")
    raise AlreadyClaimed(protocol.display_name(conversation.claimed_by))


def _shared_service_mode(service_id) -> str:
    """The service's mode, its row held in share mode until the transaction ends.

    Same lock order as a mode change (service, then conversation), which takes the row
    `FOR UPDATE`: a switch to AI Only cannot interleave with a claim. In share mode, claims
    on the service's other conversations go side by side rather than one at a time (the
    claim itself is the conversation's conditional update). Django's ORM has no `FOR SHARE`;
    SQLite (the embedded default) has no row locks and takes one writer at a time anyway.
    """
    if connection.vendor != "postgresql":
        return Service.objects.only("mode").get(pk=service_id).mode
    with connection.cursor() as cursor:
        cursor.execute(
            f'SELECT "mode" FROM "{Service._meta.db_table}" WHERE "id" = %s FOR SHARE',
            [service_id],
        )
        (mode,) = cursor.fetchone()
    return mode


def _check_holder(conversation: Conversation, user: AbstractBaseUser, *, admin_ok: bool) -> None:
    if conversation.status != Status.OPEN:
        raise ConversationClosed()
    if conversation.claimed_by_id == user.pk:
        return
    if admin_ok and is_admin(user):
        return
    if conversation.claimed_by_id:
        raise AlreadyClaimed(protocol.display_name(conversation.claimed_by))
    raise NotClaimer()


def conversation_send_as_agent(
    *, conversation: Conversation, agent: AbstractBaseUser, text: object
) -> Message:
    """Post `text` as the agent holding the conversation."""
    text = clean_text(text)
    with transaction.atomic():
        conversation = _locked(conversation.pk)
        if conversation.status != Status.OPEN:
            raise ConversationClosed()
        if conversation.claimed_by_id != agent.pk:
            raise NotClaimer()
        message = _append(conversation, role=Role.HUMAN, text=text, author=agent)
    return message


def conversation_resume_ai(*, conversation: Conversation, user: AbstractBaseUser) -> Conversation:
    """Hand the conversation back to the AI; it answers from the next customer message on."""
    with transaction.atomic():
        conversation = _locked(conversation.pk)
        _check_holder(conversation, user, admin_ok=True)
        if conversation.service.mode == Mode.HUMAN_ONLY:
            raise ModeDisallows("The AI cannot answer in Human Only mode.")
        _resume(conversation)
        _audit(AuditAction.AI_RESUMED, conversation=conversation, actor=user)
        _changed(conversation, "resumed")
    return conversation


def _resume(conversation: Conversation) -> None:
    conversation.claimed_by = None
    conversation.claimed_at = None
    conversation.ai_paused = False
    conversation.waiting_since = None
    conversation.version += 1
    conversation.save(
        update_fields=["claimed_by", "claimed_at", "ai_paused", "waiting_since", "version"]
    )
    _append(conversation, role=Role.SYSTEM, text=TEXT_AI_BACK)


def conversation_release(*, conversation: Conversation, user: AbstractBaseUser) -> Conversation:
    """Give up the claim; the AI stays paused and the conversation waits for a colleague."""
    with transaction.atomic():
        conversation = _locked(conversation.pk)
        _check_holder(conversation, user, admin_ok=True)
        if not conversation.claimed_by_id:
            return conversation
        name = protocol.display_name(conversation.claimed_by)
        conversation.claimed_by = None
        conversation.claimed_at = None
        conversation.waiting_since = timezone.now()
        conversation.version += 1
        conversation.save(update_fields=["claimed_by", "claimed_at", "waiting_since", "version"])
        _append(conversation, role=Role.SYSTEM, text=TEXT_RELEASED.format(name=name))
        _audit(AuditAction.RELEASED, conversation=conversation, actor=user)
        _changed(conversation, "released")
    return conversation


def conversation_close(*, conversation: Conversation, user: AbstractBaseUser) -> Conversation:
    """Close the conversation as the agent holding it, or as an admin."""
    with transaction.atomic():
        conversation = _locked(conversation.pk)
        _check_holder(conversation, user, admin_ok=True)
        return _close(conversation, actor=user, actor_kind="agent", reason="agent")


def _close(
    conversation: Conversation,
    *,
    actor: AbstractBaseUser | None,
    actor_kind: str,
    reason: str,
) -> Conversation:
    with transaction.atomic():
        conversation = _locked(conversation.pk)
        if conversation.status != Status.OPEN:
            return conversation
        _append(conversation, role=Role.SYSTEM, text=TEXT_CLOSED)
        conversation.status = Status.CLOSED
        conversation.closed_at = timezone.now()
        conversation.ai_paused = False
        conversation.waiting_since = None
        conversation.version += 1
        conversation.save(
            update_fields=["status", "closed_at", "ai_paused", "waiting_since", "version"]
        )
        _audit(
            AuditAction.CLOSED,
            conversation=conversation,
            actor=actor,
            actor_kind=actor_kind,
            reason=reason,
        )
        _changed(conversation, "closed")
    return conversation


# --- Time-driven changes ---------------------------------------------------------------------


def conversation_expire_wait(*, conversation_id, now: datetime | None = None) -> bool:
    """Resume the AI when nobody took over within the service's wait; True if it did."""
    now = now or timezone.now()
    with transaction.atomic():
        conversation = _locked(conversation_id)
        wait = conversation.service.handoff_wait_seconds
        if (
            conversation.status != Status.OPEN
            or conversation.service.mode != Mode.HUMAN_SUPPORTED
            or not conversation.ai_paused
            or conversation.claimed_by_id
            or conversation.waiting_since is None
            or not wait
            or conversation.waiting_since + timedelta(seconds=wait) > now
        ):
            return False
        conversation.ai_paused = False
        conversation.waiting_since = None
        conversation.version += 1
        conversation.save(update_fields=["ai_paused", "waiting_since", "version"])
        _append(conversation, role=Role.SYSTEM, text=TEXT_WAIT_EXPIRED)
        _audit(AuditAction.WAIT_EXPIRED, conversation=conversation, waited_seconds=wait)
        _changed(conversation, "wait_expired")
    return True


def conversations_expire_waits(*, now: datetime | None = None, batch: int = 200) -> int:
    """Resume the AI wherever a handoff waited past its service's limit; returns how many."""
    now = now or timezone.now()
    candidates = (
        Conversation.objects.filter(
            status=Status.OPEN,
            ai_paused=True,
            claimed_by__isnull=True,
            waiting_since__isnull=False,
            service__mode=Mode.HUMAN_SUPPORTED,
            service__handoff_wait_seconds__gt=0,
        )
        .order_by("waiting_since")
        .values_list("pk", flat=True)[:batch]
    )
    return sum(conversation_expire_wait(conversation_id=pk, now=now) for pk in list(candidates))


def conversations_unanswered(*, older_than_seconds: int = 20, batch: int = 200) -> list[Message]:
    """Customer messages the AI should have answered by now (their task was lost)."""
    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    last_seq = Message.objects.filter(conversation=OuterRef("conversation")).order_by("-seq")
    return list(
        Message.objects.filter(
            role=Role.USER,
            created_at__lt=cutoff,
            conversation__status=Status.OPEN,
            conversation__ai_paused=False,
        )
        .exclude(conversation__service__mode=Mode.HUMAN_ONLY)
        .annotate(last_seq=Subquery(last_seq.values("seq")[:1]))
        .filter(seq=F("last_seq"))
        .select_related("conversation")
        .order_by("created_at")[:batch]
    )


def conversations_close_idle(*, now: datetime | None = None, batch: int = 200) -> int:
    """Close open conversations idle past CONVERSATION_IDLE_MINUTES; returns how many."""
    now = now or timezone.now()
    cutoff = now - timedelta(minutes=settings.CONVERSATION_IDLE_MINUTES)
    ids = list(
        Conversation.objects.filter(status=Status.OPEN, last_activity_at__lt=cutoff)
        .order_by("last_activity_at")
        .values_list("pk", flat=True)[:batch]
    )
    closed = 0
    for conversation_id in ids:
        with transaction.atomic():
            conversation = _locked(conversation_id)
            # Re-checked under the lock: the customer may have written in the meantime.
            if conversation.status == Status.OPEN and conversation.last_activity_at < cutoff:
                _close(conversation, actor=None, actor_kind="system", reason="idle")
                closed += 1
    return closed


def conversation_touch(*, conversation: Conversation) -> Conversation:
    """Bump the version of a locked conversation whose card changed outside this module."""
    conversation.version += 1
    conversation.save(update_fields=["version"])
    return conversation


def conversation_lock(conversation_id) -> Conversation:
    """Lock a conversation for the rest of the caller's transaction (other apps' writes)."""
    return _locked(conversation_id)


# --- Modes -----------------------------------------------------------------------------------


def service_set_mode(*, service: Service, mode: str, user: AbstractBaseUser | None) -> Service:
    """Switch a service's mode and apply it to its open conversations (SPEC §3)."""
    if mode not in Mode.values:
        raise HandoffError(f"mode must be one of: {', '.join(Mode.values)}.")
    with transaction.atomic():
        service = Service.objects.select_for_update().get(pk=service.pk)
        previous = service.mode
        if previous == mode:
            return service
        service.mode = mode
        service.save(update_fields=["mode"])
        _audit(
            AuditAction.MODE_CHANGED,
            service=service,
            actor=user,
            actor_kind="admin",
            mode=mode,
            previous=previous,
        )
        open_ids = list(
            service.conversations.filter(status=Status.OPEN).values_list("pk", flat=True)
        )
        for conversation_id in open_ids:
            conversation = _locked(conversation_id)
            conversation.service = service
            if mode == Mode.AI_ONLY and (conversation.ai_paused or conversation.claimed_by_id):
                _resume(conversation)
                _changed(conversation, "mode_applied")
            elif mode == Mode.HUMAN_ONLY and not conversation.ai_paused:
                _set_paused(conversation, waiting=True, now=timezone.now())
                _append(conversation, role=Role.SYSTEM, text=TEXT_HUMAN_ONLY)
                _changed(conversation, "mode_applied")
            elif mode != previous:
                # The widget's mode and "Talk to a person" button follow the service.
                transaction.on_commit(lambda c=conversation: protocol.send_status(c))
        events.publish(
            events.ServiceModeChanged(service_id=service.pk, mode=mode, previous=previous)
        )
        transaction.on_commit(lambda: protocol.send_service_status(service))
    return service


def services_set_mode(*, mode: str, user: AbstractBaseUser | None) -> list[Service]:
    """Apply one mode to every service in one action."""
    if mode not in Mode.values:
        raise HandoffError(f"mode must be one of: {', '.join(Mode.values)}.")
    with transaction.atomic():
        return [
            service_set_mode(service=service, mode=mode, user=user)
            for service in Service.objects.order_by("pk")
        ]
