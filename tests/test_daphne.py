"""What daphne itself enforces, run as the Procfile runs it."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import websockets
from channels.db import database_sync_to_async
from django.db import connection
from rest_framework.authtoken.models import Token

from tests.conftest import daphne_process, make_service, server_env

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def service(transactional_db):
    return make_service()


def ws_url(live_server_url: str, slug: str = "support") -> str:
    return live_server_url.replace("http://", "ws://") + f"/ws/chat/{slug}/"


async def test_a_frame_over_64_kib_is_refused_by_the_server_with_1009(service, live_server_url):
    async with websockets.connect(ws_url(live_server_url), max_size=None) as socket:
        await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
        assert json.loads(await socket.recv())["type"] == "ready"
        await socket.send(json.dumps({"type": "message", "text": "x" * 70_000, "client_id": "big"}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd.code == 1009
    from conversations.models import Message

    assert await database_sync_to_async(Message.objects.count)() == 0


async def test_a_frame_just_under_the_limit_gets_too_long_and_the_socket_stays(
    service, live_server_url
):
    async with websockets.connect(ws_url(live_server_url)) as socket:
        await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
        await socket.recv()
        await socket.send(json.dumps({"type": "message", "text": "y" * 60_000, "client_id": "a"}))
        error = json.loads(await socket.recv())
        assert (error["type"], error["code"]) == ("error", "too_long")
        await socket.send(json.dumps({"type": "message", "text": "ok", "client_id": "b"}))
        echo = json.loads(await socket.recv())
        assert (echo["type"], echo["seq"]) == ("message", 1)


async def test_a_console_snapshot_over_64_kib_still_reaches_the_agent(
    service, agent, live_server_url
):
    """The size limit is for what clients send; a busy desk's snapshot is bigger than that."""
    from conversations import services
    from tests.console import session_cookie

    def open_conversations(count: int) -> None:
        for n in range(count):
            visitor, _ = services.visitor_identify(service=service, token=None, location={})
            services.conversation_post_customer_message(
                visitor=visitor, text=f"{n} " + "my order never arrived " * 20, client_id="q"
            )

    await database_sync_to_async(open_conversations)(150)
    cookie = (await database_sync_to_async(session_cookie)(agent)).decode()
    url = live_server_url.replace("http://", "ws://") + "/ws/console/"
    headers = {"Cookie": cookie, "Origin": live_server_url}
    async with websockets.connect(url, additional_headers=headers, max_size=None) as socket:
        raw = await socket.recv()
        snapshot = json.loads(raw)
        assert len(raw) > 65536
        cards = [card for desk in snapshot["services"] for card in desk["conversations"]]
        assert (snapshot["type"], len(cards)) == ("snapshot", 150)
        await socket.send(json.dumps({"type": "x" * 70_000}))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            while True:
                await socket.recv()
    assert closed.value.rcvd.code == 1009  # while what the client sends is still held to it


async def test_an_unknown_service_closes_with_4404_over_the_wire(service, live_server_url):
    async with websockets.connect(ws_url(live_server_url, "nope")) as socket:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await socket.recv()
    assert closed.value.rcvd.code == 4404


def test_simulate_drives_customers_through_the_real_socket(service, live_server_url):
    from io import StringIO

    from django.core.management import call_command

    from conversations.models import Conversation, Message

    out = StringIO()
    call_command(
        "simulate",
        conversations=3,
        messages=2,
        pause=0.05,
        seed=7,
        url=live_server_url.replace("http://", "ws://"),
        stdout=out,
    )
    assert "3 customers sent 6 messages" in out.getvalue()
    assert Conversation.objects.count() == 3
    assert Message.objects.filter(role="user").count() == 6


def test_a_burst_of_requests_is_served_by_a_few_threads_that_keep_their_connections(
    agent, settings
):
    """Fifty agents at once: no thread and no database connection of their own each."""
    token = Token.objects.create(user=agent).key
    env = {**server_env(settings, redis=False), "HTTP_THREADS": "3"}

    def backends_since(started) -> int:
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE datname = current_database() AND backend_start > %s",
                [started],
            )
            return cursor.fetchone()[0]

    async def burst(url: str) -> list[int]:
        headers = {"Authorization": f"Token {token}"}
        async with httpx.AsyncClient(base_url=url, headers=headers, timeout=30) as http:
            answers = await asyncio.gather(*(http.get("/api/v1/stats/") for _ in range(50)))
        return [answer.status_code for answer in answers]

    with daphne_process(env) as (url, _):
        with connection.cursor() as cursor:
            cursor.execute("SELECT now()")
            (started,) = cursor.fetchone()
        assert asyncio.run(burst(url)) == [200] * 50
        assert asyncio.run(burst(url)) == [200] * 50
        # Still open after the requests: at most one per request thread.
        assert 1 <= backends_since(started) <= 3
