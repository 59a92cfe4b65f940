"""Reads that span relations: transcripts and what the AI needs to answer."""

from __future__ import annotations

from django.db.models import QuerySet

from conversations.ai.base import AIRequest, KnowledgeItem, SpecialistInfo, Turn
from conversations.models import Conversation, KnowledgeEntry, Message

AI_CONTEXT_MESSAGES = 20


def messages_after(*, conversation: Conversation, after_seq: int = 0) -> QuerySet[Message]:
    return (
        Message.objects.filter(conversation=conversation, seq__gt=after_seq)
        .select_related("author", "specialist")
        .order_by("seq")
    )


def ai_request_for(*, conversation: Conversation, upto_seq: int) -> AIRequest:
    """Everything a responder needs to answer the customer message numbered `upto_seq`."""
    service = conversation.service
    specialists = list(service.specialists.order_by("position", "name"))
    entries = (
        KnowledgeEntry.objects.filter(service=service, is_active=True)
        .select_related("specialist")
        .order_by("pk")
    )
    recent = list(
        conversation.messages.filter(seq__lte=upto_seq)
        .order_by("-seq")
        .values_list("role", "text")[:AI_CONTEXT_MESSAGES]
    )
    return AIRequest(
        service_name=service.name,
        specialists=tuple(
            SpecialistInfo(name=s.name, description=s.description, instructions=s.instructions)
            for s in specialists
        ),
        current_specialist=conversation.specialist.name if conversation.specialist_id else None,
        knowledge=tuple(
            KnowledgeItem(
                id=entry.pk,
                specialist=entry.specialist.name if entry.specialist_id else None,
                question=entry.question,
                answer=entry.answer,
            )
            for entry in entries
        ),
        transcript=tuple(Turn(role=role, text=text) for role, text in reversed(recent)),
    )
