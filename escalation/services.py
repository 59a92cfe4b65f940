"""Raising attention flags and acting on them (SPEC §3 "Attention flags", "Escalation triggers").

Every flag is raised under the conversation's row lock, so a flag never lands while a human
holds the conversation, and a detector that runs twice raises one flag.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Sequence

from django.db import transaction
from django.db.models import Exists, F, OuterRef, QuerySet, Window
from django.db.models.functions import RowNumber

from conversations import events
from conversations import services as conversations
from conversations.models import Conversation, Message, Mode, Role, Service, Status
from escalation import detectors
from escalation.events import FlagRaised
from escalation.models import EscalationPolicy, Flag, Reason
from handoff.db import CompiledQuery, update_fields

logger = logging.getLogger(__name__)

NON_ANSWER_CONFIDENCE = 0.35
SENTIMENT_LOOKBACK = 10


def policy_for(service: Service) -> EscalationPolicy:
    """The service's policy, created with the defaults the first time it is needed.

    Free when the service was read with `select_related("escalation_policy")`.
    """
    try:
        return service.escalation_policy
    except EscalationPolicy.DoesNotExist:
        policy, _ = EscalationPolicy.objects.get_or_create(service=service)
        service.escalation_policy = policy  # read once per service object, like a found one
        return policy


def _needs_attention(conversation: Conversation) -> bool:
    flags = conversation.flags.all()
    if conversation.attention_acknowledged_at:
        flags = flags.filter(created_at__gt=conversation.attention_acknowledged_at)
    return flags.exists()


def flag_raise(
    *,
    conversation_id,
    reason: str,
    message: Message | None = None,
    evidence: dict | None = None,
) -> Flag | None:
    """Flag the conversation for a human, and hand it off if the policy says so."""
    with transaction.atomic():
        conversation = conversations.conversation_lock(conversation_id)
        if conversation.status != Status.OPEN or conversation.claimed_by_id:
            return None  # nobody needs telling: it is over, or a human already has it
        duplicate = conversation.flags.filter(reason=reason)
        if message is not None:
            duplicate = duplicate.filter(message=message)
        else:
            duplicate = duplicate.filter(message__isnull=True)
            if conversation.attention_acknowledged_at:
                duplicate = duplicate.filter(created_at__gt=conversation.attention_acknowledged_at)
        if duplicate.exists():
            return None
        was_flagged = _needs_attention(conversation)
        flag = Flag.objects.create(
            conversation=conversation, reason=reason, message=message, evidence=evidence or {}
        )
        conversations.conversation_touch(conversation=conversation)
        events.publish(
            FlagRaised(
                conversation_id=conversation.id,
                flag_id=flag.pk,
                reason=reason,
                new=not was_flagged,
            )
        )
        service = conversation.service
        if (
            service.mode == Mode.HUMAN_SUPPORTED
            and not conversation.ai_paused
            and policy_for(service).hands_off(reason)
        ):
            conversations.conversation_hand_off(conversation=conversation, reason=reason)
    return flag


def conversation_flag_waiting(*, conversation_id) -> Flag | None:
    """Queue a paused conversation that nobody holds: the `awaiting_human` flag."""
    conversation = Conversation.objects.filter(pk=conversation_id).first()
    if conversation is None or not conversation.ai_paused or conversation.claimed_by_id:
        return None
    return flag_raise(
        conversation_id=conversation_id,
        reason=Reason.AWAITING_HUMAN,
        evidence={"rule": "paused_unclaimed", "since": conversation.waiting_since.isoformat()}
        if conversation.waiting_since
        else {"rule": "paused_unclaimed"},
    )


def message_screen(*, message: Message) -> None:
    """Check a customer message for admin keywords and a request for a human, at once.

    Cheap and synchronous on purpose: it runs right after the message commits and before
    the AI's reply is dispatched, so a customer asking for a person is never answered by
    the AI first. `message` comes with its conversation and service, as it was stored.
    """
    if message.role != Role.USER:
        return
    conversation = message.conversation
    service = conversation.service
    policy = policy_for(service)
    keywords = detectors.detect_keywords(message.text, policy.keyword_list)
    if keywords.matched:
        flag_raise(
            conversation_id=conversation.pk,
            reason=Reason.KEYWORD,
            message=message,
            evidence={"rule": keywords.rule, **keywords.evidence},
        )
    request = detectors.detect_human_request(message.text)
    if request.matched:
        evidence = {"rule": request.rule, "source": "words", **request.evidence}
        if service.mode != Mode.AI_ONLY:
            flag_raise(
                conversation_id=conversation.pk,
                reason=Reason.HELP_REQUESTED,
                message=message,
                evidence=evidence,
            )
        conversation.refresh_from_db()
        if conversation.status == Status.OPEN and not conversation.ai_paused:
            conversations.conversation_request_human(
                conversation=conversation, source="words", message=message
            )


def human_requested(*, conversation_id, message_id: int | None, source: str) -> Flag | None:
    """The customer asked for a person (button or words): flag it."""
    message = Message.objects.filter(pk=message_id).first() if message_id else None
    return flag_raise(
        conversation_id=conversation_id,
        reason=Reason.HELP_REQUESTED,
        message=message,
        evidence={"rule": f"request_{source}", "source": source},
    )


def feedback_received(*, message_id: int, value: str) -> Flag | None:
    """A thumbs down on an AI message flags the conversation."""
    if value != "down":
        return None
    message = Message.objects.filter(pk=message_id, role=Role.AI).first()
    if message is None:
        return None
    return flag_raise(
        conversation_id=message.conversation_id,
        reason=Reason.THUMBS_DOWN,
        message=message,
        evidence={"rule": "customer_rating", "seq": message.seq, "text": message.text[:200]},
    )


def _score(message: Message) -> float:
    if message.sentiment is None:
        message.sentiment = detectors.sentiment_score(message.text)
        Message.objects.filter(pk=message.pk, sentiment__isnull=True).update(
            sentiment=message.sentiment
        )
    return message.sentiment


def _score_all(messages: Sequence[Message]) -> None:
    """Score the unscored ones among `messages`, stored in one update whatever their number."""
    fresh = [message for message in messages if message.sentiment is None]
    if len(fresh) == 1:
        _score(fresh[0])
    elif fresh:
        for message in fresh:
            message.sentiment = detectors.sentiment_score(message.text)
        update_fields(fresh, ["sentiment"])


def _mood_windows(messages: Sequence[Message]) -> dict[int, list[float]]:
    """For each customer message, the scores of its conversation's last SENTIMENT_LOOKBACK
    customer messages up to it, oldest first: one query for all of them."""
    newest: dict = {}
    oldest: dict = {}
    for message in messages:
        cid = message.conversation_id
        newest[cid] = max(newest.get(cid, 0), message.seq)
        oldest[cid] = min(oldest.get(cid, message.seq), message.seq)
    # An earlier message of a conversation in the batch looks further back than its newest.
    depth = SENTIMENT_LOOKBACK + max(newest[cid] - oldest[cid] for cid in newest)
    by_conversation: dict = defaultdict(list)
    for row in _ranked_moods(depth)([message.pk for message in messages]):
        by_conversation[row.conversation_id].append(row)
    windows = {}
    for message in messages:
        rows = [r for r in by_conversation[message.conversation_id] if r.seq <= message.seq]
        windows[message.pk] = [_score(row) for row in reversed(rows[:SENTIMENT_LOOKBACK])]
    return windows


@functools.lru_cache(maxsize=16)
def _ranked_moods(depth: int) -> CompiledQuery:
    """The customer messages of the conversations of the messages with the given ids, up to
    the newest of those in each, newest first, `depth` at most of each."""

    def build(ids) -> QuerySet[Message]:
        batch = Message.objects.filter(pk__in=ids)
        up_to_one_of_them = batch.filter(
            conversation_id=OuterRef("conversation_id"), seq__gte=OuterRef("seq")
        )
        return (
            Message.objects.filter(
                Exists(up_to_one_of_them),
                conversation_id__in=batch.values("conversation_id"),
                role=Role.USER,
            )
            .annotate(
                recency=Window(
                    RowNumber(), partition_by=[F("conversation_id")], order_by=F("seq").desc()
                )
            )
            .filter(recency__lte=depth)
            .only("id", "conversation_id", "seq", "text", "sentiment")
            .order_by("conversation_id", "-seq")
        )

    return CompiledQuery(build, "bigint")


def message_score_sentiment(*, message: Message) -> Flag | None:
    """`messages_score_sentiment` for one message: its flag, if it raised one."""
    flags = messages_score_sentiment(messages=[message])
    return flags[0] if flags else None


def messages_score_sentiment(*, messages: Sequence[Message]) -> list[Flag]:
    """Score customer messages with VADER and flag each conversation whose mood turned.

    `messages` come with their conversation, service and policy: for any number of them,
    one update stores the scores and one query reads the mood windows. A flag may hand a
    conversation off: then `message.conversation` is read again, so that the caller sees it.
    """
    questions = [message for message in messages if message.role == Role.USER]
    if not questions:
        return []
    _score_all(questions)
    windows = _mood_windows(questions)
    raised: list[Flag] = []
    for message in questions:
        policy = policy_for(message.conversation.service)
        found = detectors.detect_negative_sentiment(
            windows[message.pk],
            threshold=policy.sentiment_threshold,
            window=max(policy.sentiment_window, 1),
        )
        if not found.matched:
            continue
        flag = flag_raise(
            conversation_id=message.conversation_id,
            reason=Reason.NEGATIVE_SENTIMENT,
            message=message,
            evidence={"rule": found.rule, **found.evidence},
        )
        if flag is not None:
            message.conversation.refresh_from_db()
            raised.append(flag)
    return raised


def _decide_non_answer(message: Message) -> None:
    found = detectors.detect_non_answer(
        message.text,
        confidence=message.confidence,
        responder_non_answer=(message.evidence or {}).get("non_answer"),
        threshold=NON_ANSWER_CONFIDENCE,
    )
    message.non_answer = found.matched
    message.evidence = {**(message.evidence or {}), "detector": found.evidence, "rule": found.rule}


def replies_classify(*, messages: Sequence[Message]) -> None:
    """Decide which AI replies about to be stored are non-answers (the insert stores it)."""
    for message in messages:
        if message.role == Role.AI and message.non_answer is None:
            _decide_non_answer(message)


def _classify(message: Message) -> bool:
    if message.non_answer is None:  # stored unclassified (before an upgrade, or by hand)
        _decide_non_answer(message)
        Message.objects.filter(pk=message.pk).update(
            non_answer=message.non_answer, evidence=message.evidence
        )
    return bool(message.non_answer)


def message_with_policy(message_id: int) -> Message | None:
    """The message with its conversation, service and escalation policy, in one query."""
    return (
        Message.objects.select_related("conversation__service__escalation_policy")
        .filter(pk=message_id)
        .first()
    )


def message_check_answer(*, message: Message) -> list[Flag]:
    """Decide whether an AI reply answered; flag non-answers and streaks of them."""
    if message.role != Role.AI:
        return []
    raised: list[Flag] = []
    if not _classify(message):
        return raised
    flag = flag_raise(
        conversation_id=message.conversation_id,
        reason=Reason.NON_ANSWER,
        message=message,
        evidence=(message.evidence or {}).get("detector", {}),
    )
    raised += [flag] if flag else []
    policy = policy_for(message.conversation.service)
    replies = list(
        Message.objects.filter(
            conversation_id=message.conversation_id, role=Role.AI, seq__lte=message.seq
        ).order_by("-seq")[: max(policy.repeated_failures_limit, 1)]
    )
    streak = detectors.detect_repeated_failures(
        [_classify(m) for m in reversed(replies)], limit=max(policy.repeated_failures_limit, 1)
    )
    if streak.matched:
        flag = flag_raise(
            conversation_id=message.conversation_id,
            reason=Reason.REPEATED_FAILURES,
            message=message,
            evidence={"rule": streak.rule, **streak.evidence},
        )
        raised += [flag] if flag else []
    return raised


def messages_unscored(*, older_than_seconds: int = 30, batch: int = 200) -> dict[str, int]:
    """Score what a lost task left unscored (broker down, worker killed); returns counts."""
    from datetime import timedelta

    from django.utils import timezone

    cutoff = timezone.now() - timedelta(seconds=older_than_seconds)
    open_recent = Message.objects.filter(
        conversation__status=Status.OPEN, created_at__lt=cutoff
    ).order_by("created_at")
    users = list(
        open_recent.filter(role=Role.USER, sentiment__isnull=True).values_list("pk", flat=True)[
            :batch
        ]
    )
    replies = list(
        open_recent.filter(role=Role.AI, non_answer__isnull=True).values_list("pk", flat=True)[
            :batch
        ]
    )
    for pk in users:
        if question := message_with_policy(pk):
            message_score_sentiment(message=question)
    for pk in replies:
        if reply := message_with_policy(pk):
            message_check_answer(message=reply)
    return {"sentiment": len(users), "non_answer": len(replies)}
