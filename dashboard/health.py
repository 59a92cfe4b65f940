"""`GET /healthz`: can this web process reach its database, channel layer and broker?

Answers in bounded time even when Redis is gone: the channel layer round trip is cut off
after 2 s, and the broker is tried once, in a worker thread, while the other checks run.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import TypedDict

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils.cache import patch_cache_control
from django.views.decorators.http import require_safe

logger = logging.getLogger(__name__)

TIMEOUT_SECONDS = 2.0
# The broker gets a little longer than its own 2 s connect budget before we stop waiting.
BROKER_DEADLINE_SECONDS = 3.0

# Long-lived so a broker that hangs cannot make the view wait for its thread on exit.
_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="healthz")


class Check(TypedDict):
    ok: bool
    detail: str


def _failed(what: str, exc: BaseException) -> Check:
    # The endpoint is public: the exception's text (hosts, ports) goes to the log only.
    logger.warning("healthz: %s check failed", what, exc_info=exc)
    return {"ok": False, "detail": type(exc).__name__}


def check_database() -> Check:
    """Run `SELECT 1` on the default database."""
    try:
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1")
            cursor.fetchone()
    except Exception as exc:
        return _failed("database", exc)
    return {"ok": True, "detail": connection.vendor}


async def _round_trip(layer) -> bool:
    # The layer's default prefix, as the consumers use: channels-redis has one receiver per
    # process at a time, blocked on the "specific." list while sockets are connected, so a
    # message on a list of another prefix would never be read and the check would time out.
    channel = await layer.new_channel()
    nonce = uuid.uuid4().hex
    async with asyncio.timeout(TIMEOUT_SECONDS):
        await layer.send(channel, {"type": "healthz.ping", "nonce": nonce})
        message = await layer.receive(channel)
    return message.get("nonce") == nonce


def check_channel_layer() -> Check:
    """Send a message to a fresh channel and read it back within 2 s."""
    layer = get_channel_layer()
    if layer is None:
        return {"ok": False, "detail": "no channel layer is configured"}
    name = type(layer).__name__
    try:
        ok = async_to_sync(_round_trip)(layer)
    except TimeoutError:
        logger.warning("healthz: channel layer did not answer within %s s", TIMEOUT_SECONDS)
        return {"ok": False, "detail": f"{name}: no answer within {TIMEOUT_SECONDS:g} s"}
    except Exception as exc:
        return _failed("channel layer", exc)
    return {"ok": ok, "detail": name if ok else f"{name}: read back a different message"}


def check_broker() -> Check:
    """Connect to the Celery broker once (or report that tasks run in-process)."""
    from handoff.celery import app

    if app.conf.task_always_eager:
        return {"ok": True, "detail": "eager"}
    try:
        with app.connection_for_write() as conn:
            # One retry after half a second, and never more than 2 s in all.
            conn.ensure_connection(max_retries=1, interval_start=0.5, timeout=TIMEOUT_SECONDS)
            transport = conn.transport_cls
    except Exception as exc:
        return _failed("broker", exc)
    return {"ok": True, "detail": str(transport)}


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    """Report each dependency; 200 when all answer, 503 when any does not."""
    started = time.monotonic()
    broker = _executor.submit(check_broker)
    database = check_database()
    channel_layer = check_channel_layer()
    remaining = max(0.1, BROKER_DEADLINE_SECONDS - (time.monotonic() - started))
    try:
        broker_check = broker.result(timeout=remaining)
    except FutureTimeout:
        logger.warning("healthz: broker did not answer within %s s", BROKER_DEADLINE_SECONDS)
        broker_check = {"ok": False, "detail": f"no answer within {BROKER_DEADLINE_SECONDS:g} s"}
    checks = {"database": database, "channel_layer": channel_layer, "broker": broker_check}
    healthy = all(check["ok"] for check in checks.values())
    response = JsonResponse(
        {"status": "ok" if healthy else "degraded", **checks}, status=200 if healthy else 503
    )
    patch_cache_control(response, no_cache=True, no_store=True, must_revalidate=True)
    return response
