"""The console's projection: constant queries however many cards, counters equal a recount."""

from __future__ import annotations

import uuid

import pytest

from conversations import services
from conversations.models import Conversation
from dashboard import cards
from escalation import services as escalation
from escalation.models import Reason

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
