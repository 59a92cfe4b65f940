"""The conversation state machine (SPEC §3), one behaviour per test."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
import time_machine
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import services
from conversations.models import AuditAction, AuditEvent, Conversation, Message, Mode, Role, Status
from tests.conftest import make_service, sql_verb

pytestmark = pytest.mark.django_db


@pytest.fixture
def visitor(service):
    visitor, _ = services.visitor_identify(service=service, token=None)
    return visitor


@pytest.fixture
def say(visitor, django_capture_on_commit_callbacks):
    """Post a customer message and run what follows the commit (the AI's reply, eagerly)."""

    def say(text: str, client_id: str | None = None, who=None):
        with django_capture_on_commit_callbacks(execute=True):
            posted = services.conversation_post_customer_message(
                visitor=who or visitor, text=text, client_id=client_id or str(uuid.uuid4())
            )
        return posted.message

    return say


@pytest.fixture
def run_commit(django_capture_on_commit_callbacks):
    def run(fn, **kwargs):
        with django_capture_on_commit_callbacks(execute=True):
            return fn(**kwargs)

    return run


def transcript(conversation: Conversation) -> list[tuple[int, str, str]]:
    return list(conversation.messages.order_by("seq").values_list("seq", "role", "text"))


def test_first_message_starts_a_conversation_and_the_ai_answers_from_knowledge(say, service):
    message = say("I forgot my password, how do I reset it?")
    conversation = message.conversation
    conversation.refresh_from_db()
    assert conversation.opening_question == "I forgot my password, how do I reset it?"
    assert conversation.status == Status.OPEN
    rows = transcript(conversation)
    assert [(seq, role) for seq, role, _ in rows] == [(1, "user"), (2, "ai")]
    assert "Forgot password" in rows[1][2]
    reply = conversation.messages.get(seq=2)
    assert reply.specialist.name == "Tech Support"
    assert reply.non_answer is False
    assert conversation.message_count == 2


def test_the_ai_routes_to_the_specialist_of_the_answer(say):
    message = say("can I have my money back please")
    conversation = Conversation.objects.get(pk=message.conversation_id)
    assert conversation.specialist.name == "Billing"
    assert AuditEvent.objects.filter(
        conversation=conversation, action=AuditAction.SPECIALIST_CHANGED
    ).exists()


def test_the_ai_gives_an_honest_non_answer_when_unsure(say):
    message = say("What's the weather like in Paris tomorrow?")
    reply = message.conversation.messages.get(seq=2)
    assert reply.role == Role.AI
    assert reply.non_answer is True
    assert reply.confidence is not None


def test_repeating_a_client_id_stores_nothing_new(say, visitor):
    first = say("Hello there", client_id="c-1")
    again = services.conversation_post_customer_message(
        visitor=visitor, text="Hello there", client_id="c-1"
    )
    assert again.created is False
    assert again.message.pk == first.pk
    assert Message.objects.filter(role=Role.USER).count() == 1


def test_a_message_in_an_open_conversation_is_stored_in_five_plain_statements(say, visitor):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    say("Hello there")
    with CaptureQueriesContext(connection) as stored:
        services.conversation_post_customer_message(
            visitor=visitor, text="Where can I download my invoices?", client_id="c-2"
        )
    statements = [q["sql"] for q in stored.captured_queries if "SAVEPOINT" not in q["sql"]]
    # Lock the open conversation, check for a resend, insert, count, audit.
    assert [sql_verb(sql) for sql in statements] == [
        "SELECT",
        "SELECT",
        "INSERT",
        "UPDATE",
        "INSERT",
    ]
    # Only the lock sorts (locks are taken in id order); nothing else needs an order.
    assert [sql for sql in statements if "ORDER BY" in sql] == statements[:1]
    assert "FOR UPDATE" in statements[0]


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", services.EmptyText),
        ("   \n\t ", services.EmptyText),
        ("\x00\x00", services.EmptyText),
        (None, services.EmptyText),
        (42, services.EmptyText),
        ("x" * 4001, services.TextTooLong),
    ],
)
def test_bad_text_is_refused_and_nothing_is_stored(visitor, text, error):
    with pytest.raises(error):
        services.conversation_post_customer_message(visitor=visitor, text=text, client_id="c")
    assert not Message.objects.exists()
    assert not Conversation.objects.exists()


