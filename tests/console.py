"""A console client over `WebsocketCommunicator`, and Zulip-style event verification."""

from __future__ import annotations

import copy
import json

from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
from django.contrib.sessions.backends.db import SessionStore

from handoff.asgi import application


def session_cookie(user) -> bytes:
    """A logged-in session for `user`, as the browser would send it."""
    session = SessionStore()
    session[SESSION_KEY] = str(user.pk)
    session[BACKEND_SESSION_KEY] = "django.contrib.auth.backends.ModelBackend"
    session[HASH_SESSION_KEY] = user.get_session_auth_hash()
    session.save()
    return f"{settings.SESSION_COOKIE_NAME}={session.session_key}".encode()


class Console:
    """Speaks SPEC §5 to the real ASGI app as one agent's browser."""

    def __init__(self, user=None):
        self.user = user
        self.communicator: WebsocketCommunicator | None = None
        self.snapshot: dict | None = None

    async def connect(self) -> tuple[bool, int | None]:
        headers = [(b"host", b"testserver"), (b"origin", b"http://testserver")]
        if self.user is not None:
            headers.append((b"cookie", await database_sync_to_async(session_cookie)(self.user)))
        self.communicator = WebsocketCommunicator(application, "/ws/console/", headers=headers)
        return await self.communicator.connect()

    async def send(self, frame: dict) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def receive(self, timeout: float = 5) -> dict:
        return json.loads(await self.communicator.receive_from(timeout))

    async def events(self, quiet: float = 0.3, timeout: float = 5) -> list[dict]:
        """Every event received until the socket has been quiet for `quiet` seconds."""
        received: list[dict] = []
        while not await self.communicator.receive_nothing(quiet):
            frame = await self.receive(timeout)
            received.extend(frame["events"] if frame["type"] == "batch" else [frame])
        return received

    async def close(self) -> None:
        await self.communicator.disconnect()

    async def __aenter__(self) -> Console:
        connected, code = await self.connect()
        assert connected, code
        self.snapshot = await self.receive()
        assert self.snapshot["type"] == "snapshot"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


def apply_events(snapshot: dict, events: list[dict]) -> dict:
    """What a console shows after applying `events` to `snapshot`, as the contract says."""
    state = copy.deepcopy(snapshot)
    services = {s["slug"]: s for s in state["services"]}
    for event in events:
        kind = event["type"]
        if kind == "batch":
            state = apply_events(state, event["events"])
            services = {s["slug"]: s for s in state["services"]}
        elif kind == "card":
            card = event["card"]
            current = _find(services, card["id"])
            if current and current[1]["version"] >= card["version"]:
                continue
            if current:
                current[0]["conversations"].remove(current[1])
            services[card["service"]]["conversations"].append(card)
        elif kind == "card_removed":
            current = _find(services, event["id"])
            if current:
                current[0]["conversations"].remove(current[1])
        elif kind == "counters":
            state["counters"] = event["counters"]
        elif kind == "service":
            services[event["service"]["slug"]].update(event["service"])
    return state


def _find(services: dict, card_id: str):
    for service in services.values():
        for card in service["conversations"]:
            if card["id"] == card_id:
                return service, card
    return None


def normalized(snapshot: dict) -> dict:
    """Order-insensitive view of a snapshot, for comparing two of them."""
    return {
        "counters": snapshot["counters"],
        "services": sorted(
            (
                {
                    **{k: v for k, v in s.items() if k != "conversations"},
                    "conversations": sorted(s["conversations"], key=lambda c: c["id"]),
                }
                for s in snapshot["services"]
            ),
            key=lambda s: s["slug"],
        ),
    }
