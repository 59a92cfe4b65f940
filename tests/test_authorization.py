"""Who may do what: every REST endpoint and both sockets, for every kind of caller.

The table below is the contract (SPEC §5, §6, §9) for a conversation held by the agent
Alice: an anonymous caller, a logged-in customer who is not an agent, Alice, a second agent
(Bob) and an admin (Ada), plus an agent whose account was deactivated. Refusals change
nothing. Then: a visitor can never reach another visitor's conversation, and the API answers
existing, unknown and malformed ids alike to anyone not allowed to tell them apart.
"""

from __future__ import annotations

import json
import uuid

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.core import signing
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from conversations import services
from conversations.models import Conversation, Message, Mode, Role, Service
from handoff.asgi import application
from tests.conftest import make_agent, make_service
from tests.console import Console, session_cookie
from tests.widget import Widget

pytestmark = pytest.mark.django_db

ROLES = ["anonymous", "stranger", "agent", "agent2", "admin", "deactivated"]
OK, CREATED = 200, 201
UNAUTHENTICATED = (401, "not_authenticated")
NOT_AN_AGENT = (403, "permission_denied")
NOT_CLAIMER = (403, "not_claimer")
ALREADY_CLAIMED = (409, "already_claimed")

# (method, path, body): {role: 200 | 201 | (status, code)} — Alice ("agent") holds the
# conversation; "deactivated" is an agent whose account was switched off after logging in.
TABLE: list[tuple[str, str, dict | None, dict[str, object]]] = [
    ("get", "services/", None, {"agent": OK, "agent2": OK, "admin": OK}),
    ("get", "services/support/", None, {"agent": OK, "agent2": OK, "admin": OK}),
    (
        "patch",
        "services/support/",
        {"mode": Mode.HUMAN_ONLY},
        {"agent": (403, "permission_denied"), "agent2": (403, "permission_denied"), "admin": OK},
    ),
    (
        "post",
        "services/set-mode/",
        {"mode": Mode.HUMAN_ONLY},
        {"agent": (403, "permission_denied"), "agent2": (403, "permission_denied"), "admin": OK},
    ),
    ("get", "conversations/", None, {"agent": OK, "agent2": OK, "admin": OK}),
    ("get", "conversations/{id}/", None, {"agent": OK, "agent2": OK, "admin": OK}),
    ("get", "conversations/{id}/messages/", None, {"agent": OK, "agent2": OK, "admin": OK}),
    (
        "post",
        "conversations/{id}/take-over/",
        None,
        {"agent": OK, "agent2": ALREADY_CLAIMED, "admin": ALREADY_CLAIMED},
    ),
    (
        "post",
        "conversations/{id}/messages/",
        {"text": "Hello from a person"},
        {"agent": CREATED, "agent2": NOT_CLAIMER, "admin": NOT_CLAIMER},
    ),
    (
        "post",
        "conversations/{id}/resume-ai/",
        None,
        {"agent": OK, "agent2": ALREADY_CLAIMED, "admin": OK},
    ),
    (
        "post",
        "conversations/{id}/release/",
        None,
        {"agent": OK, "agent2": ALREADY_CLAIMED, "admin": OK},
    ),
    (
        "post",
        "conversations/{id}/close/",
        None,
        {"agent": OK, "agent2": ALREADY_CLAIMED, "admin": OK},
    ),
    ("get", "stats/", None, {"agent": OK, "agent2": OK, "admin": OK}),
]
# Public by design: the API's own description, and the load balancer's probe.
PUBLIC = [("get", "/api/v1/schema/"), ("get", "/api/v1/docs/"), ("get", "/healthz")]


def expected(role: str, cells: dict[str, object]) -> object:
    if role in ("anonymous", "deactivated"):
        return UNAUTHENTICATED
    if role == "stranger":
        return NOT_AN_AGENT
    return cells[role]


@pytest.fixture
def service(db) -> Service:
    return make_service()


