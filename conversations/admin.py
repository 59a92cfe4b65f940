"""Django admin: services and their modes, specialists, knowledge, and read-only history."""

from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest

from conversations import services
from conversations.models import (
    AuditEvent,
    Conversation,
    KnowledgeEntry,
    Message,
    Mode,
    Service,
    Specialist,
    Visitor,
)


class SpecialistInline(admin.TabularInline):
    model = Specialist
    extra = 0
    fields = ["name", "description", "position"]


class ReadOnlyAdminMixin:
    """History is written by the state machine only; the admin shows it."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def _set_mode_action(mode: Mode):
    def action(modeladmin, request: HttpRequest, queryset: QuerySet[Service]) -> None:
        for service in queryset:
            services.service_set_mode(service=service, mode=mode, user=request.user)
        modeladmin.message_user(
            request, f"{queryset.count()} service(s) set to {mode.label}.", messages.SUCCESS
        )

    action.__name__ = f"set_mode_{mode.value}"
    action.short_description = f"Set mode: {mode.label}"
    return action


@admin.register(Service)
class ServiceAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "mode", "handoff_wait_seconds", "open_conversations"]
    list_filter = ["mode"]
    search_fields = ["name", "slug"]
    prepopulated_fields = {"slug": ["name"]}
    inlines = [SpecialistInline]
    actions = [_set_mode_action(mode) for mode in Mode]

    @admin.display(description="Open conversations")
    def open_conversations(self, obj: Service) -> int:
        return obj.conversations.filter(status="open").count()

    def save_model(self, request: HttpRequest, obj: Service, form, change: bool) -> None:
        # A mode change goes through the state machine so open conversations follow it.
        new_mode = obj.mode
        if change and "mode" in form.changed_data:
            obj.mode = form.initial["mode"]
        super().save_model(request, obj, form, change)
        if change and new_mode != obj.mode:
            services.service_set_mode(service=obj, mode=new_mode, user=request.user)
            obj.refresh_from_db()


@admin.register(Specialist)
class SpecialistAdmin(admin.ModelAdmin):
    list_display = ["name", "service", "description", "position"]
    list_filter = ["service"]
    search_fields = ["name", "description"]


@admin.register(KnowledgeEntry)
class KnowledgeEntryAdmin(admin.ModelAdmin):
    list_display = ["__str__", "service", "specialist", "is_active", "updated_at"]
    list_filter = ["service", "specialist", "is_active"]
    search_fields = ["question", "answer"]
    autocomplete_fields = []


class MessageInline(admin.TabularInline):
    model = Message
    extra = 0
    can_delete = False
    fields = ["seq", "role", "text", "author", "specialist", "feedback", "sentiment", "non_answer"]
    readonly_fields = fields
    ordering = ["seq"]

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(Conversation)
class ConversationAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "id",
        "service",
        "status",
        "ai_paused",
        "claimed_by",
        "specialist",
        "message_count",
        "opening_question",
        "last_activity_at",
    ]
    list_filter = ["status", "service", "ai_paused"]
    search_fields = ["id", "opening_question"]
    list_select_related = ["service", "claimed_by", "specialist"]
    inlines = [MessageInline]
    date_hierarchy = "started_at"


@admin.register(Visitor)
class VisitorAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = ["__str__", "service", "city", "region", "country", "last_seen_at"]
    list_filter = ["service", "country"]
    search_fields = ["name", "email", "city", "country"]


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdminMixin, admin.ModelAdmin):
    list_display = [
        "created_at",
        "action",
        "actor",
        "actor_kind",
        "service",
        "conversation",
        "detail",
    ]
    list_filter = ["action", "actor_kind", "service"]
    list_select_related = ["actor", "service", "conversation"]
    date_hierarchy = "created_at"

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False
