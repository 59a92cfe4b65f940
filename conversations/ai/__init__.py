"""AI responders: turn a conversation's transcript and knowledge into the next AI reply."""

from __future__ import annotations

from django.core.exceptions import ImproperlyConfigured

from .base import (
    AIReply,
    AIRequest,
    KnowledgeItem,
    Responder,
    SpecialistInfo,
    Turn,
    setting,
)
from .knowledge_base import KnowledgeBaseResponder, Match, retrieve
from .openai import OpenAIResponder

__all__ = [
    "AIReply",
    "AIRequest",
    "KnowledgeBaseResponder",
    "KnowledgeItem",
    "Match",
    "OpenAIResponder",
    "Responder",
    "SpecialistInfo",
    "Turn",
    "get_responder",
    "retrieve",
]

BACKENDS = ("knowledge_base", "openai")


def get_responder(backend: str | None = None) -> Responder:
    """Return the responder named by `backend`, or by settings.HANDOFF_AI_BACKEND."""
    if backend is None:
        backend = setting("HANDOFF_AI_BACKEND", None) or "knowledge_base"
    if backend == "knowledge_base":
        return KnowledgeBaseResponder()
    if backend == "openai":
        return OpenAIResponder()
    raise ImproperlyConfigured(
        f"HANDOFF_AI_BACKEND must be one of {', '.join(BACKENDS)}; got {backend!r}."
    )
