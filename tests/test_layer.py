"""The pub/sub channel layer on the real Redis: its consumers hear when messages may be lost."""

from __future__ import annotations

import asyncio

import pytest
import redis
from asgiref.sync import sync_to_async
from django.conf import settings

from handoff.layer import LAYER_LOST, PubSubChannelLayer
from tests.conftest import make_service
from tests.console import Console
from tests.widget import Widget

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]


@sync_to_async
def cut_receiving_connections() -> int:
    """Drop every pub/sub connection on the server, as a Redis restart or a network cut would."""
    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    try:
        return client.client_kill_filter(_type="pubsub")
    finally:
        client.close()


async def receive_until(layer, channel: str, kind: str) -> dict:
    while (message := await asyncio.wait_for(layer.receive(channel), 5))["type"] != kind:
        pass
    return message


async def test_every_channel_hears_of_a_cut_connection_and_then_receives_again():
    layer = PubSubChannelLayer(hosts=[{"address": settings.TEST_REDIS_URL}], prefix="layer-test")
    try:
        grouped, alone = await layer.new_channel(), await layer.new_channel()
        await layer.group_add("room", grouped)
        await layer.group_send("room", {"type": "before"})
        assert (await asyncio.wait_for(layer.receive(grouped), 5))["type"] == "before"

        assert await cut_receiving_connections() >= 1
        assert await asyncio.wait_for(layer.receive(grouped), 5) == LAYER_LOST
        assert await asyncio.wait_for(layer.receive(alone), 5) == LAYER_LOST

        # Subscribed again: what is sent from now on arrives.
        await layer.group_send("room", {"type": "after"})
        await layer.send(alone, {"type": "after"})
        assert (await receive_until(layer, grouped, "after"))["type"] == "after"
        assert (await receive_until(layer, alone, "after"))["type"] == "after"
    finally:
        await layer.flush()


async def test_a_layer_that_is_not_cut_tells_nobody_anything():
    layer = PubSubChannelLayer(hosts=[{"address": settings.TEST_REDIS_URL}], prefix="layer-test")
    try:
        channel = await layer.new_channel()
        await layer.group_add("room", channel)
        await layer.send(channel, {"type": "hello"})
        await layer.group_send("room", {"type": "again"})
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "hello"
        assert (await asyncio.wait_for(layer.receive(channel), 5))["type"] == "again"
    finally:
        await layer.flush()


async def close_code(communicator) -> int:
    """The code the server closes the socket with, after whatever frames come first."""
    while (output := await communicator.receive_output(5))["type"] != "websocket.close":
        pass
    return output["code"]


async def test_widgets_and_consoles_close_to_resync_when_the_layer_connection_is_cut(
    pubsub_layer, agent
):
    await sync_to_async(make_service)()
    async with Console(agent) as console, Widget() as w:
        await w.hello()
        await w.say("How do I reset my password?")
        await w.message(2)
        assert any(e["type"] == "card" for e in await console.events())

        await cut_receiving_connections()
        assert await close_code(w.communicator) == 1011
        assert await close_code(console.communicator) == 1011