def test_text_of_exactly_4000_characters_is_accepted(say):
    assert len(say("y" * 4000).text) == 4000


def test_lone_surrogates_are_replaced_not_stored(say):
    message = say("hi \ud800 there 😀")
    assert message.text == "hi \ufffd there 😀"


def test_a_visitor_has_one_open_conversation_per_service(say):
    first = say("one")
    second = say("two")
    assert first.conversation_id == second.conversation_id
    assert Conversation.objects.count() == 1


def test_take_over_claims_pauses_and_tells_the_customer(say, agent, run_commit):
    conversation = say("How do I reset my password?").conversation
    conversation = run_commit(
        services.conversation_take_over, conversation=conversation, agent=agent
    )
    conversation.refresh_from_db()
    assert conversation.claimed_by == agent
    assert conversation.ai_paused is True
    assert conversation.waiting_since is None
    last = conversation.messages.order_by("-seq").first()
    assert (last.role, last.text) == ("system", "Alice has joined the conversation.")
    assert AuditEvent.objects.filter(
        conversation=conversation, action=AuditAction.TAKEN_OVER, actor=agent
    ).exists()


def test_a_second_agent_cannot_take_over_and_learns_who_holds_it(say, agent, agent2):
    conversation = say("help").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    with pytest.raises(services.AlreadyClaimed) as excinfo:
        services.conversation_take_over(conversation=conversation, agent=agent2)
    assert excinfo.value.code == "already_claimed"
    assert "Alice" in excinfo.value.detail


def test_a_take_over_of_a_held_conversation_is_refused_on_one_read(say, agent, agent2):
    """The losers of a race after the winner's commit: no transaction, no lock wait."""
    conversation = say("help").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    with CaptureQueriesContext(connection) as queries:
        with pytest.raises(services.AlreadyClaimed):
            services.conversation_take_over(conversation=conversation, agent=agent2)
        services.conversation_take_over(conversation=conversation, agent=agent)
    assert [sql_verb(q["sql"]) for q in queries.captured_queries] == ["SELECT", "SELECT"]


def test_taking_over_twice_as_the_same_agent_changes_nothing(say, agent):
    conversation = say("help").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    count = Message.objects.count()
    services.conversation_take_over(conversation=conversation, agent=agent)
    assert Message.objects.count() == count


def test_agents_cannot_take_over_in_ai_only_mode(db, agent, django_capture_on_commit_callbacks):
    service = make_service(slug="bot", mode=Mode.AI_ONLY)
    visitor, _ = services.visitor_identify(service=service, token=None)
    conversation = services.conversation_post_customer_message(
        visitor=visitor, text="hi", client_id="1"
    ).message.conversation
    with pytest.raises(services.ModeDisallows):
        services.conversation_take_over(conversation=conversation, agent=agent)


def test_a_closed_conversation_still_held_answers_the_mode_first(say, service, agent, agent2):
    """The same answer as before any claim: AI Only mode is checked before the status."""
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.conversation_close(conversation=conversation, user=agent)
    services.service_set_mode(service=service, mode=Mode.AI_ONLY, user=None)
    conversation.refresh_from_db()
    with pytest.raises(services.ModeDisallows):
        services.conversation_take_over(conversation=conversation, agent=agent2)


def test_a_closed_conversation_cannot_be_taken_over(say, agent, visitor):
    conversation = say("hi").conversation
    services.conversation_end_by_customer(visitor=visitor)
    with pytest.raises(services.ConversationClosed):
        services.conversation_take_over(conversation=conversation, agent=agent)


def test_only_the_claiming_agent_can_send(say, agent, agent2):
    conversation = say("hi").conversation
    with pytest.raises(services.NotClaimer):
        services.conversation_send_as_agent(conversation=conversation, agent=agent, text="Hi!")
    services.conversation_take_over(conversation=conversation, agent=agent)
    with pytest.raises(services.NotClaimer):
        services.conversation_send_as_agent(conversation=conversation, agent=agent2, text="Me too")
    message = services.conversation_send_as_agent(
        conversation=conversation, agent=agent, text="Hi, I'm Alice."
    )
    assert (message.role, message.author) == (Role.HUMAN, agent)


