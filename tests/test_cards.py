"""The console's projection: constant queries however many cards, counters equal a recount."""

from __future__ import annotations

import uuid

import pytest

from conversations import services
from conversations.models import Conversation
from dashboard import cards
from escalation import services as escalation
from escalation.models import Reason
from tests.conftest import record_compilations

pytestmark = pytest.mark.django_db


def open_conversations(service, count: int) -> list[Conversation]:
    made = []
    for n in range(count):
        visitor, _ = services.visitor_identify(
            service=service, token=None, location={"city": "Oslo", "country": "Norway"}
        )
        made.append(
            services.conversation_post_customer_message(
                visitor=visitor, text=f"question {n}", client_id=str(uuid.uuid4())
            ).message.conversation
        )
    return made


@pytest.mark.parametrize("count", [3, 40])
def test_the_snapshot_costs_the_same_queries_for_3_or_40_cards(
    service, count, django_assert_max_num_queries, agent
):
    made = open_conversations(service, count)
    services.conversation_take_over(conversation=made[0], agent=agent)
    escalation.flag_raise(conversation_id=made[1].pk, reason=Reason.KEYWORD)
    with django_assert_max_num_queries(4):
        snapshot = cards.snapshot()
    assert len(snapshot["services"][0]["conversations"]) == count
    by_id = {c["id"]: c for c in snapshot["services"][0]["conversations"]}
    assert by_id[str(made[0].pk)]["claimed_by"] == {"id": agent.pk, "name": "Alice"}
    assert by_id[str(made[1].pk)]["reasons"] == ["keyword"]
    assert by_id[str(made[2].pk)]["location"] == {"city": "Oslo", "region": "", "country": "Norway"}


def test_counters_equal_a_recount_of_the_tables(service, agent):
    made = open_conversations(service, 6)
    services.conversation_take_over(conversation=made[0], agent=agent)
    escalation.flag_raise(conversation_id=made[1].pk, reason=Reason.KEYWORD)  # hands off
    escalation.flag_raise(conversation_id=made[2].pk, reason=Reason.THUMBS_DOWN)
    escalation.flag_raise(conversation_id=made[2].pk, reason=Reason.NON_ANSWER)
    services.conversation_end_by_customer(visitor=made[3].visitor)
    escalation.flag_raise(conversation_id=made[4].pk, reason=Reason.KEYWORD)
    services.conversation_take_over(conversation=made[4], agent=agent)  # acknowledges it
    assert cards.counters() == {"active": 5, "needs_attention": 2, "paused": 3}


def test_a_card_shows_the_reasons_in_the_contract_order(service):
    [conversation] = open_conversations(service, 1)
    for reason in (Reason.KEYWORD, Reason.THUMBS_DOWN, Reason.HELP_REQUESTED):
        escalation.flag_raise(conversation_id=conversation.pk, reason=reason)
    card = cards.card(conversation.pk)
    assert card["reasons"] == ["thumbs_down", "help_requested", "keyword"]
    assert card["needs_attention"] is True
    assert card["status"] == "paused"


def test_the_hubs_read_of_cards_by_id_gives_what_the_queryset_read_gives(service, agent):
    made = open_conversations(service, 5)
    services.conversation_take_over(conversation=made[0], agent=agent)
    escalation.flag_raise(conversation_id=made[1].pk, reason=Reason.NON_ANSWER)
    escalation.flag_raise(conversation_id=made[1].pk, reason=Reason.THUMBS_DOWN)
    escalation.flag_raise(conversation_id=made[2].pk, reason=Reason.KEYWORD)
    services.conversation_take_over(conversation=made[2], agent=agent)  # acknowledges it
    services.conversation_end_by_customer(visitor=made[3].visitor)
    ids = [str(c.pk) for c in made] + [str(uuid.uuid4())]  # one that does not exist

    by_id = sorted(cards.cards_by_id(ids), key=lambda found: found[0]["id"])

    expected = cards.cards_with_status(Conversation.objects.filter(pk__in=ids))
    assert by_id == sorted(expected, key=lambda found: found[0]["id"])
    assert len(by_id) == 5
    reasons = {card["id"]: card["reasons"] for card, _ in by_id}
    assert reasons[str(made[1].pk)] == ["thumbs_down", "non_answer"]
    assert reasons[str(made[2].pk)] == []
    assert cards.cards_by_id([]) == []


def test_the_hubs_read_of_cards_is_compiled_once_for_any_number_of_ids(service, monkeypatch):
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    made = open_conversations(service, 4)
    cards.cards_by_id([str(made[0].pk)])  # compiled here, if not by an earlier test
    escalation.flag_raise(conversation_id=made[2].pk, reason=Reason.KEYWORD)
    compiled = record_compilations(monkeypatch)

    with CaptureQueriesContext(connection) as one:
        cards.cards_by_id([str(made[1].pk)])
    with CaptureQueriesContext(connection) as three:
        found = cards.cards_by_id([str(c.pk) for c in made[1:]])

    # One id or three: the same two statements, neither compiled again.
    assert compiled == []
    assert len(one.captured_queries) == len(three.captured_queries) == 2
    # Each run reads the rows as they are now.
    assert {card["id"]: card["reasons"] for card, _ in found}[str(made[2].pk)] == ["keyword"]
    assert len(found) == 3
