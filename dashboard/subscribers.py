"""How the console follows the domain: each event becomes fresh cards, counters and toasts."""

from __future__ import annotations

from conversations import events
from conversations.models import Service
from dashboard import broadcast
from escalation.events import FlagRaised
from escalation.models import Flag


def on_message_posted(event: events.MessagePosted) -> None:
    # The outbox reads the card when it sends the batch; the message is as it was stored.
    broadcast.send_message(event.message)
    broadcast.send_card(event.conversation_id)


def on_conversation_changed(event: events.ConversationChanged) -> None:
    broadcast.send_card(event.conversation_id)
    broadcast.send_counters()


def on_service_mode_changed(event: events.ServiceModeChanged) -> None:
    if service := Service.objects.filter(pk=event.service_id).first():
        broadcast.send_service(service)


def on_flag_raised(event: FlagRaised) -> None:
    flag = (
        Flag.objects.select_related("conversation__service", "message")
        .filter(pk=event.flag_id)
        .first()
    )
    if flag is None:
        return
    broadcast.send_card(event.conversation_id)
    broadcast.send_counters()
    broadcast.send_attention(flag, new=event.new)