def test_the_ai_stays_silent_while_a_human_holds_the_conversation(say, agent):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    before = conversation.messages.filter(role=Role.AI).count()
    say("How do I reset my password?")
    assert conversation.messages.filter(role=Role.AI).count() == before


def test_a_reply_generated_before_a_take_over_is_dropped(say, agent, visitor):
    question = say("I forgot my password")
    conversation = Conversation.objects.get(pk=question.conversation_id)
    # Simulate the AI still thinking about a newer question when the agent steps in.
    pending = services.conversation_post_customer_message(
        visitor=visitor, text="And how do I get a refund?", client_id="late"
    ).message
    epoch = Conversation.objects.get(pk=conversation.pk).ai_epoch
    services.conversation_take_over(conversation=conversation, agent=agent)
    posted = services.conversation_post_ai_message(
        conversation_id=conversation.pk,
        reply_to=pending,
        epoch=epoch,
        text="Refunds…",
        specialist=None,
    )
    assert posted is None
    assert conversation.messages.filter(seq__gt=pending.seq, role=Role.AI).count() == 0
    assert AuditEvent.objects.filter(action=AuditAction.AI_REPLY_DROPPED).exists()


def test_resume_ai_answers_from_the_next_message_not_the_backlog(say, agent, run_commit):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    say("How do I reset my password?")  # backlog, while the human holds it
    ai_before = conversation.messages.filter(role=Role.AI).count()
    run_commit(services.conversation_resume_ai, conversation=conversation, user=agent)
    conversation.refresh_from_db()
    assert (conversation.ai_paused, conversation.claimed_by) == (False, None)
    assert conversation.messages.filter(role=Role.AI).count() == ai_before
    assert conversation.messages.order_by("-seq").first().text == services.TEXT_AI_BACK
    say("Where can I download my invoices?")
    last = conversation.messages.order_by("-seq").first()
    assert last.role == Role.AI
    assert "Invoices" in last.text


def test_release_keeps_the_ai_paused_and_lets_a_colleague_take_over(say, agent, agent2):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.conversation_release(conversation=conversation, user=agent)
    conversation.refresh_from_db()
    assert conversation.claimed_by is None
    assert conversation.ai_paused is True
    assert conversation.waiting_since is not None
    services.conversation_take_over(conversation=conversation, agent=agent2)
    conversation.refresh_from_db()
    assert conversation.claimed_by == agent2


def test_another_agent_cannot_release_resume_or_close_but_an_admin_can(say, agent, agent2, admin):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    for action in (
        services.conversation_release,
        services.conversation_resume_ai,
        services.conversation_close,
    ):
        with pytest.raises(services.AlreadyClaimed):
            action(conversation=conversation, user=agent2)
    services.conversation_close(conversation=conversation, user=admin)
    conversation.refresh_from_db()
    assert conversation.status == Status.CLOSED


def test_closing_records_when_and_a_new_message_starts_a_new_conversation(say, agent, visitor):
    first = say("hi").conversation
    services.conversation_take_over(conversation=first, agent=agent)
    services.conversation_close(conversation=first, user=agent)
    first.refresh_from_db()
    assert first.status == Status.CLOSED and first.closed_at is not None
    second = say("hello again").conversation
    assert second.pk != first.pk
    assert second.opening_question == "hello again"


def test_idle_conversations_are_closed_after_the_configured_minutes(say, settings):
    settings.CONVERSATION_IDLE_MINUTES = 30
    conversation = say("hi").conversation
    with time_machine.travel(timezone.now() + timedelta(minutes=29)):
        assert services.conversations_close_idle() == 0
    with time_machine.travel(timezone.now() + timedelta(minutes=31)):
        assert services.conversations_close_idle() == 1
    conversation.refresh_from_db()
    assert conversation.status == Status.CLOSED
    assert AuditEvent.objects.filter(
        conversation=conversation, action=AuditAction.CLOSED, actor_kind="system"
    ).exists()


