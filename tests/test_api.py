"""The agents' REST API and `/healthz` (SPEC §6, §9), through DRF's test client."""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import pytest
from django.db import OperationalError
from django.test.utils import CaptureQueriesContext
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from conversations import services
from conversations.models import MAX_MESSAGE_LENGTH, Conversation, Mode, Service, Status
from dashboard import api, health
from escalation import services as escalation
from escalation.models import Reason
from tests.conftest import make_service, use_broker

pytestmark = pytest.mark.django_db

CARD_KEYS = {
    "id",
    "service",
    "version",
    "status",
    "specialist",
    "location",
    "opening_question",
    "started_at",
    "last_activity_at",
    "message_count",
    "claimed_by",
    "needs_attention",
    "reasons",
    "waiting_since",
}
MESSAGE_KEYS = {
    "seq",
    "role",
    "text",
    "created_at",
    "client_id",
    "author",
    "specialist",
    "feedback",
    "sentiment",
    "non_answer",
}
NOT_FOUND = {"code": "not_found", "detail": "No such conversation."}


@pytest.fixture
def start(service, django_capture_on_commit_callbacks):
    """Start a conversation as a new customer and let the AI answer (eagerly)."""

    def start(text: str = "How do I reset my password?", *, on: Service | None = None):
        visitor, _ = services.visitor_identify(service=on or service, token=None)
        with django_capture_on_commit_callbacks(execute=True):
            posted = services.conversation_post_customer_message(
                visitor=visitor, text=text, client_id=str(uuid.uuid4())
            )
        return Conversation.objects.get(pk=posted.message.conversation_id)

    return start


@pytest.fixture
def conversation(start) -> Conversation:
    return start()


@pytest.fixture
def flag(django_capture_on_commit_callbacks):
    """Raise an attention flag the way the escalation app does."""

    def flag(conversation: Conversation, reason: str = Reason.THUMBS_DOWN):
        with django_capture_on_commit_callbacks(execute=True):
            return escalation.flag_raise(
                conversation_id=conversation.pk,
                reason=reason,
                message=conversation.messages.order_by("-seq").first(),
                evidence={"rule": "test"},
            )

    return flag


def client_for(user=None, **kwargs) -> APIClient:
    client = APIClient(**kwargs)
    if user is not None:
        client.force_login(user)
    return client


def take_over(conversation: Conversation, user) -> None:
    services.conversation_take_over(conversation=conversation, agent=user)


def url(path: str, conversation: Conversation | None = None) -> str:
    return "/api/v1/" + path.format(id=conversation.pk if conversation else "")


# --- Who may call what ---------------------------------------------------------------------

# (method, path, body, admins only)
ENDPOINTS = [
    ("get", "services/", None, False),
    ("get", "services/support/", None, False),
    ("patch", "services/support/", {"mode": Mode.HUMAN_ONLY}, True),
    ("post", "services/set-mode/", {"mode": Mode.HUMAN_SUPPORTED}, True),
    ("get", "conversations/", None, False),
    ("get", "conversations/{id}/", None, False),
    ("get", "conversations/{id}/messages/", None, False),
    ("post", "conversations/{id}/take-over/", None, False),
    ("post", "conversations/{id}/messages/", {"text": "Hello from a human"}, False),
    ("post", "conversations/{id}/resume-ai/", None, False),
    ("post", "conversations/{id}/release/", None, False),
    ("post", "conversations/{id}/close/", None, False),
    ("get", "stats/", None, False),
]
ROLES = ["anonymous", "stranger", "agent", "admin"]


def expected_status(role: str, admins_only: bool) -> str:
    if role == "anonymous":
        return "401"
    if role == "stranger" or (admins_only and role == "agent"):
        return "403"
    return "2xx"


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "body", "admins_only"),
    ENDPOINTS,
    ids=[f"{method.upper()} {path}" for method, path, _, _ in ENDPOINTS],
)
def test_each_endpoint_answers_each_role_as_the_contract_says(
    request, conversation, role, method, path, body, admins_only
):
    user = None if role == "anonymous" else request.getfixturevalue(role)
    if role in ("agent", "admin"):
        # The acting agent holds the conversation, so every action is theirs to take.
        take_over(conversation, user)
    response = getattr(client_for(user), method)(url(path, conversation), body, format="json")
    expected = expected_status(role, admins_only)
    if expected == "2xx":
        assert 200 <= response.status_code < 300, response.json()
    elif expected == "401":
        assert response.status_code == 401
        assert response.json()["code"] == "not_authenticated"
    else:
        assert response.status_code == 403
        assert response.json()["code"] == "permission_denied"


