"""Project-wide middleware: the Content-Security-Policy of every HTML page, and the
sockets' session and user."""

from __future__ import annotations

from channels.auth import AuthMiddleware
from channels.sessions import CookieMiddleware, InstanceSessionWrapper, SessionMiddleware
from django.conf import settings
from django.http import HttpRequest, HttpResponse
from django.utils.deprecation import MiddlewareMixin

HEADER = "Content-Security-Policy"


class ContentSecurityPolicyMiddleware(MiddlewareMixin):
    """Add `settings.HANDOFF_CSP` (or a path's own policy) to HTML responses without one.

    A MiddlewareMixin, like Django's own: it runs in sync and async chains alike, so it adds
    no thread hop under daphne.
    """

    def process_response(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        policy = getattr(settings, "HANDOFF_CSP", "")
        for prefix, relaxed in getattr(settings, "HANDOFF_CSP_BY_PATH", {}).items():
            if request.path.startswith(prefix):
                policy = relaxed
                break
        # Only documents execute a policy; JSON, assets and streams gain nothing from it.
        content_type = response.get("Content-Type", "")
        if policy and content_type.startswith("text/html") and HEADER not in response:
            response[HEADER] = policy
        return response


class SocketSessionMiddleware(SessionMiddleware):
    """Channels' `SessionMiddleware` (the session in the scope) without its wrapper around
    the socket's `send`.

    Channels saves a session only when an HTTP response starts; on a socket its wrapper
    checks, for every frame sent, that there is nothing to save, and under load those
    checks were 3 % of the web process's interpreter time (bench/README.md, twelfth round).
    A socket never saves its session: the console only reads it.
    """

    async def __call__(self, scope, receive, send):
        wrapper = InstanceSessionWrapper(scope, send)
        await wrapper.resolve_session()
        return await self.inner(wrapper.scope, receive, send)


def SocketAuthMiddlewareStack(inner):
    """Channels' `AuthMiddlewareStack` for sockets: cookies, session and user in the scope."""
    return CookieMiddleware(SocketSessionMiddleware(AuthMiddleware(inner)))
