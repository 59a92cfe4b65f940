"""The widget protocol on the production channel layer (pub/sub) on the real Redis."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer

from conversations import services
from conversations.models import Conversation
from tests.conftest import make_service
from tests.widget import Widget, stored_quietly

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@pytest.fixture
def service(transactional_db, redis_layer):
    return make_service()


async def test_the_layer_in_use_is_the_pub_sub_layer_on_redis(service):
    from handoff.layer import PubSubChannelLayer

    assert isinstance(get_channel_layer(), PubSubChannelLayer)


async def test_a_conversation_round_trips_through_redis(service, agent):
    async with Widget() as w:
        await w.hello()
        echo = await w.say("How do I reset my password?")
        assert echo["seq"] == 1
        reply = await w.message(2)
        assert reply["role"] == "ai"
        conversation = await database_sync_to_async(Conversation.objects.get)()
        await database_sync_to_async(services.conversation_take_over)(
            conversation=conversation, agent=agent
        )
        assert (await w.message(3))["text"] == "Alice has joined the conversation."
        status = await w.receive_until(lambda f: f["type"] == "status")
        assert status["agent"] == "Alice"


async def test_every_socket_of_a_visitor_sees_the_conversation(service):
    async with Widget() as first:
        await first.hello()
        await first.say("hello from tab one")
        await first.message(2)
        async with Widget() as second:
            await second.hello(token=first.token, last_seq=2)
            await second.receive_until(lambda f: f["type"] == "status")
            echo = await first.say("Where can I download my invoices?")
            mirrored = await second.message(echo["seq"])
            assert mirrored["text"] == "Where can I download my invoices?"
            answer = await second.message(echo["seq"] + 1)
            assert answer["role"] == "ai"


async def test_an_idle_socket_on_redis_stays_open_past_ten_seconds(service):
    async with Widget() as w:
        await w.hello()
        # Nothing at all may arrive while idle: no close, no error from the layer's reads.
        assert await w.nothing(11)
        echo = await w.say("How do I reset my password?")
        assert echo["seq"] == 1
        assert (await w.message(2))["role"] == "ai"


async def test_frames_out_of_order_wait_for_each_other_and_a_lost_one_is_read(
    service, transcript_reads, monkeypatch
):
    monkeypatch.setattr("conversations.consumers.GAP_WAIT", 0.2)
    async with Widget() as w:
        await w.answered_once()
        reads_before = len(transcript_reads)
        (third, fourth, fifth, sixth), announce = await stored_quietly("3", "4", "5", "6")
        await announce(fourth)
        await announce(third)
        assert [(await w.receive())["seq"] for _ in range(2)] == [3, 4]
        assert transcript_reads[reads_before:] == []
        await announce(sixth)  # the fifth is lost
        assert [(await w.receive())["seq"] for _ in range(2)] == [5, 6]
        assert transcript_reads[reads_before:] == [4]