def test_anonymous_requests_are_asked_for_a_token(db):
    response = APIClient().get(url("services/"))
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Token")
    body = response.json()
    assert body["code"] == "not_authenticated"
    assert body["detail"]


def test_a_logged_in_customer_who_is_not_an_agent_is_refused(stranger):
    response = client_for(stranger).get(url("stats/"))
    assert response.status_code == 403
    assert response.json() == {
        "code": "permission_denied",
        "detail": "Only support agents can use this API.",
    }


def test_token_authentication_works_for_reads_and_writes_without_csrf(agent, conversation):
    token = Token.objects.create(user=agent)
    client = APIClient(enforce_csrf_checks=True)
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get(url("stats/")).status_code == 200
    response = client.post(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 200
    assert response.json()["claimed_by"]["name"] == "Alice"


def test_a_wrong_token_is_refused_with_401(db):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")
    response = client.get(url("stats/"))
    assert response.status_code == 401
    assert response.json()["code"] == "authentication_failed"


def test_a_session_post_without_the_csrf_token_is_refused(agent, conversation):
    client = client_for(agent, enforce_csrf_checks=True)
    response = client.post(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 403
    body = response.json()
    assert body["code"] == "permission_denied"
    assert "CSRF" in body["detail"]
    conversation.refresh_from_db()
    assert conversation.claimed_by_id is None


def test_a_session_post_with_the_csrf_token_is_accepted(agent, conversation):
    client = client_for(agent, enforce_csrf_checks=True)
    secret = "s3cr3t" * 5 + "ok"  # a cookie secret is 32 letters and digits
    client.cookies["csrftoken"] = secret
    response = client.post(
        url("conversations/{id}/take-over/", conversation), HTTP_X_CSRFTOKEN=secret
    )
    assert response.status_code == 200


# --- Services ------------------------------------------------------------------------------


def test_services_are_listed_with_their_mode_and_open_conversations(agent, start):
    make_service(slug="sales", name="Sales", mode=Mode.AI_ONLY)
    start()
    start("I forgot my password")
    response = client_for(agent).get(url("services/"))
    assert response.status_code == 200
    assert response.json() == [
        {
            "slug": "sales",
            "name": "Sales",
            "mode": "ai_only",
            "mode_label": "AI Only",
            "conversations_open": 0,
        },
        {
            "slug": "support",
            "name": "Support",
            "mode": "human_supported",
            "mode_label": "Human-Supported AI",
            "conversations_open": 2,
        },
    ]


def test_an_admin_sets_one_services_mode_and_it_applies_to_open_conversations(admin, conversation):
    response = client_for(admin).patch(
        url("services/support/"), {"mode": "human_only"}, format="json"
    )
    assert response.status_code == 200
    assert response.json()["mode"] == "human_only"
    assert response.json()["mode_label"] == "Human Only"
    conversation.refresh_from_db()
    assert conversation.ai_paused is True
    assert Service.objects.get(slug="support").mode == Mode.HUMAN_ONLY


def test_an_agent_cannot_change_a_services_mode(agent, service):
    response = client_for(agent).patch(url("services/support/"), {"mode": "ai_only"}, format="json")
    assert response.status_code == 403
    assert response.json()["code"] == "permission_denied"
    service.refresh_from_db()
    assert service.mode == Mode.HUMAN_SUPPORTED


def test_an_unknown_mode_is_refused_with_a_clear_message(admin, service):
    response = client_for(admin).patch(
        url("services/support/"), {"mode": "robots_only"}, format="json"
    )
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert body["detail"] == (
        'mode: "robots_only" is not a mode; use one of: ai_only, human_supported, human_only.'
    )
    assert list(body["errors"]) == ["mode"]


def test_a_missing_mode_is_refused_as_invalid(admin, service):
    response = client_for(admin).post(url("services/set-mode/"), {}, format="json")
    assert response.status_code == 400
    assert response.json()["detail"] == "mode: This field is required."


def test_an_unknown_service_slug_is_not_found(admin, service):
    response = client_for(admin).patch(url("services/nope/"), {"mode": "ai_only"}, format="json")
    assert response.status_code == 404
    assert response.json() == {"code": "not_found", "detail": "No such service."}


def test_an_admin_sets_every_services_mode_at_once(admin, service):
    make_service(slug="sales", name="Sales")
    response = client_for(admin).post(url("services/set-mode/"), {"mode": "ai_only"}, format="json")
    assert response.status_code == 200
    assert [s["mode"] for s in response.json()] == ["ai_only", "ai_only"]
    assert set(Service.objects.values_list("mode", flat=True)) == {"ai_only"}


# --- Conversation list ---------------------------------------------------------------------


def test_the_list_shows_open_cards_needing_attention_first_then_most_recent(agent, start, flag):
    older, flagged, newest = start(), start(), start()
    flag(flagged)
    response = client_for(agent).get(url("conversations/"))
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 3
    assert [c["id"] for c in body["results"]] == [str(flagged.pk), str(newest.pk), str(older.pk)]
    first = body["results"][0]
    assert set(first) == CARD_KEYS
    assert first["needs_attention"] is True
    assert first["reasons"] == ["thumbs_down"]
    assert first["service"] == "support"


def test_the_list_filters_by_status_service_and_attention(agent, start, flag):
    sales = make_service(slug="sales", name="Sales")
    plain, flagged, elsewhere, closed = start(), start(), start(on=sales), start()
    flag(flagged)
    take_over(closed, agent)
    services.conversation_close(conversation=closed, user=agent)
    client = client_for(agent)

    def ids(query: str) -> set[str]:
        response = client.get(url("conversations/") + query)
        assert response.status_code == 200, response.json()
        return {c["id"] for c in response.json()["results"]}

    every_open = {str(c.pk) for c in (plain, flagged, elsewhere)}
    assert ids("") == every_open
    assert ids("?status=open") == every_open
    assert ids("?status=closed") == {str(closed.pk)}
    assert ids("?service=sales") == {str(elsewhere.pk)}
    assert ids("?needs_attention=true") == {str(flagged.pk)}
    assert ids("?needs_attention=false&service=support") == {str(plain.pk)}


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=archived", "status"),
        ("needs_attention=maybe", "needs_attention"),
        ("service=no-such-service", "service"),
        ("service=not%20a%20slug", "service"),
    ],
)
def test_bad_list_filters_are_refused_as_invalid(agent, service, query, field):
    response = client_for(agent).get(url("conversations/") + "?" + query)
    assert response.status_code == 400
    body = response.json()
    assert body["code"] == "invalid"
    assert list(body["errors"]) == [field]
    assert body["detail"].startswith(f"{field}: ")


