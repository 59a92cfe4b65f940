"""Hostile clients: floods, too many sockets, huge frames, forged event types, stale agents.

Widget and console sockets are driven through the real ASGI app, and over the wire against a
daphne process of this module's own (run as the Procfile runs it, with a small socket cap) so
that its process id, and so its memory, is known.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.contrib.auth.models import Group
from django.contrib.sessions.models import Session
from django.db.backends.utils import CursorWrapper
from django.test import Client
from rest_framework.test import APIClient

from conversations import consumers, services
from conversations.models import AuditEvent, Conversation, Message, Role, Service
from handoff.asgi import application
from tests.conftest import daphne_process, make_service, server_env
from tests.console import Console, session_cookie
from tests.widget import Widget

pytestmark = pytest.mark.django_db(transaction=True)

MAX_SOCKETS = 5
FRAME_LIMIT = 65536


@pytest.fixture
def service(transactional_db) -> Service:
    return make_service()


@pytest.fixture(scope="module")
def daphne(django_db_setup) -> Iterator[tuple[str, int]]:
    """(ws base URL, pid) of daphne as the Procfile runs it, capped at 5 sockets an address."""
    env = server_env(django_settings, redis=False)
    env["WIDGET_MAX_SOCKETS_PER_IP"] = str(MAX_SOCKETS)
    with daphne_process(env, frame_limit=FRAME_LIMIT, output=subprocess.DEVNULL) as (url, proc):
        yield url.replace("http://", "ws://"), proc.pid


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture
def db_writes(monkeypatch) -> list[str]:
    """Every INSERT, UPDATE and DELETE any thread sends to the database from now on."""
    seen: list[str] = []
    execute = CursorWrapper._execute

    def counting(self, sql, params, *args):
        if sql.lstrip()[:6].upper() in {"INSERT", "UPDATE", "DELETE"}:
            seen.append(sql)
        return execute(self, sql, params, *args)

    monkeypatch.setattr(CursorWrapper, "_execute", counting)
    return seen


# --- Floods ----------------------------------------------------------------------------------


async def flood(widget: Widget, frame: dict, per_second: int = 100) -> list[dict]:
    """Send `frame` (numbered) 100 times a second until the server closes; return its answers.

    The last item is the close. Pacing is the behaviour under test, hence the sleep.
    """

    async def send() -> None:
        for n in range(1000):
            body = {**frame, "client_id": f"{frame.get('client_id', 'c')}-{n}"}
            if "text" in frame:
                body["text"] = f"{frame['text']} {n}"
            await widget.send(body)
            await asyncio.sleep(1 / per_second)

    sender = asyncio.ensure_future(send())
    answers: list[dict] = []
    try:
        while True:
            output = await widget.communicator.receive_output(5)
            if output["type"] == "websocket.close":
                answers.append(output)
                return answers
            answers.append(json.loads(output["text"]))
    finally:
        sender.cancel()


async def test_a_socket_sending_100_messages_a_second_is_throttled_then_closed_with_1008(
    service, db_writes
):
    widget = Widget()
    assert (await widget.connect())[0]
    await widget.hello()
    # The visitor's allowance for the minute is used up first, at a person's pace.
    for n in range(django_settings.WIDGET_RATE_LIMIT):
        assert (await widget.say(f"question {n}"))["type"] == "message"
    await drain(widget.communicator)
    writes, rows = len(db_writes), await database_sync_to_async(Message.objects.count)()
    assert writes > 0  # the counter sees the consumer's threads

    started = time.monotonic()
    answers = await flood(widget, {"type": "message", "text": "spam"})
    elapsed = time.monotonic() - started
    await widget.close()

    assert answers[-1] == {"type": "websocket.close", "code": 1008}
    assert elapsed < 5
    refused = answers[:-1]
    assert len(refused) > django_settings.WIDGET_FRAME_ABUSE_LIMIT
    assert {(f["type"], f["code"]) for f in refused} == {("error", "rate_limited")}
    # Every refused message carried its client_id back, so a widget restores the right draft.
    assert all(f["client_id"].startswith("c-") for f in refused)
    # Not one database write for the dropped messages (writes are counted on every thread).
    assert db_writes[writes:] == []
    assert await database_sync_to_async(Message.objects.count)() == rows


async def test_every_frame_type_counts_towards_the_frame_rate(service, db_writes):
    widget = Widget()
    assert (await widget.connect())[0]
    await widget.hello()
    writes = len(db_writes)
    answers = await flood(widget, {"type": "typing", "on": True})
    await widget.close()
    assert answers[-1] == {"type": "websocket.close", "code": 1008}
    assert {f["code"] for f in answers[:-1]} == {"rate_limited"}
    assert len(db_writes) == writes


class FrameClock:
    """`time.monotonic` for the consumer: every reading is `step` seconds after the last."""

    def __init__(self, step: float) -> None:
        self.now, self.step = 1000.0, step

    def monotonic(self) -> float:
        self.now += self.step
        return self.now


async def test_a_fast_human_typist_is_never_throttled(service, monkeypatch, settings):
    # Four frames a second for half a minute, as the consumer sees them: typing on, typing
    # off, a thumbs up and a message (far beyond a person's sustained pace).
    settings.WIDGET_RATE_LIMIT = 1000  # the per-visitor message limit is tested elsewhere
    monkeypatch.setattr(consumers, "time", FrameClock(step=0.25))
    async with Widget() as widget:
        await widget.hello()
        for n in range(30):
            await widget.send({"type": "typing", "on": True})
            await widget.send({"type": "typing", "on": False})
            await widget.send({"type": "feedback", "seq": 10_000, "value": "up"})
            assert (await widget.error())["code"] == "bad_seq"
            echo = await widget.say(f"message {n}")
            assert echo["type"] == "message", echo
        codes = {f["code"] for f in widget.frames if f["type"] == "error"}
        assert codes == {"bad_seq"}
        assert await widget.nothing()


async def test_a_burst_after_a_reconnect_is_let_through(service, settings):
    # A widget that reconnects re-sends every unacknowledged message at once.
    settings.WIDGET_RATE_LIMIT = 1000
    burst = django_settings.WIDGET_FRAME_BURST - 1  # the hello took one token
    async with Widget() as widget:
        await widget.hello()
        ids = [str(uuid.uuid4()) for _ in range(burst)]
        for n, client_id in enumerate(ids):
            await widget.send({"type": "message", "text": f"queued {n}", "client_id": client_id})
        echoed = set()
        while len(echoed) < burst:
            frame = await widget.receive()
            assert frame["type"] != "error", frame
            if frame["type"] == "message" and frame["role"] == Role.USER:
                echoed.add(frame["client_id"])
    assert echoed == set(ids)


async def test_over_the_wire_a_flood_is_closed_with_1008(service, daphne):
    url, _ = daphne
    # max_queue=None: keep reading what the server sends, as a browser does.
    async with websockets.connect(f"{url}/ws/chat/support/", max_queue=None) as socket:
        await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
        assert json.loads(await socket.recv())["type"] == "ready"
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for n in range(1000):
                await socket.send(json.dumps({"type": "typing", "on": n % 2 == 0}))
                await asyncio.sleep(0.01)
        assert closed.value.rcvd.code == 1008


async def test_a_message_of_4000_emoji_costs_the_server_a_fraction_of_a_second(service):
    # Sentiment scoring once took seconds of a worker (or of the embedded web process) for
    # such a message: a cheap way to keep a server busy, 20 times a minute per visitor.
    async with Widget() as widget:
        await widget.hello()
        started = time.monotonic()
        echo = await widget.say("😀" * 4000)
        await widget.message(2)  # the AI's answer: everything the message set off is done
        elapsed = time.monotonic() - started
    assert echo["text"] == "😀" * 4000
    assert elapsed < 3, f"{elapsed:.1f} s"


# --- Sockets per address ---------------------------------------------------------------------


async def test_widget_sockets_per_address_are_capped_over_the_wire(service, daphne):
    url, _ = daphne
    sockets = [await websockets.connect(f"{url}/ws/chat/support/") for _ in range(MAX_SOCKETS)]
    try:
        with pytest.raises(websockets.InvalidStatus) as refused:
            await websockets.connect(f"{url}/ws/chat/support/")
        assert refused.value.response.status_code == 403
        await sockets.pop().close()
        # The slot is freed when the server has handled the disconnect; nothing to await.
        deadline = time.monotonic() + 5
        while True:
            try:
                sockets.append(await websockets.connect(f"{url}/ws/chat/support/"))
                break
            except websockets.InvalidStatus:
                assert time.monotonic() < deadline, "a closed socket never freed its slot"
                await asyncio.sleep(0.05)
    finally:
        for socket in sockets:
            await socket.close()


async def test_a_consumer_that_crashes_gives_its_socket_slot_back(service, settings, monkeypatch):
    settings.WIDGET_MAX_SOCKETS_PER_IP = 1

    async def crash(self, text_data=None, bytes_data=None) -> None:
        raise RuntimeError("a bug we have not found yet")

    monkeypatch.setattr(consumers.ChatConsumer, "receive", crash)
    widget = Widget()
    assert (await widget.connect())[0]
    await widget.send({"type": "hello"})
    with pytest.raises(RuntimeError):
        await widget.communicator.wait(5)  # the application ends with the bug's exception
    monkeypatch.undo()
    again = Widget()
    assert (await again.connect())[0], "the dead consumer kept the address's only slot"
    await again.close()


# --- Huge frames -----------------------------------------------------------------------------


async def oversized(url: str, size: int) -> int | None:
    """Send one text frame of `size` bytes after hello; return the server's close code."""
    async with websockets.connect(f"{url}/ws/chat/support/", max_size=None) as socket:
        await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
        assert json.loads(await socket.recv())["type"] == "ready"
        frame = json.dumps({"type": "message", "text": "x" * size, "client_id": "big"})
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.send(frame)
            await socket.recv()
    return closed.value.rcvd.code if closed.value.rcvd else None