@pytest.fixture
def deactivated(db, django_user_model):
    return make_agent(django_user_model, "dora", "Dora")


def user_for(role: str):
    """A user of `role`, as the conftest fixtures make them (for async tests)."""
    model = get_user_model()
    if role == "stranger":
        return model.objects.create_user(username="eve", password="pw-eve")
    if role == "admin":
        user = model.objects.create_user(username="ada", password="pw-ada", first_name="Ada")
        user.user_permissions.add(Permission.objects.get(codename="change_service"))
        user.is_staff = True
        user.save()
        return user
    names = {"agent": ("alice", "Alice"), "agent2": ("bob", "Bob"), "deactivated": ("dora", "")}
    user = make_agent(model, *names[role])
    if role == "deactivated":
        user.is_active = False
        user.save(update_fields=["is_active"])
    return user


@pytest.fixture
def held(service, agent, django_capture_on_commit_callbacks) -> Conversation:
    """A customer's conversation that Alice has taken over."""
    visitor, _ = services.visitor_identify(service=service, token=None)
    with django_capture_on_commit_callbacks(execute=True):
        posted = services.conversation_post_customer_message(
            visitor=visitor, text="How do I reset my password?", client_id="q1"
        )
    conversation = Conversation.objects.get(pk=posted.message.conversation_id)
    services.conversation_take_over(conversation=conversation, agent=agent)
    conversation.refresh_from_db()
    return conversation


def client_as(request, role: str) -> APIClient:
    client = APIClient()
    if role != "anonymous":
        user = request.getfixturevalue(role)
        client.force_login(user)
        if role == "deactivated":
            user.is_active = False
            user.save(update_fields=["is_active"])
    return client


def state(conversation: Conversation) -> tuple:
    conversation.refresh_from_db()
    service = Service.objects.get(pk=conversation.service_id)
    return (
        conversation.status,
        conversation.claimed_by_id,
        conversation.ai_paused,
        conversation.message_count,
        service.mode,
    )


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(
    ("method", "path", "body", "cells"),
    TABLE,
    ids=[f"{method.upper()} {path}" for method, path, _, _ in TABLE],
)
def test_every_endpoint_answers_every_caller_as_the_table_says(
    request, held, role, method, path, body, cells
):
    before = state(held)
    response = getattr(client_as(request, role), method)(
        "/api/v1/" + path.format(id=held.pk), body, format="json"
    )
    want = expected(role, cells)
    if isinstance(want, int):
        assert response.status_code == want, response.json()
        return
    status, code = want
    assert (response.status_code, response.json()["code"]) == (status, code), response.json()
    assert state(held) == before, "a refused request changed something"
    if status == 401:
        assert response["WWW-Authenticate"].startswith("Token")


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize(("method", "path"), PUBLIC, ids=[p for _, p in PUBLIC])
def test_the_schema_docs_and_health_check_are_public(request, service, role, method, path):
    response = getattr(client_as(request, role), method)(path)
    assert response.status_code == 200


@pytest.mark.parametrize("role", ["agent", "agent2", "admin", "stranger"])
def test_a_token_authenticates_exactly_like_a_session(request, held, role):
    user = request.getfixturevalue(role)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    response = client.post(f"/api/v1/conversations/{held.pk}/take-over/")
    want = {"agent": (200, None), "stranger": NOT_AN_AGENT}.get(role, ALREADY_CLAIMED)
    assert response.status_code == want[0]
    if want[1]:
        assert response.json()["code"] == want[1]


def test_a_deactivated_agents_token_is_refused(held, agent):
    token = Token.objects.create(user=agent)
    agent.is_active = False
    agent.save(update_fields=["is_active"])
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    response = client.get("/api/v1/stats/")
    assert (response.status_code, response.json()["code"]) == (401, "authentication_failed")


