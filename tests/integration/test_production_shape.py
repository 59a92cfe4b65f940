"""The production shape survives what production does to it (SPEC §2, §8; issue 5).

Real processes on loopback: two daphne web processes, a Celery worker and beat, PostgreSQL
and private Redis servers (see `conftest.py`). Clients are browser-like: they reconnect by
themselves and resync, and what they end up holding is compared with the database.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest
import redis
from channels.db import database_sync_to_async
from rest_framework.authtoken.models import Token

from conversations.models import AuditAction, AuditEvent, Message, Mode, Role
from conversations.services import TEXT_HANDOFF
from dashboard import cards
from escalation.models import Flag, Reason
from tests.conftest import make_agent, make_service
from tests.console import session_cookie
from tests.integration.clients import WIDGET_ORIGIN, BrowserConsole, BrowserWidget
from tests.integration.conftest import VISIBILITY_TIMEOUT, Stack
from tests.integration.processes import Daphne, wait_until

pytestmark = [
    pytest.mark.integration,
    pytest.mark.postgres,
    pytest.mark.django_db(transaction=True),
]

FURIOUS = "This is absolutely terrible, useless and infuriating. I hate this awful service!"
RACERS = 50
ROUNDS = 20
IDLE_SECONDS = 31


# --- Data and helpers ----------------------------------------------------------------------


@pytest.fixture
def service(transactional_db):
    return make_service(allowed_origins=WIDGET_ORIGIN)


@pytest.fixture
def desk(transactional_db):
    """A Human Only service: every conversation waits for a person, no AI in the way."""
    return make_service(
        slug="desk", name="Desk", mode=Mode.HUMAN_ONLY, allowed_origins=WIDGET_ORIGIN
    )


@pytest.fixture
def alice(transactional_db, django_user_model):
    return make_agent(django_user_model, "alice", "Alice")


@pytest.fixture
def alice_token(alice) -> str:
    return Token.objects.create(user=alice).key


@pytest.fixture
def alice_cookie(alice) -> str:
    return session_cookie(alice).decode()


@pytest.fixture
def racers(transactional_db, django_user_model) -> list[tuple[int, str, str]]:
    """(user id, display name, API token) of 50 agents."""
    agents = [make_agent(django_user_model, f"agent{i:02}", f"Agent {i:02}") for i in range(RACERS)]
    tokens = Token.objects.bulk_create(
        [Token(user=agent, key=Token.generate_key()) for agent in agents]
    )
    return [(agent.pk, f"Agent {i:02}", tokens[i].key) for i, agent in enumerate(agents)]


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Token {token}"}


@asynccontextmanager
async def api(web: Daphne, token: str) -> AsyncIterator[httpx.AsyncClient]:
    """An agent's REST client on one web process, authenticated by token."""
    async with httpx.AsyncClient(base_url=web.http, headers=auth(token), timeout=10) as client:
        yield client


def _transcript(conversation_id: str) -> list[tuple[int, str, str]]:
    rows = Message.objects.filter(conversation_id=conversation_id).order_by("seq")
    return [(m.seq, m.role, m.text) for m in rows]


transcript = database_sync_to_async(_transcript)
counters = database_sync_to_async(cards.counters)
card = database_sync_to_async(cards.card)


def _flags(conversation_id: str) -> list[tuple[str, int | None]]:
    rows = Flag.objects.filter(conversation_id=conversation_id).order_by("pk")
    return list(rows.values_list("reason", "message__seq"))


flags = database_sync_to_async(_flags)


def toasts(console: BrowserConsole, conversation_id: str) -> Counter[str]:
    """How many `attention` events of each reason the console received for a conversation."""
    return Counter(
        reason
        for e in console.events
        if e["type"] == "attention" and e["conversation_id"] == conversation_id
        for reason in e["reasons"]
    )


async def poll_db(predicate, *, timeout: float, what: str):
    """Poll the database (in a thread) until `predicate()` is truthy, within `timeout`."""
    check = database_sync_to_async(predicate)
    deadline = time.monotonic() + timeout
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout} s")
        await asyncio.sleep(0.1)
    return result


