"""Races on PostgreSQL: the claim, the message sequence and the AI against a take-over."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from django.db import connection, connections

from conversations import services
from conversations.models import Conversation, Message, Role
from tests.conftest import make_agent, make_service

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture(autouse=True)
def _postgres_only():
    if connection.vendor != "postgresql":
        pytest.skip("row locks are a no-op on SQLite: races are proven on PostgreSQL")


def race(calls: list[Callable[[], object]]) -> list[object]:
    """Run every call at the same moment on its own thread and connection."""
    barrier = threading.Barrier(len(calls))

    def run(call):
        try:
            barrier.wait()
            return call()
        except Exception as error:  # the outcome under test, returned for inspection
            return error
        finally:
            connections.close_all()

    with ThreadPoolExecutor(max_workers=len(calls)) as pool:
        return list(pool.map(run, calls))


@pytest.fixture
def conversation(transactional_db):
    service = make_service()
    visitor, _ = services.visitor_identify(service=service, token=None)
    return services.conversation_post_customer_message(
        visitor=visitor, text="My invoice is wrong", client_id="first"
    ).message.conversation


def test_twenty_agents_taking_over_at_once_leave_exactly_one_winner(
    conversation, django_user_model
):
    agents = [make_agent(django_user_model, f"agent{n}", f"Agent {n}") for n in range(20)]
    outcomes = race(
        [
            lambda a=a: services.conversation_take_over(conversation=conversation, agent=a)
            for a in agents
        ]
    )
    winners = [o for o in outcomes if isinstance(o, Conversation)]
    losers = [o for o in outcomes if isinstance(o, services.AlreadyClaimed)]
    assert len(winners) == 1
    assert len(losers) == 19
    conversation.refresh_from_db()
    assert conversation.claimed_by_id == winners[0].claimed_by_id
    joined = Message.objects.filter(
        conversation=conversation, text__endswith="joined the conversation."
    )
    assert joined.count() == 1
    assert {loser.holder for loser in losers} == {f"Agent {agents.index(conversation.claimed_by)}"}


def test_concurrent_messages_get_gapless_seqs_in_commit_order(conversation):
    visitor = conversation.visitor
    outcomes = race(
        [
            lambda n=n: services.conversation_post_customer_message(
                visitor=visitor, text=f"message {n}", client_id=f"c{n}"
            )
            for n in range(16)
        ]
    )
    assert not [o for o in outcomes if isinstance(o, Exception)]
    seqs = list(Message.objects.filter(conversation=conversation).values_list("seq", flat=True))
    assert sorted(seqs) == list(range(1, len(seqs) + 1))
    conversation.refresh_from_db()
    assert conversation.message_count == len(seqs)


def test_the_same_client_id_sent_twice_at_once_is_stored_once(conversation):
    visitor = conversation.visitor
    outcomes = race(
        [
            lambda: services.conversation_post_customer_message(
                visitor=visitor, text="double", client_id="dup"
            )
            for _ in range(6)
        ]
    )
    assert Message.objects.filter(conversation=conversation, client_id="dup").count() == 1
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert sorted(o.created for o in outcomes) == [False] * 5 + [True]
    assert len({o.message.pk for o in outcomes}) == 1


def test_batches_of_two_processes_over_the_same_conversations_store_everything_once(
    transactional_db, caplog
):
    service = make_service()
    visitors = [services.visitor_identify(service=service, token=None)[0] for _ in range(6)]
    for n, visitor in enumerate(visitors[:4]):  # two start their conversation in the race
        services.conversation_post_customer_message(visitor=visitor, text="hi", client_id=f"{n}")

    def batch(order: list, tag: str):
        posts = [services.CustomerPost(v, f"{tag} to {i}", f"{tag}-{i}") for i, v in order]
        posts += [services.CustomerPost(v, "twin", f"twin-{i}") for i, v in order]
        outcomes = services.conversation_post_customer_messages(posts)
        # As the widget's socket does: what a batch skipped for a held lock is posted alone.
        return [
            services.conversation_post_customer_message(
                visitor=post.visitor, text=post.text, client_id=post.client_id
            )
            if isinstance(outcome, services.PostAlone)
            else outcome
            for post, outcome in zip(posts, outcomes, strict=True)
        ]

    forward = list(enumerate(visitors))
    outcomes = race(
        [lambda n=n: batch(forward if n % 2 else forward[::-1], f"b{n}") for n in range(8)]
    )

    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert all(isinstance(p, services.Posted) for posts in outcomes for p in posts)
    assert "storing each alone" not in caplog.text  # no deadlock between batches
    for visitor in visitors:
        conversation = Conversation.objects.get(visitor=visitor)
        seqs = sorted(conversation.messages.values_list("seq", flat=True))
        assert seqs == list(range(1, conversation.message_count + 1))
        assert conversation.messages.filter(client_id__startswith="twin-").count() == 1
        assert conversation.messages.filter(client_id__startswith="b").count() == 8


def test_first_messages_from_two_sockets_of_one_visitor_share_one_conversation(transactional_db):
    service = make_service()
    visitor, _ = services.visitor_identify(service=service, token=None)
    outcomes = race(
        [
            lambda n=n: services.conversation_post_customer_message(
                visitor=visitor, text=f"hello {n}", client_id=str(uuid.uuid4())
            )
            for n in range(8)
        ]
    )
    assert not [o for o in outcomes if isinstance(o, Exception)]
    assert Conversation.objects.filter(visitor=visitor).count() == 1


@pytest.mark.parametrize("attempt", range(10))
def test_an_ai_reply_racing_a_take_over_never_lands_after_the_human_joined(
    conversation, django_user_model, attempt
):
    agent = make_agent(django_user_model, f"racer{attempt}", "Racer")
    question = Message.objects.get(conversation=conversation, seq=1)
    epoch = Conversation.objects.get(pk=conversation.pk).ai_epoch
    race(
        [
            lambda: services.conversation_post_ai_message(
                conversation_id=conversation.pk,
                reply_to=question,
                epoch=epoch,
                text="Here is your answer.",
                specialist=None,
            ),
            lambda: services.conversation_take_over(conversation=conversation, agent=agent),
        ]
    )
    roles = list(
        Message.objects.filter(conversation=conversation)
        .order_by("seq")
        .values_list("role", flat=True)
    )
    joined_at = roles.index(Role.SYSTEM)
    assert Role.AI not in roles[joined_at:], roles


def on_own_connection(call: Callable[[], object]) -> object:
    try:
        return call()
    finally:
        connections.close_all()


@contextmanager
def take_over_held_open(monkeypatch, conversation: Conversation, agent):
    """`agent` takes `conversation` over on a thread of its own and is held inside the
    transaction (after the claim, before the commit) until the block ends.

    Yields a pool to start rivals on, and the claim's future.
    """
    release, inside = threading.Event(), threading.Event()
    holder = threading.local()
    append = services._append

    def held_append(*args, **kwargs):
        if getattr(holder, "held", False):
            inside.set()
            assert release.wait(10), "never released"
        return append(*args, **kwargs)

    def take_over():
        holder.held = True
        return services.conversation_take_over(conversation=conversation, agent=agent)

    monkeypatch.setattr(services, "_append", held_append)
    with ThreadPoolExecutor(max_workers=2) as pool:
        claim = pool.submit(on_own_connection, take_over)
        assert inside.wait(10)
        try:
            yield pool, claim
        finally:
            release.set()


def test_take_overs_of_two_conversations_of_one_service_do_not_wait_for_each_other(
    conversation, django_user_model, monkeypatch
):
    """The service row is held in share mode by a claim: one agent's take-over in progress
    does not hold up a colleague's take-over of another conversation of the same service."""
    visitor, _ = services.visitor_identify(service=conversation.service, token=None)
    other = services.conversation_post_customer_message(
        visitor=visitor, text="Where is my parcel?", client_id="other"
    ).message.conversation
    alice = make_agent(django_user_model, "alice", "Alice")
    bob = make_agent(django_user_model, "bob", "Bob")
    with take_over_held_open(monkeypatch, conversation, alice) as (pool, claim):
        rival = pool.submit(
            on_own_connection,
            lambda: services.conversation_take_over(conversation=other, agent=bob),
        )
        assert rival.result(timeout=5).claimed_by_id == bob.pk
    assert claim.result(timeout=10).claimed_by_id == alice.pk


