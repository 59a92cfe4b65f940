"""handoff.db.update_fields: many rows' fields saved in one statement."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import services
from conversations.models import Conversation
from handoff.db import update_fields
from tests.conftest import chatting_visitors, make_agent

pytestmark = pytest.mark.django_db


def test_each_rows_fields_are_saved_in_one_statement(service):
    visitors = chatting_visitors(service, 3)
    conversations = list(Conversation.objects.filter(visitor__in=visitors).order_by("pk"))
    untouched = conversations.pop()
    later = timezone.now() + timedelta(hours=1)
    hostile = ['it\'s "quoted"; DROP TABLE x; --', "émoji 🙂 and a \\ backslash"]
    for n, conversation in enumerate(conversations):
        conversation.message_count += 10 + n
        conversation.last_activity_at = later + timedelta(minutes=n)
        conversation.opening_question = hostile[n]
        conversation.version += 1

    with CaptureQueriesContext(connection) as captured:
        update_fields(
            conversations, ["message_count", "last_activity_at", "opening_question", "version"]
        )

    assert len(captured.captured_queries) == 1
    for n, conversation in enumerate(conversations):
        stored = Conversation.objects.get(pk=conversation.pk)
        assert stored.message_count == conversation.message_count
        assert stored.last_activity_at == later + timedelta(minutes=n)
        assert stored.opening_question == hostile[n]
        assert stored.version == conversation.version
    assert Conversation.objects.get(pk=untouched.pk).version == untouched.version


def test_a_field_that_is_null_on_every_row_is_cleared(service, django_user_model):
    agent = make_agent(django_user_model, "nia")
    conversations = []
    for visitor in chatting_visitors(service, 2):
        conversation = services.open_conversation_for(visitor=visitor)
        services.conversation_take_over(conversation=conversation, agent=agent)
        conversation.refresh_from_db()
        assert conversation.claimed_by_id is not None
        conversation.claimed_by, conversation.claimed_at = None, None
        conversations.append(conversation)

    update_fields(conversations, ["claimed_by", "claimed_at"])

    assert not Conversation.objects.filter(claimed_by__isnull=False).exists()
    assert not Conversation.objects.filter(claimed_at__isnull=False).exists()


def test_no_rows_is_no_statement():
    with CaptureQueriesContext(connection) as captured:
        update_fields([], ["version"])
    assert captured.captured_queries == []
