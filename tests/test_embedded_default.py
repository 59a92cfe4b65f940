"""The README's first command: the product on its embedded default, with no variables set."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import websockets

from tests.conftest import _free_port, _port_open, _wait_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def embedded_server(tmp_path_factory):
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", "DJANGO_SETTINGS_MODULE"}
    }
    env["SQLITE_PATH"] = str(tmp_path_factory.mktemp("embedded") / "db.sqlite3")
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
        proc.terminate()
        proc.wait(timeout=10)


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
