"""Project-wide HTTP middleware: the Content-Security-Policy of every HTML page."""

from __future__ import annotations

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
