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


HARDENING_VARIABLES = {
    "HANDOFF_ALLOW_DEBUG",
    "HANDOFF_SECURE",
    "SECURE_SSL_REDIRECT",
    "SECURE_HSTS_SECONDS",
    "TRUSTED_PROXY_COUNT",
    "LOG_FORMAT",
}
SECURITY_PROBE = (
    "import json, django; from django.conf import settings; django.setup();"
    "print(json.dumps({name: getattr(settings, name, None) for name in ("
    " 'DEBUG', 'HANDOFF_SECURE', 'SESSION_COOKIE_SECURE', 'CSRF_COOKIE_SECURE',"
    " 'SECURE_HSTS_SECONDS', 'SECURE_HSTS_INCLUDE_SUBDOMAINS', 'SECURE_HSTS_PRELOAD',"
    " 'SECURE_SSL_REDIRECT', 'SECURE_PROXY_SSL_HEADER', 'SECURE_CONTENT_TYPE_NOSNIFF',"
    " 'X_FRAME_OPTIONS', 'HANDOFF_CSP', 'MIDDLEWARE', 'LOG_FORMAT')}))"
)
PRODUCTION = {
    "DATABASE_URL": "postgres://u@db.example:5432/handoff",
    "REDIS_URL": "redis://cache.example:6379/0",
    "SECRET_KEY": "s" * 50,
}


def load(**env: str) -> subprocess.CompletedProcess:
    return _run(PROBE, env)