def test_human_only_conversations_get_no_automated_words_and_wait(
    db, django_capture_on_commit_callbacks
):
    service = make_service(slug="people", mode=Mode.HUMAN_ONLY)
    visitor, _ = services.visitor_identify(service=service, token=None)
    with django_capture_on_commit_callbacks(execute=True):
        posted = services.conversation_post_customer_message(
            visitor=visitor, text="How do I reset my password?", client_id="1"
        )
    conversation = Conversation.objects.get(pk=posted.message.conversation_id)
    assert transcript(conversation) == [(1, "user", "How do I reset my password?")]
    assert conversation.ai_paused is True
    assert conversation.waiting_since is not None


def test_asking_for_a_human_hands_off_in_human_supported_mode(say, visitor, run_commit):
    conversation = say("hi").conversation
    run_commit(services.conversation_request_human, visitor=visitor)
    conversation.refresh_from_db()
    assert conversation.ai_paused is True
    assert conversation.waiting_since is not None
    assert conversation.messages.order_by("-seq").first().text == services.TEXT_HANDOFF
    say("are you there?")
    assert conversation.messages.order_by("-seq").first().role == Role.USER


def test_asking_for_a_human_in_ai_only_mode_gets_a_polite_no_without_a_pause(
    db, django_capture_on_commit_callbacks
):
    service = make_service(slug="bot", mode=Mode.AI_ONLY)
    visitor, _ = services.visitor_identify(service=service, token=None)
    conversation = services.conversation_request_human(visitor=visitor)
    conversation.refresh_from_db()
    assert conversation.ai_paused is False
    assert transcript(conversation)[-1][1:] == ("system", services.TEXT_NO_HUMANS)


def test_an_unanswered_handoff_resumes_the_ai_when_the_wait_runs_out(say, visitor, service):
    service.handoff_wait_seconds = 60
    service.save()
    conversation = say("hi").conversation
    services.conversation_request_human(visitor=visitor)
    assert services.conversation_expire_wait(conversation_id=conversation.pk) is False
    later = timezone.now() + timedelta(seconds=61)
    assert services.conversation_expire_wait(conversation_id=conversation.pk, now=later) is True
    conversation.refresh_from_db()
    assert conversation.ai_paused is False
    assert transcript(conversation)[-1][2] == services.TEXT_WAIT_EXPIRED


def test_a_wait_of_zero_waits_forever(say, visitor, service):
    service.handoff_wait_seconds = 0
    service.save()
    conversation = say("hi").conversation
    services.conversation_request_human(visitor=visitor)
    far = timezone.now() + timedelta(days=3)
    assert services.conversation_expire_wait(conversation_id=conversation.pk, now=far) is False


def test_switching_to_human_only_pauses_open_conversations_and_tells_customers(say, service, admin):
    conversation = say("hi").conversation
    services.service_set_mode(service=service, mode=Mode.HUMAN_ONLY, user=admin)
    conversation.refresh_from_db()
    assert conversation.ai_paused is True and conversation.waiting_since is not None
    assert transcript(conversation)[-1][2] == services.TEXT_HUMAN_ONLY
    assert AuditEvent.objects.filter(action=AuditAction.MODE_CHANGED, actor=admin).exists()


def test_switching_to_ai_only_releases_and_resumes_every_conversation(say, service, agent, admin):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.service_set_mode(service=service, mode=Mode.AI_ONLY, user=admin)
    conversation.refresh_from_db()
    assert (conversation.claimed_by, conversation.ai_paused) == (None, False)
    assert transcript(conversation)[-1][2] == services.TEXT_AI_BACK


def test_switching_to_human_supported_forces_nothing(say, service, agent, admin):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.service_set_mode(service=service, mode=Mode.HUMAN_ONLY, user=admin)
    services.service_set_mode(service=service, mode=Mode.HUMAN_SUPPORTED, user=admin)
    conversation.refresh_from_db()
    assert conversation.claimed_by == agent and conversation.ai_paused is True


