"""The OpenAI-compatible responder against a real local HTTP server."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from conversations.ai import (
    AIRequest,
    KnowledgeItem,
    OpenAIResponder,
    SpecialistInfo,
    Turn,
)
from conversations.ai.openai import FALLBACK_TEXT

API_KEY = "sk-test-0123456789"
TECH = SpecialistInfo("Tech Support", "Sign-in and apps", "You are TECH, the sign-in expert.")
BILLING = SpecialistInfo("Billing", "Invoices", "You are BILLING, the invoice expert.")
KNOWLEDGE = (
    KnowledgeItem(
        1,
        "Tech Support",
        "How do I reset my password?\nI forgot my password",
        "Click 'Forgot password' on the sign-in page.",
    ),
    KnowledgeItem(
        2,
        "Billing",
        "Can I get a refund?\nI want my money back",
        "Annual plans are refundable within 30 days.",
    ),
    KnowledgeItem(
        3,
        "Billing",
        "Where are my invoices?",
        "Invoices are under Settings → Billing.",
    ),
)


def completion(content: object) -> bytes:
    """Return a chat-completions response body with `content` as the answer."""
    return json.dumps(
        {
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "model": "test-model",
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": content},
                    "finish_reason": "stop",
                }
            ],
        }
    ).encode()


@dataclass
class FakeEndpoint:
    """What the local server answers, and what it received."""

    base_url: str = ""
    status: int = 200
    body: bytes = completion("Here is how to reset it.")
    hold: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    requests: list[dict] = field(default_factory=list)


@pytest.fixture
def endpoint() -> Iterator[FakeEndpoint]:
    state = FakeEndpoint()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append(
                {"path": self.path, "headers": dict(self.headers), "json": json.loads(body)}
            )
            if state.hold:
                state.release.wait(10)
            try:
                self.send_response(state.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(state.body)))
                self.end_headers()
                self.wfile.write(state.body)
            except OSError:
                pass  # the client gave up waiting

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    state.base_url = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    state.release.set()
    server.shutdown()
    server.server_close()
    thread.join(5)


def make_responder(base_url: str, **kwargs: object) -> OpenAIResponder:
    return OpenAIResponder(
        base_url=base_url, api_key=API_KEY, model="test-model", timeout=2, **kwargs
    )


def make_request(*turns: Turn, current: str | None = "Tech Support") -> AIRequest:
    return AIRequest("Acme Support", (TECH, BILLING), current, KNOWLEDGE, turns)


def test_the_request_carries_model_instructions_knowledge_and_transcript(
    endpoint: FakeEndpoint,
) -> None:
    request = make_request(
        Turn("user", "hello"),
        Turn("ai", "Hi! How can I help?"),
        Turn("system", "Alice has joined the conversation."),
        Turn("human", "Alice here, what's up?"),
        Turn("user", "I forgot my password, how do I reset it?"),
    )

    make_responder(endpoint.base_url).reply(request)

    [sent] = endpoint.requests
    assert sent["path"] == "/v1/chat/completions"
    assert sent["headers"]["Authorization"] == f"Bearer {API_KEY}"
    body = sent["json"]
    assert body["model"] == "test-model"
    system, *chat = body["messages"]
    assert system["role"] == "system"
    assert "You are TECH, the sign-in expert." in system["content"]
    assert "Click 'Forgot password' on the sign-in page." in system["content"]
    assert "Alice has joined the conversation." in system["content"]
    assert chat == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "Hi! How can I help?"},
        {"role": "assistant", "content": "Alice here, what's up?"},
        {"role": "user", "content": "I forgot my password, how do I reset it?"},
    ]


def test_a_good_completion_becomes_the_reply(endpoint: FakeEndpoint) -> None:
    endpoint.body = completion("  Click 'Forgot password' and follow the email.  ")

    reply = make_responder(endpoint.base_url).reply(
        make_request(Turn("user", "How do I reset my password?"))
    )

    assert reply.text == "Click 'Forgot password' and follow the email."
    assert reply.non_answer is False
    assert reply.specialist == "Tech Support"
    assert reply.evidence["rule"] == "llm_reply"
    assert reply.evidence["entry_ids"][0] == 1
    assert 0.5 <= reply.confidence <= 1
    json.dumps(reply.evidence)


def test_a_confident_knowledge_match_routes_to_its_specialist(endpoint: FakeEndpoint) -> None:
    request = make_request(Turn("user", "I want a refund"), current="Tech Support")

    reply = make_responder(endpoint.base_url).reply(request)

    assert reply.specialist == "Billing"
    system = endpoint.requests[0]["json"]["messages"][0]["content"]
    assert "You are BILLING, the invoice expert." in system
    assert "You are TECH" not in system


def test_at_most_three_knowledge_entries_are_sent(endpoint: FakeEndpoint) -> None:
    many = tuple(
        KnowledgeItem(i, None, f"Question about invoices number {i}", f"Answer {i}")
        for i in range(10)
    )
    request = AIRequest("Acme", (), None, many, (Turn("user", "invoices"),))

    make_responder(endpoint.base_url).reply(request)

    system = endpoint.requests[0]["json"]["messages"][0]["content"]
    assert system.count("\nA: Answer") == 3


def test_without_instructions_the_prompt_names_the_service(endpoint: FakeEndpoint) -> None:
    request = AIRequest("Acme Support", (), None, (), (Turn("user", "Hello there, a question"),))

    reply = make_responder(endpoint.base_url).reply(request)

    system = endpoint.requests[0]["json"]["messages"][0]["content"]
    assert "customer support assistant for Acme Support" in system
    assert "Reference information" not in system
    assert reply.specialist is None


def test_no_api_key_sends_no_authorization_header(endpoint: FakeEndpoint) -> None:
    responder = OpenAIResponder(base_url=endpoint.base_url, api_key="", model="m", timeout=2)

    responder.reply(make_request(Turn("user", "hi")))

    assert "Authorization" not in endpoint.requests[0]["headers"]


def assert_fallback(reply, error: str) -> None:
    assert reply.text == FALLBACK_TEXT
    assert reply.non_answer is True
    assert reply.confidence == 0.0
    assert reply.evidence == {"rule": "backend_error", "error": error}


def test_a_slow_server_times_out_into_the_fallback(endpoint: FakeEndpoint) -> None:
    endpoint.hold = True
    responder = OpenAIResponder(base_url=endpoint.base_url, api_key=API_KEY, timeout=0.3)

    started = time.monotonic()
    reply = responder.reply(make_request(Turn("user", "How do I reset my password?")))

    assert time.monotonic() - started < 3
    assert_fallback(reply, "timeout")
    assert reply.specialist == "Tech Support"


def test_a_server_error_gives_the_fallback(endpoint: FakeEndpoint) -> None:
    endpoint.status = 500
    endpoint.body = b'{"error": {"message": "boom"}}'

    reply = make_responder(endpoint.base_url).reply(make_request(Turn("user", "hi there")))

    assert_fallback(reply, "http_500")


def test_malformed_json_gives_the_fallback(endpoint: FakeEndpoint) -> None:
    endpoint.body = b"{not json"

    reply = make_responder(endpoint.base_url).reply(make_request(Turn("user", "hi there")))

    assert_fallback(reply, "bad_json")


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b'{"choices": []}', "bad_response"),
        (b'["a list"]', "bad_response"),
        (completion(""), "empty_content"),
        (completion("   "), "empty_content"),
        (completion(None), "empty_content"),
    ],
)
def test_an_unusable_completion_gives_the_fallback(
    endpoint: FakeEndpoint, body: bytes, error: str
) -> None:
    endpoint.body = body

    reply = make_responder(endpoint.base_url).reply(make_request(Turn("user", "hi there")))

    assert_fallback(reply, error)


def test_a_refused_connection_gives_the_fallback() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    # Nothing listens on the port once the probe socket is closed.
    reply = make_responder(f"http://127.0.0.1:{port}/v1").reply(
        make_request(Turn("user", "How do I reset my password?"))
    )

    assert_fallback(reply, "connection_error")


def test_a_transcript_without_a_customer_message_is_not_sent(endpoint: FakeEndpoint) -> None:
    reply = make_responder(endpoint.base_url).reply(make_request(Turn("ai", "Hi!")))

    assert endpoint.requests == []
    assert_fallback(reply, "no_question")


def test_the_api_key_is_never_logged(endpoint: FakeEndpoint, caplog) -> None:
    endpoint.status = 401
    caplog.set_level(logging.DEBUG)

    reply = make_responder(endpoint.base_url).reply(make_request(Turn("user", "hi there")))

    assert_fallback(reply, "http_401")
    assert "http_401" in caplog.text
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(make_responder(endpoint.base_url))


def test_defaults_come_from_settings(settings) -> None:
    settings.AI_BASE_URL = "http://llm.local/v1/"
    settings.AI_API_KEY = "sk-from-settings"
    settings.AI_MODEL = "local-model"
    settings.AI_TIMEOUT_SECONDS = 7

    responder = OpenAIResponder()

    assert responder.base_url == "http://llm.local/v1"
    assert responder.model == "local-model"
    assert responder.timeout == 7.0
