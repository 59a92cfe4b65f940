from __future__ import annotations

from django.apps import AppConfig


class DashboardConfig(AppConfig):
    name = "dashboard"
    verbose_name = "Agent console"

    def ready(self) -> None:
        from conversations import events
        from dashboard import subscribers
        from escalation.events import FlagRaised

        events.subscribe(events.MessagePosted, subscribers.on_message_posted)
        events.subscribe(events.ConversationChanged, subscribers.on_conversation_changed)
        events.subscribe(events.ServiceModeChanged, subscribers.on_service_mode_changed)
        events.subscribe(FlagRaised, subscribers.on_flag_raised)
