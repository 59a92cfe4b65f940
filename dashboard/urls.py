"""The agents' REST API under `/api/v1/`, its schema and docs, and `/healthz` (SPEC §6)."""

from __future__ import annotations

from django.urls import path

from dashboard import api, health

app_name = "dashboard"

# Conversation ids are matched as any string so a malformed one gets the API's JSON 404.
urlpatterns = [
    path("api/v1/services/", api.ServiceListView.as_view(), name="services"),
    path("api/v1/services/set-mode/", api.ServicesSetModeView.as_view(), name="services-set-mode"),
    path("api/v1/services/<slug:slug>/", api.ServiceDetailView.as_view(), name="service"),
    path("api/v1/conversations/", api.ConversationListView.as_view(), name="conversations"),
    path(
        "api/v1/conversations/<str:conversation_id>/",
        api.ConversationDetailView.as_view(),
        name="conversation",
    ),
    path(
        "api/v1/conversations/<str:conversation_id>/messages/",
        api.ConversationMessagesView.as_view(),
        name="conversation-messages",
    ),
    path(
        "api/v1/conversations/<str:conversation_id>/take-over/",
        api.TakeOverView.as_view(),
        name="conversation-take-over",
    ),
    path(
        "api/v1/conversations/<str:conversation_id>/resume-ai/",
        api.ResumeAIView.as_view(),
        name="conversation-resume-ai",
    ),
    path(
        "api/v1/conversations/<str:conversation_id>/release/",
        api.ReleaseView.as_view(),
        name="conversation-release",
    ),
    path(
        "api/v1/conversations/<str:conversation_id>/close/",
        api.CloseView.as_view(),
        name="conversation-close",
    ),
    path("api/v1/stats/", api.StatsView.as_view(), name="stats"),
    path("api/v1/schema/", api.SchemaView.as_view(), name="schema"),
    path("api/v1/docs/", api.DocsView.as_view(), name="docs"),
    path("healthz", health.healthz, name="healthz"),
]
