"""Flags raised by a real Celery worker on Redis, seen live by a console on the Redis layer."""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
import redis
from channels.db import database_sync_to_async

from conversations import services
from conversations.models import Message, Role
from escalation.models import Flag
from tests.conftest import _wait_for, make_service
from tests.console import Console
from tests.widget import Widget

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.redis]

FURIOUS = "This is absolutely terrible, useless and infuriating. I hate this awful service!"
UNANSWERABLE = ["What's the weather like on Mars today?", "Can you sing me a song about cats?"]


@pytest.fixture
def service(transactional_db, redis_layer, celery_worker):
    return make_service()


async def attention(console: Console, reason: str, timeout: float = 20) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            frame = await console.receive(timeout)
            for event in frame["events"] if frame["type"] == "batch" else [frame]:
                if event["type"] == "attention" and reason in event["reasons"]:
                    return event


async def test_a_very_negative_message_is_flagged_by_the_worker(service, agent):
    async with Console(agent) as console, Widget() as w:
        await w.hello()
        await w.say(FURIOUS)
        toast = await attention(console, "negative_sentiment")
        assert toast["new"] is True
        assert "terrible" in toast["preview"]
    flag = await database_sync_to_async(Flag.objects.get)(reason="negative_sentiment")
    assert flag.evidence["rule"] in {"vader_window", "vader_single"}
    assert flag.evidence["scores"][-1] <= -0.5


async def test_a_streak_of_non_answers_hands_the_conversation_off(service, agent):
    async with Console(agent) as console, Widget() as w:
        await w.hello()
        for text in UNANSWERABLE:
            echo = await w.say(text)
            await w.message(echo["seq"] + 1, timeout=20)
        await attention(console, "repeated_failures")
        handoff = await w.receive_until(
            lambda f: f["type"] == "message" and f["text"] == services.TEXT_HANDOFF, timeout=20
        )
        assert handoff["role"] == "system"
        status = await w.receive_until(lambda f: f["type"] == "status", timeout=20)
        assert status["ai_paused"] is True


def _queue_drained(settings, app) -> bool:
    client = redis.Redis.from_url(settings.TEST_BROKER_URL)
    try:
        waiting = client.llen("celery")
    finally:
        client.close()
    inspect = app.control.inspect(timeout=0.5)
    busy = [tasks for tasks in (inspect.active() or {}).values() if tasks]
    reserved = [tasks for tasks in (inspect.reserved() or {}).values() if tasks]
    return waiting == 0 and not busy and not reserved


async def test_flags_arrive_exactly_once_after_the_worker_was_down(
    service, agent, celery_worker, settings
):
    from handoff.celery import app

    celery_worker.stop()
    async with (
        Widget() as angry,
        Widget(ip="203.0.113.10") as lost,
        Widget(ip="203.0.113.11") as fine,
    ):
        for w in (angry, lost, fine):
            await w.hello()
        # Customers keep chatting while the worker is away: every message is stored.
        assert (await angry.say(FURIOUS))["seq"] == 1
        assert (await lost.say(UNANSWERABLE[0]))["seq"] == 1
        assert (await fine.say("How do I reset my password?"))["seq"] == 1
        assert await database_sync_to_async(Message.objects.filter(role=Role.AI).count)() == 0

        celery_worker.start(app)
        await lost.message(2, timeout=30)
        await fine.message(2, timeout=30)
        # Deliver every scoring task a second time, as a broker does after a lost ack.
        ids = await database_sync_to_async(
            lambda: list(Message.objects.values_list("pk", "role"))
        )()
        for pk, role in ids:
            name = "score_sentiment" if role == Role.USER else "check_answer"
            app.send_task(f"escalation.tasks.{name}", args=[pk])
        await asyncio.to_thread(
            _wait_for, lambda: _queue_drained(settings, app), timeout=30, what="the queue to drain"
        )
    flags = await database_sync_to_async(
        lambda: list(Flag.objects.values_list("conversation__visitor__pk", "reason", "message_id"))
    )()
    assert len(flags) == len(set(flags)), Counter(flags)
    reasons = Counter(reason for _, reason, _ in flags)
    assert reasons["negative_sentiment"] == 1
    assert reasons["non_answer"] >= 1
    unscored = await database_sync_to_async(
        lambda: Message.objects.filter(role=Role.USER, sentiment__isnull=True).count()
    )()
    assert unscored == 0
