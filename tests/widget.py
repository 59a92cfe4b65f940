"""A small widget client over `WebsocketCommunicator`, for protocol tests."""

from __future__ import annotations

import json
import uuid

from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from conversations import protocol
from conversations.models import Conversation, Message, Role
from handoff.asgi import application


class Widget:
    """Speaks SPEC §4 to the real ASGI app and remembers what it received."""

    def __init__(
        self, slug: str = "support", *, origin: str | None = None, ip: str = "203.0.113.9"
    ):
        headers = [(b"host", b"testserver")]
        if origin:
            headers.append((b"origin", origin.encode()))
        self.communicator = WebsocketCommunicator(application, f"/ws/chat/{slug}/", headers=headers)
        self.communicator.scope["client"] = (ip, 50000)
        self.frames: list[dict] = []
        self.token: str | None = None

    async def connect(self) -> tuple[bool, int | None]:
        return await self.communicator.connect()

    async def send(self, frame: dict | str) -> None:
        text = frame if isinstance(frame, str) else json.dumps(frame)
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 5) -> dict:
        frame = json.loads(await self.communicator.receive_from(timeout))
        self.frames.append(frame)
        return frame

    async def receive_until(self, predicate, timeout: float = 5) -> dict:
        """Receive frames until one matches `predicate`, and return it."""
        while True:
            frame = await self.receive(timeout)
            if predicate(frame):
                return frame

    async def hello(self, token: str | None = None, last_seq: int = 0, **extra) -> dict:
        await self.send({"type": "hello", "visitor_token": token, "last_seq": last_seq, **extra})
        ready = await self.receive()
        assert ready["type"] == "ready", ready
        self.token = ready["visitor_token"]
        return ready

    async def say(self, text: str, client_id: str | None = None) -> dict:
        """Send a message and return the stored copy the server echoes."""
        client_id = client_id or str(uuid.uuid4())
        await self.send({"type": "message", "text": text, "client_id": client_id})
        return await self.receive_until(
            lambda f: (
                (f["type"] == "message" and f.get("client_id") == client_id) or f["type"] == "error"
            )
        )

    async def message(self, seq: int, timeout: float = 5) -> dict:
        return await self.receive_until(
            lambda f: f["type"] == "message" and f["seq"] == seq, timeout
        )

    async def error(self) -> dict:
        return await self.receive_until(lambda f: f["type"] == "error")

    async def nothing(self, timeout: float = 0.2) -> bool:
        return await self.communicator.receive_nothing(timeout)

    async def answered_once(self) -> None:
        """Say hello and a first question; wait for its answer (seq 2) and whatever follows."""
        await self.hello()
        await self.say("How do I reset my password?")
        await self.message(2)
        await self.settle()

    async def settle(self, quiet: float = 0.2) -> None:
        """Receive until nothing has come for `quiet` seconds."""
        while not await self.nothing(quiet):
            await self.receive()

    async def close(self) -> None:
        await self.communicator.disconnect()

    async def __aenter__(self) -> Widget:
        connected, code = await self.connect()
        assert connected, code
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()


async def chatting_widgets(n: int, timeout: float = 5) -> list[Widget]:
    """`n` connected widgets from distinct addresses, each with a conversation started and
    answered one by one (a batch of several only adds to open conversations)."""
    widgets = [Widget(ip=f"203.0.113.{i}") for i in range(n)]
    for widget in widgets:
        await widget.connect()
        await widget.hello()
        await widget.say("Hi")
        await widget.message(2, timeout=timeout)
    return widgets


async def stored_quietly(*texts: str) -> tuple[list[dict], object]:
    """Store lines in the one conversation without announcing them.

    Returns their frames, and a coroutine function that sends one through the group.
    """

    def store():
        conversation = Conversation.objects.get()
        last = conversation.messages.count()
        return conversation.pk, [
            protocol.message_frame(
                Message.objects.create(
                    conversation=conversation, seq=last + n, role=Role.SYSTEM, text=text
                )
            )
            for n, text in enumerate(texts, start=1)
        ]

    conversation_id, frames = await database_sync_to_async(store)()

    async def announce(frame):
        await get_channel_layer().group_send(
            protocol.conversation_group(conversation_id), {"type": "widget.frame", "frame": frame}
        )

    return frames, announce
