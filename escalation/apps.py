from __future__ import annotations

from django.apps import AppConfig


class EscalationConfig(AppConfig):
    name = "escalation"
    verbose_name = "Escalation"

    def ready(self) -> None:
        from conversations import events
        from escalation import subscribers

        events.subscribe(events.MessagePosted, subscribers.on_message_posted)
        events.subscribe(events.CustomerMessagesReceived, subscribers.on_customer_messages_received)
        events.subscribe(events.AiRepliesDrafted, subscribers.on_ai_replies_drafted)
        events.subscribe(events.FeedbackGiven, subscribers.on_feedback)
        events.subscribe(events.HumanRequested, subscribers.on_human_requested)
        events.subscribe(events.ConversationChanged, subscribers.on_conversation_changed)
