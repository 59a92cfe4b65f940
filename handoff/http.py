"""How the web process serves HTTP: Django's ASGI handler on a fixed set of request threads."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import ThreadSensitiveContext, sync_to_async
from django.conf import settings
from django.core.handlers.asgi import ASGIHandler


class RequestHandler(ASGIHandler):
    """Django's ASGI handler, with each request's sync code in one hop on a pooled thread.

    Django's own handler builds an async middleware chain and gives every request a new
    thread: each sync-capable middleware's `process_request` and `process_response`,
    `process_view` and the view each go from the event loop to that thread and back (about
    fifteen round trips a request), and the thread opens a database connection that dies
    with it. The event loop also carries every widget and console socket, so a burst of
    requests (fifty agents taking one conversation at once) stalled them all.

    Here the chain is built in its sync mode, as under WSGI (every view is sync), and run by
    one `sync_to_async`; and each request borrows one of `HANDOFF_HTTP_THREADS` long-lived
    threads for all of its sync code, the request's signals included, so a thread keeps its
    database connection between requests (for `DATABASE_CONN_MAX_AGE`, checked by Django's
    `close_old_connections` at each request's start and end). Requests beyond that many wait
    for a thread on the event loop, where waiting costs nothing. Few threads (two by
    default), because they take turns at one interpreter with the event loop: the more of
    them run Python at once, the longer the loop waits for its turn after each socket write
    (bench/README.md, ninth round).
    """

    def __init__(self) -> None:
        self._free: asyncio.Queue[ThreadPoolExecutor] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        super().__init__()

    def load_middleware(self, is_async: bool = False) -> None:
        super().load_middleware(is_async=False)  # the sync chain, whatever the server

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            raise ValueError(f"Django can only handle ASGI/HTTP connections, not {scope['type']}.")
        free = self._threads()
        thread = await free.get()
        try:
            async with ThreadSensitiveContext(executor=thread):
                await self.handle(scope, receive, send)
        finally:
            free.put_nowait(thread)

    async def get_response_async(self, request):
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    def _threads(self) -> asyncio.Queue[ThreadPoolExecutor]:
        # Made in the server's event loop on first use (a queue belongs to one loop).
        loop = asyncio.get_running_loop()
        if self._free is None or self._loop is not loop:
            self._loop, self._free = loop, asyncio.Queue()
            for n in range(settings.HANDOFF_HTTP_THREADS):
                self._free.put_nowait(
                    ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"http-{n}")
                )
        return self._free
