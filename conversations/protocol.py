"""The customer widget's wire format (SPEC §4): every frame the server sends, and their groups.

No other module builds a widget payload by hand. Group messages carry the finished frame
under a prefixed layer type (`widget.frame`) that only the widget consumer handles.
"""

from __future__ import annotations

from typing import Literal, TypedDict

from conversations.models import Conversation, Message, Role, Service
from handoff import layer


class ReadyFrame(TypedDict):
    type: Literal["ready"]
    visitor_token: str
    conversation_id: str | None
    mode: str
    ai_paused: bool
    human_available: bool
    agent: str | None
    greeting: str | None


class MessageFrame(TypedDict):
    type: Literal["message"]
    seq: int
    role: str
    text: str
    created_at: str
    client_id: str | None
    author: str | None
    specialist: str | None
    feedback: str | None


class TypingFrame(TypedDict):
    type: Literal["typing"]
    on: bool
    who: Literal["ai", "human"]


class StatusFrame(TypedDict):
    type: Literal["status"]
    ai_paused: bool
    agent: str | None
    mode: str
    conversation_id: str | None
    human_available: bool


class FeedbackOkFrame(TypedDict):
    type: Literal["feedback_ok"]
    seq: int
    value: str


class ErrorFrame(TypedDict, total=False):
    type: Literal["error"]
    code: str
    detail: str
    client_id: str  # the refused message's, so the widget restores the right draft


def display_name(user) -> str:
    """The name customers and colleagues see for an agent."""
    if user is None:
        return ""
    return (user.get_full_name() or user.get_username()).strip()


def conversation_group(conversation_id) -> str:
    return f"chat.c.{conversation_id}"


def service_group(service_id: int) -> str:
    return f"chat.s.{service_id}"


def message_frame(message: Message) -> MessageFrame:
    return {
        "type": "message",
        "seq": message.seq,
        "role": message.role,
        "text": message.text,
        "created_at": message.created_at.isoformat(),
        "client_id": message.client_id if message.role == Role.USER else None,
        "author": display_name(message.author) if message.role == Role.HUMAN else None,
        "specialist": message.specialist.name
        if message.role == Role.AI and message.specialist_id
        else None,
        "feedback": message.feedback,
    }


def status_frame(service: Service, conversation: Conversation | None) -> StatusFrame:
    return {
        "type": "status",
        "ai_paused": bool(conversation and conversation.ai_paused),
        "agent": display_name(conversation.claimed_by)
        if conversation and conversation.claimed_by_id
        else None,
        "mode": service.mode,
        "conversation_id": str(conversation.id) if conversation else None,
        "human_available": service.humans_available,
    }


def ready_frame(
    *, service: Service, visitor_token: str, conversation: Conversation | None
) -> ReadyFrame:
    status = status_frame(service, conversation)
    return {
        "type": "ready",
        "visitor_token": visitor_token,
        "conversation_id": status["conversation_id"],
        "mode": service.mode,
        "ai_paused": status["ai_paused"],
        "human_available": service.humans_available,
        "agent": status["agent"],
        # Human Only services send no automated words at all, greeting included.
        "greeting": service.greeting or None if service.ai_answers else None,
    }


def typing_frame(on: bool, who: Literal["ai", "human"] = "ai") -> TypingFrame:
    return {"type": "typing", "on": on, "who": who}


def feedback_ok_frame(message: Message) -> FeedbackOkFrame:
    return {"type": "feedback_ok", "seq": message.seq, "value": message.feedback or ""}


def error_frame(code: str, detail: str, client_id: object = None) -> ErrorFrame:
    frame: ErrorFrame = {"type": "error", "code": code, "detail": detail}
    if isinstance(client_id, str) and len(client_id) <= 64:
        frame["client_id"] = client_id
    return frame


def _group_send(group: str, frame: dict, layer_type: str = "widget.frame") -> None:
    # Called after commit, and never waits nor raises: a broken layer must not undo what
    # was stored. Clients resync by `last_seq` when they reconnect.
    layer.group_send(group, {"type": layer_type, "frame": frame})


def send_message(message: Message) -> None:
    _group_send(conversation_group(message.conversation_id), message_frame(message))


def send_status(conversation: Conversation) -> None:
    _group_send(
        conversation_group(conversation.id), status_frame(conversation.service, conversation)
    )


def send_service_status(service: Service) -> None:
    """Tell sockets without a conversation yet that the service's mode changed."""
    _group_send(service_group(service.id), status_frame(service, None), "widget.service")


def send_typing(conversation_id, on: bool, who: Literal["ai", "human"] = "ai") -> None:
    _group_send(conversation_group(conversation_id), typing_frame(on, who))
