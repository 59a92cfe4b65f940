"""Sending to the channel layer from synchronous code (after a commit), without waiting.

`async_to_sync(layer.group_send)` from a Celery task builds a thread, an event loop and new
Redis connections for every send; from a web process's database thread it holds that
thread for the layer's round trips (four Redis commands per `group_send` on the core
layer). Instead each process has one sender thread with its own event loop: callers queue
a message and go on, and the thread sends them in the order they were queued, over
connections it keeps.

On the in-memory layer (the embedded default, the tests) messages go out at once from the
caller: that layer's queues belong to the caller's event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0


class Sender:
    def __init__(self) -> None:
        self._reset()
        # A forked child (a Celery pool process) inherits the state but not the thread.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.queue: asyncio.Queue | None = None

    def group_send(self, group: str, message: dict) -> None:
        """Queue `message` for `group`; a layer that is down is logged, never raised."""
        layer = get_channel_layer()
        if layer is None:
            return
        if isinstance(layer, InMemoryChannelLayer):
            try:
                async_to_sync(layer.group_send)(group, message)
            except Exception:
                logger.exception("could not publish to %s", group)
            return
        loop, queue = self._started()
        loop.call_soon_threadsafe(queue.put_nowait, (layer, group, message))

    def _started(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Queue]:
        with self.lock:
            if self.loop is None:
                ready = threading.Event()
                thread = threading.Thread(
                    target=self._run, args=(ready,), name="layer-sender", daemon=True
                )
                thread.start()
                ready.wait()
            return self.loop, self.queue

    def _run(self, ready: threading.Event) -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        self.queue = asyncio.Queue()
        self.loop = loop
        ready.set()
        loop.run_until_complete(self._send_forever())

    async def _send_forever(self) -> None:
        while True:
            layer, group, message = await self.queue.get()
            try:
                for attempt in (1, 2):
                    try:
                        await layer.group_send(group, message)
                        break
                    except Exception:
                        # A pooled Redis connection dies with a Redis restart and fails once;
                        # the retry gets a fresh one instead of dropping the message. After
                        # that, clients resync when they reconnect (SPEC §4, §5).
                        if attempt == 2:
                            logger.exception("could not publish to %s", group)
            finally:
                self.queue.task_done()

    def drain(self, timeout: float = DRAIN_SECONDS) -> None:
        """Wait until everything queued so far was sent (at exit)."""
        loop, queue = self.loop, self.queue
        if loop is None or not loop.is_running():
            return
        try:
            asyncio.run_coroutine_threadsafe(queue.join(), loop).result(timeout)
        except Exception:
            logger.warning("exiting with %d layer message(s) unsent", queue.qsize())


sender = Sender()
atexit.register(sender.drain)


def group_send(group: str, message: dict) -> None:
    sender.group_send(group, message)
