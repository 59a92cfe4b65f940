"""Group commit: customer messages that arrive together are stored in one transaction."""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid

import pytest
from django.db import OperationalError, connection
from django.test.utils import CaptureQueriesContext

from conversations import consumers, events, services, tasks
from conversations.models import AuditAction, AuditEvent, Conversation, Message, Mode
from conversations.services import CustomerPost
from escalation.models import Flag, Reason
from escalation.services import policy_for
from handoff.db import GroupCommit
from tests.conftest import chatting_visitors, make_service, sql_verb
from tests.widget import chatting_widgets


def new_visitors(service, n: int) -> list:
    return [services.visitor_identify(service=service, token=None)[0] for _ in range(n)]


def statements(captured: CaptureQueriesContext) -> list[str]:
    return [q["sql"] for q in captured.captured_queries if "SAVEPOINT" not in q["sql"]]


@pytest.mark.django_db
def test_each_post_of_a_batch_gets_what_posting_it_alone_gives(
    service, monkeypatch, django_capture_on_commit_callbacks
):
    a, b, c = new_visitors(service, 3)
    first = services.conversation_post_customer_message(visitor=a, text="Hello", client_id="a-1")
    services.conversation_post_customer_message(visitor=b, text="I can't log in", client_id="b-1")
    dispatched = []
    monkeypatch.setattr(tasks, "dispatch", lambda task, *args: dispatched.append((task, args)))
    with django_capture_on_commit_callbacks(execute=True):
        outcomes = services.conversation_post_customer_messages(
            [
                CustomerPost(a, "Where are my invoices?", "a-2"),  # its open conversation
                CustomerPost(b, "Still there?", "b-2"),
                CustomerPost(b, "Hello?", "b-3"),  # the next seq of the same conversation
                CustomerPost(a, "Hello", "a-1"),  # a resend of a stored message
                CustomerPost(b, "Hello?", "b-3"),  # a twin within the batch
                CustomerPost(c, "   ", "c-1"),
                CustomerPost(c, "hi", ""),
                CustomerPost(c, "Hi there", "c-2"),  # its first: the batch starts a conversation
                CustomerPost(c, "And my receipts?", "c-3"),
            ]
        )

    assert isinstance(outcomes[5], services.EmptyText)
    assert isinstance(outcomes[6], services.BadClientId)
    posted = [*outcomes[:5], *outcomes[7:]]
    assert [p.created for p in posted] == [True, True, True, False, False, True, True]
    assert [p.message.seq for p in posted] == [2, 2, 3, 1, 3, 1, 2]
    assert posted[3].message.pk == first.message.pk
    assert posted[4].message.pk == posted[2].message.pk
    conversation_a, conversation_b = posted[0].message.conversation, posted[1].message.conversation
    conversation_a.refresh_from_db()
    conversation_b.refresh_from_db()
    assert (conversation_a.message_count, conversation_b.message_count) == (2, 3)
    assert list(
        Message.objects.filter(conversation=conversation_b).order_by("seq").values_list("text")
    ) == [("I can't log in",), ("Still there?",), ("Hello?",)]
    conversation_c = Conversation.objects.get(visitor=c)
    assert (conversation_c.opening_question, conversation_c.message_count) == ("Hi there", 2)
    assert conversation_c.specialist == service.specialists.order_by("position", "name").first()
    audited = AuditEvent.objects.filter(action=AuditAction.MESSAGE_POSTED, actor_kind="visitor")
    assert sorted((e.conversation_id, e.detail["seq"]) for e in audited) == sorted(
        [
            (conversation_a.pk, 1),
            (conversation_a.pk, 2),
            (conversation_b.pk, 1),
            (conversation_b.pk, 2),
            (conversation_b.pk, 3),
            (conversation_c.pk, 1),
            (conversation_c.pk, 2),
        ]
    )
    started = AuditEvent.objects.filter(action=AuditAction.CONVERSATION_STARTED)
    assert started.filter(conversation=conversation_c, actor_kind="visitor").count() == 1
    # One task for the batch: a worker turn per stored message, none for a resend.
    assert dispatched == [
        (
            tasks.generate_ai_replies,
            ([[str(p.message.conversation_id), p.message.pk, 0] for p in posted[:3] + posted[5:]],),
        )
    ]


