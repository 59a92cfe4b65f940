"""The console pages: login required, agents only."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.cache import never_cache

from conversations import services
from conversations.protocol import display_name


@never_cache
@login_required
def console(request: HttpRequest) -> HttpResponse:
    """The Human Handoff screen; everything on it arrives over /ws/console/."""
    if not services.is_agent(request.user):
        raise PermissionDenied("Only support agents can open the console.")
    return render(
        request,
        "dashboard/console.html",
        {
            "is_admin": services.is_admin(request.user),
            "agent_name": display_name(request.user),
        },
    )
