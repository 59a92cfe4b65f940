"""The ASGI application: Django for HTTP, Channels for the widget and console sockets."""

from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "handoff.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.core.signals import request_finished  # noqa: E402

from handoff.db import close_request_connection  # noqa: E402
from handoff.routing import websocket_urlpatterns  # noqa: E402

request_finished.connect(close_request_connection)


def _close_oversized_frames_with_1009() -> None:
    """Make daphne answer a frame over its size limit with close 1009, not a dropped socket.

    daphne's websocket engine (autobahn) drops the TCP connection on a protocol failure by
    default, so a client only sees 1006. The contract promises 1009 (SPEC §9).
    """
    try:
        from autobahn.websocket.protocol import WebSocketServerFactory
    except ImportError:  # not served by daphne
        return
    if getattr(WebSocketServerFactory, "_handoff_clean_close", False):
        return
    reset = WebSocketServerFactory.resetProtocolOptions

    def reset_protocol_options(self) -> None:
        reset(self)
        self.failByDrop = False

    WebSocketServerFactory.resetProtocolOptions = reset_protocol_options
    WebSocketServerFactory._handoff_clean_close = True


def _allow_policy_violation_close() -> None:
    """Let a consumer close a socket with 1008 (policy violation) under daphne.

    autobahn's `sendClose` accepts only 1000 and 3000-4999 from applications and raises on
    RFC 6455's 1008, which kills the consumer before its `disconnect` runs. The widget closes
    abusive sockets with 1008, so that one code goes out as a plain close frame.
    """
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not served by daphne
        return
    if getattr(WebSocketProtocol, "_handoff_policy_close", False):
        return
    server_close = WebSocketProtocol.serverClose

    def server_close_policy(self, code=None) -> None:
        if code == 1008:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            server_close(self, code)

    WebSocketProtocol.serverClose = server_close_policy
    WebSocketProtocol._handoff_policy_close = True


def _limit_only_what_clients_send() -> None:
    """Hold clients to `--websocket-max-message-size`, not the server's own frames.

    autobahn applies the one limit both ways: a console snapshot of a busy desk (a few hundred
    open conversations pass 64 KiB) would raise inside `send` and kill the console, which
    would reconnect and fail again. The limit is there for what clients send (SPEC §9); it is
    lifted for the moment of each server send, on the reactor's one thread.
    """
    try:
        from daphne.ws_protocol import WebSocketProtocol
    except ImportError:  # not served by daphne
        return
    if getattr(WebSocketProtocol, "_handoff_unlimited_send", False):
        return
    server_send = WebSocketProtocol.serverSend

    def server_send_unlimited(self, content, binary=False) -> None:
        limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            server_send(self, content, binary)
        finally:
            self.maxMessagePayloadSize = limit

    WebSocketProtocol.serverSend = server_send_unlimited
    WebSocketProtocol._handoff_unlimited_send = True


_close_oversized_frames_with_1009()
_allow_policy_violation_close()
_limit_only_what_clients_send()

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origins are checked per service by the widget consumer (its allowed_origins)
        # and by the console consumer (same host), not globally.
        "websocket": AuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)
