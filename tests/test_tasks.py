"""The conversation engine's Celery tasks: idempotent, ids in, safe to run twice."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest

from conversations import services, tasks
from conversations.models import Conversation, Message, Role
from escalation.models import EscalationPolicy
from tests.conftest import chatting_visitors, record_compilations

pytestmark = pytest.mark.django_db


@pytest.fixture
def question(service):
    visitor, _ = services.visitor_identify(service=service, token=None)
    # Outside the captured on-commit callbacks the reply task is not run: we run it by hand.
    return services.conversation_post_customer_message(
        visitor=visitor, text="How do I reset my password?", client_id="q"
    ).message


def run_reply(message: Message) -> int | None:
    conversation = Conversation.objects.get(pk=message.conversation_id)
    return tasks.generate_ai_reply.apply(
        args=[str(conversation.pk), message.pk, conversation.ai_epoch]
    ).get()


def test_the_reply_task_answers_once_however_often_it_runs(question):
    assert run_reply(question) == 2
    assert run_reply(question) is None
    assert Message.objects.filter(role=Role.AI).count() == 1


def test_the_reply_task_for_a_deleted_message_does_nothing(question):
    conversation_id = str(question.conversation_id)
    message_id = question.pk
    Message.objects.filter(pk=message_id).delete()
    assert tasks.generate_ai_reply.apply(args=[conversation_id, message_id, 0]).get() is None


def test_a_reply_task_from_before_a_pause_posts_nothing(question, agent):
    epoch = Conversation.objects.get(pk=question.conversation_id).ai_epoch
    services.conversation_take_over(conversation=question.conversation, agent=agent)
    services.conversation_resume_ai(conversation=question.conversation, user=agent)
    result = tasks.generate_ai_reply.apply(args=[str(question.conversation_id), question.pk, epoch])
    assert result.get() is None
    assert not Message.objects.filter(role=Role.AI).exists()


def test_dispatch_logs_a_broker_that_is_down_instead_of_failing_the_request(
    question, caplog, monkeypatch
):
    from kombu.exceptions import OperationalError

    def broker_down(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    caplog.set_level("ERROR", logger="conversations.tasks")
    monkeypatch.setattr(tasks.close_idle_conversations, "apply_async", broker_down)
    tasks.dispatch(tasks.close_idle_conversations)
    assert "could not enqueue conversations.tasks.close_idle_conversations" in caplog.text


def test_close_idle_conversations_closes_nothing_fresh(question):
    assert tasks.close_idle_conversations.apply().get() == 0


def test_a_reply_lost_with_the_broker_is_sent_by_the_sweep(service, settings):
    import time_machine
    from django.utils import timezone

    visitor, _ = services.visitor_identify(service=service, token=None)
    # Outside captured on-commit callbacks the reply task never runs: as if it were lost.
    question = services.conversation_post_customer_message(
        visitor=visitor, text="Where can I download my invoices?", client_id="lost"
    ).message
    assert tasks.answer_unanswered_messages.apply().get() == 0  # too fresh to call lost
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        assert tasks.answer_unanswered_messages.apply().get() == 1
    reply = Message.objects.get(conversation=question.conversation, role=Role.AI)
    assert "Invoices" in reply.text
    with time_machine.travel(timezone.now() + timedelta(seconds=60)):
        assert tasks.answer_unanswered_messages.apply().get() == 0


def test_the_sweep_leaves_paused_and_human_only_conversations_alone(service, agent):
    import time_machine
    from django.utils import timezone

    visitor, _ = services.visitor_identify(service=service, token=None)
    question = services.conversation_post_customer_message(
        visitor=visitor, text="hello", client_id="p"
    ).message
    services.conversation_take_over(conversation=question.conversation, agent=agent)
    services.conversation_post_customer_message(visitor=visitor, text="still there?", client_id="q")
    with time_machine.travel(timezone.now() + timedelta(seconds=30)):
        assert tasks.answer_unanswered_messages.apply().get() == 0


def ask(service, text: str) -> Message:
    visitor, _ = services.visitor_identify(service=service, token=None)
    return services.conversation_post_customer_message(
        visitor=visitor, text=text, client_id="k"
    ).message


def answer_to(message: Message) -> Message:
    run_reply(message)
    return Message.objects.filter(conversation_id=message.conversation_id, role=Role.AI).last()


def test_replies_read_the_knowledge_once_until_an_admin_changes_it(service):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    first = ask(service, "How do I get a refund?")
    answer_to(first)
    second = services.conversation_post_customer_message(
        visitor=first.conversation.visitor, text="Where can I download my invoices?", client_id="2"
    ).message
    with CaptureQueriesContext(connection) as read:
        reply = answer_to(second)
    assert reply.text.startswith("Invoices are under")
    assert reply.specialist.name == "Billing"
    tables = [(q["sql"].partition(" FROM ")[2].split() or [""])[0] for q in read.captured_queries]
    assert '"conversations_knowledgeentry"' not in tables
    assert '"conversations_specialist"' not in tables


def test_an_edited_entry_is_answered_with_its_new_text(service):
    from conversations.models import KnowledgeEntry

    answer_to(ask(service, "How do I get a refund?"))
    entry = KnowledgeEntry.objects.get(service=service, question__startswith="How do I get a")
    entry.answer = "Refunds now take one click under Billing."
    entry.save()
    assert answer_to(ask(service, "How do I get a refund?")).text == entry.answer


def test_an_entry_moved_or_deleted_is_no_longer_known_where_it_was(service):
    from conversations.ai.knowledge_base import NON_ANSWER_TEXT
    from conversations.models import KnowledgeEntry, Specialist
    from tests.conftest import make_service

    other = make_service(slug="other", name="Other")
    answer_to(ask(service, "How do I get a refund?"))
    answer_to(ask(other, "How do I get a refund?"))
    KnowledgeEntry.objects.filter(service=other, question__startswith="How do I get a").delete()
    moved = KnowledgeEntry.objects.get(service=service, question__startswith="How do I get a")
    moved.service, moved.specialist = other, None
    moved.save()
    assert answer_to(ask(service, "How do I get a refund?")).text == NON_ANSWER_TEXT
    assert answer_to(ask(other, "How do I get a refund?")).text == moved.answer

    Specialist.objects.filter(service=service, name="Billing").delete()
    invoices = answer_to(ask(service, "Where can I download my invoices?"))
    assert invoices.text.startswith("Invoices are under")
    assert invoices.specialist.name == "Tech Support"  # the service's default now


@pytest.mark.parametrize("backend, frames", [("knowledge_base", []), ("openai", [True, False])])
def test_typing_frames_surround_only_replies_that_take_a_while(
    question, settings, monkeypatch, backend, frames
):
    from conversations import protocol
    from conversations.ai import AIReply, OpenAIResponder

    sent = []
    monkeypatch.setattr(protocol, "send_typing", lambda conversation_id, on: sent.append(on))
    monkeypatch.setattr(
        OpenAIResponder,
        "reply",
        lambda self, request: AIReply("From the model.", None, 0.9, False, {}),
    )
    settings.HANDOFF_AI_BACKEND = backend
    assert run_reply(question) == 2
    assert sent == frames


def test_a_reply_to_a_question_the_customer_followed_up_is_dropped(question):
    from conversations.models import AuditEvent

    follow_up = services.conversation_post_customer_message(
        visitor=question.conversation.visitor,
        text="Where can I download my invoices?",
        client_id="f",
    ).message
    assert run_reply(question) is None
    dropped = AuditEvent.objects.get(action="ai_reply_dropped")
    assert dropped.detail["reason"] == "superseded"
    assert run_reply(follow_up) == 3


def test_no_reply_is_generated_for_a_question_the_customer_followed_up(question, monkeypatch):
    """A worker that fell behind does not spend the responder on answers nobody waits for."""
    from conversations.models import AuditEvent

    follow_up = services.conversation_post_customer_message(
        visitor=question.conversation.visitor, text="And my invoices?", client_id="f"
    ).message
    asked = []
    monkeypatch.setattr(tasks, "get_responder", lambda: asked.append(1))
    assert run_reply(question) is None
    assert asked == []
    assert AuditEvent.objects.get(action="ai_reply_dropped").detail == {
        "reply_to": question.seq,
        "reason": "superseded",
    }
    monkeypatch.undo()
    assert run_reply(follow_up) == 3


@pytest.mark.parametrize("mode", ["human_supported", "human_only"])
def test_each_customer_message_costs_one_task_whether_or_not_the_ai_answers(
    service, monkeypatch, django_capture_on_commit_callbacks, mode
):
    dispatched = []
    monkeypatch.setattr(tasks, "dispatch", lambda task, *args: dispatched.append(task.name))
    service.mode = mode
    service.save()
    visitor, _ = services.visitor_identify(service=service, token=None)
    with django_capture_on_commit_callbacks(execute=True):
        services.conversation_post_customer_message(
            visitor=visitor, text="How do I reset my password?", client_id="one"
        )
    assert dispatched == ["conversations.tasks.generate_ai_reply"]


def test_an_upset_customer_is_handed_off_before_the_ai_would_answer(service):
    from escalation.models import Flag

    visitor, _ = services.visitor_identify(service=service, token=None)
    message = services.conversation_post_customer_message(
        visitor=visitor,
        text="This is awful, I hate this terrible useless service. Worst support ever!",
        client_id="upset",
    ).message
    assert run_reply(message) is None
    conversation = Conversation.objects.get(pk=message.conversation_id)
    assert conversation.ai_paused and conversation.waiting_since is not None
    assert Flag.objects.filter(conversation=conversation, reason="negative_sentiment").exists()
    assert not Message.objects.filter(conversation=conversation, role=Role.AI).exists()


# A read of messages by their ids (compiled, an array's `= ANY`; or as Django builds it).
MESSAGES_BY_ID = re.compile(r'"conversations_message"."id" (IN|= ANY)')


def test_a_reply_task_reads_its_question_once(question):
    """The mood check and the answer share one read of the message."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    with CaptureQueriesContext(connection) as task:
        assert run_reply(question) == 2
    reads = [q["sql"] for q in task.captured_queries if q["sql"].startswith("SELECT")]
    by_id = [sql for sql in reads if MESSAGES_BY_ID.search(sql)]
    assert len(by_id) == 1, reads
    question.refresh_from_db()
    assert question.sentiment is not None  # the mood was scored on the message read once


