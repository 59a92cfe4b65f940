"""Escalation in the Django admin: the policy inline on its service, and flags for review."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from conversations.admin import ReadOnlyAdminMixin, ServiceAdmin
from conversations.models import Service
from escalation.models import EscalationPolicy, Flag


class EscalationPolicyInline(admin.StackedInline):
    model = EscalationPolicy
    can_delete = False
    extra = 1
    max_num = 1
    verbose_name = "escalation policy"
    fieldsets = [
        ("Keywords", {"fields": ["keywords", "keyword_action"]}),
        ("Sentiment", {"fields": ["sentiment_threshold", "sentiment_window", "sentiment_action"]}),
        (
            "Failed answers",
            {
                "fields": [
                    "non_answer_action",
                    "repeated_failures_limit",
                    "repeated_failures_action",
                    "thumbs_down_action",
                ]
            },
        ),
    ]


class ServiceWithPolicyAdmin(ServiceAdmin):
    inlines = [*ServiceAdmin.inlines, EscalationPolicyInline]


admin.site.unregister(Service)
admin.site.register(Service, ServiceWithPolicyAdmin)


@admin.register(Flag)
class FlagAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "reason",
        "service",
        "conversation",
        "message_text",
        "rule",
        "is_acknowledged",
    ]
    list_filter = ["reason", "conversation__service", "created_at"]
    list_select_related = ["conversation__service", "message"]
    search_fields = ["conversation__id", "message__text"]
    date_hierarchy = "created_at"
    fields = ["conversation", "reason", "message", "message_text", "evidence", "created_at"]
    readonly_fields = fields

    @admin.display(description="Service")
    def service(self, obj: Flag) -> str:
        return obj.conversation.service.name

    @admin.display(description="Message")
    def message_text(self, obj: Flag) -> str:
        return obj.message.text[:120] if obj.message_id else "—"

    @admin.display(description="Rule")
    def rule(self, obj: Flag) -> str:
        return str(obj.evidence.get("rule", ""))

    @admin.display(description="Acknowledged", boolean=True)
    def is_acknowledged(self, obj: Flag) -> bool:
        return obj.acknowledged

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return request.user.is_superuser
