"""Celery tasks of the conversation engine: thin, idempotent, ids in."""

from __future__ import annotations

import logging

from asgiref.sync import SyncToAsync, sync_to_async
from celery import shared_task
from django.conf import settings
from django.db import OperationalError

from conversations import events, protocol, selectors, services
from conversations.ai import get_responder
from conversations.ai.base import AIRequest
from conversations.models import Conversation, Message
from handoff.broker import publisher

logger = logging.getLogger(__name__)

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)


def dispatch(task, *args) -> None:
    """Enqueue `task`; a broker that is down is logged, never raised into the request."""
    if _run_beside_server(task, args):
        return
    try:
        task.apply_async(args=args)
    except Exception:
        logger.exception("could not enqueue %s%r", task.name, args)


def _run_beside_server(task, args: tuple) -> bool:
    """In-process tasks (the embedded default) run beside the server, not in a socket's turn.

    Run inline, a slow AI backend would hold the one thread that serves every socket's
    database work. Instead the task goes to a worker thread of the server's event loop,
    from which broadcasts still reach the in-memory channel layer on that loop.
    """
    if not (task.app.conf.task_always_eager and settings.HANDOFF_TASKS_IN_BACKGROUND):
        return False
    # asgiref records the server's loop on the threads it runs sync code in.
    loop = getattr(SyncToAsync.threadlocal, "main_event_loop", None)
    if loop is None or not loop.is_running():
        return False
    run = sync_to_async(task.apply, thread_sensitive=False)
    loop.call_soon_threadsafe(lambda: loop.create_task(run(args=args)))
    return True


def dispatch_soon(task, *args) -> None:
    """Enqueue `task` from this process's publisher thread: the caller does not wait for
    the broker (a web process's batch, whose commit hooks hold up the next one)."""
    if task.app.conf.task_always_eager:
        dispatch(task, *args)
    else:
        publisher.apply_async(task, args)


def dispatch_later(task, *args, countdown: int) -> None:
    try:
        task.apply_async(args=args, countdown=countdown)
    except Exception:
        logger.exception("could not enqueue %s%r", task.name, args)


@shared_task(
    autoretry_for=TRANSIENT, retry_backoff=True, retry_jitter=True, max_retries=5, acks_late=True
)
def generate_ai_reply(conversation_id: str, message_id: int, epoch: int) -> int | None:
    """The worker's turn on a customer message: the slow checks, then the AI's answer if it may.

    Dispatched for every customer message stored alone (and for a turn of a batch retried
    alone), whether or not the AI may answer, so that one task does both (escalation scores
    the mood on `CustomerMessagesReceived`); a hand-off that the checks cause is committed
    before the AI would answer. Returns the reply's seq, or None if there is no reply.
    """
    message = _take_up([message_id]).get(message_id)
    if message is None or not _answer_needed(message, epoch):
        return None
    responder = get_responder()
    if responder.typing_indicator:
        protocol.send_typing(message.conversation_id, True)
    try:
        [request] = selectors.ai_requests_for([message])
        reply = _answer(responder, message, epoch, request)
        [posted] = services.conversation_post_ai_messages([reply])
    finally:
        if responder.typing_indicator:
            protocol.send_typing(message.conversation_id, False)
    return posted.seq if posted else None