def test_a_batchs_reads_are_compiled_once_per_process_whatever_its_size(service, monkeypatch):
    """The worker's reads of a batch (its messages, moods, transcripts, the conversations'
    lock) send the same statements every time: Django compiles none of them again."""

    def turns(n: int) -> list:
        visitors = chatting_visitors(service, n)
        Message.objects.update(sentiment=None)  # to be scored again
        posted = services.conversation_post_customer_messages(
            [services.CustomerPost(v, "Where can I download my invoices?", "q") for v in visitors]
        )
        Message.objects.filter(role=Role.AI, seq=4).delete()  # their answers: to be given again
        return [[str(p.message.conversation_id), p.message.pk, 0] for p in posted]

    EscalationPolicy.objects.get_or_create(service=service)
    first, second = turns(2), turns(3)
    assert None not in tasks.generate_ai_replies.apply(args=[first]).get()  # compiled here
    compiled = record_compilations(monkeypatch)

    assert None not in tasks.generate_ai_replies.apply(args=[second]).get()
    monkeypatch.undo()

    queries = [compiler.query for compiler in compiled]
    reads_of_the_turns = [str(q) for q in queries if q.model in (Message, Conversation)]
    assert reads_of_the_turns == []


def test_a_batch_reads_and_scores_its_questions_once_whatever_its_size(service):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def reads(n: int) -> dict[str, int]:
        visitors = chatting_visitors(service, n)
        Message.objects.update(sentiment=0.0)  # the first messages' own turns scored them
        posted = services.conversation_post_customer_messages(
            [
                services.CustomerPost(v, "Where can I download my invoices?", f"q{v.pk}")
                for v in visitors
            ]
        )
        turns = [[str(p.message.conversation_id), p.message.pk, 0] for p in posted]
        with CaptureQueriesContext(connection) as batch:
            assert None not in tasks.generate_ai_replies.apply(args=[turns]).get()
        selects = [q["sql"] for q in batch.captured_queries if q["sql"].startswith("SELECT")]
        return {
            "questions": sum(bool(MESSAGES_BY_ID.search(sql)) for sql in selects),
            "policies": sum(
                sql.split(" FROM ")[1].startswith('"escalation_escalationpolicy"')
                for sql in selects
            ),
            "transcripts": sum(
                '"conversations_message"."text" AS "text"' in sql for sql in selects
            ),
            "mood windows": sum("ROW_NUMBER()" in sql for sql in selects),
            "score updates": sum(
                'UPDATE "conversations_message" SET "sentiment"' in q["sql"]
                for q in batch.captured_queries
            ),
        }

    EscalationPolicy.objects.get_or_create(service=service)  # as every service has, once used
    small, large = reads(2), reads(6)
    assert (
        small
        == large
        == {
            "questions": 1,
            "policies": 0,
            "transcripts": 1,
            "mood windows": 1,
            "score updates": 1,
        }
    )


