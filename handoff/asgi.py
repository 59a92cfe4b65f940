"""The ASGI application: Django for HTTP, Channels for the widget and console sockets."""

from __future__ import annotations

import importlib
import os

import django

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "handoff.settings")
django.setup(set_prefix=False)

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from handoff.http import RequestHandler  # noqa: E402
from handoff.memory import settle_collector  # noqa: E402
from handoff.middleware import SocketAuthMiddlewareStack  # noqa: E402
from handoff.routing import websocket_urlpatterns  # noqa: E402

django_asgi_app = RequestHandler()


def _patch(module: str, owner: str, name: str, replacement) -> None:
    """Replace `owner.name` (in `module`) by `replacement(original)`, once.

    Nothing if `module` is not installed: the app is not served by daphne then.
    """
    try:
        cls = getattr(importlib.import_module(module), owner)
    except ImportError:
        return
    done = f"_handoff_replaced_{name}"
    if getattr(cls, done, False):
        return
    setattr(cls, name, replacement(getattr(cls, name)))
    setattr(cls, done, True)


def _close_oversized_frames_with_1009(reset):
    """Make daphne answer a frame over its size limit with close 1009, not a dropped socket.

    daphne's websocket engine (autobahn) drops the TCP connection on a protocol failure by
    default, so a client only sees 1006. The contract promises 1009 (SPEC §9).
    """

    def reset_protocol_options(self) -> None:
        reset(self)
        self.failByDrop = False

    return reset_protocol_options


def _allow_policy_violation_close(server_close):
    """Let a consumer close a socket with 1008 (policy violation) under daphne.

    autobahn's `sendClose` accepts only 1000 and 3000-4999 from applications and raises on
    RFC 6455's 1008, which kills the consumer before its `disconnect` runs. The widget closes
    abusive sockets with 1008, so that one code goes out as a plain close frame.
    """

    def server_close_policy(self, code=None) -> None:
        if code == 1008:
            self.sendCloseFrame(code=code, isReply=False)
        else:
            server_close(self, code)

    return server_close_policy


def _limit_only_what_clients_send(server_send):
    """Hold clients to `--websocket-max-message-size`, not the server's own frames.

    autobahn applies the one limit both ways: a console snapshot of a busy desk (a few hundred
    open conversations pass 64 KiB) would raise inside `send` and kill the console, which
    would reconnect and fail again. The limit is there for what clients send (SPEC §9); it is
    lifted for the moment of each server send, on the reactor's one thread.
    """

    def server_send_unlimited(self, content, binary=False) -> None:
        limit, self.maxMessagePayloadSize = self.maxMessagePayloadSize, 0
        try:
            server_send(self, content, binary)
        finally:
            self.maxMessagePayloadSize = limit

    return server_send_unlimited


_patch(
    "autobahn.websocket.protocol",
    "WebSocketServerFactory",
    "resetProtocolOptions",
    _close_oversized_frames_with_1009,
)
_patch("daphne.ws_protocol", "WebSocketProtocol", "serverClose", _allow_policy_violation_close)
_patch("daphne.ws_protocol", "WebSocketProtocol", "serverSend", _limit_only_what_clients_send)

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        # Origins are checked per service by the widget consumer (its allowed_origins)
        # and by the console consumer (same host), not globally.
        "websocket": SocketAuthMiddlewareStack(URLRouter(websocket_urlpatterns)),
    }
)

# Everything start-up made stays for the life of the process: out of the collector's way.
settle_collector()