async def test_frames_over_64_kib_are_closed_by_the_server_and_memory_stays_flat(service, daphne):
    url, pid = daphne
    assert await oversized(url, 70_000) == 1009  # warm up: first sockets allocate pools
    before = rss_kib(pid)
    for _ in range(20):
        assert await oversized(url, 70_000) == 1009
    code = await oversized(url, 8 * 2**20)
    assert code in (1009, None)  # the server may drop the socket before reading the rest
    # The server still serves, and did not keep what it refused.
    async with websockets.connect(f"{url}/ws/chat/support/") as socket:
        await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
        assert json.loads(await socket.recv())["type"] == "ready"
    grown = rss_kib(pid) - before
    assert grown < 4 * 1024, f"daphne grew by {grown} KiB"
    assert not await database_sync_to_async(Message.objects.exists)()


# --- Forged event types ----------------------------------------------------------------------

INTERNAL_TYPES = [
    "card.updated",
    "card_updated",
    "console.event",
    "console_event",
    "widget.frame",
    "widget_frame",
    "widget.service",
    "widget_service",
    "websocket.disconnect",
    "websocket.receive",
    "websocket.send",
    "websocket_disconnect",
    "on_hello",
    "on_message",
    "send_json",
    "attention",
    "batch",
    "snapshot",
    "ready",
    "status",
]


