"""The widget protocol under generated input, through the real ASGI app (SPEC §4, §9).

Hypothesis sends arbitrary JSON, every client frame type with wrong types in every field,
unicode edge cases, binary and empty frames, before and after `hello`. Whatever arrives,
the consumer stays up (no exception, no close), answers only with frames of the contract
and the error codes it documents, and stores nothing invalid.
"""

from __future__ import annotations

import json
import logging
import uuid

import pytest
from asgiref.sync import async_to_sync
from channels.layers import channel_layers
from django.core.cache import cache
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conversations.models import AuditEvent, Conversation, Message, Service, Visitor
from escalation.models import Flag
from tests.conftest import make_service
from tests.widget import Widget

pytestmark = pytest.mark.django_db(transaction=True)

# Every error code the widget consumer documents (SPEC §9 and conversations/consumers.py).
ERROR_CODES = {
    "bad_json",
    "unknown_type",
    "hello_required",
    "already_started",
    "empty",
    "too_long",
    "bad_seq",
    "rate_limited",
    "bad_client_id",
    "bad_typing",
    "no_conversation",
    "closed",  # a conversation closed under the customer's feet
    "invalid",  # feedback with a value other than up/down
}
SERVER_TYPES = {"ready", "message", "typing", "status", "feedback_ok", "error"}
CLIENT_TYPES = ["hello", "message", "feedback", "request_human", "typing", "end"]
# Names of layer events and consumer methods: a client may not reach them by `type`.
INTERNAL_TYPES = [
    "widget.frame",
    "widget_frame",
    "widget.service",
    "widget_service",
    "websocket.receive",
    "websocket.disconnect",
    "websocket.connect",
    "websocket_receive",
    "card.updated",
    "console.event",
    "on_hello",
    "send_json",
    "disconnect",
    "close",
    "__init__",
    "",
]

UNICODE_EDGES = [
    "\x00",
    "a\x00b",
    "\x00" * 10,
    "\ud800",
    "lone \udfff low",
    "\udbff\udfff",  # a surrogate pair, written as two code points
    "\u202eevil.exe\u202c",
    "\u200b\u200d\ufeff",
    "e" + "\u0301" * 500,  # combining marks
    "😀" * 4000,  # 4,000 characters, 8,000 UTF-16 units
    "😀" * 4001,
    "x" * 4000,
    "x" * 4001,
    " \t\n\r ",
    "\u3000\u00a0",  # wide and no-break spaces
    "\U0010ffff\ufffe\uffff",
    "<script>alert(1)</script>",
    "%s%n{0}{{}}",
    "../../etc/passwd",
    "Europe/Berlin",
    "Etc/GMT+5\x00",
    "\ud800:1vX2gA:a-signature-of-sorts",  # shaped like a signed token, unencodable
]

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(2**80), max_value=2**80)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(UNICODE_EDGES)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
strings = st.text(max_size=80) | st.sampled_from(UNICODE_EDGES)
FIELDS: dict[str, dict[str, st.SearchStrategy]] = {
    "hello": {
        "visitor_token": st.none() | strings,
        "last_seq": st.integers(min_value=-5, max_value=10) | st.integers(),
        "timezone": st.sampled_from(["Europe/Berlin", "America/New_York"]) | strings,
        "profile": st.dictionaries(strings, json_values, max_size=4),
    },
    "message": {"text": strings, "client_id": strings},
    "feedback": {
        "seq": st.integers(min_value=-1, max_value=6),
        "value": st.sampled_from(["up", "down"]),
    },
    "request_human": {},
    "typing": {"on": st.booleans()},
    "end": {},
}


@st.composite
def typed_frames(draw) -> dict:
    """A client frame of a known type whose fields are right, wrong-typed, odd or missing."""
    kind = draw(st.sampled_from(CLIENT_TYPES))
    frame: dict = {"type": kind}
    for name, right in FIELDS[kind].items():
        choice = draw(st.sampled_from(["right", "wrong", "missing"]))
        if choice == "right":
            frame[name] = draw(right)
        elif choice == "wrong":
            frame[name] = draw(json_values)
    frame.update(draw(st.dictionaries(st.text(max_size=8), json_values, max_size=2)))
    frame["type"] = kind
    return frame


def as_text(value: object) -> str:
    return json.dumps(value)  # NaN and Infinity too: Python's json reads them back


# A frame on the wire: ("text", str) or ("bytes", bytes).
frames = st.one_of(
    typed_frames().map(lambda f: ("text", as_text(f))),
    typed_frames().map(lambda f: ("text", as_text(f))),
    json_values.map(lambda v: ("text", as_text(v))),
    st.dictionaries(st.just("type"), json_values | st.sampled_from(INTERNAL_TYPES)).map(
        lambda f: ("text", as_text(f))
    ),
    strings.map(lambda s: ("text", s)),
    st.sampled_from(["", "{", "[" * 5000, '{"type": "hello"' * 3, "null", "1e999999"]).map(
        lambda s: ("text", s)
    ),
    st.binary(max_size=40).map(lambda b: ("bytes", b)),
    st.just(("bytes", b"")),
    st.just(("bytes", b'{"type": "hello", "visitor_token": null}')),
)


def reset_between_examples() -> None:
    """Every example starts with one service and nothing else (one test's database)."""
    for model in (Flag, AuditEvent, Message, Conversation, Visitor):
        model.objects.all().delete()
    cache.clear()
    channel_layers.backends = {}