def test_the_batch_task_takes_each_turn_in_order_and_answers_the_last_question(service):
    visitors = chatting_visitors(service, 2)  # a batch adds to open conversations
    posted = services.conversation_post_customer_messages(
        [
            services.CustomerPost(visitors[0], "How do I reset my password?", "a"),
            services.CustomerPost(visitors[1], "Where can I download my invoices?", "b"),
            services.CustomerPost(visitors[1], "I need an invoice", "c"),
        ]
    )
    turns = [[str(p.message.conversation_id), p.message.pk, 0] for p in posted]

    assert tasks.generate_ai_replies.apply(args=[turns]).get() == [3, None, 4]
    # Delivered again (a worker killed mid-batch): nothing is answered twice.
    assert tasks.generate_ai_replies.apply(args=[turns]).get() == [None, None, None]
    answers = Message.objects.filter(role=Role.AI).order_by("seq")
    assert [(m.conversation.visitor_id, m.seq) for m in answers] == [
        (visitors[0].pk, 3),
        (visitors[1].pk, 4),
    ]


def test_a_turn_of_a_batch_that_fails_transiently_is_retried_on_its_own(service, monkeypatch):
    from django.db import OperationalError

    visitors = chatting_visitors(service, 2)  # a batch adds to open conversations
    posted = services.conversation_post_customer_messages(
        [
            services.CustomerPost(visitors[0], "How do I reset my password?", "a"),
            services.CustomerPost(visitors[1], "Where can I download my invoices?", "b"),
        ]
    )
    turns = [[str(p.message.conversation_id), p.message.pk, 0] for p in posted]
    answer_needed = tasks._answer_needed

    def first_fails(message, epoch):
        if message.pk == posted[0].message.pk:
            raise OperationalError("could not serialize access")
        return answer_needed(message, epoch)

    later = []
    monkeypatch.setattr(tasks, "_answer_needed", first_fails)
    monkeypatch.setattr(
        tasks, "dispatch_later", lambda task, *args, countdown: later.append((task, args))
    )

    assert tasks.generate_ai_replies.apply(args=[turns]).get() == [None, 3]
    assert later == [(tasks.generate_ai_reply, tuple(turns[0]))]