def forged(kind: str) -> dict:
    """A frame shaped like a layer message: if forwarded, the peers would show it."""
    payload = {
        "type": "message",
        "seq": 99,
        "role": "human",
        "text": "forged",
        "created_at": "2030-01-01T00:00:00+00:00",
    }
    return {
        "type": kind,
        "frame": payload,
        "event": {"type": "counters", "counters": {"active": 999}},
        "text": json.dumps(payload),
        "code": 1000,
    }


async def drain(communicator: WebsocketCommunicator) -> None:
    while not await communicator.receive_nothing(0.3):
        await communicator.receive_output(5)


async def test_internal_and_unknown_event_types_are_refused_and_never_forwarded(service, agent):
    async with Widget() as attacker, Widget() as peer, Console(agent) as console:
        await attacker.hello()
        await attacker.say("How do I reset my password?")
        await peer.hello(token=attacker.token)  # same visitor: same conversation group
        for communicator in (attacker.communicator, peer.communicator, console.communicator):
            await drain(communicator)
        for kind in INTERNAL_TYPES:
            await attacker.send(forged(kind))
            assert await attacker.receive() == {
                "type": "error",
                "code": "unknown_type",
                "detail": "Unknown frame type.",
            }, kind
        # Nothing reached the other socket in the conversation's group, nor any console.
        assert await peer.nothing(0.3)
        assert await console.communicator.receive_nothing(0.3)
        # And the attacker's socket still works as a widget.
        assert (await attacker.say("still here"))["type"] == "message"
    count = await database_sync_to_async(Message.objects.filter(text="forged").count)()
    assert count == 0


async def test_console_frames_with_internal_types_are_refused_and_never_forwarded(
    service, agent, agent2
):
    async with Console(agent) as attacker, Console(agent2) as other:
        for kind in INTERNAL_TYPES:
            await attacker.send(forged(kind))
            error = await attacker.receive()
            assert (error["type"], error["code"]) == ("error", "unknown_type"), kind
        assert await other.communicator.receive_nothing(0.3)
        await attacker.send({"type": "ping"})
        assert await attacker.receive() == {"type": "pong"}


