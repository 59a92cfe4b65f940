"""One settings module from the environment: the embedded default and production."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROBE = (
    "import json, django; from django.conf import settings; django.setup();"
    "print(json.dumps({'db': settings.DATABASES['default']['ENGINE'],"
    " 'layer': settings.CHANNEL_LAYERS['default']['BACKEND'],"
    " 'hosts': settings.CHANNEL_LAYERS['default'].get('CONFIG', {}).get('hosts'),"
    " 'eager': settings.CELERY_TASK_ALWAYS_EAGER, 'broker': settings.CELERY_BROKER_URL,"
    " 'debug': settings.DEBUG}))"
)


def load(**env: str) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG"}
    }
    clean["DJANGO_SETTINGS_MODULE"] = "handoff.settings"
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_no_variables_give_the_embedded_default():
    result = load()
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.sqlite3"
    assert loaded["layer"] == "channels.layers.InMemoryChannelLayer"
    assert loaded["eager"] is True
    assert loaded["debug"] is True


def test_database_and_redis_urls_give_postgres_channels_redis_and_a_celery_broker():
    result = load(
        DATABASE_URL="postgres://u@db.example:5432/handoff",
        REDIS_URL="redis://cache.example:6379/0",
        SECRET_KEY="s" * 50,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["db"] == "django.db.backends.postgresql"
    assert loaded["layer"] == "channels_redis.core.RedisChannelLayer"
    # Idle sockets must not die on a read timeout while the layer blocks on Redis.
    assert loaded["hosts"] == [{"address": "redis://cache.example:6379/0", "socket_timeout": None}]
    assert loaded["eager"] is False
    assert loaded["broker"] == "redis://cache.example:6379/0"
    assert loaded["debug"] is False


def test_production_refuses_the_default_secret_key():
    result = load(DATABASE_URL="postgres://u@db.example:5432/handoff")
    assert result.returncode != 0
    assert "SECRET_KEY must be set in production" in result.stderr


@pytest.mark.parametrize(("name", "value"), [("DEBUG", "maybe"), ("WIDGET_RATE_LIMIT", "lots")])
def test_bad_values_fail_loudly(name, value):
    result = load(**{name: value})
    assert result.returncode != 0
    assert name in result.stderr
