"""A test urlconf with the API, until `handoff/urls.py` includes `dashboard.urls`."""

from __future__ import annotations

from django.urls import include, path

urlpatterns = [
    path("", include("dashboard.urls")),
    path("", include("conversations.urls")),
]