# --- Sockets ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ROLES)
async def test_the_console_socket_admits_agents_and_admins_only(role):
    await database_sync_to_async(make_service)()
    user = None if role == "anonymous" else await database_sync_to_async(user_for)(role)
    console = Console(user)
    connected, _ = await console.connect()
    assert connected
    if role in ("agent", "agent2", "admin"):
        snapshot = await console.receive()
        assert snapshot["type"] == "snapshot"
        assert [s["slug"] for s in snapshot["services"]] == ["support"]
    else:
        assert await console.communicator.receive_output(2) == {
            "type": "websocket.close",
            "code": 4403,
        }
    await console.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    ("origin", "admitted"),
    [
        (None, True),  # not a browser page
        (b"http://testserver", True),
        (b"https://evil.example", False),
        (b"http://testserver.evil.example", False),
        (b"null", False),  # a sandboxed frame or a file
    ],
)
async def test_the_console_socket_refuses_an_agents_cookie_sent_by_another_sites_page(
    origin, admitted
):
    await database_sync_to_async(make_service)()
    agent = await database_sync_to_async(user_for)("agent")
    headers = [
        (b"host", b"testserver"),
        (b"cookie", await database_sync_to_async(session_cookie)(agent)),
    ]
    if origin:
        headers.append((b"origin", origin))
    communicator = WebsocketCommunicator(application, "/ws/console/", headers=headers)
    connected, _ = await communicator.connect()
    assert connected
    if admitted:
        assert json.loads(await communicator.receive_from(5))["type"] == "snapshot"
    else:
        assert await communicator.receive_output(2) == {"type": "websocket.close", "code": 4403}
    await communicator.disconnect()


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("role", ["anonymous", "stranger", "agent", "admin"])
async def test_the_widget_socket_is_the_same_for_everyone_and_reveals_no_login(role):
    await database_sync_to_async(make_service)()
    headers = [(b"host", b"testserver")]
    if role != "anonymous":
        user = await database_sync_to_async(user_for)(role)
        headers.append((b"cookie", await database_sync_to_async(session_cookie)(user)))
    widget = Widget()
    widget.communicator.scope["headers"] = headers
    async with widget:
        ready = await widget.hello()
        assert set(ready) == {
            "type",
            "visitor_token",
            "conversation_id",
            "mode",
            "ai_paused",
            "human_available",
            "agent",
            "greeting",
        }
        assert (ready["conversation_id"], ready["agent"]) == (None, None)
        await widget.send({"type": "watch", "conversation_id": str(uuid.uuid4())})
        assert (await widget.error())["code"] == "unknown_type"


# --- Visitors never reach each other ---------------------------------------------------------


def ready_without_token(ready: dict) -> dict:
    return {k: v for k, v in ready.items() if k != "visitor_token"}


@pytest.mark.django_db(transaction=True)
async def test_forged_and_foreign_tokens_answer_exactly_like_no_token(service_pair):
    support, sales = service_pair
    async with Widget() as owner:
        await owner.hello()
        await owner.say("my secret order number is 4711")
        token = owner.token
    async with Widget() as fresh:
        baseline = ready_without_token(await fresh.hello())
        assert await fresh.nothing()
    payload, signature = token.rsplit(":", 1)
    visitor_id = json.loads(signing.b64_decode(token.split(":")[0].encode()))["v"]
    forgeries = [
        payload + ":" + signature[::-1],  # bad signature
        token[:-1],  # truncated
        token + "x",
        signing.dumps({"v": visitor_id, "s": support.pk}, salt="another.salt"),
        signing.dumps({"v": visitor_id, "s": sales.pk}, salt=services.VISITOR_TOKEN_SALT),
        signing.dumps({"v": visitor_id}, salt=services.VISITOR_TOKEN_SALT),
        signing.dumps([visitor_id, support.pk], salt=services.VISITOR_TOKEN_SALT),
        "",
        "null",
        token.replace(":", "\x00", 1),
        "\ud800" + token,  # a lone surrogate: the signer cannot even encode it
    ]
    for forged in forgeries:
        async with Widget() as attacker:
            ready = await attacker.hello(token=forged, last_seq=0)
            assert ready_without_token(ready) == baseline, forged
            assert ready["visitor_token"] != token
            assert await attacker.nothing(), forged
    # Another service's socket, with the genuine token: a new visitor there too.
    async with Widget("sales") as elsewhere:
        ready = await elsewhere.hello(token=token)
        assert ready["conversation_id"] is None
        assert await elsewhere.nothing()


