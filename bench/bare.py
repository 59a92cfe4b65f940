"""The reference: a bare Channels app that fans customer messages out to dashboards, no database.

Served by daphne like the product (`daphne bench.bare:application`) on the product's own
channel layer configuration (read from `handoff.settings` with the same environment, under
another prefix). A customer frame `{"id", "seq"}` becomes one card-sized `card` event,
`group_send` to every dashboard, and each dashboard consumer sends it on as one frame: the
naive per-event, per-socket fan-out the product is measured against.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import django
from django.conf import settings


def _product_layers() -> dict:
    """The product's CHANNEL_LAYERS for this environment, without importing its Celery app."""
    path = Path(__file__).resolve().parent.parent / "handoff" / "settings.py"
    spec = importlib.util.spec_from_file_location("bench_product_settings", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return json.loads(json.dumps(module.CHANNEL_LAYERS))


layers = _product_layers()
if "CONFIG" in layers["default"]:
    layers["default"]["CONFIG"]["prefix"] = "bench-bare"
settings.configure(
    DEBUG=False,
    SECRET_KEY="bench-bare",
    ALLOWED_HOSTS=["*"],
    INSTALLED_APPS=["channels"],
    CHANNEL_LAYERS=layers,
    USE_TZ=True,
)
django.setup()

from channels.generic.websocket import AsyncWebsocketConsumer  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import path  # noqa: E402

GROUP = "dashboard"


def card(conversation_id: str, seq: int) -> dict:
    """A card as large as the product's, so both sides serialise the same amount."""
    return {
        "id": conversation_id,
        "service": "support",
        "version": seq,
        "status": "ai_active",
        "specialist": "Tech Support",
        "location": {"city": "Berlin", "region": "Berlin", "country": "Germany"},
        "opening_question": "How do I reset my password?",
        "started_at": "2026-01-01T12:00:00.000000+00:00",
        "last_activity_at": "2026-01-01T12:00:05.000000+00:00",
        "message_count": seq,
        "claimed_by": None,
        "needs_attention": False,
        "reasons": [],
        "waiting_since": None,
    }


class DashboardConsumer(AsyncWebsocketConsumer):
    """One dashboard: joins the group and sends every event as it comes."""

    async def connect(self) -> None:
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code: int) -> None:
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def dashboard_event(self, message: dict) -> None:
        await self.send(text_data=json.dumps(message["event"]))


class CustomerConsumer(AsyncWebsocketConsumer):
    """One customer: each frame is group_sent to every dashboard."""

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        frame = json.loads(text_data or "{}")
        event = {"type": "card", "card": card(str(frame.get("id")), int(frame.get("seq", 0)))}
        await self.channel_layer.group_send(GROUP, {"type": "dashboard.event", "event": event})


application = ProtocolTypeRouter(
    {
        "websocket": URLRouter(
            [
                path("ws/console/", DashboardConsumer.as_asgi()),
                path("ws/chat/<slug:slug>/", CustomerConsumer.as_asgi()),
            ]
        )
    }
)
