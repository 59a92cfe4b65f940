"""Test settings: production's PostgreSQL, with the fast in-memory layer and eager tasks.

Tests that prove the real Redis layer, Celery worker and browser opt into them through
fixtures in `tests/conftest.py`.
"""

from __future__ import annotations

import os

os.environ.setdefault("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/handoff")
os.environ.setdefault("SECRET_KEY", "test-secret-key-not-for-production")

from handoff.settings import *  # noqa: F403

CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
CELERY_BROKER_URL = "memory://"
CELERY_TASK_ALWAYS_EAGER = True
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = True
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
ALLOWED_HOSTS = ["*"]
TEST_REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/14")
DATABASES["default"]["CONN_MAX_AGE"] = 0  # noqa: F405
# The suite keeps Python's garbage collector: it collects the connections of finished
# threads promptly (tests/test_memory.py proves the servers' settings in their own processes).
HANDOFF_GC_THRESHOLDS = None
TEST_BROKER_URL = os.environ.get("TEST_BROKER_URL", "redis://127.0.0.1:6379/13")