async def settled_console(console: BrowserConsole, conversation_id: str, seq: int) -> None:
    """Wait until the console holds the transcript up to `seq` and the card says so."""
    await console.wait_for(
        lambda: (
            seq in console.messages
            and console.cards.get(conversation_id, {}).get("message_count") == seq
            and not console.fills
        ),
        15,
        f"the console to show seq {seq}",
    )


# --- Two web processes, one product ----------------------------------------------------------


async def test_a_customer_on_one_web_process_and_an_agent_on_the_other_see_each_other(
    production: Stack, service, alice, alice_token, alice_cookie
):
    web1, web2 = production.webs
    async with (
        BrowserConsole([web2.ws], alice_cookie) as console,
        BrowserWidget([web1.ws], "support") as widget,
        api(web2, alice_token) as agent,
    ):
        await widget.says("How do I reset my password?")
        cid = widget.conversation_id
        await console.wait_for(
            lambda: cid in console.cards and console.counters.get("active") == 1, 10, "the card"
        )
        # The worker answers through the layer: the widget on web1 and the card on web2.
        ai = await widget.message(lambda m: m["role"] == "ai", timeout=15)
        assert ai["text"].startswith("Happy to help")
        await console.watch(cid)
        await settled_console(console, cid, ai["seq"])

        taken = await agent.post(f"/api/v1/conversations/{cid}/take-over/")
        assert taken.status_code == 200, taken.text
        joined = await widget.message(lambda m: m["text"] == "Alice has joined the conversation.")
        await widget.wait_for(
            lambda: widget.status.get("agent") == "Alice" and widget.status["ai_paused"],
            10,
            "the paused status",
        )
        await console.wait_for(
            lambda: (
                (console.cards[cid]["claimed_by"] or {}).get("id") == alice.pk
                and console.counters == {"active": 1, "needs_attention": 0, "paused": 1}
            ),
            10,
            "the claimed card and counters",
        )
        assert joined["role"] == "system"

        sent = await agent.post(f"/api/v1/conversations/{cid}/messages/", json={"text": "Hi!"})
        assert sent.status_code == 201, sent.text
        human = await widget.message(lambda m: m["role"] == "human")
        assert (human["text"], human["author"]) == ("Hi!", "Alice")
        thanks = await widget.says("Thanks Alice, that worked.")
        await settled_console(console, cid, thanks["seq"])

    truth = await transcript(cid)
    assert widget.transcript() == truth
    assert console.transcript() == truth
    assert widget.repeated() == []
    assert console.cards[cid] == await card(cid)
    assert console.counters == await counters()


async def test_fifty_agents_take_over_at_once_on_two_processes_and_exactly_one_wins(
    production: Stack, desk, racers, alice_cookie
):
    web1, web2 = production.webs
    limits = httpx.Limits(max_connections=RACERS, max_keepalive_connections=RACERS)
    async with (
        BrowserConsole([web1.ws], alice_cookie) as console1,
        BrowserConsole([web2.ws], alice_cookie) as console2,
        httpx.AsyncClient(base_url=web1.http, limits=limits, timeout=30) as http1,
        httpx.AsyncClient(base_url=web2.http, limits=limits, timeout=30) as http2,
    ):
        consoles, clients = [console1, console2], [http1, http2]
        # Half the agents on each process; their connections are open before the first race.
        warm = [
            clients[i % 2].get("/api/v1/stats/", headers=auth(token))
            for i, (*_, token) in enumerate(racers)
        ]
        assert {r.status_code for r in await asyncio.gather(*warm)} == {200}
        for round_ in range(ROUNDS):
            await race(round_, web1, consoles, clients, racers)
        for console in consoles:
            await console.wait_for(
                lambda c=console: c.counters.get("active") == 0, 10, "the counters to settle"
            )
    assert console1.counters == console2.counters == await counters()


