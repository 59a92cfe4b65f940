"""Plain data types shared by the AI responders; no Django models here."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass(frozen=True)
class KnowledgeItem:
    """One knowledge-base entry; `question` may hold several phrasings, one per line."""

    id: int
    specialist: str | None
    question: str
    answer: str


@dataclass(frozen=True)
class SpecialistInfo:
    """An AI persona the conversation can be routed to."""

    name: str
    description: str = ""
    instructions: str = ""


@dataclass(frozen=True)
class Turn:
    """One transcript message: role is "user", "ai", "human" or "system"."""

    role: str
    text: str


@dataclass(frozen=True)
class AIRequest:
    """Everything a responder needs to answer the last customer message."""

    service_name: str
    specialists: tuple[SpecialistInfo, ...]
    current_specialist: str | None
    knowledge: tuple[KnowledgeItem, ...]
    transcript: tuple[Turn, ...]  # oldest first; the last "user" turn is the question


@dataclass(frozen=True)
class AIReply:
    """A responder's answer, with routing and the evidence the detectors can use."""

    text: str
    specialist: str | None  # None keeps the current specialist
    confidence: float  # 0..1
    non_answer: bool  # the responder knows it did not answer
    evidence: dict[str, Any] = field(default_factory=dict)  # JSON-serialisable


class Responder(Protocol):
    """Anything that turns an AIRequest into an AIReply without raising."""

    # Whether customers see "typing" while it works: worth two frames per reply to every
    # widget for a remote model that takes seconds, not for an answer computed at once.
    typing_indicator: bool

    def reply(self, request: AIRequest) -> AIReply: ...


def setting(name: str, default: Any) -> Any:
    """Return a Django setting, or `default` when it is unset or Django is not configured."""
    from django.conf import settings
    from django.core.exceptions import ImproperlyConfigured

    try:
        return getattr(settings, name, default)
    except ImproperlyConfigured:
        # Lets the package run in scripts and tests without a settings module.
        return default


def last_user_index(transcript: tuple[Turn, ...]) -> int | None:
    """Return the index of the last customer turn, or None when there is none."""
    for index in range(len(transcript) - 1, -1, -1):
        if transcript[index].role == "user" and transcript[index].text.strip():
            return index
    return None
