"""The agent console's socket, `/ws/console/` (SPEC §5): it only moves events.

Events reach this socket through its process's hub (`broadcast.Hub`), which receives each
batch once for all the consoles of the process, coalesces what arrives within a short
window and sends it as one `batch` frame: a card changed twice in the window goes out once
at its newest version. Each console then drops what it has already shown (counters that
did not change, card versions it has) and the messages of conversations it does not watch.
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from importlib import import_module
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.contrib.auth import HASH_SESSION_KEY, SESSION_KEY, get_user_model
from django.utils.crypto import constant_time_compare

from conversations import services
from conversations.models import Conversation
from dashboard import broadcast, cards
from handoff import inprocess_beat
from handoff.db import DirectDispatch, db
from handoff.layer import ClosesWhenLayerLost

logger = logging.getLogger(__name__)

CLOSE_FORBIDDEN = 4403
MAX_WATCHED = 20


def same_origin(scope: dict) -> bool:
    """A page of another site must not open an agent's console with the agent's cookie.

    Browsers always send Origin on a socket handshake; it must name this host. A client
    without Origin is not a browser page, so no third party's page is driving it.
    """
    headers = dict(scope.get("headers", []))
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if not origin:
        return True
    return urlsplit(origin).netloc.lower() == headers.get(b"host", b"").decode("latin-1").lower()


class ConsoleConsumer(DirectDispatch, ClosesWhenLayerLost, AsyncWebsocketConsumer):
    """One agent's console: a snapshot, then live cards, counters, modes and toasts."""

    user = None
    hub: broadcast.Hub | None = None
    # Hub batches wait in `held` while a snapshot is read and sent: the snapshot goes first.
    live = False
    held: list[dict]
    watched: set[str]
    reauth_task: asyncio.Task | None = None
    last_counters: dict | None = None
    # The newest version of each card this socket has shown: a card is published once per
    # domain event, so one change (a claim and its "has joined" message) can arrive twice.
    sent_versions: dict[str, int]

    async def connect(self) -> None:
        inprocess_beat.ensure_started()
        self.watched, self.sent_versions, self.held = set(), {}, []
        user = self.scope.get("user")
        if not same_origin(self.scope) or not await db(services.is_agent)(user):
            await self.accept()
            await self.close(code=CLOSE_FORBIDDEN)
            return
        self.user = user
        self.hub = broadcast.hub_for(self.channel_layer)
        await self.hub.add(self)
        await self.accept()
        await self.send_snapshot()
        self.reauth_task = asyncio.ensure_future(self.reauthenticate())

    async def disconnect(self, code: int) -> None:
        if self.reauth_task:
            self.reauth_task.cancel()
        if self.user is None:
            return
        if self.hub is not None:
            await self.hub.discard(self)

    async def reauthenticate(self) -> None:
        """Close with 4403 once the agent logs out, is deactivated or stops being an agent.

        The session was checked once, at connect; a socket outlives it by hours otherwise.
        """
        while True:
            await asyncio.sleep(settings.CONSOLE_REAUTH_SECONDS)
            if not await db(self._still_an_agent)():
                logger.info("console socket closed: agent %s no longer signed in", self.user.pk)
                await self.close(code=CLOSE_FORBIDDEN)
                return

    def _still_an_agent(self) -> bool:
        """Read the session, the user row and the password hash afresh (changing nothing)."""
        session = import_module(settings.SESSION_ENGINE).SessionStore(
            self.scope["session"].session_key
        )
        if str(session.get(SESSION_KEY)) != str(self.user.pk):
            return False  # logged out, expired, or another login
        user = get_user_model()._default_manager.filter(pk=self.user.pk).first()
        if not services.is_agent(user):
            return False  # deleted, deactivated, or no longer staff nor in Agents
        stored = session.get(HASH_SESSION_KEY) or ""
        hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
        return any(constant_time_compare(stored, known) for known in hashes)  # password changed

    # --- Frames in ----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        try:
            content = json.loads(text_data) if text_data is not None else None
        except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the stack
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
        self.live = False
        try:
            await self._send_snapshot()
        finally:
            self.live = True
        held, self.held = self.held, []
        await self.send_events(self.select(held))

    async def _send_snapshot(self, snapshot: dict | None = None) -> None:
        snapshot = snapshot or await db(cards.snapshot)()
        self.last_counters = snapshot["counters"]
        self.sent_versions = {
            card["id"]: card["version"]
            for service in snapshot["services"]
            for card in service["conversations"]
        }
        await self.send_json(snapshot)

    async def resync(self, snapshot: dict) -> None:
        """The hub's fresh snapshot, read once for all its consoles after it missed batches.

        Not while this console reads its own (at connect or on `resync`), which is newer.
        """
        if self.live:
            await self._send_snapshot(snapshot)

    async def set_watch(self, conversation_id: object, on: bool) -> None:
        try:
            key = str(uuid.UUID(str(conversation_id)))
        except ValueError:
            await self.send_json(
                {"type": "error", "code": "not_found", "detail": "No such conversation."}
            )
            return
        if not on:
            self.watched.discard(key)
            return
        exists = await db(Conversation.objects.filter(pk=key).exists)()
        if not exists:
            await self.send_json(
                {"type": "error", "code": "not_found", "detail": "No such conversation."}
            )
            return
        if key not in self.watched and len(self.watched) >= MAX_WATCHED:
            self.watched.discard(next(iter(self.watched)))  # the one watched longest
        self.watched.add(key)

    # --- Events out ---------------------------------------------------------------------

    def from_hub(self, events: list[dict]) -> list[dict]:
        """What to send now of a batch from the hub (nothing while a snapshot is under way)."""
        if not self.live:
            self.held.extend(events)
            return []
        return self.select(events)

    def select(self, events: list[dict]) -> list[dict]:
        """The events this console has not seen yet; records them as seen."""
        outgoing = []
        for event in events:
            if event["type"] == "counters":
                if event["counters"] == self.last_counters:
                    continue
                self.last_counters = event["counters"]
            elif event["type"] == "card":
                card_id, version = event["card"]["id"], event["card"]["version"]
                if self.sent_versions.get(card_id, -1) >= version:
                    continue  # this console already shows this version or a newer one
                self.sent_versions[card_id] = version
            elif event["type"] == "card_removed":
                self.sent_versions.pop(event["id"], None)
            elif event["type"] == "message" and event["conversation_id"] not in self.watched:
                continue  # a transcript line goes only to the consoles watching it
            outgoing.append(event)
        return outgoing

    async def send_events(self, events: list[dict], text: str | None = None) -> None:
        """Send events as one frame; the hub passes the text it encoded once for many."""
        if events:
            await self.send(text_data=text or broadcast.frame_text(events))

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))
