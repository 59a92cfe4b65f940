"""The production shape on paper: headers, cookies, structured logs, Procfile and README."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings
from django.contrib.auth.models import Group

from handoff.logging import REDACTED, JsonFormatter, PlainFormatter, redact

ROOT = Path(__file__).resolve().parent.parent


# --- Security headers and cookies (the test settings are production's, DEBUG off) -----------


def test_html_pages_carry_the_content_security_policy(client, db):
    response = client.get("/accounts/login/")
    assert response["Content-Security-Policy"] == settings.HANDOFF_CSP
    policy = dict(part.split(" ", 1) for part in settings.HANDOFF_CSP.split("; "))
    assert policy["script-src"] == "'self'"
    assert policy["style-src"] == "'self' 'unsafe-inline'"
    assert policy["connect-src"] == "'self' ws: wss:"
    assert policy["frame-ancestors"] == "'none'"
    assert response["X-Frame-Options"] == "DENY"
    assert response["X-Content-Type-Options"] == "nosniff"


def test_json_answers_carry_no_page_policy(client, db):
    response = client.get("/healthz")
    assert response["Content-Type"] == "application/json"
    assert "Content-Security-Policy" not in response


def test_the_api_docs_get_their_own_policy_for_swagger_s_inline_script(client, db):
    response = client.get("/api/v1/docs/")
    assert response.status_code == 200
    policy = response["Content-Security-Policy"]
    assert "script-src 'self' 'unsafe-inline'" in policy
    assert "frame-ancestors 'none'" in policy


def test_over_https_browsers_are_told_to_stay_on_https(client, db):
    response = client.get("/accounts/login/", secure=True)
    assert response["Strict-Transport-Security"] == "max-age=31536000; includeSubDomains"


def test_session_and_csrf_cookies_are_https_only(client, django_user_model):
    user = django_user_model.objects.create_user("alice", password="pw-alice")
    user.groups.add(Group.objects.get_or_create(name="Agents")[0])
    page = client.get("/accounts/login/", secure=True)
    assert page.cookies["csrftoken"]["secure"] is True
    response = client.post(
        "/accounts/login/",
        {"username": "alice", "password": "pw-alice"},
        secure=True,
    )
    assert response.status_code == 302
    assert response.cookies[settings.SESSION_COOKIE_NAME]["secure"] is True
    assert response.cookies[settings.SESSION_COOKIE_NAME]["httponly"] is True


# --- Structured logs ----------------------------------------------------------------------------


def _record(message: str, *args, exc_info=None) -> logging.LogRecord:
    return logging.LogRecord(
        "conversations.consumers", logging.ERROR, __file__, 1, message, args, exc_info
    )


def test_json_logs_are_one_object_per_line_with_the_exception():
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record("widget frame %s failed", "message", exc_info=sys.exc_info())
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["level"] == "ERROR"
    assert entry["logger"] == "conversations.consumers"
    assert entry["message"] == "widget frame message failed"
    assert entry["timestamp"].endswith("+00:00")
    assert "ValueError: boom" in entry["exc_info"]


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ('hello {"type": "hello", "visitor_token": "eyJ2Ijoi.abc:def"}', "eyJ2Ijoi.abc:def"),
        ("headers: Authorization: Token 9944b09199c62bcf9418ad846dd0e4bb", "9944b09199c62"),
        ("Cookie: sessionid=abcdef0123456789; csrftoken=zyxw9876", "abcdef0123456789"),
        ("Cookie: sessionid=abcdef0123456789; csrftoken=zyxw9876", "zyxw9876"),
        ("retrying with api_key=sk-live-1234567890", "sk-live-1234567890"),
        ("Authorization: Bearer sk-proj-abcdefghijklmnop", "sk-proj-abcdefghijklmnop"),
    ],
)
def test_logs_never_carry_tokens_cookies_or_api_keys(text, secret):
    assert secret not in redact(text)
    assert REDACTED in redact(text)
    assert secret not in JsonFormatter().format(_record(text))
    assert secret not in PlainFormatter("%(message)s").format(_record(text))


def test_ordinary_messages_are_left_alone():
    text = "could not enqueue conversations.tasks.generate_ai_reply('3f2a', 12, 1)"
    assert redact(text) == text


def test_production_logs_as_json():
    assert settings.LOG_FORMAT == "json"  # DEBUG is off in the test settings
    assert settings.LOGGING["handlers"]["console"]["formatter"] == "json"


# --- Procfile and README ---------------------------------------------------------------------


def procfile() -> dict[str, str]:
    entries = {}
    for line in (ROOT / "Procfile").read_text().splitlines():
        name, _, command = line.partition(":")
        entries[name.strip()] = command.strip()
    return entries


def web_argv(**env: str) -> list[str]:
    """The `web` command's arguments after the shell expanded them, as honcho runs it."""
    command = procfile()["web"]
    clean = {k: v for k, v in os.environ.items() if k not in {"PORT", "DAPHNE_PROXY_FLAGS"}}
    result = subprocess.run(
        ["/bin/sh", "-c", f"set -- {command}; printf '%s\\n' \"$@\""],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_the_procfile_runs_release_web_worker_and_beat():
    entries = procfile()
    assert set(entries) == {"release", "web", "worker", "beat"}
    assert "migrate --noinput" in entries["release"]
    assert "collectstatic --noinput" in entries["release"]
    assert entries["worker"].startswith("celery -A handoff worker")
    assert entries["beat"].startswith("celery -A handoff beat")


def test_web_is_daphne_with_the_frame_limit_and_proxy_headers_only_when_asked():
    direct = web_argv()
    assert direct == [
        "daphne",
        "-b",
        "0.0.0.0",
        "-p",
        "8000",
        "--websocket-max-message-size",
        "65536",
        "handoff.asgi:application",
    ]
    behind_proxy = web_argv(PORT="5100", DAPHNE_PROXY_FLAGS="--proxy-headers")
    assert behind_proxy[4] == "5100"
    assert behind_proxy[-2:] == ["--proxy-headers", "handoff.asgi:application"]


def test_the_readme_shows_the_procfile_as_it_is_and_honcho_accepts_it():
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"```\n(release:.*?)```", readme, re.S)
    assert block, "README's Production section shows the Procfile"
    shown = {
        name.strip(): " ".join(command.split())
        for name, _, command in (line.partition(":") for line in block.group(1).splitlines())
    }
    assert shown == procfile()
    assert "## Operations" in readme
    check = subprocess.run(
        [str(Path(sys.executable).parent / "honcho"), "check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0, check.stderr
