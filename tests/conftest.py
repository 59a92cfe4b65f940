"""Shared fixtures: a service with specialists and knowledge, and users by role."""

from __future__ import annotations

import pytest
from channels.layers import channel_layers
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache

from conversations.models import KnowledgeEntry, Mode, Service, Specialist


@pytest.fixture(autouse=True)
def _fresh_cache_and_layers():
    """Rate limits and in-memory layers must not leak from one test into the next."""
    cache.clear()
    channel_layers.backends = {}
    yield
    cache.clear()
    channel_layers.backends = {}


def make_service(
    *, slug: str = "support", name: str = "Support", mode: str = Mode.HUMAN_SUPPORTED, **fields
) -> Service:
    service = Service.objects.create(name=name, slug=slug, mode=mode, **fields)
    tech = Specialist.objects.create(
        service=service, name="Tech Support", description="Fixes problems", position=0
    )
    billing = Specialist.objects.create(
        service=service, name="Billing", description="Invoices and payments", position=1
    )
    KnowledgeEntry.objects.create(
        service=service,
        specialist=tech,
        question="How do I reset my password?\nI forgot my password",
        answer="Click 'Forgot password' on the sign-in page and follow the link we email you.",
    )
    KnowledgeEntry.objects.create(
        service=service,
        specialist=billing,
        question="How do I get a refund?\nCan I have my money back?",
        answer="Refunds are available within 30 days from Settings → Billing → Request refund.",
    )
    KnowledgeEntry.objects.create(
        service=service,
        specialist=billing,
        question="Where can I download my invoices?\nI need an invoice",
        answer="Invoices are under Settings → Billing → Invoices, as PDF.",
    )
    return service


@pytest.fixture
def service(db) -> Service:
    return make_service()


def make_agent(django_user_model, username: str, first_name: str = ""):
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, first_name=first_name
    )
    group, _ = Group.objects.get_or_create(name="Agents")
    user.groups.add(group)
    return user


@pytest.fixture
def agent(db, django_user_model):
    return make_agent(django_user_model, "alice", "Alice")


@pytest.fixture
def agent2(db, django_user_model):
    return make_agent(django_user_model, "bob", "Bob")


@pytest.fixture
def admin(db, django_user_model):
    user = django_user_model.objects.create_user(
        username="ada", password="pw-ada", first_name="Ada"
    )
    user.user_permissions.add(Permission.objects.get(codename="change_service"))
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def stranger(db, django_user_model):
    return django_user_model.objects.create_user(username="eve", password="pw-eve")


@pytest.fixture
def redis_layer(settings):
    """Switch the channel layer to channels-redis on the real Redis server."""
    import redis

    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {settings.TEST_REDIS_URL}")
    client.flushdb()
    settings.CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.core.RedisChannelLayer",
            "CONFIG": {
                "hosts": [{"address": settings.TEST_REDIS_URL, "socket_timeout": None}],
                "prefix": "handoff-test",
            },
        }
    }
    channel_layers.backends = {}
    yield settings.CHANNEL_LAYERS
    channel_layers.backends = {}
    client.flushdb()
    client.close()