@shared_task(acks_late=True)
def generate_ai_replies(turns: list[list]) -> list[int | None]:
    """The worker's turns on customer messages the web stored in one batch.

    One task for the batch rather than one per message: under load a web process stores
    many messages per transaction, and a task's trip through the broker costs more than
    the turn. The batch's slow checks run first, for all its messages at once (a hand-off
    they cause commits before any answer), then the answers are posted in one
    transaction. A turn that fails on a transient error goes back to the broker as a task
    of its own (`generate_ai_reply`, retried with backoff). Every turn is idempotent, so
    a batch delivered again (a worker killed mid-batch) answers nothing twice.
    """
    responder = get_responder()
    if responder.typing_indicator:
        # A remote model takes seconds a turn: one after the other, the batch's last
        # customer would wait for everyone's answer. The worker's processes take them apart.
        for turn in turns:
            dispatch(generate_ai_reply, *turn)
        return [None] * len(turns)
    seqs: list[int | None] = [None] * len(turns)
    try:
        messages = _take_up([message_id for _, message_id, _ in turns])
    except TRANSIENT:
        for turn in turns:
            _retry_alone(turn)
        return seqs
    checked: list[tuple[int, Message, int]] = []
    for index, (_, message_id, epoch) in enumerate(turns):
        message = messages.get(message_id)
        if message is None:
            continue
        try:
            if _answer_needed(message, epoch):
                checked.append((index, message, epoch))
        except TRANSIENT:
            _retry_alone(turns[index])
    try:
        requests = selectors.ai_requests_for([message for _, message, _ in checked])
        answers = [
            (index, _answer(responder, message, epoch, request))
            for (index, message, epoch), request in zip(checked, requests, strict=True)
        ]
        posted = services.conversation_post_ai_messages([reply for _, reply in answers])
    except TRANSIENT:
        for index, _, _ in checked:
            _retry_alone(turns[index])
        return seqs
    for (index, _), message in zip(answers, posted, strict=True):
        seqs[index] = message.seq if message else None
    return seqs


def _retry_alone(turn: list) -> None:
    logger.warning("turn on message %s failed; retried on its own", turn[1])
    dispatch_later(generate_ai_reply, *turn, countdown=1)


def _take_up(message_ids: list[int]) -> dict[int, Message]:
    """Read the customer messages and run their slow checks (`CustomerMessagesReceived`)."""
    messages = selectors.customer_messages(message_ids)
    for message_id in message_ids:
        if message_id not in messages:
            logger.info("message %s is gone; no reply", message_id)
    taken = tuple(messages[pk] for pk in dict.fromkeys(message_ids) if pk in messages)
    events.deliver_now(events.CustomerMessagesReceived(messages=taken))
    return messages


def _answer_needed(message: Message, epoch: int) -> bool:
    """Whether the AI should answer `message` now, after its slow checks ran."""
    conversation = message.conversation
    if not services.ai_should_answer(conversation) or conversation.ai_epoch != epoch:
        return False
    return services.ai_reply_needed(conversation=conversation, reply_to=message)


def _answer(responder, message: Message, epoch: int, request: AIRequest) -> services.AiReply:
    conversation = message.conversation
    reply = responder.reply(request)
    return services.AiReply(
        conversation_id=conversation.id,
        reply_to=message,
        epoch=epoch,
        text=reply.text,
        specialist=selectors.service_knowledge(conversation.service).specialist(reply.specialist),
        confidence=reply.confidence,
        non_answer=reply.non_answer,
        evidence=reply.evidence,
    )


@shared_task(autoretry_for=TRANSIENT, retry_backoff=True, max_retries=5)
def expire_handoff_wait(conversation_id: str) -> bool:
    """Resume the AI if the conversation still waits for a human past its deadline."""
    if not Conversation.objects.filter(pk=conversation_id).exists():
        return False
    return services.conversation_expire_wait(conversation_id=conversation_id)


@shared_task(autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)
def close_idle_conversations() -> int:
    """Close conversations idle past CONVERSATION_IDLE_MINUTES (run by beat)."""
    return services.conversations_close_idle()


@shared_task(autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)
def expire_handoff_waits() -> int:
    """Sweep for handoffs that waited too long (run by beat; backs up the per-wait timer)."""
    return services.conversations_expire_waits()


@shared_task(autoretry_for=TRANSIENT, retry_backoff=True, max_retries=3)
def answer_unanswered_messages() -> int:
    """Re-dispatch AI replies whose task was lost while the broker was away (run by beat)."""
    waiting = services.conversations_unanswered()
    for message in waiting:
        dispatch(
            generate_ai_reply,
            str(message.conversation_id),
            message.pk,
            message.conversation.ai_epoch,
        )
    return len(waiting)