@pytest.mark.django_db
def test_a_batch_of_thirty_costs_the_statements_of_one(service):
    visitors = new_visitors(service, 31)
    for n, visitor in enumerate(visitors):
        services.conversation_post_customer_message(visitor=visitor, text="Hi", client_id=f"{n}")

    with CaptureQueriesContext(connection) as one:
        services.conversation_post_customer_messages([CustomerPost(visitors[0], "Hello?", "x")])
    with CaptureQueriesContext(connection) as thirty:
        outcomes = services.conversation_post_customer_messages(
            [CustomerPost(v, f"Question {n}", "x") for n, v in enumerate(visitors[1:])]
        )

    assert all(o.created for o in outcomes)
    # Lock, resend check, insert messages, count them, audit them.
    kinds = ["SELECT", "SELECT", "INSERT", "UPDATE", "INSERT"]
    assert [sql_verb(sql) for sql in statements(one)] == kinds
    assert [sql_verb(sql) for sql in statements(thirty)] == kinds
    assert Message.objects.filter(client_id="x").count() == 31


@pytest.mark.django_db
def test_first_messages_start_their_conversations_in_statements_of_one(service):
    def first_messages(n: int) -> tuple[list, list[str]]:
        visitors = new_visitors(service, n)
        with CaptureQueriesContext(connection) as captured:
            outcomes = services.conversation_post_customer_messages(
                [CustomerPost(v, f"Hello {i}", "first") for i, v in enumerate(visitors)]
            )
        return outcomes, [sql_verb(sql) for sql in statements(captured)]

    one, one_statements = first_messages(1)
    ten, ten_statements = first_messages(10)

    # Lock (nothing open), resend check, the service's first specialist, insert the
    # conversations, see which were inserted, read their services; then the messages as
    # for open conversations.
    assert ten_statements == one_statements == [
        "SELECT", "SELECT", "SELECT", "INSERT", "SELECT", "SELECT",
        "INSERT", "UPDATE", "INSERT",
    ]  # fmt: skip
    assert all(o.created and o.message.seq == 1 for o in one + ten)
    started = Conversation.objects.filter(pk__in=[o.message.conversation_id for o in ten])
    assert sorted(started.values_list("opening_question", "message_count")) == sorted(
        (f"Hello {i}", 1) for i in range(10)
    )
    assert (
        AuditEvent.objects.filter(
            action=AuditAction.CONVERSATION_STARTED, conversation__in=started
        ).count()
        == 10
    )


@pytest.mark.django_db
def test_a_batch_starts_human_only_conversations_waiting_and_announces_each(
    django_capture_on_commit_callbacks,
):
    service = make_service(slug="people", mode=Mode.HUMAN_ONLY)
    changes = []
    events.subscribe(events.ConversationChanged, changes.append)
    try:
        with django_capture_on_commit_callbacks(execute=True):
            outcomes = services.conversation_post_customer_messages(
                [CustomerPost(v, "Hello?", "1") for v in new_visitors(service, 3)]
            )
    finally:
        events.unsubscribe(events.ConversationChanged, changes.append)

    started = Conversation.objects.filter(pk__in=[o.message.conversation_id for o in outcomes])
    assert started.count() == 3
    assert all(c.ai_paused and c.waiting_since is not None for c in started)
    assert sorted((c.conversation_id, c.change, c.paused_unheld) for c in changes) == sorted(
        (c.pk, "started", True) for c in started
    )
    # Each waits for a person in the queue.
    assert Flag.objects.filter(conversation__in=started, reason=Reason.AWAITING_HUMAN).count() == 3


@pytest.mark.django_db
def test_what_subscribers_do_after_a_batch_starts_conversations_in_an_ai_mode_reads_nothing(
    service, django_capture_on_commit_callbacks
):
    visitors = new_visitors(service, 10)
    policy_for(service)  # made with its defaults the first time: now only read
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        outcomes = services.conversation_post_customer_messages(
            [CustomerPost(v, f"Hello {n}", "1") for n, v in enumerate(visitors)]
        )
    delivered = [c for c in callbacks if c.__qualname__.startswith("publish.")]

    with CaptureQueriesContext(connection) as queries:
        for callback in delivered:  # ten "started" and ten "message posted" deliveries
            callback()

    assert all(o.created for o in outcomes) and len(delivered) == 20
    # No conversation is read to see whether it waits for a person: none does.
    assert queries.captured_queries == []
    assert not Flag.objects.filter(conversation__visitor__in=visitors).exists()


@pytest.mark.django_db
def test_a_batch_the_database_refuses_is_stored_one_post_at_a_time(service, monkeypatch, caplog):
    a, b = chatting_visitors(service, 2)
    insert = services.insert_rows
    sizes = []

    def refuse_batches(rows):
        if rows and isinstance(rows[0], AuditEvent):
            sizes.append(len(rows))
            if len(rows) > 1:
                raise OperationalError("deadlock detected")
        return insert(rows)

    monkeypatch.setattr(services, "insert_rows", refuse_batches)
    with caplog.at_level(logging.WARNING, logger="conversations.services"):
        outcomes = services.conversation_post_customer_messages(
            [
                CustomerPost(a, "one", "1"),
                CustomerPost(b, "two", "2"),
                CustomerPost(a, "three", "3"),
            ]
        )

    assert sizes == [3, 1, 1, 1]
    assert all(o.created for o in outcomes)
    assert [o.message.seq for o in outcomes] == [2, 2, 3]
    assert Message.objects.count() == 5
    assert "storing each alone" in caplog.text