def security(**env: str) -> dict:
    result = _run(SECURITY_PROBE, env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def _run(probe: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    clean = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG", *HARDENING_VARIABLES}
    }
    clean["DJANGO_SETTINGS_MODULE"] = "handoff.settings"
    return subprocess.run(
        [sys.executable, "-c", probe],
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
    assert loaded["layer"] == "handoff.layer.PubSubChannelLayer"
    # Idle sockets must not die on a read timeout while the layer blocks on Redis.
    assert loaded["hosts"] == [{"address": "redis://cache.example:6379/0", "socket_timeout": None}]
    assert loaded["eager"] is False
    assert loaded["broker"] == "redis://cache.example:6379/0"
    assert loaded["debug"] is False


def test_channel_layer_core_gives_channels_redis_list_layer_with_its_capacity():
    result = load(
        DATABASE_URL="postgres://u@db.example:5432/handoff",
        REDIS_URL="redis://cache.example:6379/0",
        SECRET_KEY="s" * 50,
        CHANNEL_LAYER="core",
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    assert loaded["layer"] == "channels_redis.core.RedisChannelLayer"
    assert loaded["hosts"] == [{"address": "redis://cache.example:6379/0", "socket_timeout": None}]


def test_an_unknown_channel_layer_fails_loudly():
    result = load(
        REDIS_URL="redis://cache.example:6379/0", SECRET_KEY="s" * 50, CHANNEL_LAYER="kafka"
    )
    assert result.returncode != 0
    assert "CHANNEL_LAYER must be 'core' or 'pubsub'" in result.stderr


def test_production_refuses_the_default_secret_key():
    result = load(DATABASE_URL="postgres://u@db.example:5432/handoff")
    assert result.returncode != 0
    assert "SECRET_KEY must be set in production" in result.stderr


@pytest.mark.parametrize(("name", "value"), [("DEBUG", "maybe"), ("WIDGET_RATE_LIMIT", "lots")])
def test_bad_values_fail_loudly(name, value):
    result = load(**{name: value})
    assert result.returncode != 0
    assert name in result.stderr


@pytest.mark.parametrize("wired", ["DATABASE_URL", "REDIS_URL"])
def test_production_refuses_debug(wired):
    result = load(**{wired: PRODUCTION[wired], "SECRET_KEY": "s" * 50, "DEBUG": "true"})
    assert result.returncode != 0
    assert "DEBUG must be off in production" in result.stderr


def test_debug_against_real_services_needs_an_explicit_opt_in():
    loaded = security(**PRODUCTION, DEBUG="true", HANDOFF_ALLOW_DEBUG="true")
    assert loaded["DEBUG"] is True
    # A developer's run is plain HTTP: nothing that needs HTTPS is switched on.
    assert loaded["HANDOFF_SECURE"] is False
    assert loaded["SESSION_COOKIE_SECURE"] is False
    assert loaded["LOG_FORMAT"] == "plain"


def test_production_is_hardened_by_default():
    loaded = security(**PRODUCTION)
    assert loaded["HANDOFF_SECURE"] is True
    assert loaded["SESSION_COOKIE_SECURE"] is True
    assert loaded["CSRF_COOKIE_SECURE"] is True
    assert loaded["SECURE_HSTS_SECONDS"] >= 31_536_000
    assert loaded["SECURE_HSTS_INCLUDE_SUBDOMAINS"] is True
    assert loaded["SECURE_HSTS_PRELOAD"] is False
    assert loaded["SECURE_SSL_REDIRECT"] is False
    assert loaded["SECURE_CONTENT_TYPE_NOSNIFF"] is True
    assert loaded["X_FRAME_OPTIONS"] == "DENY"
    # Without a trusted proxy nobody may claim the request came in over HTTPS.
    assert loaded["SECURE_PROXY_SSL_HEADER"] is None
    assert "handoff.middleware.ContentSecurityPolicyMiddleware" in loaded["MIDDLEWARE"]
    assert "script-src 'self';" in loaded["HANDOFF_CSP"]
    assert "frame-ancestors 'none'" in loaded["HANDOFF_CSP"]
    assert loaded["LOG_FORMAT"] == "json"


def test_behind_a_trusted_proxy_https_is_read_from_x_forwarded_proto():
    loaded = security(**PRODUCTION, TRUSTED_PROXY_COUNT="1", SECURE_SSL_REDIRECT="true")
    assert loaded["SECURE_PROXY_SSL_HEADER"] == ["HTTP_X_FORWARDED_PROTO", "https"]
    assert loaded["SECURE_SSL_REDIRECT"] is True


def test_one_switch_turns_the_https_settings_off_for_plain_http():
    loaded = security(**PRODUCTION, HANDOFF_SECURE="false", TRUSTED_PROXY_COUNT="1")
    assert loaded["DEBUG"] is False
    for name in ("SESSION_COOKIE_SECURE", "CSRF_COOKIE_SECURE", "SECURE_SSL_REDIRECT"):
        assert loaded[name] is False, name
    assert loaded["SECURE_HSTS_SECONDS"] == 0
    assert loaded["SECURE_PROXY_SSL_HEADER"] is None
    # The page policy does not depend on HTTPS and stays.
    assert loaded["HANDOFF_CSP"]


def test_the_embedded_default_is_not_hardened_and_logs_plain_text():
    loaded = security()
    assert loaded["DEBUG"] is True
    assert loaded["HANDOFF_SECURE"] is False
    assert loaded["SESSION_COOKIE_SECURE"] is False
    assert loaded["LOG_FORMAT"] == "plain"


@pytest.mark.parametrize(("name", "value"), [("LOG_FORMAT", "xml"), ("HANDOFF_SECURE", "sure")])
def test_bad_hardening_values_fail_loudly(name, value):
    result = load(**PRODUCTION, **{name: value})
    assert result.returncode != 0
    assert name in result.stderr


def test_prepared_statements_are_on_with_postgresql_unless_turned_off():
    probe = (
        "import django; from django.conf import settings; django.setup();"
        "options = settings.DATABASES['default'].get('OPTIONS', {});"
        "print(options.get('prepare_threshold'), repr(options.get('options')))"
    )
    on = _run(probe, PRODUCTION)
    off = _run(probe, {**PRODUCTION, "DATABASE_PREPARED_STATEMENTS": "off"})
    theirs = _run(
        probe, {**PRODUCTION, "DATABASE_URL": PRODUCTION["DATABASE_URL"] + "?options=-c%20a=b"}
    )
    assert (on.returncode, off.returncode, theirs.returncode) == (0, 0, 0), on.stderr
    assert on.stdout.split() == ["5", "'-c", "plan_cache_mode=force_generic_plan'"]
    assert off.stdout.split() == ["None", "None"]
    assert theirs.stdout.split() == ["5", "'-c", "a=b", "-c", "plan_cache_mode=force_generic_plan'"]
