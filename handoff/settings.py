"""Settings for Human Handoff, read from the environment.

With no variables set the product runs on its embedded default: SQLite, the in-memory
channel layer and Celery tasks run in-process. `DATABASE_URL` and `REDIS_URL` switch to
PostgreSQL, channels-redis and a Celery worker on Redis.
"""

from __future__ import annotations

import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent

DEFAULT_SECRET_KEY = "insecure-embedded-default-do-not-use-in-production"


def env(name: str, default: str = "") -> str:
    return os.environ.get(name, default)


def envbool(name: str, default: bool) -> bool:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ImproperlyConfigured(f"{name} must be a boolean (true/false), not {raw!r}")


def envint(name: str, default: int, *, minimum: int = 0) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ImproperlyConfigured(f"{name} must be an integer, not {raw!r}") from None
    if value < minimum:
        raise ImproperlyConfigured(f"{name} must be at least {minimum}, not {value}")
    return value


def envlist(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env(name, default).split(",") if item.strip()]


DATABASE_URL = env("DATABASE_URL")
REDIS_URL = env("REDIS_URL")
EMBEDDED = not DATABASE_URL and not REDIS_URL

# The embedded default is a development setup; anything wired to real services is
# production unless DEBUG is asked for explicitly.
DEBUG = envbool("DEBUG", EMBEDDED)
SECRET_KEY = env("SECRET_KEY", DEFAULT_SECRET_KEY)
if not DEBUG and SECRET_KEY == DEFAULT_SECRET_KEY:
    raise ImproperlyConfigured(
        "SECRET_KEY must be set in production (DEBUG is off). "
        "Generate one with: python -c 'import secrets; print(secrets.token_urlsafe(50))'"
    )

ALLOWED_HOSTS = envlist("ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]" if DEBUG else "")
CSRF_TRUSTED_ORIGINS = envlist("CSRF_TRUSTED_ORIGINS")
SITE_NAME = env("SITE_NAME", "Human Handoff")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "channels",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "conversations",
    "escalation",
    "dashboard",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "handoff.middleware.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "handoff.urls"
ASGI_APPLICATION = "handoff.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

if DATABASE_URL:
    # Persistent connections, one per thread that does database work: the few threads that
    # serve the sockets (handoff/db.py), the HTTP_THREADS request threads (handoff/http.py)
    # and each Celery worker process keep theirs between calls (Django replaces one that is
    # broken or older than this).
    DATABASES = {
        "default": dj_database_url.parse(
            DATABASE_URL,
            conn_max_age=envint("DATABASE_CONN_MAX_AGE", 600),
            conn_health_checks=True,
        )
    }
    if envbool("DATABASE_PREPARED_STATEMENTS", True):
        # psycopg prepares a statement on a connection's fifth run of it, and PostgreSQL plans
        # it once: a generic plan, the same for any ids (it would otherwise plan every run
        # again, a plan for the arrays it sees looking cheaper). Only the hot reads of
        # handoff.db.CompiledQuery bind their parameters on the server, which this needs, so
        # no other statement is prepared. Off for a pooler that cannot keep prepared
        # statements or session options (PgBouncer in transaction mode before 1.21).
        options = DATABASES["default"].setdefault("OPTIONS", {})
        options["prepare_threshold"] = 5
        options["options"] = (
            options.get("options", "") + " -c plan_cache_mode=force_generic_plan"
        ).strip()
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": env("SQLITE_PATH") or BASE_DIR / "db.sqlite3",
            # Several threads (the ASGI server, in-process tasks) write to one file.
            "OPTIONS": {"timeout": 20, "transaction_mode": "IMMEDIATE"},
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env("STATIC_ROOT")) if env("STATIC_ROOT") else BASE_DIR / "staticfiles"
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if not DEBUG
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Serve straight from the app folders when nothing was collected (the embedded default).
WHITENOISE_USE_FINDERS = envbool("WHITENOISE_USE_FINDERS", DEBUG)
WHITENOISE_AUTOREFRESH = DEBUG

LOGIN_URL = "/accounts/login/"
LOGIN_REDIRECT_URL = "/console/"
LOGOUT_REDIRECT_URL = "/accounts/login/"

# Realtime: Redis in production, one process's memory in the embedded default. The pub/sub
# layer pushes messages to each process as they come; "core" (channels-redis's list-based
# layer) reads them one at a time, three round trips each (bench/README.md).
CHANNEL_LAYER = env("CHANNEL_LAYER", "pubsub")
if CHANNEL_LAYER not in {"core", "pubsub"}:
    raise ImproperlyConfigured("CHANNEL_LAYER must be 'core' or 'pubsub'")