def test_set_all_services_applies_one_mode_everywhere(service, admin):
    make_service(slug="sales", name="Sales")
    services.services_set_mode(mode=Mode.HUMAN_ONLY, user=admin)
    assert set(type(service).objects.values_list("mode", flat=True)) == {Mode.HUMAN_ONLY}


def test_an_unknown_mode_is_refused(service, admin):
    with pytest.raises(services.HandoffError):
        services.service_set_mode(service=service, mode="robots", user=admin)


def test_feedback_only_lands_on_ai_messages(say, visitor):
    say("How do I reset my password?")
    with pytest.raises(services.BadSeq):
        services.message_give_feedback(visitor=visitor, seq=1, value="down")
    with pytest.raises(services.BadSeq):
        services.message_give_feedback(visitor=visitor, seq=99, value="down")
    message = services.message_give_feedback(visitor=visitor, seq=2, value="down")
    assert message.feedback == "down"


def test_seq_is_gapless_across_every_kind_of_message(say, agent, visitor):
    conversation = say("How do I reset my password?").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.conversation_send_as_agent(conversation=conversation, agent=agent, text="Hello")
    say("thanks")
    services.conversation_resume_ai(conversation=conversation, user=agent)
    services.conversation_end_by_customer(visitor=visitor)
    seqs = [seq for seq, _, _ in transcript(conversation)]
    assert seqs == list(range(1, len(seqs) + 1))
    conversation.refresh_from_db()
    assert conversation.message_count == len(seqs)


def test_every_change_leaves_an_audit_event(say, agent, visitor):
    conversation = say("hi").conversation
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.conversation_release(conversation=conversation, user=agent)
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.conversation_resume_ai(conversation=conversation, user=agent)
    services.conversation_take_over(conversation=conversation, agent=agent)
    services.conversation_close(conversation=conversation, user=agent)
    actions = set(
        AuditEvent.objects.filter(conversation=conversation).values_list("action", flat=True)
    )
    assert {
        AuditAction.CONVERSATION_STARTED,
        AuditAction.MESSAGE_POSTED,
        AuditAction.TAKEN_OVER,
        AuditAction.RELEASED,
        AuditAction.AI_RESUMED,
        AuditAction.CLOSED,
    } <= actions


def test_each_card_change_bumps_the_version(say, agent):
    conversation = say("hi").conversation
    conversation.refresh_from_db()
    before = conversation.version
    services.conversation_take_over(conversation=conversation, agent=agent)
    conversation.refresh_from_db()
    assert conversation.version > before


def test_a_forged_or_foreign_token_makes_a_new_visitor(service, visitor):
    token = services.visitor_token_for(visitor)
    assert services.visitor_from_token(service=service, token=token) == visitor
    assert services.visitor_from_token(service=service, token=token + "x") is None
    other = make_service(slug="sales", name="Sales")
    assert services.visitor_from_token(service=other, token=token) is None
    fresh, _ = services.visitor_identify(service=other, token=token)
    assert fresh != visitor


def test_the_profile_is_kept_small_and_clean(service):
    visitor, _ = services.visitor_identify(
        service=service, token=None, profile={"name": "Sam", "email": "sam@example.com", "id": 7}
    )
    assert (visitor.name, visitor.email, visitor.profile["id"]) == ("Sam", "sam@example.com", 7)
    big, _ = services.visitor_identify(service=service, token=None, profile={"x": "y" * 10000})
    assert big.profile == {}
    odd, _ = services.visitor_identify(service=service, token=None, profile={"a": "\x00\ud800"})
    assert odd.profile == {"a": "\ufffd"}


def test_the_wait_sweep_resumes_only_handoffs_past_their_limit(say, visitor, service, agent):
    service.handoff_wait_seconds = 60
    service.save()
    conversation = say("hi").conversation
    services.conversation_request_human(visitor=visitor)
    assert services.conversations_expire_waits() == 0
    later = timezone.now() + timedelta(seconds=61)
    assert services.conversations_expire_waits(now=later) == 1
    conversation.refresh_from_db()
    assert conversation.ai_paused is False
    assert services.conversations_expire_waits(now=later) == 0
