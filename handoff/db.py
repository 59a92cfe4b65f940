"""Database work from a consumer's event loop."""

from __future__ import annotations

from collections.abc import Callable

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from django.conf import settings


def db(func: Callable) -> Callable:
    """`func` made awaitable, run where the database can take it.

    With a connection pool (PostgreSQL in production) on any of the event loop's worker
    threads, so one socket's queries never wait behind another's; on SQLite (the embedded
    default) on Channels' one shared thread, as one file takes one writer at a time anyway.
    Either way, stale connections are closed before and after, as Channels does.
    """
    return database_sync_to_async(func, thread_sensitive=not settings.DATABASE_POOL)


class DirectDispatch:
    """A consumer mixin: run each handler without Channels' hop to close old connections.

    `AsyncConsumer.dispatch` calls `aclose_old_connections()` before every handler: a trip
    through Channels' one sync thread for every frame and every layer message, which
    profiles of a bare Channels app put at a third or more of the server's CPU. A consumer
    that touches the database only through `db()` (which closes stale connections itself)
    needs none of it.
    """

    async def dispatch(self, message: dict) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)
