"""Root URLs."""

from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from dashboard.views import console

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/", include("django.contrib.auth.urls")),
    path("console/", console, name="console"),
    path("", include("dashboard.urls")),
    path("", include("conversations.urls")),
]