def test_a_batch_for_a_slow_responder_becomes_a_task_per_turn(service, monkeypatch):
    class RemoteModel:
        typing_indicator = True

        def reply(self, request):
            raise AssertionError("not answered in the batch")

    dispatched = []
    monkeypatch.setattr(tasks, "get_responder", RemoteModel)
    monkeypatch.setattr(tasks, "dispatch", lambda task, *args: dispatched.append((task, args)))
    turns = [["c1", 1, 0], ["c2", 2, 0]]

    assert tasks.generate_ai_replies.apply(args=[turns]).get() == [None, None]
    assert dispatched == [
        (tasks.generate_ai_reply, ("c1", 1, 0)),
        (tasks.generate_ai_reply, ("c2", 2, 0)),
    ]


def test_each_turn_of_a_batch_gets_the_transcript_up_to_its_own_message(service, monkeypatch):
    from conversations import selectors

    monkeypatch.setattr(selectors, "AI_CONTEXT_MESSAGES", 3)
    first, second = chatting_visitors(service, 2)
    for n in range(2, 6):  # the first conversation: Hi, then m2..m5, with nothing answered
        services.conversation_post_customer_message(visitor=first, text=f"m{n}", client_id=str(n))
    one = Conversation.objects.get(visitor=first)
    other = Conversation.objects.get(visitor=second)

    def message(conversation, seq):
        return Message.objects.select_related("conversation__service").get(
            conversation=conversation, seq=seq
        )

    requests = selectors.ai_requests_for([message(one, 5), message(other, 1), message(one, 2)])

    assert [[turn.text for turn in r.transcript] for r in requests] == [
        ["m3", "m4", "m5"],
        ["Hi"],
        ["Hi", "m2"],
    ]
    assert requests[0] == selectors.ai_requests_for([message(one, 5)])[0]


