"""The console's wire format (SPEC §5) and the only code that sends it.

Every console event is built here and reaches the consoles through the `console` group:
cards, counters, modes, toasts, and the messages of every conversation, which each console
passes on only if it watches that conversation. Layer messages are typed `console.event`;
a client can never choose what is sent to a group.

Fan-out is batched at both ends, because per-event, per-socket work is what limits a
Channels app (bench/README.md):
- producers (a web process, each worker process) queue what changed in an `Outbox`: the
  ids of changed cards, whether counters may have changed, and ready-made events (toasts,
  modes, transcript lines from the message as it was stored). Its thread sends them at most
  every `BATCH_SECONDS` as one layer message, without a query;
- each web process has one `Hub` in the `console` group (not one member per console): it
  merges the batches that arrive within `HUB_SECONDS`, reads every changed card (and the
  counters) once, in two or three queries, at their newest state, and hands the result to
  every console of the process, encoding the frame once for all of them. Cards changed by
  several producers in one window (a customer's message in the web process, the AI's reply
  in a worker) are read once.
On the in-memory layer (the embedded default, the tests) batches go out immediately from the
calling thread: that layer's queues may only be touched from their event loop.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import itertools
import json
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol, TypedDict

from channels.layers import InMemoryChannelLayer, get_channel_layer

from conversations.models import Message, Service, Status
from dashboard import cards
from escalation.models import Flag
from handoff.db import db
from handoff.layer import sender as layer_sender

logger = logging.getLogger(__name__)

CONSOLE_GROUP = "console"
PREVIEW_LENGTH = 140
# At most one batch per this long from each producer, and one frame per this long from each
# hub; whatever arrives after a quiet spell goes out at once (after GATHER_SECONDS, so the
# events of one commit travel together).
BATCH_SECONDS = 0.04
HUB_SECONDS = 0.02
GATHER_SECONDS = 0.003
# The core Redis layer forgets group members after a day; the hub re-joins well before.
HUB_REJOIN_SECONDS = 3600
# A hub that missed batches (a layer over capacity drops them) sends its consoles a fresh
# snapshot, at most this often: under sustained overload, one read serves many losses.
RESYNC_SECONDS = 5.0


class CardEvent(TypedDict):
    type: Literal["card"]
    card: cards.Card


class CardRemovedEvent(TypedDict):
    type: Literal["card_removed"]
    id: str
    service: str


class CountersEvent(TypedDict):
    type: Literal["counters"]
    counters: cards.Counters


class ServiceEvent(TypedDict):
    type: Literal["service"]
    service: cards.ServiceInfo


class AttentionEvent(TypedDict):
    type: Literal["attention"]
    conversation_id: str
    service: str
    service_name: str
    reasons: list[str]
    labels: list[str]
    new: bool
    preview: str


class MessageEvent(TypedDict):
    type: Literal["message"]
    conversation_id: str
    message: cards.MessagePayload


ConsoleEvent = (
    CardEvent | CardRemovedEvent | CountersEvent | ServiceEvent | AttentionEvent | MessageEvent
)


# --- Building events ---------------------------------------------------------------------------


def card_events(conversation_ids: Iterable) -> list[CardEvent | CardRemovedEvent]:
    """Each conversation's current card, or its removal once closed, in two queries."""
    wanted = [str(pk) for pk in conversation_ids]
    if not wanted:
        return []
    found = {card["id"]: (card, status) for card, status in cards.cards_by_id(wanted)}
    events: list[CardEvent | CardRemovedEvent] = []
    for pk in wanted:
        if pk not in found:
            continue  # deleted meanwhile: nothing to show
        card, status = found[pk]
        if status == Status.CLOSED:
            events.append({"type": "card_removed", "id": pk, "service": card["service"]})
        else:
            events.append({"type": "card", "card": card})
    return events


def message_event(message: Message) -> MessageEvent:
    """A new transcript line, from the message as it was stored (no query)."""
    return {
        "type": "message",
        "conversation_id": str(message.conversation_id),
        "message": cards.message_payload(message),
    }


# --- Producing: the outbox ---------------------------------------------------------------------


@dataclass
class Pending:
    """What waits for the next batch (in an outbox, or in a hub: there without `messages`).

    Cards by id, so a card queued twice is read and sent once, at its newest state.
    """

    card_ids: dict[str, None] = field(default_factory=dict)
    counters: bool = False
    events: list[ConsoleEvent] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.card_ids or self.counters or self.events or self.messages)


def outgoing(pending: Pending) -> dict:
    """An outbox's batch as one layer message: the cards to read and ready-made events."""
    return {
        "type": "console.event",
        "cards": list(pending.card_ids),
        "counters": pending.counters,
        "events": [*pending.events, *(message_event(m) for m in pending.messages)],
    }


def incoming(pending: Pending, message: dict) -> None:
    """Add a batch received from the layer to what a hub has pending."""
    pending.card_ids.update(dict.fromkeys(message["cards"]))
    pending.counters = pending.counters or message["counters"]
    pending.events.extend(message["events"])