def test_a_mode_change_waits_for_a_take_over_in_progress(
    conversation, django_user_model, monkeypatch
):
    """Share mode still excludes a mode change: AI Only cannot slip in under a claim."""
    alice = make_agent(django_user_model, "alice", "Alice")
    with take_over_held_open(monkeypatch, conversation, alice) as (pool, claim):
        switch = pool.submit(
            on_own_connection,
            lambda: services.service_set_mode(
                service=conversation.service, mode="ai_only", user=None
            ),
        )
        with pytest.raises(TimeoutError):
            switch.result(timeout=0.5)  # waits on the claim's hold of the service row
    claim.result(timeout=10)
    switch.result(timeout=10)
    conversation.refresh_from_db()
    assert conversation.claimed_by_id is None and not conversation.ai_paused  # AI Only after


@pytest.mark.parametrize("attempt", range(3))
def test_a_batch_of_ai_replies_racing_take_overs_never_lands_after_a_human_joined(
    transactional_db, django_user_model, attempt
):
    service = make_service()
    visitors = [services.visitor_identify(service=service, token=None)[0] for _ in range(8)]
    questions = [
        services.conversation_post_customer_message(
            visitor=v, text="My invoice is wrong", client_id="q"
        ).message
        for v in visitors
    ]
    # Their own AI replies came on commit: these are replies to the same questions, again.
    Message.objects.filter(role=Role.AI).delete()
    Conversation.objects.update(message_count=1)
    agents = [make_agent(django_user_model, f"r{attempt}-{n}", "Racer") for n in range(4)]
    replies = [
        services.AiReply(q.conversation_id, q, 0, "Here is your answer.", None) for q in questions
    ]
    outcomes = race(
        [lambda: services.conversation_post_ai_messages(replies)]
        + [
            lambda n=n: services.conversation_take_over(
                conversation=questions[2 * n].conversation, agent=agents[n]
            )
            for n in range(4)
        ]
    )

    assert not [o for o in outcomes if isinstance(o, Exception)]
    for question in questions:
        roles = list(
            Message.objects.filter(conversation_id=question.conversation_id)
            .order_by("seq")
            .values_list("role", flat=True)
        )
        if Role.SYSTEM in roles:
            assert Role.AI not in roles[roles.index(Role.SYSTEM) :], roles
        else:
            assert roles == [Role.USER, Role.AI]