# --- Agents who lose their rights ------------------------------------------------------------


async def console_for(user) -> tuple[WebsocketCommunicator, str]:
    """A console socket on a session of `user`; returns it and the session key."""
    cookie = await database_sync_to_async(session_cookie)(user)
    communicator = WebsocketCommunicator(
        application,
        "/ws/console/",
        headers=[(b"host", b"testserver"), (b"origin", b"http://testserver"), (b"cookie", cookie)],
    )
    connected, code = await communicator.connect()
    assert connected, code
    assert json.loads(await communicator.receive_from(5))["type"] == "snapshot"
    return communicator, cookie.decode().split("=", 1)[1]


async def closed_with(communicator: WebsocketCommunicator, timeout: float = 5) -> int:
    """Wait for the server to close the socket (skipping live events); return the code."""
    while True:
        output = await communicator.receive_output(timeout)
        if output["type"] == "websocket.close":
            return output["code"]


def deactivate(user) -> None:
    user.is_active = False
    user.save(update_fields=["is_active"])


def log_out(session_key: str) -> None:
    client = Client()
    client.cookies[django_settings.SESSION_COOKIE_NAME] = session_key
    assert client.post("/accounts/logout/").status_code in (200, 302)
    assert not Session.objects.filter(session_key=session_key).exists()


def change_password(user) -> None:
    user.set_password("a-new-password-123")
    user.save()


def demote(user) -> None:
    user.groups.remove(Group.objects.get(name="Agents"))


@pytest.mark.parametrize("change", ["deactivated", "logged_out", "password_changed", "demoted"])
async def test_an_agent_who_loses_access_loses_the_console_socket(service, agent, settings, change):
    settings.CONSOLE_REAUTH_SECONDS = 0.2
    assert django_settings.CONSOLE_REAUTH_SECONDS == 0.2
    communicator, session_key = await console_for(agent)
    assert await communicator.receive_nothing(0.5)  # two checks passed: still signed in
    if change == "deactivated":
        await database_sync_to_async(deactivate)(agent)
    elif change == "logged_out":
        await database_sync_to_async(log_out)(session_key)
    elif change == "password_changed":
        await database_sync_to_async(change_password)(agent)
    else:
        await database_sync_to_async(demote)(agent)
    started = time.monotonic()
    assert await closed_with(communicator) == 4403
    assert time.monotonic() - started < 2
    await communicator.disconnect()


def test_the_console_rechecks_agents_at_least_every_minute_by_default():
    assert 0 < django_settings.CONSOLE_REAUTH_SECONDS <= 60


def test_an_agents_rights_end_the_moment_another_agent_claims_the_conversation(
    service, agent, agent2, admin
):
    visitor, _ = services.visitor_identify(service=service, token=None)
    conversation = services.conversation_post_customer_message(
        visitor=visitor, text="My invoice is wrong", client_id="c1"
    ).message.conversation
    alice, bob, ada = APIClient(), APIClient(), APIClient()
    alice.force_login(agent)
    bob.force_login(agent2)
    ada.force_login(admin)
    base = f"/api/v1/conversations/{conversation.pk}/"
    assert alice.post(base + "take-over/").status_code == 200
    assert alice.post(base + "messages/", {"text": "Alice here"}, format="json").status_code == 201
    # An admin releases Alice's claim, and Bob claims it at once.
    assert ada.post(base + "release/").status_code == 200
    assert bob.post(base + "take-over/").status_code == 200

    sent = alice.post(base + "messages/", {"text": "Still me?"}, format="json")
    assert (sent.status_code, sent.json()["code"]) == (403, "not_claimer")
    again = alice.post(base + "take-over/")
    assert (again.status_code, again.json()["code"]) == (409, "already_claimed")
    assert again.json()["claimed_by"] == "Bob"
    for action in ("resume-ai/", "release/", "close/"):
        refused = alice.post(base + action)
        assert (refused.status_code, refused.json()["code"]) == (409, "already_claimed"), action
    conversation.refresh_from_db()
    assert (conversation.claimed_by_id, conversation.status) == (agent2.pk, "open")
    assert not Message.objects.filter(text="Still me?").exists()
    assert not AuditEvent.objects.filter(actor=agent, action="released").exists()
    assert bob.post(base + "messages/", {"text": "Bob here"}, format="json").status_code == 201
    assert Conversation.objects.get(pk=conversation.pk).claimed_by_id == agent2.pk