async def race(
    round_: int,
    web: Daphne,
    consoles: list[BrowserConsole],
    clients: list[httpx.AsyncClient],
    racers: list[tuple[int, str, str]],
) -> None:
    """One conversation, every racer taking it over at once; agent i talks to process i % 2."""
    async with BrowserWidget([web.ws], "desk") as widget:
        await widget.says(f"Round {round_}: my invoice shows the wrong VAT number.")
        cid = widget.conversation_id
        for console in consoles:
            await console.wait_for(lambda c=console: cid in c.cards, 10, "the new card")

        start = asyncio.Event()

        async def take_over(i: int, token: str) -> httpx.Response:
            await start.wait()
            path = f"/api/v1/conversations/{cid}/take-over/"
            return await clients[i % 2].post(path, headers=auth(token))

        attempts = [
            asyncio.create_task(take_over(i, token)) for i, (*_, token) in enumerate(racers)
        ]
        await asyncio.sleep(0)  # every attempt is now parked on the start line
        start.set()
        responses = await asyncio.gather(*attempts)

        statuses = Counter(r.status_code for r in responses)
        assert statuses == {200: 1, 409: RACERS - 1}, (round_, statuses)
        won = next(i for i, r in enumerate(responses) if r.status_code == 200)
        winner_id, winner_name, winner_token = racers[won]
        claimed = responses[won].json()
        assert claimed["claimed_by"] == {"id": winner_id, "name": winner_name}
        for response in responses:
            if response.status_code == 409:
                body = response.json()
                assert body["code"] == "already_claimed", body
                assert winner_name in body["detail"]

        # The winner closes it through the same process: that card_removed reaches a console
        # after everything that process published for the claim.
        closed = await clients[won % 2].post(
            f"/api/v1/conversations/{cid}/close/", headers=auth(winner_token)
        )
        assert closed.status_code == 200, closed.text
        for console in consoles:
            await console.wait_for(
                lambda c=console: any(
                    e["type"] == "card_removed" and e["id"] == cid for e in c.events
                ),
                10,
                "the card to be removed",
            )
            claims = console.claim_cards(cid)
            assert [(c["claimed_by"]["id"], c["version"]) for c in claims] == [
                (winner_id, claimed["version"])
            ], (round_, claims)
        await widget.wait_for(
            lambda: widget.status.get("agent") == winner_name, 10, "the agent's name"
        )
        joined = [
            m["text"]
            for m in widget.messages.values()
            if m["text"].endswith("has joined the conversation.")
        ]
        assert joined == [f"{winner_name} has joined the conversation."]

    taken = await database_sync_to_async(
        AuditEvent.objects.filter(conversation_id=cid, action=AuditAction.TAKEN_OVER).count
    )()
    assert taken == 1


# --- Faults ------------------------------------------------------------------------------------


async def test_redis_restarted_mid_conversation_loses_and_repeats_nothing(
    production: Stack, service, alice, alice_token, alice_cookie
):
    web1, web2 = production.webs
    async with (
        BrowserWidget([web1.ws], "support") as widget,
        BrowserConsole([web2.ws], alice_cookie) as console,
        api(web2, alice_token) as agent,
    ):
        await widget.says("My bank feed is not syncing.")
        cid = widget.conversation_id
        await widget.message(lambda m: m["role"] == "ai", timeout=15)
        await console.wait_for(lambda: cid in console.cards, 10, "the card")
        await console.watch(cid)
        assert (await agent.post(f"/api/v1/conversations/{cid}/take-over/")).status_code == 200
        said = await agent.post(f"/api/v1/conversations/{cid}/messages/", json={"text": "Looking."})
        assert said.status_code == 201
        await widget.message(lambda m: m["text"] == "Looking.")
        widget_connections, console_connections = widget.connections, console.connections

        production.layer.crash()
        production.broker.crash()
        # The servers close the sockets whose layer went away; the clients start retrying.
        await widget.wait_for(lambda: not widget.connected, 10, "the widget to notice")
        await console.wait_for(lambda: not console.live, 10, "the console to notice")
        # Meanwhile the agent still answers (stored; nobody can be told yet) ...
        started = time.monotonic()
        stored = await agent.post(
            f"/api/v1/conversations/{cid}/messages/", json={"text": "Found it: re-authorise."}
        )
        assert stored.status_code == 201, stored.text
        assert time.monotonic() - started < 5  # publishing to a dead layer gives up at once
        # ... and the customer types, into the widget's queue.
        typed = await widget.say("Is it fixed yet?")

        production.layer.start()
        production.broker.start()
        await widget.stored(typed, timeout=20)
        await widget.message(lambda m: m["text"] == "Found it: re-authorise.", timeout=20)
        await console.wait_for(
            lambda: console.live and console.connections > console_connections, 20, "a resync"
        )
        assert widget.connections > widget_connections

        # Live again both ways, across the two processes.
        again = await agent.post(f"/api/v1/conversations/{cid}/messages/", json={"text": "Now?"})
        assert again.status_code == 201
        await widget.message(lambda m: m["text"] == "Now?")
        last = await widget.says("Yes, it works now. Thank you!")
        await settled_console(console, cid, last["seq"])

    truth = await transcript(cid)
    assert [text for *_, text in truth].count("Is it fixed yet?") == 1
    assert widget.transcript() == truth
    assert widget.repeated() == []
    assert console.transcript() == truth
    assert console.cards[cid] == await card(cid)
    assert console.counters == await counters()


