"""Socket routes (SPEC §4, §5)."""

from __future__ import annotations

from django.urls import path

from conversations.consumers import ChatConsumer

websocket_urlpatterns = [
    path("ws/chat/<slug:slug>/", ChatConsumer.as_asgi()),
]
