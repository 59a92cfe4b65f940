"""The ASGI application: Django for HTTP, Channels for the widget and console sockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "handoff.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from handoff.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origins are checked per service by the widget consumer (its allowed_origins)
        # and by the console consumer (same host), not globally.
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
