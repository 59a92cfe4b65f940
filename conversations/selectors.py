"""Reads that span relations: transcripts and what the AI needs to answer."""

from __future__ import annotations

import functools
import uuid
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from django.db.models import F, QuerySet

from conversations.ai.base import AIRequest, KnowledgeItem, SpecialistInfo, Turn
from conversations.models import (
    Conversation,
    KnowledgeEntry,
    Message,
    Role,
    Service,
    Specialist,
)
from handoff.db import CompiledQuery

AI_CONTEXT_MESSAGES = 20


@dataclass(frozen=True)
class ServiceKnowledge:
    """A service's specialists (in order) and active knowledge, as the AI reads them."""

    specialists: tuple[Specialist, ...]
    items: tuple[KnowledgeItem, ...]

    def specialist(self, name: str | None) -> Specialist | None:
        return next((s for s in self.specialists if s.name == name), None)

    def specialist_name(self, pk: int | None) -> str | None:
        return next((s.name for s in self.specialists if s.pk == pk), None)


# service pk -> (its knowledge_version when read, what was read); one entry per service.
_knowledge: dict[int, tuple[uuid.UUID, ServiceKnowledge]] = {}


def service_knowledge(service: Service) -> ServiceKnowledge:
    """What `service`'s AI knows, read once per change of its `knowledge_version`.

    Every reply needs all of it, and it changes only when an admin edits it: a process keeps
    it in memory and reads it again when the service row it already has says it changed.
    """
    cached = _knowledge.get(service.pk)
    if cached is not None and cached[0] == service.knowledge_version:
        return cached[1]
    specialists = tuple(service.specialists.order_by("position", "name"))
    names = {specialist.pk: specialist.name for specialist in specialists}
    entries = KnowledgeEntry.objects.filter(service=service, is_active=True).order_by("pk")
    knowledge = ServiceKnowledge(
        specialists=specialists,
        items=tuple(
            KnowledgeItem(
                id=entry.pk,
                specialist=names.get(entry.specialist_id),
                question=entry.question,
                answer=entry.answer,
            )
            for entry in entries
        ),
    )
    _knowledge[service.pk] = (service.knowledge_version, knowledge)
    return knowledge


def knowledge_moving(sender, instance, **kwargs) -> None:
    """Receiver before a specialist or knowledge entry is saved: note the service it had."""
    if instance.pk is not None:
        instance.knowledge_service_was = (
            sender.objects.filter(pk=instance.pk).values_list("service_id", flat=True).first()
        )


def knowledge_changed(sender, instance, **kwargs) -> None:
    """Receiver after a specialist or knowledge entry is saved or deleted.

    Its service gets a new knowledge version, and so does the one it moved from.
    """
    services = {instance.service_id, getattr(instance, "knowledge_service_was", None)}
    Service.objects.filter(pk__in=services - {None}).update(knowledge_version=uuid.uuid4())


def messages_after(*, conversation: Conversation, after_seq: int = 0) -> QuerySet[Message]:
    return (
        Message.objects.filter(conversation=conversation, seq__gt=after_seq)
        .select_related("author", "specialist")
        .order_by("seq")
    )


_customer_messages = CompiledQuery(
    lambda ids: Message.objects.filter(pk__in=ids, role=Role.USER).select_related(
        # The escalation app's one-to-one: its mood check reads the policy with the message.
        "conversation__service__escalation_policy"
    ),
    "bigint",
)


def customer_messages(message_ids: Iterable[int]) -> dict[int, Message]:
    """Customer messages by id, each with its conversation, service and escalation policy.

    One query for any number. Messages of one service share one `Service` object, so that
    what is read or cached on it (the escalation policy) is read once for all of them.
    """
    messages = _customer_messages(list(message_ids))
    services: dict[int, Service] = {}
    for message in messages:
        conversation = message.conversation
        conversation.service = services.setdefault(conversation.service_id, conversation.service)
    return {message.pk: message for message in messages}


def ai_requests_for(messages: Sequence[Message]) -> list[AIRequest]:
    """Everything a responder needs to answer each of these customer messages (read with
    their conversations), the transcripts in one query.

    Seqs have no gaps, so the last AI_CONTEXT_MESSAGES messages up to a message are the ones
    numbered from its seq - AI_CONTEXT_MESSAGES + 1 to its seq.
    """
    if not messages:
        return []
    lines: dict[uuid.UUID, dict[int, tuple[str, str]]] = defaultdict(dict)
    transcripts = _transcript_lines(AI_CONTEXT_MESSAGES)
    for conversation_id, seq, role, text in transcripts([message.pk for message in messages]):
        lines[conversation_id][seq] = (role, text)
    return [
        _ai_request(
            message.conversation,
            [
                lines[message.conversation_id][seq]
                for seq in range(message.seq - AI_CONTEXT_MESSAGES + 1, message.seq + 1)
                if seq in lines[message.conversation_id]
            ],
        )
        for message in messages
    ]


@functools.lru_cache(maxsize=4)
def _transcript_lines(length: int) -> CompiledQuery:
    """(conversation, seq, role, text) of the last `length` messages up to each of the
    messages with the given ids."""

    def build(ids) -> QuerySet[Message]:
        # Joined through the conversation to the messages with those ids: PostgreSQL reads
        # each window as one range of the (conversation, seq) index. A line in two windows
        # (two messages of one conversation) comes twice.
        return (
            Message.objects.filter(
                conversation__messages__pk__in=ids,
                seq__lte=F("conversation__messages__seq"),
                seq__gt=F("conversation__messages__seq") - length,
            )
            .order_by()
            .values_list("conversation_id", "seq", "role", "text")
        )

    return CompiledQuery(build, "bigint")


def _ai_request(conversation: Conversation, transcript: list[tuple[str, str]]) -> AIRequest:
    service = conversation.service
    knowledge = service_knowledge(service)
    return AIRequest(
        service_name=service.name,
        specialists=tuple(
            SpecialistInfo(name=s.name, description=s.description, instructions=s.instructions)
            for s in knowledge.specialists
        ),
        current_specialist=knowledge.specialist_name(conversation.specialist_id),
        knowledge=knowledge.items,
        transcript=tuple(Turn(role=role, text=text) for role, text in transcript),
    )