def test_the_list_is_paginated_fifty_cards_a_page(agent, start, monkeypatch):
    assert api.CardPagination.page_size == 50
    monkeypatch.setattr(api.CardPagination, "page_size", 2)
    made = [start() for _ in range(3)]
    client = client_for(agent)
    first = client.get(url("conversations/")).json()
    assert set(first) == {"count", "next", "previous", "results"}
    assert first["count"] == 3
    assert first["previous"] is None
    assert first["next"].endswith("/api/v1/conversations/?page=2")
    second = client.get(first["next"]).json()
    assert second["next"] is None
    assert second["previous"] is not None
    seen = [c["id"] for c in first["results"] + second["results"]]
    assert seen == [str(c.pk) for c in reversed(made)]
    assert client.get(url("conversations/") + "?page=9").json()["code"] == "not_found"


def test_the_list_takes_as_many_queries_for_thirty_conversations_as_for_five(
    agent, agent2, start, flag, django_assert_max_num_queries
):
    from django.db import connection

    def make(n: int) -> None:
        for i in range(n):
            conversation = start()
            if i % 3 == 0:
                flag(conversation)
            elif i % 3 == 1:
                take_over(conversation, agent2)

    client = client_for(agent)
    make(5)
    with CaptureQueriesContext(connection) as five:
        assert len(client.get(url("conversations/")).json()["results"]) == 5
    make(25)
    with django_assert_max_num_queries(len(five.captured_queries)):
        assert len(client.get(url("conversations/")).json()["results"]) == 30