@pytest.mark.django_db
def test_a_post_that_fails_alone_fails_only_itself(service, monkeypatch):
    a, b = chatting_visitors(service, 2)
    insert = services.insert_rows

    def refuse_b(rows):
        if any(isinstance(m, Message) and m.conversation.visitor_id == b.pk for m in rows):
            raise OperationalError("server closed the connection")
        return insert(rows)

    monkeypatch.setattr(services, "insert_rows", refuse_b)
    outcomes = services.conversation_post_customer_messages(
        [CustomerPost(a, "one", "1"), CustomerPost(b, "two", "2")]
    )

    assert outcomes[0].created is True
    assert isinstance(outcomes[1], OperationalError)
    with pytest.raises(OperationalError):
        services.conversation_post_customer_message(visitor=b, text="two", client_id="2")
    assert list(Message.objects.exclude(text="Hi").values_list("text", flat=True)) == ["one"]


async def test_items_arriving_while_a_batch_is_stored_go_together_in_the_next():
    started, release = threading.Event(), threading.Event()
    batches = []

    def store(items):
        batches.append(list(items))
        if len(batches) == 1:
            started.set()
            release.wait(10)
        return [ValueError(item) if item == "bad" else item.upper() for item in items]

    group = GroupCommit(store, in_flight=1)
    first = asyncio.ensure_future(group.submit("a"))
    await asyncio.to_thread(started.wait, 10)
    rest = [asyncio.ensure_future(group.submit(item)) for item in ("b", "bad", "c")]
    await asyncio.to_thread(release.set)  # the three submit while the first batch runs

    assert await first == "A"
    outcomes = await asyncio.gather(*rest, return_exceptions=True)
    assert outcomes[0] == "B" and outcomes[2] == "C"
    assert isinstance(outcomes[1], ValueError)
    assert batches == [["a"], ["b", "bad", "c"]]
    # Idle again: the next item goes at once, alone.
    assert await group.submit("d") == "D"
    assert batches[-1] == ["d"]


async def test_a_batch_stuck_on_a_lock_does_not_hold_up_the_next_item():
    stuck, release = threading.Event(), threading.Event()

    def store(items):
        if items == ["stuck"]:
            stuck.set()
            release.wait(10)
        return list(items)

    group = GroupCommit(store, in_flight=2)
    first = asyncio.ensure_future(group.submit("stuck"))
    await asyncio.to_thread(stuck.wait, 10)
    try:
        assert await asyncio.wait_for(group.submit("next"), 5) == "next"
        assert not first.done()
    finally:
        release.set()
    assert await first == "stuck"


async def test_a_batch_that_raises_fails_each_of_its_items():
    def store(items):
        raise OperationalError("the database went away")

    with pytest.raises(OperationalError):
        await GroupCommit(store).submit("a")


@pytest.mark.django_db(transaction=True)
async def test_sockets_sending_at_once_are_stored_in_shared_batches(transactional_db, batch_sizes):
    await asyncio.to_thread(make_service)
    widgets = await chatting_widgets(12)
    batch_sizes.clear()
    client_ids = [str(uuid.uuid4()) for _ in widgets]
    for widget, client_id in zip(widgets, client_ids, strict=True):
        await widget.send(
            {"type": "message", "text": "Where is my invoice?", "client_id": client_id}
        )
    echoes = [
        await widget.receive_until(lambda f: f["type"] == "error" or f.get("seq") == 3)
        for widget in widgets
    ]
    for widget in widgets:
        await widget.communicator.disconnect()

    assert [(e["type"], e["seq"], e["client_id"]) for e in echoes] == [
        ("message", 3, client_id) for client_id in client_ids
    ]
    assert sum(batch_sizes) == 12
    assert max(batch_sizes) > 1  # they waited for each other's commit, not each for its own


@pytest.mark.django_db
def test_a_visitor_over_the_rate_is_refused_without_costing_the_others(service, settings):
    settings.WIDGET_RATE_LIMIT = 2  # the conversation's first message is not counted here
    a, b = chatting_visitors(service, 2)
    outcomes = consumers._store_messages(
        [
            CustomerPost(a, "1", "1"),
            CustomerPost(a, "2", "2"),
            CustomerPost(b, "x", "x"),
            CustomerPost(a, "3", "3"),
        ]
    )
    assert [o.message.text if o else None for o in outcomes] == ["1", "2", "x", None]