@pytest.fixture
def service_pair(transactional_db) -> tuple[Service, Service]:
    return make_service(), make_service(slug="sales", name="Sales")


@pytest.mark.django_db(transaction=True)
async def test_feedback_on_another_visitors_seqs_answers_exactly_like_a_missing_seq(
    service_pair,
):
    async with Widget() as owner, Widget() as other:
        await owner.hello()
        for n, question in enumerate(
            ["How do I reset my password?", "How do I get a refund?", "I need an invoice"]
        ):
            await owner.say(question)
            await owner.message(2 * n + 2)  # the AI's answer: seqs 2, 4, 6
        await other.hello()

        async def feedback(seq: object) -> dict:
            await other.send({"type": "feedback", "seq": seq, "value": "down"})
            return await other.error()

        # Before the other visitor has a conversation, and after it has a short one.
        missing = await feedback(999)
        assert missing["code"] == "bad_seq"
        for seq in (2, 4, 6):
            assert await feedback(seq) == missing
        await other.say("What is the weather on Mars?")
        await other.message(2)
        for seq in (4, 6, 999):
            assert await feedback(seq) == missing
        assert await other.nothing()
    rated = await database_sync_to_async(
        lambda: list(Message.objects.exclude(feedback=None).values_list("feedback", flat=True))
    )()
    assert rated == []


@pytest.mark.django_db(transaction=True)
async def test_another_visitors_client_id_is_never_echoed_back(service_pair):
    async with Widget() as owner, Widget() as other:
        await owner.hello()
        mine = await owner.say("my secret order number is 4711", client_id="shared-id")
        await other.hello()
        theirs = await other.say("hello", client_id="shared-id")
        assert (theirs["seq"], theirs["text"]) == (1, "hello")
        assert mine["text"] not in json.dumps(other.frames)
        # Ending one's own chat never touches the other's.
        await other.send({"type": "end"})
        await other.receive_until(lambda f: f["type"] == "message" and f["role"] == Role.SYSTEM)
    open_ = await database_sync_to_async(
        lambda: list(Conversation.objects.filter(status="open").values_list("pk", flat=True))
    )()
    assert len(open_) == 1


@pytest.mark.parametrize("role", ["anonymous", "stranger", "deactivated"])
@pytest.mark.parametrize("tail", ["", "messages/", "take-over/", "close/"])
def test_existing_unknown_and_malformed_ids_are_indistinguishable_to_outsiders(
    request, held, role, tail
):
    client = client_as(request, role)
    method = client.get if tail in ("", "messages/") else client.post
    answers = {
        (response.status_code, response.content, response["Content-Type"])
        for response in (
            method(f"/api/v1/conversations/{conversation_id}/{tail}")
            for conversation_id in (held.pk, uuid.uuid4(), "not-a-uuid", "0" * 32)
        )
    }
    assert len(answers) == 1, answers
    assert next(iter(answers))[0] in (401, 403)
    assert state(held)[0] == "open"


@pytest.mark.parametrize("tail", ["", "messages/", "take-over/", "close/"])
def test_unknown_and_malformed_ids_answer_agents_with_one_identical_404(held, agent2, tail):
    client = APIClient()
    client.force_login(agent2)
    method = client.get if tail in ("", "messages/") else client.post
    answers = {
        (response.status_code, response.content)
        for response in (
            method(f"/api/v1/conversations/{conversation_id}/{tail}")
            for conversation_id in (uuid.uuid4(), uuid.uuid4().hex, "not-a-uuid", "1")
        )
    }
    assert answers == {(404, b'{"code":"not_found","detail":"No such conversation."}')}