def build(pending: Pending) -> list[ConsoleEvent]:
    """A hub's events: the cards and counters read now (so at their newest state) first."""
    events: list[ConsoleEvent] = [*card_events(pending.card_ids)]
    if pending.counters:
        events.append({"type": "counters", "counters": cards.counters()})
    # Toasts after the cards, so a console shows the flagged card with its toast.
    events.extend(pending.events)
    return events


class Outbox:
    """This process's console events, sent in batches by a thread of their own.

    Callers (subscribers, after commit) only queue ids and ready-made events, so the
    request or task that caused the change does no console work at all. The thread hands
    each batch to the process's sender (handoff/layer.py); the hubs read the cards.
    """

    def __init__(self) -> None:
        self._reset()
        # A forked child (a Celery worker process) inherits the queue but not the thread.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.ready = threading.Condition(self.lock)
        self.pending = Pending()
        self.thread: threading.Thread | None = None
        # The thread numbers its batches, so that a hub notices one the layer dropped.
        self.source = secrets.token_hex(6)
        self.numbers = itertools.count(1)

    def queue(self, change: Callable[[Pending], None]) -> None:
        layer = get_channel_layer()
        if layer is None:
            return
        if isinstance(layer, InMemoryChannelLayer):
            # Its queues belong to the caller's event loop: send from here, at once.
            pending = Pending()
            change(pending)
            self._flush(pending)
            return
        with self.lock:
            change(self.pending)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="console-outbox", daemon=True)
                self.thread.start()
            self.ready.notify()

    def _take(self) -> Pending:
        with self.lock:
            pending, self.pending = self.pending, Pending()
        return pending

    def _run(self) -> None:
        last = 0.0
        while True:
            with self.ready:
                while not self.pending:
                    self.ready.wait()
            time.sleep(max(GATHER_SECONDS, last + BATCH_SECONDS - time.monotonic()))
            last = time.monotonic()
            pending = self._take()
            if pending:
                self._flush(pending, {"source": self.source, "n": next(self.numbers)})

    def _flush(self, pending: Pending, numbered: dict | None = None) -> None:
        # After commit: a layer that is down must not undo what was stored (the sender logs
        # it); consoles resync when they reconnect.
        if pending:
            layer_sender.group_send(CONSOLE_GROUP, {**outgoing(pending), **(numbered or {})})

    def drain(self) -> None:
        """Send what is still queued (at exit), from the calling thread."""
        pending = self._take()
        if pending:
            with contextlib.suppress(Exception):
                self._flush(pending)
        layer_sender.drain()


outbox = Outbox()
atexit.register(outbox.drain)


def send_card(conversation_id) -> None:
    """Send the conversation's current card, or its removal once it is closed."""
    outbox.queue(lambda p: p.card_ids.setdefault(str(conversation_id), None))


def send_counters() -> None:
    outbox.queue(lambda p: setattr(p, "counters", True))


def send_service(service: Service) -> None:
    event: ServiceEvent = {"type": "service", "service": cards.service_info(service)}
    outbox.queue(lambda p: p.events.append(event))


def send_message(message: Message) -> None:
    """A new transcript line, for the consoles watching its conversation."""
    outbox.queue(lambda p: p.messages.append(message))


def send_attention(flag: Flag, *, new: bool) -> None:
    """A toast on every console (and a sound when `new`): a flag was just raised."""
    conversation = flag.conversation
    preview = flag.message.text if flag.message_id else conversation.opening_question
    event: AttentionEvent = {
        "type": "attention",
        "conversation_id": str(conversation.id),
        "service": conversation.service.slug,
        "service_name": conversation.service.name,
        "reasons": [flag.reason],
        "labels": [flag.get_reason_display()],
        "new": new,
        "preview": preview[:PREVIEW_LENGTH],
    }
    outbox.queue(lambda p: p.events.append(event))


# --- Receiving: one hub per web process ----------------------------------------------------------


class Console(Protocol):
    """What the hub needs of a console consumer."""

    def from_hub(self, events: list[dict]) -> list[dict]: ...

    async def send_events(self, events: list[dict], text: str | None = None) -> None: ...

    async def resync(self, snapshot: dict) -> None: ...

    async def close(self, code: int | None = None) -> None: ...