@pytest.mark.parametrize("with_another", [True, False], ids=["batch of two", "batch of one"])
def test_a_batch_skips_a_conversation_held_by_another_transaction(transactional_db, with_another):
    from django.db import transaction

    service = make_service()
    held, free = [services.visitor_identify(service=service, token=None)[0] for _ in range(2)]
    for visitor in (held, free):
        services.conversation_post_customer_message(visitor=visitor, text="hi", client_id="1")
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        with transaction.atomic():
            Conversation.objects.select_for_update().get(visitor=held)
            locked.set()
            release.wait(10)

    posts = [services.CustomerPost(held, "still there?", "2")]
    if with_another:
        posts.append(services.CustomerPost(free, "and you?", "2"))
    with ThreadPoolExecutor(max_workers=2) as pool:
        holder = pool.submit(on_own_connection, hold)
        assert locked.wait(5)
        try:
            outcomes = pool.submit(
                on_own_connection, lambda: services.conversation_post_customer_messages(posts)
            ).result(timeout=5)  # it did not wait for the lock
        finally:
            release.set()
        holder.result(timeout=5)

    assert isinstance(outcomes[0], services.PostAlone)
    assert not Message.objects.filter(conversation__visitor=held, client_id="2").exists()
    if with_another:
        assert outcomes[1].created
        assert Message.objects.filter(conversation__visitor=free, client_id="2").exists()