def check_output(output: dict) -> dict:
    """One thing the consumer sent: a contract frame, never a close or a crash."""
    assert output["type"] == "websocket.send", f"the consumer closed the socket: {output}"
    assert output.get("text") is not None, f"a binary frame: {output}"
    frame = json.loads(output["text"])
    assert isinstance(frame, dict) and frame.get("type") in SERVER_TYPES, frame
    if frame["type"] == "error":
        assert frame["code"] in ERROR_CODES, frame
        assert isinstance(frame["detail"], str) and frame["detail"], frame
    return frame


async def send_raw(widget: Widget, kind: str, data: str | bytes) -> None:
    # send_to() refuses empty frames; the ASGI message itself is what daphne delivers.
    key = "text" if kind == "text" else "bytes"
    await widget.communicator.send_input({"type": "websocket.receive", key: data})


async def exchange(
    before: list[tuple[str, str | bytes]], after: list, hello: dict | None = None
) -> list[dict]:
    """Fuzz before and after `hello` (a proper one by default); return what the server sent."""
    sentinel = f"sentinel-{uuid.uuid4()}"
    widget = Widget()
    connected, code = await widget.connect()
    assert connected, code
    for kind, data in before:
        await send_raw(widget, kind, data)
    await widget.send(hello or {"type": "hello", "visitor_token": None, "last_seq": 0})
    for kind, data in after:
        await send_raw(widget, kind, data)
    # Frames are handled in order: the answer to this one means every answer has been sent.
    await widget.send({"type": "message", "text": "", "client_id": sentinel})
    received = []
    while True:
        frame = check_output(await widget.communicator.receive_output(10))
        received.append(frame)
        if frame["type"] == "error" and frame.get("client_id") == sentinel:
            break
    await widget.close()
    return received


def stored_data_is_valid() -> None:
    for message in Message.objects.all():
        text = message.text
        assert isinstance(text, str) and text.strip(), message.pk
        assert len(text) <= 4000 and "\x00" not in text, message.pk
        text.encode("utf-8")  # no lone surrogate
        if message.client_id is not None:
            assert 1 <= len(message.client_id) <= 64 and "\x00" not in message.client_id
            message.client_id.encode("utf-8")
    for visitor in Visitor.objects.all():
        for value in (visitor.name, visitor.email, visitor.timezone, visitor.city):
            assert "\x00" not in value
            value.encode("utf-8")
        encoded = json.dumps(visitor.profile, allow_nan=False)
        assert len(encoded) <= 4096 and isinstance(visitor.profile, dict)
    for conversation in Conversation.objects.all():
        assert len(conversation.opening_question) <= 4000
        assert conversation.message_count == conversation.messages.count()


class ErrorLog(logging.Handler):
    """Collects errors logged anywhere: a frame the consumer had to catch is a defect."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(f"{record.name}: {record.getMessage()}")

    def __enter__(self) -> ErrorLog:
        logging.getLogger().addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger().removeHandler(self)


def run(before: list, after: list, hello: dict | None = None) -> list[dict]:
    """One example: fresh tables, the exchange, and nothing logged as an error."""
    reset_between_examples()
    with ErrorLog() as log:
        received = async_to_sync(exchange)(before, after, hello)
    assert not log.messages, log.messages
    stored_data_is_valid()
    return received


@pytest.fixture
def service(transactional_db) -> Service:
    return make_service()


# A failure is shrunk to its smallest example, which takes longer than the suite's timeout.
shrinking_may_take_minutes = pytest.mark.timeout(600)
FUZZ = settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@shrinking_may_take_minutes
@FUZZ
@given(
    before=st.lists(frames, max_size=4),
    after=st.lists(frames, min_size=1, max_size=8),
)
def test_any_frames_before_and_after_hello_get_contract_answers_and_store_nothing_invalid(
    service, before, after
):
    received = run(before, after)
    ready = [f for f in received if f["type"] == "ready"]
    assert 1 <= len(ready) <= 2  # a fuzzed hello may have been the one to succeed


@shrinking_may_take_minutes
@FUZZ
@given(frame=typed_frames())
def test_every_field_of_every_frame_type_survives_wrong_types(service, frame):
    received = run([("text", as_text(frame))], [("text", as_text(frame))])
    errors = [f["code"] for f in received if f["type"] == "error"]
    assert "hello_required" in errors or frame["type"] == "hello"


@pytest.mark.parametrize("edge", UNICODE_EDGES, ids=range(len(UNICODE_EDGES)))
def test_unicode_edge_cases_in_every_string_field_are_answered_and_stored_cleanly(service, edge):
    client_frames = [
        {"type": "message", "text": edge, "client_id": str(uuid.uuid4())},
        {"type": "message", "text": f"hi {edge}", "client_id": edge},
        {"type": "feedback", "seq": 2, "value": edge},
        {"type": "typing", "on": edge},
        {"type": edge},
    ]
    hello = {
        "type": "hello",
        "visitor_token": edge,
        "last_seq": 0,
        "timezone": edge,
        "profile": {"name": edge, "email": f"{edge}@example.com", edge: edge},
    }
    received = run([], [("text", as_text(f)) for f in client_frames], hello)
    ready = [f for f in received if f["type"] == "ready"]
    assert len(ready) == 1, received  # the odd hello is a hello: a new visitor, not an error