def test_each_message_of_a_batch_is_judged_on_its_own_mood_window(service, monkeypatch):
    from escalation import services as escalation

    monkeypatch.setattr(escalation, "SENTIMENT_LOOKBACK", 3)
    first, second = chatting_visitors(service, 2)
    moods = [
        "Great, thanks!",
        "This is awful.",
        "Terrible, useless service.",
        "Fine.",
        "I hate it.",
    ]
    for n, text in enumerate(moods, start=2):  # the first conversation: Hi, then seqs 2..6
        services.conversation_post_customer_message(visitor=first, text=text, client_id=str(n))
    batch = [m for m in Message.objects.filter(role=Role.USER).order_by("conversation", "seq")]
    by_seq = {(m.conversation.visitor_id, m.seq): m for m in batch}
    judged = [by_seq[(first.pk, 3)], by_seq[(second.pk, 1)], by_seq[(first.pk, 6)]]

    escalation._score_all(judged)
    windows = escalation._mood_windows(judged)

    def alone(message):  # what one message's own query would read
        recent = Message.objects.filter(
            conversation=message.conversation, role=Role.USER, seq__lte=message.seq
        ).order_by("-seq")[:3]
        return [escalation._score(m) for m in reversed(recent)]

    assert [windows[m.pk] for m in judged] == [alone(m) for m in judged]
    assert [len(windows[m.pk]) for m in judged] == [3, 1, 3]


def test_the_ai_replies_are_stored_with_their_non_answer_verdict(
    service, django_capture_on_commit_callbacks
):
    visitors = chatting_visitors(service, 2)
    posted = services.conversation_post_customer_messages(
        [
            services.CustomerPost(visitors[0], "How do I reset my password?", "a"),
            services.CustomerPost(visitors[1], "Can you sing me a song about cats?", "b"),
        ]
    )
    turns = [[str(p.message.conversation_id), p.message.pk, 0] for p in posted]
    with django_capture_on_commit_callbacks(execute=False):  # nothing after the commit
        tasks.generate_ai_replies.apply(args=[turns]).get()
    stored = dict(
        Message.objects.filter(role=Role.AI)
        .order_by("conversation__visitor_id")
        .values_list("conversation__visitor_id", "non_answer")
    )
    assert stored == {visitors[0].pk: False, visitors[1].pk: True}
