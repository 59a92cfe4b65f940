"""How the realtime paths use threads and connections (bench/README.md "What changed")."""

from __future__ import annotations

import asyncio
import threading

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from django.db import connection, transaction

from conversations.models import Conversation
from handoff import layer
from tests.conftest import make_service
from tests.widget import Widget

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.postgres]


@pytest.fixture
def service(transactional_db):
    return make_service()


def _hold_lock(conversation_id, locked: threading.Event, release: threading.Event) -> None:
    try:
        with transaction.atomic():
            Conversation.objects.select_for_update().get(pk=conversation_id)
            locked.set()
            release.wait(20)
    finally:
        connection.close()


async def test_a_socket_waiting_on_the_database_does_not_hold_up_another(service):
    async with Widget(ip="203.0.113.20") as waiting, Widget(ip="203.0.113.21") as other:
        await waiting.hello()
        await other.hello()
        first = await waiting.say("How do I reset my password?")
        await other.say("Can I export invoices?")
        conversation_id = await database_sync_to_async(
            lambda: Conversation.objects.get(messages__client_id=first["client_id"]).pk
        )()
        locked, release = threading.Event(), threading.Event()
        holder = threading.Thread(target=_hold_lock, args=(conversation_id, locked, release))
        holder.start()
        try:
            assert await asyncio.to_thread(locked.wait, 5)
            # This message waits for the row lock in the database...
            await waiting.send({"type": "message", "text": "Still there?", "client_id": "held"})
            # ...while another customer's message is stored and echoed meanwhile.
            echoed = await other.say("And what plans do you offer?")
            assert echoed["type"] == "message" and echoed["role"] == "user"
            assert not [f for f in waiting.frames if f.get("client_id") == "held"]
        finally:
            release.set()
            await asyncio.to_thread(holder.join, 10)
        held = await waiting.receive_until(lambda f: f.get("client_id") == "held")
        assert held["seq"] == first["seq"] + 2  # after the AI's answer to the first


@pytest.mark.redis
async def test_layer_messages_from_sync_code_arrive_in_order_without_waiting(redis_layer):
    channel_layer = get_channel_layer()
    channel = await channel_layer.new_channel()
    await channel_layer.group_add("ordered", channel)

    def send_from_a_thread_without_an_event_loop() -> None:
        for n in range(100):
            layer.group_send("ordered", {"type": "test.message", "n": n})

    await asyncio.to_thread(send_from_a_thread_without_an_event_loop)
    received = [(await channel_layer.receive(channel))["n"] for _ in range(100)]
    assert received == list(range(100))