def _active_reply_task(stack: Stack) -> dict | None:
    active = stack.control.control.inspect(timeout=1).active() or {}
    for tasks in active.values():
        for task in tasks:
            if task["name"] == "conversations.tasks.generate_ai_reply":
                return task
    return None


def _unacked_since(stack: Stack) -> float | None:
    """When the newest task the broker still waits to hear back about was delivered."""
    client = redis.Redis.from_url(stack.broker.url(1))
    try:
        newest = client.zrange("unacked_index", -1, -1, withscores=True)
    finally:
        client.close()
    return newest[0][1] if newest else None


async def test_the_worker_killed_mid_task_loses_no_flag_and_duplicates_none(
    production: Stack, fake_ai, service, alice_cookie
):
    web1, web2 = production.webs
    async with (
        BrowserWidget([web1.ws], "support") as widget,
        BrowserConsole([web2.ws], alice_cookie) as console,
    ):
        # 1. A pool process killed while it waits for the AI (what the OOM killer does): with
        #    acks_late and reject_on_worker_lost the task goes straight back to the queue.
        fake_ai.hold()
        first = await widget.says("Can I export my ledger to a spreadsheet?")
        cid = widget.conversation_id
        stuck = await asyncio.to_thread(fake_ai.next_held, 15)
        task = await asyncio.to_thread(
            wait_until, lambda: _active_reply_task(production), timeout=10, what="the reply task"
        )
        os.kill(task["worker_pid"], signal.SIGKILL)
        stuck.answer(status=503)  # nobody is listening any more
        retried = await asyncio.to_thread(fake_ai.next_held, 20)
        assert retried.question == first["text"]
        retried.answer(status=500)  # the backend fails: a fallback reply and a non_answer flag
        reply1 = await widget.message(lambda m: m["role"] == "ai", timeout=15)

        # 2. The whole worker SIGKILLed mid-task, then started again.
        second = await widget.says("And can I import one back?")
        stuck = await asyncio.to_thread(fake_ai.next_held, 15)
        production.worker.kill(signal.SIGKILL)
        production.worker.proc.wait(timeout=10)
        stuck.answer(status=503)
        # Nobody acknowledges the task now; the broker hands it out again once its visibility
        # timeout has passed, to the next worker that starts.
        delivered = _unacked_since(production)
        assert delivered is not None  # kombu's record of the delivery, kept in Redis
        await asyncio.to_thread(
            wait_until,
            lambda: time.time() > delivered + VISIBILITY_TIMEOUT + 0.2,
            timeout=VISIBILITY_TIMEOUT + 5,
            what="the visibility timeout",
        )
        await asyncio.to_thread(production.start_worker)
        redelivered = await asyncio.to_thread(fake_ai.next_held, 20)
        assert redelivered.question == second["text"]
        fake_ai.hold(False)
        redelivered.answer(status=500)
        reply2 = await widget.message(
            lambda m: m["role"] == "ai" and m["seq"] > second["seq"], timeout=15
        )
        # Two non-answers in a row: repeated_failures hands the conversation to a human.
        await widget.message(lambda m: m["text"] == TEXT_HANDOFF, timeout=20)

        expected = [
            (Reason.NON_ANSWER, reply1["seq"]),
            (Reason.NON_ANSWER, reply2["seq"]),
            (Reason.REPEATED_FAILURES, reply2["seq"]),
        ]
        await poll_db(
            lambda: set(expected) <= set(_flags(cid)), timeout=20, what="every flag raised"
        )
        # Everything was scored, by the tasks or by beat's sweep.
        await poll_db(
            lambda: (
                not Message.objects.filter(
                    conversation_id=cid, role=Role.USER, sentiment__isnull=True
                ).exists()
                and not Message.objects.filter(
                    conversation_id=cid, role=Role.AI, non_answer__isnull=True
                ).exists()
            ),
            timeout=20,
            what="every message scored",
        )
        await console.wait_for(
            lambda: console.cards.get(cid, {}).get("needs_attention"), 10, "the flagged card"
        )
        # One toast per flag on the console, as the flags themselves: none lost, none twice.
        await console.wait_for(
            lambda: (
                toasts(console, cid)[Reason.NON_ANSWER] >= 2
                and toasts(console, cid)[Reason.REPEATED_FAILURES] >= 1
            ),
            10,
            "the toasts",
        )

    raised = await flags(cid)
    assert Counter(raised)[(Reason.NON_ANSWER, reply1["seq"])] == 1
    assert len(raised) == len(set(raised)), raised
    assert set(expected) <= set(raised)
    # One reply per question: the redelivered tasks answered once, not twice.
    roles = [role for _, role, _ in await transcript(cid)]
    assert roles.count(Role.AI) == 2, roles
    attention = toasts(console, cid)
    assert attention[Reason.NON_ANSWER] == 2
    assert attention[Reason.REPEATED_FAILURES] == 1


