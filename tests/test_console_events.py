"""Console events, verified like Zulip does: stale snapshot + pushed events == fresh snapshot."""

from __future__ import annotations

import uuid

import pytest
from channels.db import database_sync_to_async

from conversations import services
from conversations.models import Conversation, Mode
from dashboard import cards
from escalation import services as escalation
from escalation.models import EscalationPolicy, Flag
from tests.conftest import make_service
from tests.console import Console, apply_events, normalized

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def service(transactional_db):
    return make_service()


@database_sync_to_async
def customer(service, text: str = "How do I reset my password?"):
    """A customer with an open conversation; returns (visitor, conversation)."""
    visitor, _ = services.visitor_identify(service=service, token=None)
    posted = services.conversation_post_customer_message(
        visitor=visitor, text=text, client_id=str(uuid.uuid4())
    )
    return visitor, Conversation.objects.get(pk=posted.message.conversation_id)


async def verify_action(console: Console, action) -> list[dict]:
    """Act, then check the console's events turn its stale snapshot into a fresh one."""
    await console.send({"type": "resync"})
    before = await console.receive()
    assert before["type"] == "snapshot"
    await database_sync_to_async(action)()
    events = await console.events()
    after = await database_sync_to_async(cards.snapshot)()
    assert normalized(apply_events(before, events)) == normalized(after)
    return events


def kinds(events: list[dict]) -> set[str]:
    return {event["type"] for event in events}


async def test_a_console_gets_a_snapshot_of_open_conversations_on_connect(service, agent):
    _, conversation = await customer(service)
    async with Console(agent) as console:
        snapshot = console.snapshot
    assert snapshot["counters"] == {"active": 1, "needs_attention": 0, "paused": 0}
    [support] = snapshot["services"]
    assert (support["slug"], support["mode"]) == ("support", "human_supported")
    [card] = support["conversations"]
    assert card["id"] == str(conversation.pk)
    assert card["status"] == "ai_active"
    assert card["message_count"] == 2  # the question and the AI's answer
    assert set(card) >= {
        "id", "service", "version", "status", "specialist", "location", "opening_question",
        "started_at", "last_activity_at", "message_count", "claimed_by", "needs_attention",
        "reasons", "waiting_since",
    }  # fmt: skip


async def test_a_socket_has_its_session_without_channels_checking_it_on_every_frame(
    service, agent, monkeypatch
):
    """The agent is known from the session cookie, and the frames go out unwrapped: Channels
    saves a session only on an HTTP response, so its check on every socket frame only cost."""
    from channels.sessions import InstanceSessionWrapper

    checked = []
    original = InstanceSessionWrapper.send

    async def send(self, message):
        checked.append(message["type"])
        return await original(self, message)

    monkeypatch.setattr(InstanceSessionWrapper, "send", send)
    await customer(service)
    async with Console(agent) as console:
        await console.send({"type": "ping"})
        assert await console.receive() == {"type": "pong"}
    assert console.snapshot["counters"]["active"] == 1
    assert checked == []


async def test_anyone_but_an_agent_is_closed_with_4403(service, stranger):
    for user in (None, stranger):
        console = Console(user)
        connected, _ = await console.connect()
        assert connected
        closed = await console.communicator.receive_output(2)
        assert closed == {"type": "websocket.close", "code": 4403}


async def test_a_new_conversation_arrives_as_a_card_and_counters(service, agent):
    async with Console(agent) as console:
        events = await verify_action(
            console,
            lambda: services.conversation_post_customer_message(
                visitor=services.visitor_identify(service=service, token=None)[0],
                text="Where can I download my invoices?",
                client_id="n1",
            ),
        )
    assert {"card", "counters"} <= kinds(events)


