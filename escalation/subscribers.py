"""How escalation reacts to the conversation engine's events: each calls one service or task."""

from __future__ import annotations

from conversations import events
from escalation import services

WAITING_CHANGES = {"started", "handed_off", "released", "mode_applied"}


def on_message_posted(event: events.MessagePosted) -> None:
    if event.role == "user":
        # The mood is scored in the message's own task (`on_customer_messages_received`).
        services.message_screen(message=event.message)
    elif event.role == "ai":
        # Run where the reply was posted (the AI's task) rather than in a task of its own;
        # the beat sweep (`score_unscored_messages`) catches what a crash missed.
        services.message_check_answer(message=event.message)


def on_customer_messages_received(event: events.CustomerMessagesReceived) -> None:
    services.messages_score_sentiment(messages=event.messages)


def on_ai_replies_drafted(event: events.AiRepliesDrafted) -> None:
    services.replies_classify(messages=event.messages)


def on_feedback(event: events.FeedbackGiven) -> None:
    services.feedback_received(message_id=event.message_id, value=event.value)


def on_human_requested(event: events.HumanRequested) -> None:
    services.human_requested(
        conversation_id=event.conversation_id, message_id=event.message_id, source=event.source
    )


def on_conversation_changed(event: events.ConversationChanged) -> None:
    if event.change in WAITING_CHANGES and event.paused_unheld is not False:
        services.conversation_flag_waiting(conversation_id=event.conversation_id)
