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
    """Send people to the console, or to the first demo page when there is no console yet."""
    service = Service.objects.order_by("name").first()
    if service is None:
        return redirect("admin:index")
    return redirect("conversations:widget-demo", slug=service.slug)