async def test_take_over_send_release_resume_and_close_keep_consoles_true(service, agent):
    _, conversation = await customer(service)
    async with Console(agent) as console:
        events = await verify_action(
            console, lambda: services.conversation_take_over(conversation=conversation, agent=agent)
        )
        [card] = [e["card"] for e in events if e["type"] == "card"][-1:]
        assert card["claimed_by"]["name"] == "Alice"
        assert card["status"] == "paused"
        await verify_action(
            console,
            lambda: services.conversation_send_as_agent(
                conversation=conversation, agent=agent, text="Hi, Alice here"
            ),
        )
        events = await verify_action(
            console, lambda: services.conversation_release(conversation=conversation, user=agent)
        )
        assert any(e["type"] == "attention" and e["reasons"] == ["awaiting_human"] for e in events)
        await verify_action(
            console, lambda: services.conversation_take_over(conversation=conversation, agent=agent)
        )
        await verify_action(
            console, lambda: services.conversation_resume_ai(conversation=conversation, user=agent)
        )
        await verify_action(
            console, lambda: services.conversation_take_over(conversation=conversation, agent=agent)
        )
        events = await verify_action(
            console, lambda: services.conversation_close(conversation=conversation, user=agent)
        )
    assert {"type": "card_removed", "id": str(conversation.pk), "service": "support"} in events


async def test_mode_changes_reach_every_console(service, admin, agent):
    await customer(service)
    await database_sync_to_async(make_service)(slug="sales", name="Sales")
    async with Console(agent) as console:
        events = await verify_action(
            console,
            lambda: services.service_set_mode(service=service, mode=Mode.HUMAN_ONLY, user=admin),
        )
        assert {
            "type": "service",
            "service": {"slug": "support", "name": "Support", "mode": "human_only"},
        } in events
        await verify_action(
            console, lambda: services.services_set_mode(mode=Mode.AI_ONLY, user=admin)
        )


@pytest.mark.parametrize(
    "reason",
    [
        "thumbs_down",
        "non_answer",
        "negative_sentiment",
        "help_requested",
        "help_requested_in_words",
        "keyword",
        "repeated_failures",
        "awaiting_human",
    ],
)
async def test_each_flag_reason_updates_cards_counters_and_toasts(service, agent, reason):
    await database_sync_to_async(
        lambda: EscalationPolicy.objects.create(
            service=service, keywords="cancel my account", keyword_action="flag",
            sentiment_action="flag", repeated_failures_action="flag",
        )
    )()  # fmt: skip
    visitor, conversation = await customer(service, "How do I reset my password?")

    def say(text: str):
        return services.conversation_post_customer_message(
            visitor=visitor, text=text, client_id=str(uuid.uuid4())
        )

    actions = {
        "thumbs_down": lambda: services.message_give_feedback(visitor=visitor, seq=2, value="down"),
        "non_answer": lambda: say("What's the weather like on Mars today?"),
        "negative_sentiment": lambda: say(
            "This is absolutely terrible, useless and infuriating. I hate this awful service!"
        ),
        "help_requested": lambda: services.conversation_request_human(visitor=visitor),
        "help_requested_in_words": lambda: say("Can I talk to a real person please?"),
        "keyword": lambda: say("I want to cancel my account"),
        "repeated_failures": lambda: (say("What's the weather on Mars?"), say("Sing me a song")),
        "awaiting_human": lambda: services.conversation_hand_off(
            conversation=conversation, reason="test"
        ),
    }
    async with Console(agent) as console:
        events = await verify_action(console, actions[reason])
    expected = reason.replace("_in_words", "")
    toasts = [e for e in events if e["type"] == "attention"]
    assert expected in {r for toast in toasts for r in toast["reasons"]}
    assert toasts[0]["new"] is True
    assert all(toast["new"] is False for toast in toasts[1:])
    assert toasts[0]["conversation_id"] == str(conversation.pk)
    cards_sent = [e["card"] for e in events if e["type"] == "card"]
    assert cards_sent[-1]["needs_attention"] is True
    assert expected in cards_sent[-1]["reasons"]
    flag = await database_sync_to_async(
        lambda: Flag.objects.filter(reason=expected).select_related("message").first()
    )()
    assert flag.evidence