# --- One conversation ----------------------------------------------------------------------


def test_the_detail_is_the_card_with_the_visitor_flags_and_mode(agent, service, start, flag):
    visitor, _ = services.visitor_identify(
        service=service,
        token=None,
        location={"city": "Lyon", "region": "ARA", "country": "FR"},
        timezone_name="Europe/Paris",
        profile={"name": "Camille", "email": "camille@example.com", "plan": "pro"},
    )
    posted = services.conversation_post_customer_message(
        visitor=visitor, text="How do I get a refund?", client_id="c-1"
    )
    conversation = posted.message.conversation
    raised = flag(conversation, Reason.KEYWORD)
    response = client_for(agent).get(url("conversations/{id}/", conversation))
    assert response.status_code == 200
    body = response.json()
    assert set(body) == CARD_KEYS | {"visitor", "flags", "mode"}
    assert body["mode"] == "human_supported"
    assert body["location"] == {"city": "Lyon", "region": "ARA", "country": "FR"}
    assert body["visitor"] == {
        "name": "Camille",
        "email": "camille@example.com",
        "profile": {"name": "Camille", "email": "camille@example.com", "plan": "pro"},
        "location": {"city": "Lyon", "region": "ARA", "country": "FR"},
        "timezone": "Europe/Paris",
    }
    keyword = next(f for f in body["flags"] if f["id"] == raised.pk)
    assert keyword == {
        "id": raised.pk,
        "reason": "keyword",
        "label": "Keyword",
        "message_seq": raised.message.seq,
        "evidence": {"rule": "test"},
        "created_at": raised.created_at.isoformat(),
        "acknowledged": False,
    }


def test_flags_read_as_acknowledged_once_the_conversation_is_taken_over(agent, conversation, flag):
    flag(conversation)
    client = client_for(agent)
    assert client.post(url("conversations/{id}/take-over/", conversation)).status_code == 200
    body = client.get(url("conversations/{id}/", conversation)).json()
    assert body["needs_attention"] is False
    assert [f["acknowledged"] for f in body["flags"]] == [True]


def test_a_closed_conversation_can_still_be_read(agent, conversation):
    take_over(conversation, agent)
    services.conversation_close(conversation=conversation, user=agent)
    client = client_for(agent)
    assert client.get(url("conversations/{id}/", conversation)).status_code == 200
    transcript = client.get(url("conversations/{id}/messages/", conversation)).json()
    assert transcript["results"][-1]["text"] == services.TEXT_CLOSED


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "conversations/{id}/"),
        ("get", "conversations/{id}/messages/"),
        ("post", "conversations/{id}/messages/"),
        ("post", "conversations/{id}/take-over/"),
        ("post", "conversations/{id}/resume-ai/"),
        ("post", "conversations/{id}/release/"),
        ("post", "conversations/{id}/close/"),
    ],
)
@pytest.mark.parametrize("bad_id", [str(uuid.uuid4()), "not-a-uuid", "12345"])
def test_unknown_and_malformed_conversation_ids_are_not_found(agent, method, path, bad_id):
    client = client_for(agent)
    response = getattr(client, method)("/api/v1/" + path.format(id=bad_id), {}, format="json")
    assert response.status_code == 404
    assert response.json() == NOT_FOUND


# --- Transcript ----------------------------------------------------------------------------


def test_the_transcript_lists_messages_in_seq_order(agent, conversation):
    response = client_for(agent).get(url("conversations/{id}/messages/", conversation))
    assert response.status_code == 200
    body = response.json()
    assert body["next"] is None
    assert [(m["seq"], m["role"]) for m in body["results"]] == [(1, "user"), (2, "ai")]
    assert set(body["results"][0]) == MESSAGE_KEYS
    assert body["results"][1]["specialist"] == "Tech Support"


