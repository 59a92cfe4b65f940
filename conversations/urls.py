from __future__ import annotations

from django.urls import path

from conversations import views

app_name = "conversations"

urlpatterns = [
    path("", views.home, name="home"),
    path("widget/demo/<slug:slug>/", views.widget_demo, name="widget-demo"),
]
