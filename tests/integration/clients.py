"""Browser-like clients over real sockets: they reconnect by themselves, like the real ones.

`BrowserWidget` behaves as `handoff-widget.js`: exponential backoff with jitter, `hello` with
the last seq it holds, never renders a seq twice, and re-sends unacknowledged messages with
the same `client_id`. `BrowserConsole` behaves as `console.js`: a snapshot on every connect,
cards applied by version, and the watched transcript filled over REST after a reconnect.

The list of URLs plays the load balancer: a client that cannot reach one server tries the
next, as a browser behind a balancer would land on a healthy web process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import uuid
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Callable

import httpx
import websockets

BACKOFF_MIN = 0.1  # the browsers start at 0.5 s; shorter here to keep the suite fast
BACKOFF_MAX = 1.0
WIDGET_ORIGIN = "https://shop.example"


class ReconnectingClient(ABC):
    """A socket that keeps reconnecting until closed, with waiters on its state."""

    path = "/"

    def __init__(self, urls: list[str], *, headers: dict[str, str] | None = None) -> None:
        self.urls, self.headers = urls, headers or {}
        self.url_index = 0
        self.socket: websockets.ClientConnection | None = None
        self.connections = 0
        self.closes: list[int | None] = []
        self.changed = asyncio.Condition()
        self.task: asyncio.Task | None = None
        self.closing = False

    # --- lifecycle ----------------------------------------------------------------------

    async def start(self, timeout: float = 10) -> None:
        self.task = asyncio.create_task(self._run())
        await self.wait_for(lambda: self.ready, timeout, "the first connection")

    async def close(self) -> None:
        self.closing = True
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.socket.close()
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task

    async def __aenter__(self):
        await self.start()
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    @property
    @abstractmethod
    def ready(self) -> bool:
        """True once the client has what its first connection should give it."""

    async def _run(self) -> None:
        attempt = 0
        while not self.closing:
            url = self.urls[self.url_index % len(self.urls)] + self.path
            try:
                async with websockets.connect(
                    url,
                    additional_headers=self.headers,
                    ping_interval=None,  # browsers never ping; the server's pings are answered
                    open_timeout=3,
                    max_size=2**22,
                ) as socket:
                    self.socket = socket
                    self.connections += 1
                    await self.on_open(socket)
                    async for raw in socket:
                        frame = json.loads(raw)
                        if await self.on_frame(frame):
                            attempt = 0
                        await self._notify()
            except (OSError, websockets.WebSocketException, TimeoutError) as error:
                code = getattr(getattr(error, "rcvd", None), "code", None)
                self.closes.append(code)
                # A server that refused us or went away: the balancer sends us elsewhere.
                self.url_index += 1
            else:
                self.closes.append(socket.close_code)
            finally:
                self.socket = None
                self.on_close()
                await self._notify()
            if self.closing:
                return
            cap = min(BACKOFF_MAX, BACKOFF_MIN * 2**attempt)
            attempt += 1
            await asyncio.sleep(cap / 2 + random.random() * cap / 2)

    async def on_open(self, socket) -> None:  # noqa: B027 - an optional hook
        """Called after each (re)connection, before frames are read."""

    @abstractmethod
    async def on_frame(self, frame: dict) -> bool:
        """Apply one frame; True when it proves the connection healthy (resets the backoff)."""

    def on_close(self) -> None:  # noqa: B027 - an optional hook
        """Called when a connection ends."""

    async def send(self, frame: dict) -> bool:
        socket = self.socket
        if socket is None or not self.ready:
            return False
        try:
            await socket.send(json.dumps(frame))
        except websockets.ConnectionClosed:
            return False
        return True

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    async def wait_for(self, predicate: Callable[[], object], timeout: float, what: str):
        """Wait until `predicate()` is truthy (re-checked on every frame and reconnect)."""
        try:
            async with asyncio.timeout(timeout):
                async with self.changed:
                    while not (result := predicate()):
                        await self.changed.wait()
                    return result
        except TimeoutError:
            raise AssertionError(f"{type(self).__name__}: {what} within {timeout} s") from None


class BrowserWidget(ReconnectingClient):
    """The customer's widget on a page of the shop."""

    def __init__(self, urls: list[str], slug: str) -> None:
        super().__init__(urls, headers={"Origin": WIDGET_ORIGIN})
        self.path = f"/ws/chat/{slug}/"
        self.token: str | None = None
        self.conversation_id: str | None = None
        self.connected = False
        self.messages: dict[int, dict] = {}
        self.seen: Counter[int] = Counter()  # every seq each time it arrived, to catch repeats
        self.pending: dict[str, str] = {}  # client_id -> text, until the server stored it
        self.status: dict = {}
        self.errors: list[dict] = []

    @property
    def ready(self) -> bool:
        return self.connected

    @property
    def last_seq(self) -> int:
        return max(self.messages, default=0)

    async def on_open(self, socket) -> None:
        hello = {
            "type": "hello",
            "visitor_token": self.token,
            "last_seq": self.last_seq,
            "timezone": "Europe/Berlin",
        }
        await socket.send(json.dumps(hello))

    async def on_frame(self, frame: dict) -> bool:
        kind = frame["type"]
        if kind == "ready":
            self.token = frame["visitor_token"]
            self.conversation_id = frame["conversation_id"] or self.conversation_id
            self.connected = True
            # After `ready` and the replay: re-send what was never acknowledged, same ids.
            for client_id, text in list(self.pending.items()):
                await self._transmit(client_id, text)
            return True
        if kind == "message":
            seq = frame["seq"]
            self.seen[seq] += 1
            self.messages.setdefault(seq, frame)
            if frame.get("client_id"):
                self.pending.pop(frame["client_id"], None)
        elif kind == "status":
            self.status = frame
            self.conversation_id = frame.get("conversation_id") or self.conversation_id
        elif kind == "error":
            self.errors.append(frame)
        return False

    def on_close(self) -> None:
        self.connected = False

    async def _transmit(self, client_id: str, text: str) -> None:
        socket = self.socket
        if socket is not None:
            with contextlib.suppress(websockets.ConnectionClosed):
                await socket.send(
                    json.dumps({"type": "message", "text": text, "client_id": client_id})
                )

    async def say(self, text: str) -> str:
        """Queue a message (sent now if connected, else after the next `ready`)."""
        client_id = str(uuid.uuid4())
        self.pending[client_id] = text
        if self.connected:
            await self._transmit(client_id, text)
        return client_id

    async def stored(self, client_id: str, timeout: float = 10) -> dict:
        """The server's copy of our message, once it arrived."""
        return await self.wait_for(
            lambda: next(
                (m for m in self.messages.values() if m.get("client_id") == client_id), None
            ),
            timeout,
            f"message {client_id} stored",
        )

    async def says(self, text: str, timeout: float = 10) -> dict:
        return await self.stored(await self.say(text), timeout)

    async def message(self, predicate: Callable[[dict], bool], timeout: float = 10) -> dict:
        return await self.wait_for(
            lambda: next((m for m in self.messages.values() if predicate(m)), None),
            timeout,
            "a matching message",
        )

    def transcript(self) -> list[tuple[int, str, str]]:
        return [(seq, m["role"], m["text"]) for seq, m in sorted(self.messages.items())]

    def repeated(self) -> list[int]:
        """Seqs the server delivered more than once over this widget's lifetime."""
        return sorted(seq for seq, count in self.seen.items() if count > 1)