async def test_taking_over_acknowledges_flags_and_silences_new_ones(service, agent):
    visitor, conversation = await customer(service)
    await database_sync_to_async(services.conversation_request_human)(visitor=visitor)
    async with Console(agent) as console:
        assert console.snapshot["counters"]["needs_attention"] == 1
        events = await verify_action(
            console, lambda: services.conversation_take_over(conversation=conversation, agent=agent)
        )
        card = [e["card"] for e in events if e["type"] == "card"][-1]
        assert (card["needs_attention"], card["reasons"]) == (False, [])
        raised = await database_sync_to_async(escalation.flag_raise)(
            conversation_id=conversation.pk, reason="keyword"
        )
        assert raised is None
        assert await console.communicator.receive_nothing(0.3)


async def test_watchers_get_each_new_message_of_their_conversation(service, agent):
    visitor, conversation = await customer(service)
    async with Console(agent) as console:
        await console.send({"type": "watch", "conversation_id": str(conversation.pk)})
        await console.send({"type": "resync"})
        await console.receive()
        await database_sync_to_async(services.conversation_post_customer_message)(
            visitor=visitor, text="Where can I download my invoices?", client_id="w1"
        )
        events = await console.events()
        messages = [e for e in events if e["type"] == "message"]
        assert [m["message"]["seq"] for m in messages] == [3, 4]
        assert messages[0]["message"]["text"] == "Where can I download my invoices?"
        await console.send({"type": "unwatch", "conversation_id": str(conversation.pk)})
        await console.send({"type": "resync"})
        await console.receive()
        await database_sync_to_async(services.conversation_post_customer_message)(
            visitor=visitor, text="thanks", client_id="w2"
        )
        assert not [e for e in await console.events() if e["type"] == "message"]


async def test_client_frames_cannot_inject_events(service, agent, agent2):
    async with Console(agent) as one, Console(agent2) as two:
        for frame in (
            {"type": "card", "card": {"id": "x"}},
            {"type": "console.event", "event": {"type": "counters"}},
            {"type": "websocket.disconnect"},
            {"type": "attention"},
        ):
            await one.send(frame)
            error = await one.receive()
            assert (error["type"], error["code"]) == ("error", "unknown_type")
        await one.send({"type": "watch", "conversation_id": "not-a-uuid"})
        assert (await one.receive())["code"] == "not_found"
        assert await two.communicator.receive_nothing(0.3)


async def test_a_hub_that_cannot_read_the_cards_closes_its_consoles_to_resync(
    service, agent, monkeypatch
):
    from django.db import OperationalError

    from dashboard import broadcast

    async with Console(agent) as console:

        def database_gone(pending):
            raise OperationalError("the database went away")

        monkeypatch.setattr(broadcast, "build", database_gone)
        await customer(service)
        # Updates would be missing: the console reconnects and takes a fresh snapshot.
        closed = await console.communicator.receive_output(5)
        assert closed == {"type": "websocket.close", "code": 1011}


def test_producers_send_what_changed_and_a_hub_reads_each_card_once(
    service, django_assert_num_queries
):
    from dashboard import broadcast

    visitor, _ = services.visitor_identify(service=service, token=None)
    posted = [
        services.conversation_post_customer_message(visitor=visitor, text=text, client_id=text)
        for text in ("Hello?", "Where can I download my invoices?")
    ]
    conversation_id = str(posted[0].message.conversation_id)
    web, worker = broadcast.Pending(), broadcast.Pending()
    web.card_ids[conversation_id] = None
    web.messages.append(posted[0].message)
    worker.card_ids[conversation_id] = None
    worker.counters = True
    worker.messages.append(posted[1].message)
    with django_assert_num_queries(0):  # a transcript line is sent as it was stored
        batches = [broadcast.outgoing(web), broadcast.outgoing(worker)]
    hub = broadcast.Pending()
    for batch in batches:
        broadcast.incoming(hub, batch)
    with django_assert_num_queries(3):  # the card once, its flags, the counters
        events = broadcast.build(hub)
    assert [e["type"] for e in events] == ["card", "counters", "message", "message"]
    texts = [e["message"]["text"] for e in events if e["type"] == "message"]
    assert texts == ["Hello?", "Where can I download my invoices?"]