def redis_channel_layer(url: str, kind: str, prefix: str) -> dict:
    """The channel layer on Redis at `url`: "pubsub" or "core" (see handoff/layer.py)."""
    # socket_timeout None: the layer blocks on reads while sockets are idle.
    hosts = [{"address": url, "socket_timeout": None}]
    if kind == "pubsub":
        return {
            "BACKEND": "handoff.layer.PubSubChannelLayer",
            "CONFIG": {"hosts": hosts, "prefix": prefix},
        }
    return {
        "BACKEND": "channels_redis.core.RedisChannelLayer",
        "CONFIG": {
            "hosts": hosts,
            "capacity": envint("CHANNEL_CAPACITY", 1500, minimum=10),
            "expiry": 30,
            "prefix": prefix,
        },
    }


if REDIS_URL:
    CHANNEL_LAYERS = {
        "default": redis_channel_layer(REDIS_URL, CHANNEL_LAYER, env("CHANNEL_PREFIX", "handoff"))
    }
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}

CELERY_BROKER_URL = env("CELERY_BROKER_URL") or REDIS_URL or "memory://"
CELERY_RESULT_BACKEND = None
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", not REDIS_URL)
# Worker processes keep their database connection across tasks (handoff/celery.py): Celery
# would otherwise close it after every task.
CELERY_DB_REUSE_MAX = 1_000_000
# In-process tasks run in a thread beside the server rather than inside a socket's turn.
HANDOFF_TASKS_IN_BACKGROUND = envbool("HANDOFF_TASKS_IN_BACKGROUND", EMBEDDED)
CELERY_TASK_EAGER_PROPAGATES = False
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Publishing must never hang a request when the broker is away.
CELERY_BROKER_TRANSPORT_OPTIONS = {
    "socket_timeout": 2,
    "socket_connect_timeout": 2,
    "max_retries": 1,
    # A task of a worker killed outright is redelivered after this; keep it above the
    # longest task (an AI reply with its retries).
    "visibility_timeout": envint("CELERY_VISIBILITY_TIMEOUT", 3600, minimum=1),
}
CELERY_TASK_PUBLISH_RETRY = False
CELERY_BEAT_SCHEDULE = {
    "close-idle-conversations": {
        "task": "conversations.tasks.close_idle_conversations",
        "schedule": 60.0,
    },
    "expire-handoff-waits": {
        "task": "conversations.tasks.expire_handoff_waits",
        "schedule": 15.0,
    },
    "score-unscored-messages": {
        "task": "escalation.tasks.score_unscored_messages",
        # The backstop for scoring tasks lost to a broker outage or a killed worker.
        "schedule": float(envint("HANDOFF_SWEEP_SECONDS", 30, minimum=1)),
    },
    "answer-unanswered-messages": {
        "task": "conversations.tasks.answer_unanswered_messages",
        "schedule": 30.0,
    },
}
# Without a beat process (the embedded default) the web process runs the schedule itself.
HANDOFF_INPROCESS_BEAT = envbool("HANDOFF_INPROCESS_BEAT", EMBEDDED)

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.TokenAuthentication",
    ],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "dashboard.api.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Human Handoff API",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # Docs assets are served from this host: consoles may run without internet access.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "ENUM_NAME_OVERRIDES": {"ReasonEnum": "escalation.models.Reason"},
}

# The product's own knobs (SPEC §3, §7, §9).
HANDOFF_AI_BACKEND = env("HANDOFF_AI_BACKEND", "knowledge_base")
if HANDOFF_AI_BACKEND not in {"knowledge_base", "openai"}:
    raise ImproperlyConfigured("HANDOFF_AI_BACKEND must be 'knowledge_base' or 'openai'")
AI_BASE_URL = env("AI_BASE_URL", "https://api.openai.com/v1")
AI_API_KEY = env("AI_API_KEY")
AI_MODEL = env("AI_MODEL", "gpt-4o-mini")
AI_TIMEOUT_SECONDS = float(env("AI_TIMEOUT_SECONDS", "20"))
CONVERSATION_IDLE_MINUTES = envint("CONVERSATION_IDLE_MINUTES", 30, minimum=1)
WIDGET_RATE_LIMIT = envint("WIDGET_RATE_LIMIT", 20, minimum=1)
WIDGET_MAX_SOCKETS_PER_IP = envint("WIDGET_MAX_SOCKETS_PER_IP", 50, minimum=1)
# Every frame of one widget socket: WIDGET_FRAME_RATE a second sustained, bursts up to
# WIDGET_FRAME_BURST; more than WIDGET_FRAME_ABUSE_LIMIT refused within 10 s closes it (1008).
# A person typing, rating and reconnecting never comes near these.
WIDGET_FRAME_RATE = envint("WIDGET_FRAME_RATE", 5, minimum=1)
WIDGET_FRAME_BURST = envint("WIDGET_FRAME_BURST", 30, minimum=1)
WIDGET_FRAME_ABUSE_LIMIT = envint("WIDGET_FRAME_ABUSE_LIMIT", 50, minimum=1)
# How often an open console socket re-checks its agent's session and account (4403 if gone):
# an agent who logs out or is deactivated loses the live console within a minute.
CONSOLE_REAUTH_SECONDS = envint("CONSOLE_REAUTH_SECONDS", 20, minimum=1)
if CONSOLE_REAUTH_SECONDS > 60:
    raise ImproperlyConfigured("CONSOLE_REAUTH_SECONDS must be at most 60")