def test_the_transcript_pages_forward_with_after_seq(agent, conversation, monkeypatch):
    assert api.TRANSCRIPT_PAGE == 200
    monkeypatch.setattr(api, "TRANSCRIPT_PAGE", 2)
    take_over(conversation, agent)  # seq 3: "Alice has joined"
    for text in ("one", "two", "three"):  # seq 4, 5, 6
        services.conversation_send_as_agent(conversation=conversation, agent=agent, text=text)
    client = client_for(agent)
    seqs, next_url = [], url("conversations/{id}/messages/", conversation)
    while next_url:
        body = client.get(next_url).json()
        seqs += [m["seq"] for m in body["results"]]
        next_url = body["next"]
    assert seqs == [1, 2, 3, 4, 5, 6]
    tail = client.get(url("conversations/{id}/messages/?after_seq=4", conversation)).json()
    assert [m["text"] for m in tail["results"]] == ["two", "three"]
    assert tail["next"] is None


@pytest.mark.parametrize("after_seq", ["-1", "abc", "1.5"])
def test_a_bad_after_seq_is_refused_as_invalid(agent, conversation, after_seq):
    path = f"conversations/{{id}}/messages/?after_seq={after_seq}"
    response = client_for(agent).get(url(path, conversation))
    assert response.status_code == 400
    assert response.json()["code"] == "invalid"
    assert list(response.json()["errors"]) == ["after_seq"]


# --- Taking over and replying ----------------------------------------------------------------