def numbered(source: str, n: int) -> dict:
    """A producer's batch as the layer carries it, changing nothing."""
    return {
        "type": "console.event",
        "cards": [],
        "counters": False,
        "events": [],
        "source": source,
        "n": n,
    }


async def test_a_hub_that_missed_a_batch_sends_its_consoles_a_fresh_snapshot(
    service, agent, monkeypatch
):
    from channels.layers import get_channel_layer

    from dashboard import broadcast

    monkeypatch.setattr(broadcast, "RESYNC_SECONDS", 0.3)
    layer = get_channel_layer()
    async with Console(agent) as console:
        _, conversation = await customer(service)
        assert await console.events()  # its card arrives: the snapshot does not show it
        for n in (1, 2):
            await layer.group_send(broadcast.CONSOLE_GROUP, numbered("web-1", n))
        assert await console.communicator.receive_nothing(0.2)  # in order: nothing to do
        await layer.group_send(broadcast.CONSOLE_GROUP, numbered("web-1", 4))  # 3 was dropped
        snapshot = await console.receive()
        assert snapshot["type"] == "snapshot"
        [card] = snapshot["services"][0]["conversations"]
        assert card["id"] == str(conversation.pk)
        # Another loss right after: one snapshot per RESYNC_SECONDS, the next one later.
        await layer.group_send(broadcast.CONSOLE_GROUP, numbered("web-1", 6))
        assert await console.communicator.receive_nothing(0.1)
        assert (await console.receive(timeout=2))["type"] == "snapshot"


@pytest.mark.redis
async def test_a_console_resyncs_after_its_hub_channel_overflowed_on_redis(
    service, agent, core_layer
):
    """The core Redis layer drops what overflows a channel; the next batch shows the gap."""
    from channels.layers import get_channel_layer

    from dashboard import broadcast
    from handoff.layer import sender

    core_layer["default"]["CONFIG"]["capacity"] = 100
    mode = {"type": "service", "service": {"slug": "support", "name": "Support", "mode": "x"}}
    async with Console(agent) as console:
        # The sends go out from the sender's thread while this test holds the event loop,
        # so the hub cannot drain its channel: batches 101-120 are dropped.
        for n in range(1, 121):
            batch = numbered("worker-1", n)
            if n == 50:
                batch["events"] = [mode]
            sender.group_send(broadcast.CONSOLE_GROUP, batch)
        sender.drain()
        assert (await console.receive())["type"] == "service"  # the hub is draining
        await get_channel_layer().group_send(broadcast.CONSOLE_GROUP, numbered("worker-1", 121))
        snapshot = await console.receive()
        assert snapshot["type"] == "snapshot"
        assert snapshot["counters"] == {"active": 0, "needs_attention": 0, "paused": 0}


@pytest.mark.redis
def test_an_outbox_numbers_its_batches_for_the_hubs(redis_layer, monkeypatch):
    import threading

    from dashboard import broadcast

    sent, arrived = [], threading.Semaphore(0)

    class Sender:
        def group_send(self, group, message):
            sent.append(message)
            arrived.release()

    monkeypatch.setattr(broadcast, "layer_sender", Sender())
    for _ in range(2):
        broadcast.send_counters()
        assert arrived.acquire(timeout=5)  # one batch out before the next is queued
    first, second = sent
    assert first["source"] == second["source"]
    assert second["n"] == first["n"] + 1