async def test_a_killed_web_process_sends_its_clients_to_the_other_with_nothing_lost(
    production: Stack, service, alice, alice_token, alice_cookie
):
    web1, web2 = production.webs
    balanced = [web1.ws, web2.ws]  # both start on web1, as a balancer might have placed them
    async with (
        BrowserWidget(balanced, "support") as widget,
        BrowserConsole(balanced, alice_cookie) as console,
        api(web2, alice_token) as agent,
    ):
        await widget.says("Where can I download my invoices?")
        cid = widget.conversation_id
        await widget.message(lambda m: m["role"] == "ai", timeout=15)
        await console.wait_for(lambda: cid in console.cards, 10, "the card")
        await console.watch(cid)
        assert (await agent.post(f"/api/v1/conversations/{cid}/take-over/")).status_code == 200
        await widget.message(lambda m: m["role"] == "system")
        assert widget.connections == console.connections == 1

        web1.kill(signal.SIGKILL)
        # What is said while the clients move over must reach them by `last_seq`.
        moved = await agent.post(f"/api/v1/conversations/{cid}/messages/", json={"text": "Moved?"})
        assert moved.status_code == 201
        typed = await widget.say("I'm still here.")
        await widget.stored(typed, timeout=20)
        await widget.message(lambda m: m["text"] == "Moved?", timeout=20)
        await console.wait_for(lambda: console.live and console.connections == 2, 20, "resync")
        assert widget.url_index % 2 == console.url_index % 2 == 1  # both are on web2 now

        last_words = await agent.post(
            f"/api/v1/conversations/{cid}/messages/", json={"text": "Good, all on web2 now."}
        )
        assert last_words.status_code == 201
        await widget.message(lambda m: m["text"] == "Good, all on web2 now.")
        last = await widget.says("Great.")
        await settled_console(console, cid, last["seq"])

    truth = await transcript(cid)
    assert widget.transcript() == truth
    assert widget.repeated() == []
    assert console.transcript() == truth
    assert console.counters == await counters()