def _questions(service, n: int) -> list[Message]:
    posted = services.conversation_post_customer_messages(
        [CustomerPost(v, "Where is my invoice?", "q") for v in chatting_visitors(service, n)]
    )
    return [p.message for p in posted]


def _reply(question: Message, text: str = "Under Settings → Billing.", epoch: int = 0):
    return services.AiReply(question.conversation_id, question, epoch, text, None)


@pytest.mark.django_db
def test_the_ais_replies_to_twenty_conversations_cost_the_statements_of_one(service):
    first, *others = _questions(service, 21)

    with CaptureQueriesContext(connection) as one:
        services.conversation_post_ai_messages([_reply(first)])
    with CaptureQueriesContext(connection) as twenty:
        posted = services.conversation_post_ai_messages([_reply(q) for q in others])

    # Lock, insert the replies, count them, audit them.
    kinds = ["SELECT", "INSERT", "UPDATE", "INSERT"]
    assert [sql_verb(sql) for sql in statements(one)] == kinds
    assert [sql_verb(sql) for sql in statements(twenty)] == kinds
    assert [m.seq for m in posted] == [3] * 20
    assert Message.objects.filter(role="ai").count() == 21


@pytest.mark.django_db
def test_a_batch_of_replies_drops_each_one_its_conversation_no_longer_takes(service, agent):
    open_, taken, closed, twice = _questions(service, 4)
    services.conversation_take_over(conversation=taken.conversation, agent=agent)
    services.conversation_end_by_customer(visitor=closed.conversation.visitor)

    posted = services.conversation_post_ai_messages(
        [_reply(open_), _reply(taken), _reply(closed), _reply(twice), _reply(twice, "Again.")]
    )

    assert [m.seq if m else None for m in posted] == [3, None, None, 3, None]
    assert not Message.objects.filter(conversation=taken.conversation, role="ai").exists()
    dropped = AuditEvent.objects.filter(action=AuditAction.AI_REPLY_DROPPED)
    assert sorted((e.conversation_id, e.detail["reason"]) for e in dropped) == sorted(
        [
            (taken.conversation_id, "paused_or_closed"),
            (closed.conversation_id, "paused_or_closed"),
            (twice.conversation_id, "already_answered"),
        ]
    )
    assert Message.objects.get(conversation=twice.conversation, role="ai").text == (
        "Under Settings → Billing."
    )


@pytest.mark.redis
@pytest.mark.parametrize("backend", ["redis", "locmem"])
def test_a_batch_counts_each_visitors_messages_in_one_window(service, settings, backend):
    import redis
    from django.core.cache import caches

    if backend == "redis":
        settings.CACHES = {
            "default": {
                "BACKEND": "django.core.cache.backends.redis.RedisCache",
                "LOCATION": settings.TEST_REDIS_URL,
                "KEY_PREFIX": "handoff-test",
            }
        }
    caches["default"].clear()
    a, b = new_visitors(service, 2)

    counts = consumers._message_counts([a, a, b, a])
    assert counts == [1, 2, 1, 3]
    assert consumers._message_counts([b]) == [2]
    # Readable through the cache API, and in Redis with the window's TTL.
    assert caches["default"].get(f"widget-rate:{a.pk}") == 3
    if backend == "redis":
        client = redis.Redis.from_url(settings.TEST_REDIS_URL)
        key = caches["default"].make_and_validate_key(f"widget-rate:{a.pk}")
        assert 0 < client.ttl(key) <= consumers.RATE_WINDOW
        client.close()
    caches["default"].clear()


@pytest.mark.django_db
def test_a_batch_screens_its_messages_with_the_policy_read_in_its_locking_query(
    service, django_capture_on_commit_callbacks
):
    from escalation.services import policy_for

    visitors = chatting_visitors(service, 12)
    policy_for(service)  # made with its defaults the first time: now only read
    with CaptureQueriesContext(connection) as queries:
        with django_capture_on_commit_callbacks(execute=False) as callbacks:
            outcomes = services.conversation_post_customer_messages(
                [CustomerPost(v, "Where is my invoice?", "x") for v in visitors]
            )
        screening = [c for c in callbacks if c.__qualname__.startswith("publish.")]
        for callback in screening:  # what runs after commit: the keyword and "a human" check
            callback()

    assert all(o.created for o in outcomes)
    assert len(screening) == 12
    policy_reads = [
        q["sql"] for q in queries.captured_queries if "escalation_escalationpolicy" in q["sql"]
    ]
    # No query of its own: the policy came with the conversations the batch locked.
    assert len(policy_reads) == 1 and "FOR UPDATE" in policy_reads[0]
    kinds = ["SELECT", "SELECT", "INSERT", "UPDATE", "INSERT"]
    assert [sql_verb(sql) for sql in statements(queries)] == kinds