TRUSTED_PROXY_COUNT = envint("TRUSTED_PROXY_COUNT", 0)
# HTTP requests a web process runs at once, each on a long-lived thread with its own database
# connection (handoff.http); more wait their turn on the event loop.
HANDOFF_HTTP_THREADS = envint("HTTP_THREADS", 2, minimum=1)


def gc_thresholds(name: str, default: str) -> tuple[int, int, int] | None:
    raw = env(name, default).strip().lower()
    if raw in {"off", "python"}:
        return None
    try:
        values = tuple(int(part) for part in raw.split(","))
    except ValueError:
        values = ()
    if len(values) != 3 or values[0] < 1 or min(values) < 0:
        raise ImproperlyConfigured(
            f"{name} must be three counts like 10000,10,10 (or off), not {raw!r}"
        )
    return values


# The garbage collector of the web and worker processes (handoff/memory.py): what start-up
# made is frozen, and the generations are collected at these thresholds; "off" keeps
# Python's (700,10,10) and freezes nothing.
HANDOFF_GC_THRESHOLDS = gc_thresholds("GC_THRESHOLDS", "10000,10,10")
GEOIP_PATH = env("GEOIP_PATH") or None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {
        "plain": {
            "()": "handoff.logging.PlainFormatter",
            "format": "%(asctime)s %(levelname)s %(name)s %(message)s",
        },
        "json": {"()": "handoff.logging.JsonFormatter"},
    },
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env("LOG_LEVEL", "INFO")},
    "loggers": {
        "django.channels.server": {"level": "WARNING"},
        "daphne": {"level": "WARNING"},
    },
}

# Rate limits and socket caps are shared by every web process through the cache.
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env("CHANNEL_PREFIX", "handoff"),
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}


# --- Production hardening ------------------------------------------------------------------
# Production is anything wired to real services. DEBUG there would show settings and
# tracebacks to anyone and keep every query in memory, so it is refused outright; a developer
# who points a local run at PostgreSQL or Redis says so with HANDOFF_ALLOW_DEBUG.
PRODUCTION = not EMBEDDED
if DEBUG and PRODUCTION and not envbool("HANDOFF_ALLOW_DEBUG", False):
    raise ImproperlyConfigured(
        "DEBUG must be off in production (DATABASE_URL or REDIS_URL is set). "
        "For local development against real services set HANDOFF_ALLOW_DEBUG=true."
    )

# One switch for everything that assumes HTTPS in front of the app. A plain-HTTP run on
# loopback (the integration tests, honcho on a laptop) turns it off with HANDOFF_SECURE=false.
HANDOFF_SECURE = envbool("HANDOFF_SECURE", not DEBUG)
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
if HANDOFF_SECURE:
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = envint("SECURE_HSTS_SECONDS", 365 * 24 * 3600)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    # Preloading is a promise to browsers that is slow to take back: an operator's decision.
    SECURE_HSTS_PRELOAD = False
    # Usually the proxy redirects to HTTPS already; a redirect here would loop behind one
    # that does not send X-Forwarded-Proto.
    SECURE_SSL_REDIRECT = envbool("SECURE_SSL_REDIRECT", False)
    if TRUSTED_PROXY_COUNT > 0:
        # Only a proxy we trust may tell us the request came in over HTTPS.
        SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# Sent on every HTML page (handoff.middleware): scripts only from this host, so injected
# markup cannot run. Styles allow 'unsafe-inline' for the Django admin's and the widget's
# inline <style> (the widget injects one into its shadow root); sockets may be ws: or wss:.
_CSP = {
    "default-src": "'self'",
    "script-src": "'self'",
    "style-src": "'self' 'unsafe-inline'",
    "img-src": "'self' data:",
    "connect-src": "'self' ws: wss:",
    "frame-ancestors": "'none'",
    "base-uri": "'self'",
    "form-action": "'self'",
}
HANDOFF_CSP = "; ".join(f"{name} {value}" for name, value in _CSP.items())
# Pages that need more, by path prefix: drf-spectacular's Swagger UI starts itself with an
# inline script (it shows only this API's own schema).
HANDOFF_CSP_BY_PATH = {
    "/api/v1/docs/": "; ".join(
        f"{name} {value} 'unsafe-inline'" if name == "script-src" else f"{name} {value}"
        for name, value in _CSP.items()
    ),
}

# Structured logs: JSON lines for log collectors in production, plain text for people.
LOG_FORMAT = env("LOG_FORMAT", "plain" if DEBUG else "json")
if LOG_FORMAT not in {"plain", "json"}:
    raise ImproperlyConfigured(f"LOG_FORMAT must be 'plain' or 'json', not {LOG_FORMAT!r}")
LOGGING["handlers"]["console"]["formatter"] = LOG_FORMAT
# Celery would otherwise replace the root logger's handler with its own plain format.
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT == "plain"