class Hub:
    """This process's member of the `console` group, fanning each batch out to its consoles."""

    def __init__(self, layer, loop: asyncio.AbstractEventLoop) -> None:
        self.layer, self.loop = layer, loop
        self.consoles: set[Console] = set()
        self.pending = Pending()
        # One flush at a time, so batches reach the consoles in the order they came.
        self.flushing = asyncio.Lock()
        self.flush_handle: asyncio.TimerHandle | None = None
        self.flushed_at = 0.0
        self.task: asyncio.Task | None = None
        self.joined: asyncio.Future | None = None
        # The last batch number seen from each producer, and whether one went missing.
        self.numbers: dict[str, int] = {}
        self.missed = False
        self.resynced_at = -RESYNC_SECONDS
        self.resync_handle: asyncio.TimerHandle | None = None

    async def add(self, console: Console) -> None:
        self.consoles.add(console)
        if self.task is None or self.task.done():
            self.joined = self.loop.create_future()
            self.task = asyncio.ensure_future(self._run(self.joined))
        # Joined before the console reads its snapshot, so no change falls in between.
        await asyncio.shield(self.joined)

    async def discard(self, console: Console) -> None:
        self.consoles.discard(console)
        if not self.consoles:
            # Whoever connects next starts from a snapshot of its own.
            self.missed, self.numbers = False, {}
        if not self.consoles and self.task is not None:
            task, self.task = self.task, None
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def _run(self, joined: asyncio.Future) -> None:
        channel = None
        try:
            channel = await self.layer.new_channel()
            await self.layer.group_add(CONSOLE_GROUP, channel)
            joined.set_result(None)
            rejoin = time.monotonic() + HUB_REJOIN_SECONDS
            while True:
                message = await self.layer.receive(channel)
                if message.get("type") == "console.event":
                    self.take(message)
                elif message.get("type") == "layer.lost":
                    raise ConnectionError("the channel layer may have lost messages")
                if time.monotonic() > rejoin:
                    await self.layer.group_add(CONSOLE_GROUP, channel)
                    rejoin = time.monotonic() + HUB_REJOIN_SECONDS
        except asyncio.CancelledError:
            if not joined.done():
                joined.cancel()
            raise
        except Exception:
            # The layer went away: close the consoles so they reconnect and resync, as a
            # console whose own channel failed would.
            logger.exception("console hub lost its channel layer")
            if not joined.done():
                joined.set_exception(RuntimeError("console hub could not join"))
            await self._close_consoles()
        finally:
            if channel is not None:
                with contextlib.suppress(BaseException):
                    await asyncio.shield(self.layer.group_discard(CONSOLE_GROUP, channel))

    def take(self, message: dict) -> None:
        self._count(message)
        incoming(self.pending, message)
        self._flush_after(max(GATHER_SECONDS, self.flushed_at + HUB_SECONDS - self.loop.time()))

    def _count(self, message: dict) -> None:
        """Notice a batch that never came: the layer drops what overflows a channel."""
        source, number = message.get("source"), message.get("n")
        if source is None or not isinstance(number, int):
            return
        last = self.numbers.get(source)
        self.numbers[source] = max(number, last or 0)
        if last is not None and number > last + 1:
            logger.warning(
                "console hub missed %d batch(es) from %s; its consoles resync",
                number - last - 1,
                source,
            )
            self.missed = True

    def _flush_after(self, delay: float) -> None:
        if self.flush_handle is None:
            self.flush_handle = self.loop.call_later(
                delay, lambda: asyncio.ensure_future(self.flush())
            )

    def _resync_due(self) -> None:
        self.resync_handle = None
        asyncio.ensure_future(self.flush())

    async def flush(self) -> None:
        self.flush_handle = None
        async with self.flushing:
            pending, self.pending = self.pending, Pending()
            resync = self.missed and self.loop.time() >= self.resynced_at + RESYNC_SECONDS
            if self.missed and not resync and self.resync_handle is None:
                self.resync_handle = self.loop.call_later(
                    self.resynced_at + RESYNC_SECONDS - self.loop.time(), self._resync_due
                )
            if not (pending or resync):
                return
            self.flushed_at = self.loop.time()
            try:
                if resync:
                    self.missed, self.resynced_at = False, self.loop.time()
                    snapshot = await db(cards.snapshot)()
                    # The snapshot holds every card and the counters as they are now; what
                    # it cannot hold (toasts, modes, transcript lines) follows it.
                    events = list(pending.events)
                else:
                    events = await db(build)(pending)
            except Exception:
                # Updates would be missing: let the consoles reconnect and resync.
                logger.exception("could not read console events")
                await self._close_consoles()
                return
            if resync:
                for console in list(self.consoles):
                    try:
                        await console.resync(snapshot)
                    except Exception:
                        logger.exception("could not resync a console")
            encoded: dict[tuple[int, ...], str] = {}
            for console in list(self.consoles):
                chosen = console.from_hub(events)
                if not chosen:
                    continue
                # Usually every console gets the same events: encode them once for all.
                key = tuple(id(e) for e in chosen)
                if key not in encoded:
                    encoded[key] = frame_text(chosen)
                try:
                    await console.send_events(chosen, encoded[key])
                except Exception:
                    logger.exception("could not send to a console")

    async def _close_consoles(self) -> None:
        for console in list(self.consoles):
            with contextlib.suppress(Exception):
                await console.close(code=1011)


def frame_text(events: list[dict]) -> str:
    """One event as itself, several as a `batch` frame."""
    return json.dumps(events[0] if len(events) == 1 else {"type": "batch", "events": events})


_hubs: dict[tuple[int, int], Hub] = {}


def hub_for(layer) -> Hub:
    """The hub of the running event loop and this layer (tests get one per loop)."""
    loop = asyncio.get_running_loop()
    key = (id(loop), id(layer))
    hub = _hubs.get(key)
    if hub is None or hub.loop is not loop or hub.layer is not layer:
        for stale in [k for k, h in _hubs.items() if h.loop.is_closed()]:
            del _hubs[stale]
        hub = _hubs[key] = Hub(layer, loop)
    return hub
