"""Escalation rules on the real database: which flags, when, and what they set in motion."""

from __future__ import annotations

import time
import uuid
from datetime import timedelta

import pytest
from django.utils import timezone

from conversations import services
from conversations.models import Conversation, Message, Mode, Role
from escalation import services as escalation
from escalation.models import EscalationPolicy, Flag, Reason
from tests.conftest import make_service, use_broker

pytestmark = pytest.mark.django_db


@pytest.fixture
def chat(service, django_capture_on_commit_callbacks):
    """A customer who says things, with everything after each commit run at once."""
    visitor, _ = services.visitor_identify(service=service, token=None)

    def say(text: str) -> Message:
        with django_capture_on_commit_callbacks(execute=True):
            return services.conversation_post_customer_message(
                visitor=visitor, text=text, client_id=str(uuid.uuid4())
            ).message

    say.visitor = visitor
    return say


def reasons(conversation_id) -> list[str]:
    return sorted(
        Flag.objects.filter(conversation_id=conversation_id).values_list("reason", flat=True)
    )


def test_a_keyword_flags_and_hands_off_by_default(chat, service):
    EscalationPolicy.objects.create(service=service, keywords="cancel my account\nlawyer")
    message = chat("I will CANCEL my account, or call my lawyer!")
    conversation = Conversation.objects.get(pk=message.conversation_id)
    flag = Flag.objects.get(reason=Reason.KEYWORD)
    assert flag.evidence["phrase"] == "cancel my account"
    assert flag.message == message
    assert conversation.ai_paused is True
    assert Reason.AWAITING_HUMAN in reasons(conversation.pk)


def test_a_keyword_set_to_flag_only_leaves_the_ai_talking(chat, service):
    EscalationPolicy.objects.create(service=service, keywords="refund", keyword_action="flag")
    message = chat("Can I have a refund?")
    conversation = Conversation.objects.get(pk=message.conversation_id)
    assert Reason.KEYWORD in reasons(conversation.pk)
    assert conversation.ai_paused is False
    assert conversation.messages.filter(role=Role.AI).exists()


def test_asking_for_a_person_in_words_hands_off_before_the_ai_answers(chat):
    message = chat("Can I please talk to a real person?")
    conversation = Conversation.objects.get(pk=message.conversation_id)
    assert conversation.ai_paused is True
    assert not conversation.messages.filter(role=Role.AI).exists()
    assert [m.text for m in conversation.messages.filter(role=Role.SYSTEM)] == [
        services.TEXT_HANDOFF
    ]
    assert Reason.HELP_REQUESTED in reasons(conversation.pk)


def test_saying_you_need_no_human_changes_nothing(chat):
    message = chat("I don't need a human, just tell me how to reset my password")
    conversation = Conversation.objects.get(pk=message.conversation_id)
    assert conversation.ai_paused is False
    assert Reason.HELP_REQUESTED not in reasons(conversation.pk)


def test_ai_only_answers_a_request_for_a_person_without_flag_or_pause(
    db, django_capture_on_commit_callbacks
):
    service = make_service(slug="bot", mode=Mode.AI_ONLY)
    visitor, _ = services.visitor_identify(service=service, token=None)
    with django_capture_on_commit_callbacks(execute=True):
        message = services.conversation_post_customer_message(
            visitor=visitor, text="I want to speak to a human", client_id="1"
        ).message
    conversation = Conversation.objects.get(pk=message.conversation_id)
    assert conversation.ai_paused is False
    assert not Flag.objects.exists()
    assert conversation.messages.filter(text=services.TEXT_NO_HUMANS).exists()


def test_a_thumbs_down_flags_only_by_default(chat):
    question = chat("How do I reset my password?")
    services.message_give_feedback(visitor=chat.visitor, seq=2, value="down")
    escalation.feedback_received(
        message_id=question.conversation.messages.get(seq=2).pk, value="down"
    )
    conversation = Conversation.objects.get(pk=question.conversation_id)
    assert reasons(conversation.pk) == [Reason.THUMBS_DOWN]
    assert conversation.ai_paused is False


def test_human_only_conversations_wait_with_the_waiting_flag(
    db, django_capture_on_commit_callbacks
):
    service = make_service(slug="people", mode=Mode.HUMAN_ONLY)
    visitor, _ = services.visitor_identify(service=service, token=None)
    with django_capture_on_commit_callbacks(execute=True):
        message = services.conversation_post_customer_message(
            visitor=visitor, text="hello", client_id="1"
        ).message
    assert reasons(message.conversation_id) == [Reason.AWAITING_HUMAN]


def test_no_flag_is_raised_while_a_human_holds_the_conversation(chat, agent):
    conversation = chat("How do I reset my password?").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    chat("This is absolutely terrible, useless and infuriating. I hate this awful service!")
    assert reasons(conversation.pk) == []


def test_release_queues_the_conversation_again(chat, agent, django_capture_on_commit_callbacks):
    conversation = chat("How do I reset my password?").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    with django_capture_on_commit_callbacks(execute=True):
        services.conversation_release(conversation=conversation, user=agent)
    assert reasons(conversation.pk) == [Reason.AWAITING_HUMAN]


def test_the_same_detector_twice_raises_one_flag(chat):
    message = chat("What's the weather like on Mars today?")
    reply = message.conversation.messages.get(role=Role.AI)
    for _ in range(3):
        escalation.message_check_answer(message=escalation.message_with_policy(reply.pk))
    assert Flag.objects.filter(reason=Reason.NON_ANSWER).count() == 1


def test_the_wait_expiring_keeps_the_flag_for_review(chat, service):
    conversation = chat("How do I reset my password?").conversation
    services.conversation_request_human(visitor=chat.visitor)
    escalation.human_requested(conversation_id=conversation.pk, message_id=None, source="button")
    later = timezone.now() + timedelta(seconds=service.handoff_wait_seconds + 1)
    assert services.conversation_expire_wait(conversation_id=conversation.pk, now=later)
    assert Reason.HELP_REQUESTED in reasons(conversation.pk)


def test_work_lost_while_the_broker_was_down_is_caught_up_by_the_sweep(
    service, django_capture_on_commit_callbacks, settings
):
    from handoff.celery import app

    visitor, _ = services.visitor_identify(service=service, token=None)
    saved = app.conf.broker_url, app.conf.task_always_eager
    use_broker(app, "redis://127.0.0.1:1/0", eager=False)
    try:
        started = time.monotonic()
        with django_capture_on_commit_callbacks(execute=True):
            message = services.conversation_post_customer_message(
                visitor=visitor,
                text="This is absolutely terrible, useless and infuriating. I hate this!",
                client_id="down",
            ).message
        assert time.monotonic() - started < 10  # publishing never hangs the chat
    finally:
        use_broker(app, saved[0], eager=saved[1])
    message.refresh_from_db()
    assert message.sentiment is None
    assert not Flag.objects.exists()
    assert escalation.messages_unscored(older_than_seconds=0) == {"sentiment": 1, "non_answer": 0}
    assert Flag.objects.filter(reason=Reason.NEGATIVE_SENTIMENT, message=message).count() == 1
    assert escalation.messages_unscored(older_than_seconds=0) == {"sentiment": 0, "non_answer": 0}