async def test_an_idle_widget_socket_on_the_redis_layer_stays_open_past_30_seconds(
    production: Stack, service, alice_token
):
    web1, web2 = production.webs
    async with BrowserWidget([web1.ws], "support") as widget, api(web2, alice_token) as agent:
        await widget.says("How do I get a refund?")
        cid = widget.conversation_id
        await widget.message(lambda m: m["role"] == "ai", timeout=15)
        assert (await agent.post(f"/api/v1/conversations/{cid}/take-over/")).status_code == 200
        await widget.message(lambda m: m["role"] == "system")
        # Idleness is the thing under test: nothing either way for over 30 s (daphne pings
        # the socket every 20 s; the client answers as a browser does, and never pings).
        await asyncio.sleep(IDLE_SECONDS)
        assert widget.connected and widget.connections == 1, widget.closes
        # The socket is still in its groups on the Redis layer: an agent on web2 reaches it.
        late = await agent.post(f"/api/v1/conversations/{cid}/messages/", json={"text": "Yes!"})
        assert late.status_code == 201
        await widget.message(lambda m: m["text"] == "Yes!", timeout=5)
        await widget.says("Great, thanks.", timeout=5)
        assert widget.connections == 1


# --- Health and the broker -----------------------------------------------------------------


async def test_healthz_answers_503_while_redis_is_down_and_200_once_it_is_back(
    production: Stack, service
):
    # A connected socket keeps the process's one layer receiver busy: the check must still
    # get its answer through it.
    for web in production.webs:
        async with BrowserWidget([web.ws], "support"):
            healthy = await asyncio.to_thread(production.healthz, web)
        assert healthy.status_code == 200, healthy.text
        assert {k: v["ok"] for k, v in healthy.json().items() if k != "status"} == {
            "database": True,
            "channel_layer": True,
            "broker": True,
        }

    production.layer.crash()
    production.broker.crash()
    for web in production.webs:
        started = time.monotonic()
        down = await asyncio.to_thread(production.healthz, web)
        assert time.monotonic() - started < 5  # bounded, however Redis fails
        body = down.json()
        assert down.status_code == 503, body
        assert body["status"] == "degraded"
        assert body["database"]["ok"] is True
        assert body["channel_layer"]["ok"] is False
        assert body["broker"]["ok"] is False

    production.layer.start()
    production.broker.start()
    for web in production.webs:
        await asyncio.to_thread(
            wait_until,
            lambda web=web: production.healthz(web).status_code == 200,
            timeout=10,
            what=f"{web.name} healthy again",
        )


async def test_with_the_broker_down_chat_goes_on_and_flags_arrive_late_but_arrive(
    production: Stack, service, alice_cookie
):
    web1, web2 = production.webs
    async with (
        BrowserWidget([web1.ws], "support") as widget,
        BrowserConsole([web2.ws], alice_cookie) as console,
    ):
        await widget.says("Hi, quick question about invoices.")
        cid = widget.conversation_id
        await widget.message(lambda m: m["role"] == "ai", timeout=15)

        production.broker.crash()
        started = time.monotonic()
        angry = await widget.says(FURIOUS, timeout=10)
        # Stored and echoed at once: enqueuing its tasks gave up in bounded time.
        assert time.monotonic() - started < 5
        await console.wait_for(
            lambda: console.cards.get(cid, {}).get("message_count") == angry["seq"],
            10,
            "the card to count it",
        )
        down = await asyncio.to_thread(production.healthz, web1)
        assert down.status_code == 503
        assert (down.json()["channel_layer"]["ok"], down.json()["broker"]["ok"]) == (True, False), (
            down.json()
        )
        assert (Reason.NEGATIVE_SENTIMENT, angry["seq"]) not in await flags(cid)

        production.broker.start()
        # The scoring task was never queued; beat's sweep finds the unscored message.
        toast = await console.wait_for(
            lambda: next(
                (
                    e
                    for e in console.events
                    if e["type"] == "attention"
                    and e["conversation_id"] == cid
                    and Reason.NEGATIVE_SENTIMENT in e["reasons"]
                ),
                None,
            ),
            60,
            "the late negative_sentiment toast",
        )
        assert toast["preview"].startswith("This is absolutely terrible")
        # The policy hands an upset customer to a human: the widget hears about it live.
        await widget.message(lambda m: m["text"] == TEXT_HANDOFF, timeout=10)

    raised = await flags(cid)
    assert raised.count((Reason.NEGATIVE_SENTIMENT, angry["seq"])) == 1
    assert len(raised) == len(set(raised)), raised
