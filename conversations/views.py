"""Pages for customers: the widget's demo host page."""

from __future__ import annotations

from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render

from conversations.models import Service


def widget_demo(request: HttpRequest, slug: str) -> HttpResponse:
    """A host page with the widget embedded by its one script tag."""
    service = get_object_or_404(Service, slug=slug)
    return render(request, "widget/demo.html", {"service": service})


def home(request: HttpRequest) -> HttpResponse:
    """Agents go to their console; everyone else to the first widget demo page."""
    if request.user.is_authenticated:
        return redirect("console")
    service = Service.objects.order_by("name").first()
    if service is None:
        return redirect("console")
    return redirect("conversations:widget-demo", slug=service.slug)
