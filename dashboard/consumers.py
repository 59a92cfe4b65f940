"""The agent console's socket, `/ws/console/` (SPEC §5): it only moves events.

Events from the groups are coalesced for a short window and sent as one `batch` frame:
a card changed twice in the window goes out once at its newest version, and counters go
out only when they differ from what this console last saw.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from conversations import services
from conversations.models import Conversation
from dashboard import broadcast, cards
from handoff import inprocess_beat

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
COALESCE_SECONDS = 0.05
MAX_WATCHED = 20


class ConsoleConsumer(AsyncWebsocketConsumer):
    """One agent's console: a snapshot, then live cards, counters, modes and toasts."""

    user = None
    watched: set[str]
    pending: list[dict]
    flush_handle: asyncio.TimerHandle | None = None
    last_counters: dict | None = None

    async def connect(self) -> None:
        inprocess_beat.ensure_started()
        self.watched, self.pending = set(), []
        user = self.scope.get("user")
        if not await database_sync_to_async(services.is_agent)(user):
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user = user
        await self.channel_layer.group_add(broadcast.CONSOLE_GROUP, self.channel_name)
        await self.accept()
        await self.send_snapshot()

    async def disconnect(self, code: int) -> None:
        if self.flush_handle:
            self.flush_handle.cancel()
        if self.user is None:
            return
        await self.channel_layer.group_discard(broadcast.CONSOLE_GROUP, self.channel_name)
        for conversation_id in list(self.watched):
            await self.channel_layer.group_discard(
                broadcast.watch_group(conversation_id), self.channel_name
            )

    # --- Frames in ----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            content = json.loads(text_data) if text_data is not None else None
        except ValueError:
            content = None
        if not isinstance(content, dict):
            await self.send_json(
                {"type": "error", "code": "bad_json", "detail": "Frames must be JSON objects."}
            )
            return
        kind = content.get("type")
        try:
            if kind == "resync":
                await self.send_snapshot()
            elif kind in {"watch", "unwatch"}:
                await self.set_watch(content.get("conversation_id"), kind == "watch")
            elif kind == "ping":
                await self.send_json({"type": "pong"})
            else:
                await self.send_json(
                    {"type": "error", "code": "unknown_type", "detail": "Unknown frame type."}
                )
        except Exception:
            logger.exception("console frame %s failed", kind)
            await self.send_json(
                {"type": "error", "code": "internal", "detail": "Something went wrong."}
            )

    async def send_snapshot(self) -> None:
        snapshot = await database_sync_to_async(cards.snapshot)()
        # A snapshot supersedes anything still waiting in the coalescing buffer.
        self.pending = []
        self.last_counters = snapshot["counters"]
        await self.send_json(snapshot)

    async def set_watch(self, conversation_id: object, on: bool) -> None:
        try:
            key = str(uuid.UUID(str(conversation_id)))
        except ValueError:
            await self.send_json(
                {"type": "error", "code": "not_found", "detail": "No such conversation."}
            )
            return
        group = broadcast.watch_group(key)
        if not on:
            self.watched.discard(key)
            await self.channel_layer.group_discard(group, self.channel_name)
            return
        exists = await database_sync_to_async(Conversation.objects.filter(pk=key).exists)()
        if not exists:
            await self.send_json(
                {"type": "error", "code": "not_found", "detail": "No such conversation."}
            )
            return
        if key not in self.watched and len(self.watched) >= MAX_WATCHED:
            oldest = next(iter(self.watched))
            await self.set_watch(oldest, False)
        self.watched.add(key)
        await self.channel_layer.group_add(group, self.channel_name)

    # --- Events out ---------------------------------------------------------------------

    async def console_event(self, message: dict) -> None:
        event = message["event"]
        self.coalesce(event)
        if self.flush_handle is None:
            loop = asyncio.get_running_loop()
            self.flush_handle = loop.call_later(
                COALESCE_SECONDS, lambda: asyncio.ensure_future(self.flush())
            )

    def coalesce(self, event: dict) -> None:
        kind = event["type"]
        if kind == "card":
            card_id, version = event["card"]["id"], event["card"]["version"]
            for earlier in self.pending:
                same = earlier["type"] == "card" and earlier["card"]["id"] == card_id
                if same and earlier["card"]["version"] >= version:
                    return
            self.pending = [
                e for e in self.pending if not (e["type"] == "card" and e["card"]["id"] == card_id)
            ]
        elif kind == "card_removed":
            self.pending = [
                e
                for e in self.pending
                if not (e["type"] == "card" and e["card"]["id"] == event["id"])
            ]
        elif kind == "counters":
            self.pending = [e for e in self.pending if e["type"] != "counters"]
        self.pending.append(event)

    async def flush(self) -> None:
        self.flush_handle = None
        events, self.pending = self.pending, []
        outgoing = []
        for event in events:
            if event["type"] == "counters":
                if event["counters"] == self.last_counters:
                    continue
                self.last_counters = event["counters"]
            outgoing.append(event)
        if not outgoing:
            return
        if len(outgoing) == 1:
            await self.send_json(outgoing[0])
        else:
            await self.send_json({"type": "batch", "events": outgoing})

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))
