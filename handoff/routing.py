"""Socket routes (SPEC §4, §5)."""

from __future__ import annotations

from django.urls import path

from conversations.consumers import ChatConsumer
from dashboard.consumers import ConsoleConsumer

websocket_urlpatterns = [
    path("ws/chat/<slug:slug>/", ChatConsumer.as_asgi()),
    path("ws/console/", ConsoleConsumer.as_asgi()),
]
