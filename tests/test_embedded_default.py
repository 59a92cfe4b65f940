"""The README's first command: the product on its embedded default, with no variables set."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import _free_port, _port_open, _wait_for

ROOT = Path(__file__).resolve().parent.parent


def embedded_env() -> dict[str, str]:
    """This environment without what would take the product off its embedded default."""
    dropped = {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE"}
    return {k: v for k, v in os.environ.items() if k not in dropped}


def start_embedded(tmp_path_factory, **extra_env: str):
    """Migrate, seed and serve a fresh embedded-default product; yields its port."""
    env = embedded_env()
    env["SQLITE_PATH"] = str(tmp_path_factory.mktemp("embedded") / "db.sqlite3")
    env.update(extra_env)
    manage = [sys.executable, "manage.py"]
    for command in (["migrate", "--noinput"], ["seed_demo"]):
        result = subprocess.run(
            manage + command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
        assert result.returncode == 0, result.stderr
    assert "alice  / handoff-demo" in result.stdout
    port = _free_port()
    proc = subprocess.Popen(
        [*manage, "runserver", f"127.0.0.1:{port}", "--noreload"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: _port_open(port), timeout=30, what="runserver", proc=proc)
        yield port
    finally:
        proc.send_signal(signal.SIGINT)  # what Ctrl+C does: runserver's quick way out
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory):
    yield from start_embedded(tmp_path_factory)


class HeldCompletions(BaseHTTPRequestHandler):
    """An OpenAI-compatible endpoint that answers only once the test lets it."""

    release = threading.Event()

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.release.wait(20)
        body = json.dumps({"choices": [{"message": {"role": "assistant", "content": "Done."}}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body.encode())

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def slow_ai_server(tmp_path_factory):
    backend = ThreadingHTTPServer(("127.0.0.1", 0), HeldCompletions)
    threading.Thread(target=backend.serve_forever, daemon=True).start()
    try:
        yield from start_embedded(
            tmp_path_factory,
            HANDOFF_AI_BACKEND="openai",
            AI_BASE_URL=f"http://127.0.0.1:{backend.server_address[1]}/v1",
            AI_API_KEY="test",
        )
    finally:
        HeldCompletions.release.set()
        backend.shutdown()


def test_the_demo_page_and_the_widget_script_are_served(embedded_server):
    base = f"http://127.0.0.1:{embedded_server}"
    page = httpx.get(f"{base}/widget/demo/support/")
    assert page.status_code == 200
    assert 'data-service="support"' in page.text
    script = httpx.get(f"{base}/static/widget/handoff-widget.js")
    assert script.status_code == 200
    assert "/ws/chat/" in script.text
    assert httpx.get(f"{base}/widget/demo/nope/").status_code == 404


async def test_a_customer_chats_with_the_ai_on_the_embedded_default(embedded_server):
    url = f"ws://127.0.0.1:{embedded_server}/ws/chat/support/"
    async with websockets.connect(url) as socket:
        await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
        ready = json.loads(await socket.recv())
        assert ready["type"] == "ready"
        await socket.send(
            json.dumps({"type": "message", "text": "How do I reset my password?", "client_id": "a"})
        )
        async with asyncio.timeout(10):
            while True:
                frame = json.loads(await socket.recv())
                if frame["type"] == "message" and frame["role"] == "ai":
                    break
        assert frame["seq"] == 2
        assert frame["specialist"] == "Tech Support"


async def chat(port: int, text: str):
    socket = await websockets.connect(f"ws://127.0.0.1:{port}/ws/chat/support/")
    await socket.send(json.dumps({"type": "hello", "visitor_token": None, "last_seq": 0}))
    await socket.recv()
    await socket.send(json.dumps({"type": "message", "text": text, "client_id": "x"}))
    return socket


async def frame_of(socket, predicate, timeout: float = 5) -> dict:
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await socket.recv())
            if predicate(frame):
                return frame


async def test_a_slow_ai_reply_never_holds_up_other_customers(slow_ai_server):
    first = await chat(slow_ai_server, "How do I reset my password?")
    try:
        await frame_of(first, lambda f: f["type"] == "typing" and f["on"])
        # The first reply is still being written; a second customer is served meanwhile.
        second = await chat(slow_ai_server, "Where can I download my invoices?")
        try:
            echo = await frame_of(second, lambda f: f["type"] == "message", timeout=3)
            assert (echo["role"], echo["seq"]) == ("user", 1)
        finally:
            await second.close()
        HeldCompletions.release.set()
        reply = await frame_of(first, lambda f: f["type"] == "message" and f["role"] == "ai")
        assert reply["text"] == "Done."
    finally:
        await first.close()


def test_the_in_process_schedule_finds_every_periodic_task_in_a_fresh_web_process():
    """A web process imports only the task modules its code touched; beat needs them all."""
    script = (
        "import handoff.asgi\n"
        "from django.conf import settings\n"
        "from handoff import inprocess_beat\n"
        "assert settings.HANDOFF_INPROCESS_BEAT\n"
        "print(sorted(task.name for task, _ in inprocess_beat.scheduled()))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=embedded_env(), capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    from django.conf import settings

    expected = sorted(entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values())
    assert result.stdout.strip() == str(expected)
    assert "escalation.tasks.score_unscored_messages" in expected