def test_taking_over_answers_the_claimed_card(agent, conversation):
    response = client_for(agent).post(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 200
    card = response.json()
    assert set(card) == CARD_KEYS
    assert card["claimed_by"] == {"id": agent.pk, "name": "Alice"}
    assert card["status"] == "paused"


def test_a_second_agent_is_told_who_already_holds_the_conversation(agent, agent2, conversation):
    first = client_for(agent).post(url("conversations/{id}/take-over/", conversation))
    assert first.status_code == 200
    response = client_for(agent2).post(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 409
    assert response.json() == {
        "code": "already_claimed",
        "detail": "Alice is already handling this conversation.",
        "claimed_by": "Alice",
    }


def test_nobody_takes_over_in_ai_only_mode(agent, start):
    conversation = start(on=make_service(slug="bots", name="Bots", mode=Mode.AI_ONLY))
    response = client_for(agent).post(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 409
    assert response.json()["code"] == "mode_disallows"


def test_a_closed_conversation_cannot_be_taken_over(agent, agent2, conversation):
    take_over(conversation, agent)
    services.conversation_close(conversation=conversation, user=agent)
    response = client_for(agent2).post(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 409
    assert response.json() == {"code": "closed", "detail": "This conversation is closed."}


def test_the_holder_replies_and_gets_the_stored_message(agent, conversation):
    take_over(conversation, agent)
    response = client_for(agent).post(
        url("conversations/{id}/messages/", conversation),
        {"text": "Hi, I'm <b>Alice</b>."},
        format="json",
    )
    assert response.status_code == 201
    message = response.json()
    assert set(message) == MESSAGE_KEYS
    assert (message["seq"], message["role"], message["author"]) == (4, "human", "Alice")
    assert message["text"] == "Hi, I'm <b>Alice</b>."


def test_an_agent_who_does_not_hold_the_conversation_cannot_reply(agent, conversation):
    response = client_for(agent).post(
        url("conversations/{id}/messages/", conversation), {"text": "Hello"}, format="json"
    )
    assert response.status_code == 403
    assert response.json()["code"] == "not_claimer"


@pytest.mark.parametrize(
    ("text", "status", "code"),
    [
        ("", 400, "empty"),
        ("   \n\t", 400, "empty"),
        ("x" * (MAX_MESSAGE_LENGTH + 1), 413, "too_long"),
    ],
    ids=["empty", "whitespace", "too long"],
)
def test_replies_that_are_empty_or_too_long_are_refused(agent, conversation, text, status, code):
    take_over(conversation, agent)
    before = conversation.messages.count()
    response = client_for(agent).post(
        url("conversations/{id}/messages/", conversation), {"text": text}, format="json"
    )
    assert response.status_code == status
    assert response.json()["code"] == code
    assert conversation.messages.count() == before


def test_a_reply_without_text_is_invalid(agent, conversation):
    take_over(conversation, agent)
    response = client_for(agent).post(
        url("conversations/{id}/messages/", conversation), {}, format="json"
    )
    assert response.status_code == 400
    assert response.json()["detail"] == "text: This field is required."


def test_a_body_that_is_not_json_is_refused_as_bad_json(agent, conversation):
    take_over(conversation, agent)
    response = client_for(agent).post(
        url("conversations/{id}/messages/", conversation),
        '{"text": ',
        content_type="application/json",
    )
    assert response.status_code == 400
    assert response.json()["code"] == "bad_json"


def test_an_unsupported_content_type_is_refused_with_415(agent, conversation):
    take_over(conversation, agent)
    response = client_for(agent).post(
        url("conversations/{id}/messages/", conversation), "hi", content_type="text/plain"
    )
    assert response.status_code == 415
    assert response.json()["code"] == "unsupported_media_type"


def test_a_wrong_method_is_refused_with_405(agent, conversation):
    response = client_for(agent).put(url("conversations/{id}/take-over/", conversation))
    assert response.status_code == 405
    assert response.json() == {
        "code": "method_not_allowed",
        "detail": 'Method "PUT" not allowed.',
    }


def test_resuming_the_ai_answers_an_active_unclaimed_card(agent, conversation):
    take_over(conversation, agent)
    response = client_for(agent).post(url("conversations/{id}/resume-ai/", conversation))
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["claimed_by"]) == ("ai_active", None)


def test_releasing_answers_a_paused_card_waiting_for_a_colleague(agent, conversation):
    take_over(conversation, agent)
    response = client_for(agent).post(url("conversations/{id}/release/", conversation))
    assert response.status_code == 200
    card = response.json()
    assert (card["status"], card["claimed_by"]) == ("paused", None)
    assert card["waiting_since"] is not None


def test_closing_takes_the_conversation_off_the_open_list(agent, conversation):
    take_over(conversation, agent)
    client = client_for(agent)
    response = client.post(url("conversations/{id}/close/", conversation))
    assert response.status_code == 200
    assert set(response.json()) == CARD_KEYS
    conversation.refresh_from_db()
    assert conversation.status == Status.CLOSED
    assert client.get(url("conversations/")).json()["count"] == 0


def test_another_agent_cannot_release_resume_or_close_a_claimed_conversation(
    agent, agent2, conversation
):
    take_over(conversation, agent)
    client = client_for(agent2)
    for action in ("release", "resume-ai", "close"):
        response = client.post(url(f"conversations/{{id}}/{action}/", conversation))
        assert response.status_code == 409
        assert response.json()["claimed_by"] == "Alice"


def test_an_admin_may_release_a_conversation_someone_else_holds(agent, admin, conversation):
    take_over(conversation, agent)
    response = client_for(admin).post(url("conversations/{id}/release/", conversation))
    assert response.status_code == 200
    assert response.json()["claimed_by"] is None


# --- Stats, caching, schema and docs -------------------------------------------------------


def test_stats_are_the_three_counters(agent, agent2, start, flag):
    start()
    flag(start())
    take_over(start(), agent2)
    response = client_for(agent).get(url("stats/"))
    assert response.status_code == 200
    assert response.json() == {"active": 3, "needs_attention": 1, "paused": 1}


@pytest.mark.parametrize(
    ("user", "path"),
    [
        ("agent", "stats/"),
        ("agent", "conversations/nope/"),
        (None, "services/"),
        (None, "schema/"),
        (None, "docs/"),
    ],
)
def test_api_responses_are_never_stored_by_shared_caches(request, service, user, path):
    client = client_for(request.getfixturevalue(user) if user else None)
    cache_control = {part.strip() for part in client.get(url(path))["Cache-Control"].split(",")}
    assert {"private", "no-store"} <= cache_control


def test_the_schema_is_openapi_3_with_every_path(db):
    response = APIClient().get(url("schema/") + "?format=json")
    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) >= {
        "/api/v1/services/",
        "/api/v1/services/{slug}/",
        "/api/v1/services/set-mode/",
        "/api/v1/conversations/",
        "/api/v1/conversations/{conversation_id}/",
        "/api/v1/conversations/{conversation_id}/messages/",
        "/api/v1/conversations/{conversation_id}/take-over/",
        "/api/v1/conversations/{conversation_id}/resume-ai/",
        "/api/v1/conversations/{conversation_id}/release/",
        "/api/v1/conversations/{conversation_id}/close/",
        "/api/v1/stats/",
    }
    take_over = schema["paths"]["/api/v1/conversations/{conversation_id}/take-over/"]["post"]
    assert {"200", "404", "409"} <= set(take_over["responses"])
    assert "Card" in schema["components"]["schemas"]
    assert {"tokenAuth", "cookieAuth"} <= set(schema["components"]["securitySchemes"])


def test_the_docs_page_loads_its_assets_from_this_host_only(db, settings):
    import drf_spectacular_sidecar

    response = APIClient().get(url("docs/"))
    assert response.status_code == 200
    page = response.content.decode()
    assets = re.findall(r'(?:src|href)="([^"]+)"', page)
    assert assets, page
    sidecar_static = Path(drf_spectacular_sidecar.__file__).parent / "static"
    for asset in assets:
        assert asset.startswith(settings.STATIC_URL) or asset.startswith("/" + settings.STATIC_URL)
        assert (sidecar_static / asset.split(settings.STATIC_URL, 1)[1]).is_file(), asset
    assert "cdn." not in page and "//unpkg" not in page


# --- /healthz ------------------------------------------------------------------------------


def test_healthz_reports_every_dependency_ok_in_the_test_setup(client, db):
    response = client.get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body == {
        "status": "ok",
        "database": {"ok": True, "detail": "postgresql"},
        "channel_layer": {"ok": True, "detail": "InMemoryChannelLayer"},
        "broker": {"ok": True, "detail": "eager"},
    }
    assert "no-store" in response["Cache-Control"]


def test_healthz_answers_503_when_the_database_fails(client, db, monkeypatch):
    class BrokenConnection:
        vendor = "postgresql"

        def cursor(self):
            raise OperationalError("connection refused")

    monkeypatch.setattr(health, "connection", BrokenConnection())
    response = client.get("/healthz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "degraded"
    assert body["database"] == {"ok": False, "detail": "OperationalError"}
    assert body["channel_layer"]["ok"] is True


def test_healthz_answers_503_within_five_seconds_when_the_broker_is_unreachable(
    client, db, settings
):
    from handoff.celery import app

    saved = app.conf.broker_url, app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = False
    use_broker(app, "redis://127.0.0.1:1/0", eager=False)
    try:
        began = time.monotonic()
        response = client.get("/healthz")
        elapsed = time.monotonic() - began
    finally:
        use_broker(app, saved[0], eager=saved[1])
    assert response.status_code == 503
    body = response.json()
    assert body["broker"]["ok"] is False
    assert body["database"]["ok"] is True
    assert elapsed < 5


def test_healthz_gives_up_on_a_channel_layer_that_never_answers(client, db, monkeypatch):
    import asyncio

    class SilentLayer:
        async def new_channel(self, prefix: str = "specific.") -> str:
            return prefix + "x"

        async def send(self, channel: str, message: dict) -> None:
            return None

        async def receive(self, channel: str) -> dict:
            await asyncio.sleep(60)
            return {}

    monkeypatch.setattr(health, "get_channel_layer", lambda: SilentLayer())
    began = time.monotonic()
    response = client.get("/healthz")
    assert time.monotonic() - began < 4
    assert response.status_code == 503
    assert response.json()["channel_layer"] == {
        "ok": False,
        "detail": "SilentLayer: no answer within 2 s",
    }


def test_healthz_only_answers_reads(client, db):
    assert client.post("/healthz").status_code == 405