class BrowserConsole(ReconnectingClient):
    """An agent's console page: cards and counters, and one open conversation."""

    path = "/ws/console/"

    def __init__(self, urls: list[str], session_cookie: str) -> None:
        super().__init__(urls, headers={"Cookie": session_cookie})
        self.cookie = session_cookie
        self.snapshots = 0
        self.live = False
        self.cards: dict[str, dict] = {}
        self.counters: dict = {}
        self.events: list[dict] = []  # every event applied, batches flattened, in order
        self.watched: str | None = None
        self.messages: dict[int, dict] = {}
        self.fills: set[asyncio.Task] = set()

    @property
    def ready(self) -> bool:
        return self.live

    def on_close(self) -> None:
        self.live = False

    async def on_frame(self, frame: dict) -> bool:
        if frame["type"] == "snapshot":
            self.snapshots += 1
            self.counters = frame["counters"]
            self.cards = {
                card["id"]: card
                for service in frame["services"]
                for card in service["conversations"]
            }
            self.live = True
            await self._sync_watch()
            return True
        for event in frame["events"] if frame["type"] == "batch" else [frame]:
            self._apply(event)
        return False

    def _apply(self, event: dict) -> None:
        self.events.append(event)
        kind = event["type"]
        if kind == "card":
            card = event["card"]
            current = self.cards.get(card["id"])
            if current is None or current["version"] < card["version"]:
                self.cards[card["id"]] = card
        elif kind == "card_removed":
            self.cards.pop(event["id"], None)
        elif kind == "counters":
            self.counters = event["counters"]
        elif kind == "message" and event["conversation_id"] == self.watched:
            message = event["message"]
            before = max(self.messages, default=0)
            self.messages.setdefault(message["seq"], message)
            if message["seq"] > before + 1:
                self._fill()  # a gap: fetch what is missing, as console.js does

    async def watch(self, conversation_id: str) -> None:
        """Open a conversation in the panel: watch it and load its transcript."""
        self.watched, self.messages = conversation_id, {}
        await self._sync_watch()

    async def _sync_watch(self) -> None:
        if self.watched and await self.send({"type": "watch", "conversation_id": self.watched}):
            # A new socket missed whatever was said while we were away: fill it over REST.
            self._fill()

    def _fill(self) -> None:
        task = asyncio.create_task(self._load_messages())
        self.fills.add(task)
        task.add_done_callback(self.fills.discard)

    async def _load_messages(self) -> None:
        conversation_id = self.watched
        base = self.urls[self.url_index % len(self.urls)].replace("ws://", "http://", 1)
        after = 0  # after the last contiguous seq, as console.js's `checkGap` does
        while after + 1 in self.messages:
            after += 1
        url = f"{base}/api/v1/conversations/{conversation_id}/messages/?after_seq={after}"
        try:
            async with httpx.AsyncClient(headers={"Cookie": self.cookie}, timeout=5) as client:
                while url:
                    response = await client.get(url)
                    response.raise_for_status()
                    page = response.json()
                    for message in page["results"]:
                        if self.watched == conversation_id:
                            self.messages.setdefault(message["seq"], message)
                    url = page["next"]
        except httpx.HTTPError:
            pass  # the next reconnect fills again
        finally:
            self.fills.discard(asyncio.current_task())
            await self._notify()

    def claim_cards(self, conversation_id: str) -> list[dict]:
        """Every card event that showed the conversation claimed."""
        return [
            e["card"]
            for e in self.events
            if e["type"] == "card"
            and e["card"]["id"] == conversation_id
            and e["card"]["claimed_by"] is not None
        ]

    def transcript(self) -> list[tuple[int, str, str]]:
        return [(seq, m["role"], m["text"]) for seq, m in sorted(self.messages.items())]
