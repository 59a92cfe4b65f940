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
from channels_redis.pubsub import (
    RedisPubSubChannelLayer,
    RedisPubSubLoopLayer,
    RedisSingleShardConnection,
)
from channels_redis.utils import _wrap_close, decode_hosts

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


# --- The pub/sub layer, with outages made visible ----------------------------------------------


class PubSubChannelLayer(RedisPubSubChannelLayer):
    """channels-redis's pub/sub layer, whose consumers learn that messages may have been lost.

    One `PUBLISH` per `group_send` (the core layer takes four commands, and its receive takes
    three round trips per message, one message at a time), and messages are pushed to the
    process as they come. But a pub/sub message that finds its subscriber disconnected is
    gone, and channels-redis's reader only logs and retries while redis-py quietly
    reconnects and subscribes again. Here, whenever the connection that receives breaks or
    is made again, every channel of the process gets a `layer.lost` message: consumers close
    their sockets (1011), so that clients reconnect and resync, as they do when the core
    layer's `receive` fails.
    """

    def _get_layer(self) -> RedisPubSubLoopLayer:
        loop = asyncio.get_running_loop()
        layer = self._layers.get(loop)
        if layer is None:
            layer = self._layers[loop] = _LoopLayer(*self._args, **self._kwargs, channel_layer=self)
            _wrap_close(self, loop)
        return layer


LAYER_LOST: dict = {"type": "layer.lost"}
CLOSE_LAYER_LOST = 1011


class ClosesWhenLayerLost:
    """A consumer mixin: close the socket when the layer may have lost its messages."""

    async def layer_lost(self, event: dict) -> None:
        await self.close(code=CLOSE_LAYER_LOST)


class _LoopLayer(RedisPubSubLoopLayer):
    def __init__(self, hosts=None, **kwargs) -> None:
        super().__init__(hosts, **kwargs)
        self._shards = [_Shard(host, self) for host in decode_hosts(hosts)]

    def lost(self) -> None:
        """Tell every channel of this process that messages may have been lost."""
        if self.channels:
            logger.warning("channel layer connection lost; %d channel(s) told", len(self.channels))
        message = self.channel_layer.serialize(LAYER_LOST)
        for queue in self.channels.values():
            queue.put_nowait(message)


class _Shard(RedisSingleShardConnection):
    _watched = None

    async def subscribe(self, channel: str) -> None:
        await super().subscribe(channel)
        connection = self._pubsub.connection
        if connection is not None and connection is not self._watched:
            # Registered once connected, so it runs on every later connect: a reconnect.
            self._watched = connection
            connection.register_connect_callback(self._reconnected)

    async def _reconnected(self, connection) -> None:
        self.channel_layer.lost()

    async def _do_receiving(self) -> None:
        while True:
            try:
                if self._pubsub and self._pubsub.subscribed:
                    message = await self._pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=0.1
                    )
                    self._receive_message(message)
                else:
                    await asyncio.sleep(0.1)
            except Exception:  # a socket timeout too: channels-redis's reader would end there
                logger.exception("channel layer could not receive")
                self.channel_layer.lost()
                await asyncio.sleep(1)
