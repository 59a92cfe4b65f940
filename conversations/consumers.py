"""The customer widget's socket, `/ws/chat/SLUG/` (SPEC §4, §9): it only moves messages."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import deque
from urllib.parse import urlsplit

from channels.generic.websocket import AsyncWebsocketConsumer
from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.redis import RedisCache

from conversations import geo, protocol, selectors, services
from conversations.models import Conversation, Service, Visitor
from handoff import inprocess_beat
from handoff.db import CompiledQuery, DirectDispatch, GroupCommit, db
from handoff.layer import ClosesWhenLayerLost

logger = logging.getLogger(__name__)

CLOSE_UNKNOWN_SERVICE = 4404
CLOSE_POLICY_VIOLATION = 1008
# Frames refused by the per-socket frame rate within this many seconds: over
# WIDGET_FRAME_ABUSE_LIMIT of them and the socket is closed.
FRAME_ABUSE_WINDOW = 10.0
SOCKET_COUNT_TTL = 6 * 3600
CLIENT_TYPES = {"hello", "message", "feedback", "request_human", "typing", "end"}
# How long a message frame that overtook another waits for it before the socket reads the
# transcript instead (seconds).
GAP_WAIT = 1.0

# What a widget's catch-up reads (every new conversation's first message makes one).
_conversation_with_service = CompiledQuery(
    lambda ids: Conversation.objects.select_related("service", "claimed_by").filter(pk__in=ids)
)


def _header(scope: dict, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key == name:
            return value.decode("latin-1")
    return ""


def origin_allowed(scope: dict, service: Service) -> bool:
    """Browsers always send Origin; it must be listed, or be this host when none are."""
    origin = _header(scope, b"origin").strip().rstrip("/").lower()
    if not origin:
        return True  # not a browser: no page of another site is driving this socket
    allowed = service.origin_list
    if allowed:
        return origin in allowed or "*" in allowed
    return urlsplit(origin).netloc == _header(scope, b"host").lower()


def _decode(text_data: str | None) -> object:
    """The frame's JSON value, or None if it is binary or not JSON."""
    if text_data is None:
        return None
    try:
        return json.loads(text_data)
    except (ValueError, RecursionError):  # RecursionError: "[[[[…" nested past the stack
        return None


RATE_WINDOW = 60  # seconds: WIDGET_RATE_LIMIT messages per visitor per window


def _message_counts(visitors: list[Visitor]) -> list[int]:
    """Count one more message for each visitor in its current window; each count, in order.

    On Redis one pipelined round trip for the whole batch (a key made with a TTL if new,
    then incremented), where `cache.incr` costs two per message (EXISTS, then INCRBY).
    """
    keys = [f"widget-rate:{visitor.pk}" for visitor in visitors]
    backend = caches["default"]
    if not isinstance(backend, RedisCache):
        return [_count(backend, key) for key in keys]
    # The cache's own client and key prefix; Django stores ints in Redis as plain integers,
    # so these keys stay readable through the cache API.
    pipe = backend._cache.get_client(write=True).pipeline(transaction=False)
    for key in keys:
        full = backend.make_and_validate_key(key)
        pipe.set(full, 0, ex=RATE_WINDOW, nx=True)
        pipe.incr(full)
    return pipe.execute()[1::2]


def _count(backend, key: str) -> int:
    try:
        return backend.incr(key)
    except ValueError:  # the first message of this window
        return 1 if backend.add(key, 1, RATE_WINDOW) else backend.incr(key)


def _store_messages(posts: list[services.CustomerPost]) -> list:
    """Each post's `Posted` or error, or None if its visitor is over the rate."""
    allowed = [
        count <= settings.WIDGET_RATE_LIMIT
        for count in _message_counts([post.visitor for post in posts])
    ]
    stored = iter(
        services.conversation_post_customer_messages(
            [post for post, ok in zip(posts, allowed, strict=True) if ok]
        )
    )
    return [next(stored) if ok else None for ok in allowed]


# Every widget socket of this process posts through it: the messages that arrive while one
# batch commits are stored together in the next.
customer_messages = GroupCommit(_store_messages)


class ChatConsumer(DirectDispatch, ClosesWhenLayerLost, AsyncWebsocketConsumer):
    """One customer's widget: hello, then messages, feedback and requests for a human."""

    service: Service | None = None
    visitor: Visitor | None = None
    conversation_id = None
    last_seq_sent = 0
    # Message frames that arrived ahead of one still in flight, by seq, and the timer that
    # reads the transcript if the missing ones do not come (see `_send_message_frame`).
    held: dict[int, dict]
    # Other frames (status, typing) that arrived while messages were held: they follow them.
    held_after: list[dict]
    gap_timer: asyncio.Task | None = None
    ip_key: str | None = None
    # Per-socket token bucket over every frame (SPEC §9): WIDGET_FRAME_RATE tokens a second,
    # at most WIDGET_FRAME_BURST. Refused frames cost no database work.
    frame_tokens: float | None = None
    frame_clock = 0.0
    refused_at: deque[float] | None = None
    closing = False

    # --- Connection ---------------------------------------------------------------------

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.held, self.held_after = {}, []
        # Taken to send message frames: the gap timer's read runs beside the handlers.
        self.sending = asyncio.Lock()

    async def connect(self) -> None:
        inprocess_beat.ensure_started()
        slug = self.scope["url_route"]["kwargs"]["slug"]
        self.service = await db(Service.objects.filter(slug=slug).first)()
        if self.service is None:
            await self.accept()
            await self.close(code=CLOSE_UNKNOWN_SERVICE)
            return
        if not origin_allowed(self.scope, self.service):
            logger.info("widget socket refused: origin not allowed for %s", slug)
            await self.close()
            return
        self.ip = geo.client_ip(self.scope, trusted_proxy_count=settings.TRUSTED_PROXY_COUNT)
        if not await db(self._take_socket_slot)():
            logger.warning("widget socket refused: too many sockets from one address")
            await self.close()
            return
        await self.accept()

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # A consumer that dies never reaches disconnect(): give its slot back anyway, or
            # each crash would lock its address out for SOCKET_COUNT_TTL.
            if self.ip_key:
                await db(self._release_socket_slot)()

    async def disconnect(self, code: int) -> None:
        self._forget_held()
        if self.ip_key:
            await db(self._release_socket_slot)()
        if self.service is not None:
            await self.channel_layer.group_discard(
                protocol.service_group(self.service.pk), self.channel_name
            )
        if self.conversation_id:
            await self.channel_layer.group_discard(
                protocol.conversation_group(self.conversation_id), self.channel_name
            )

    def _take_socket_slot(self) -> bool:
        key = f"widget-sockets:{self.ip or 'unknown'}"
        cache.add(key, 0, SOCKET_COUNT_TTL)
        if cache.incr(key) > settings.WIDGET_MAX_SOCKETS_PER_IP:
            cache.decr(key)
            return False
        self.ip_key = key
        return True

    def _release_socket_slot(self) -> None:
        with contextlib.suppress(ValueError):  # the counter expired meanwhile
            cache.decr(self.ip_key)
        self.ip_key = None

    # --- Frames in ----------------------------------------------------------------------

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.closing:
            return  # closed for abuse: frames still in flight are dropped
        if not self._take_frame_token():
            await self._refuse_frame(text_data)
            return
        content = _decode(text_data)
        if not isinstance(content, dict):
            await self.send_error("bad_json", "Frames must be JSON objects.")
            return
        kind = content.get("type")
        if not isinstance(kind, str) or kind not in CLIENT_TYPES:
            await self.send_error("unknown_type", "Unknown frame type.")
            return
        if kind == "hello":
            if self.visitor is not None:
                await self.send_error("already_started", "This socket already said hello.")
                return
        elif self.visitor is None:
            await self.send_error("hello_required", "Send a hello frame first.")
            return
        try:
            await getattr(self, f"on_{kind}")(content)
        except services.HandoffError as error:
            await self.send_error(error.code, error.detail, content.get("client_id"))
        except Exception:
            # A bad frame must never take the socket down with a 1011.
            logger.exception("widget frame %s failed", kind)
            await self.send_error("internal", "Something went wrong; please try again.")

    def _take_frame_token(self) -> bool:
        now = time.monotonic()
        rate, burst = settings.WIDGET_FRAME_RATE, settings.WIDGET_FRAME_BURST
        if self.frame_tokens is None:
            self.frame_tokens = float(burst)
        else:
            self.frame_tokens = min(burst, self.frame_tokens + (now - self.frame_clock) * rate)
        self.frame_clock = now
        if self.frame_tokens < 1:
            return False
        self.frame_tokens -= 1
        return True

    async def _refuse_frame(self, text_data: str | None) -> None:
        """Answer a frame over the rate with `rate_limited`; close after sustained abuse."""
        now = time.monotonic()
        if self.refused_at is None:
            self.refused_at = deque()
        self.refused_at.append(now)
        while self.refused_at[0] < now - FRAME_ABUSE_WINDOW:
            self.refused_at.popleft()
        if len(self.refused_at) > settings.WIDGET_FRAME_ABUSE_LIMIT:
            logger.warning("widget socket closed: %d frames over the rate", len(self.refused_at))
            self.closing = True
            await self.close(code=CLOSE_POLICY_VIOLATION)
            return
        content = _decode(text_data) if text_data and len(text_data) <= 8192 else None
        client_id = content.get("client_id") if isinstance(content, dict) else None
        await self.send_error(
            "rate_limited", "You're sending too much too quickly. Please slow down.", client_id
        )

    async def on_hello(self, content: dict) -> None:
        last_seq = content.get("last_seq", 0)
        if not isinstance(last_seq, int) or isinstance(last_seq, bool) or last_seq < 0:
            last_seq = 0
        timezone_name = content.get("timezone")
        if not isinstance(timezone_name, str):
            timezone_name = ""
        visitor, token, conversation = await db(self._hello)(
            content.get("visitor_token"), timezone_name, content.get("profile")
        )
        self.visitor = visitor
        await self.channel_layer.group_add(
            protocol.service_group(self.service.pk), self.channel_name
        )
        await self.send_json(
            protocol.ready_frame(
                service=self.service, visitor_token=token, conversation=conversation
            )
        )
        if conversation is not None:
            self.last_seq_sent = last_seq
            await self._follow(conversation.id)

    def _hello(self, token, timezone_name: str, profile) -> tuple:
        location = geo.locate(self.ip, timezone_name or None).as_dict()
        visitor, token = services.visitor_identify(
            service=self.service,
            token=token,
            location=location,
            timezone_name=timezone_name,
            profile=profile,
        )
        self.service.refresh_from_db(fields=["mode", "greeting", "allowed_origins"])
        return visitor, token, services.open_conversation_for(visitor=visitor)

    async def on_message(self, content: dict) -> None:
        post = services.CustomerPost(self.visitor, content.get("text"), content.get("client_id"))
        try:
            posted = await customer_messages.submit(post)
        except services.PostAlone:
            # Its conversation is locked (a take-over, say), or another socket of the visitor
            # started one meanwhile: on a thread of its own, so that no batch waits for it.
            posted = await db(services.conversation_post_customer_message)(
                visitor=post.visitor, text=post.text, client_id=post.client_id
            )
        if posted is None:
            await self.send_error(
                "rate_limited",
                "You're sending messages too quickly. Please wait a moment.",
                content.get("client_id"),
            )
            return
        message = posted.message
        if message.conversation_id != self.conversation_id:
            await self._follow(message.conversation_id)
        elif posted.created:
            # The sender's echo goes straight back rather than through the layer, so the
            # AI's answer, sent from the worker, never arrives first and makes a gap to read;
            # the copy the conversation's group brings this socket is dropped by its seq.
            await self._send_message_frame(protocol.message_frame(message))
        else:
            await self.send_json(protocol.message_frame(message))

    async def on_feedback(self, content: dict) -> None:
        message = await db(services.message_give_feedback)(
            visitor=self.visitor, seq=content.get("seq"), value=content.get("value")
        )
        await self.send_json(protocol.feedback_ok_frame(message))

    async def on_request_human(self, content: dict) -> None:
        conversation = await db(services.conversation_request_human)(
            visitor=self.visitor, source="button"
        )
        if conversation.id != self.conversation_id:
            await self._follow(conversation.id)

    async def on_typing(self, content: dict) -> None:
        if not isinstance(content.get("on"), bool):
            await self.send_error("bad_typing", "typing.on must be true or false.")

    async def on_end(self, content: dict) -> None:
        conversation = await db(services.conversation_end_by_customer)(visitor=self.visitor)
        if conversation is None:
            await self.send_error("no_conversation", "There is no open conversation to end.")

    # --- Frames out ---------------------------------------------------------------------

    async def _follow(self, conversation_id) -> None:
        """Join the conversation's group, then send what was stored since `last_seq_sent`.

        Joining first and reading second leaves no gap: anything committed later arrives
        through the group, and `last_seq_sent` drops what the read already delivered.
        """
        if self.conversation_id and self.conversation_id != conversation_id:
            await self.channel_layer.group_discard(
                protocol.conversation_group(self.conversation_id), self.channel_name
            )
            self.last_seq_sent = 0
            self._forget_held()
        self.conversation_id = conversation_id
        await self.channel_layer.group_add(
            protocol.conversation_group(conversation_id), self.channel_name
        )
        conversation = await self._catch_up()
        if conversation is not None:
            await self.send_json(protocol.status_frame(self.service, conversation))

    async def _catch_up(self) -> Conversation | None:
        async with self.sending:
            return await self._send_stored()

    async def _send_stored(self) -> Conversation | None:
        frames, conversation = await db(self._frames_since)(self.last_seq_sent)
        for frame in frames:
            if frame["seq"] > self.last_seq_sent:
                self.last_seq_sent = frame["seq"]
                await self.send_json(frame)
        return conversation

    def _frames_since(self, after_seq: int) -> tuple[list[dict], Conversation | None]:
        found = _conversation_with_service([self.conversation_id])
        if not found:
            return [], None
        [conversation] = found
        self.service = conversation.service
        messages = selectors.messages_after(conversation=conversation, after_seq=after_seq)
        return [protocol.message_frame(m) for m in messages], conversation

    async def _send_message_frame(self, frame: dict) -> None:
        """Send message frames in seq order, each once.

        A frame can overtake another on its way here: the sender's own echo, sent straight
        back, overtakes the AI's answer to the customer's previous message when that answer
        was stored first but still waits in the layer. The early frame is held until the
        missing ones arrive, almost always within milliseconds; only if they have not come
        after GAP_WAIT (the layer dropped them) does the socket read the transcript.
        """
        async with self.sending:
            seq = frame["seq"]
            if seq <= self.last_seq_sent:
                return
            if seq > self.last_seq_sent + 1:
                self.held[seq] = frame
                if self.gap_timer is None:
                    self.gap_timer = asyncio.create_task(self._read_gap_later())
                return
            self.last_seq_sent = seq
            await self.send_json(frame)
            while (frame := self.held.pop(self.last_seq_sent + 1, None)) is not None:
                self.last_seq_sent = frame["seq"]
                await self.send_json(frame)
            if not self.held:
                await self._gap_closed()

    async def _gap_closed(self) -> None:
        after, self.held_after = self.held_after, []
        self._forget_held()
        for frame in after:
            await self.send_json(frame)

    async def _read_gap_later(self) -> None:
        """After GAP_WAIT, read the transcript for what the held frames still wait for."""
        await asyncio.sleep(GAP_WAIT)
        self.gap_timer = None
        try:
            async with self.sending:
                await self._send_stored()  # the held frames too: they were stored before
                await self._gap_closed()
        except Exception:
            logger.exception("widget socket could not read its transcript; closing it")
            await self.close(code=1011)

    def _forget_held(self) -> None:
        self.held.clear()
        self.held_after.clear()
        if self.gap_timer is not None:
            self.gap_timer.cancel()
            self.gap_timer = None

    async def widget_frame(self, event: dict) -> None:
        frame = event["frame"]
        if frame.get("type") == "message":
            await self._send_message_frame(frame)
        elif self.held:
            self.held_after.append(frame)
        else:
            await self.send_json(frame)

    async def widget_service(self, event: dict) -> None:
        self.service.mode = event["frame"]["mode"]
        if self.conversation_id is None:
            await self.send_json(event["frame"])

    async def send_json(self, content: dict) -> None:
        await self.send(text_data=json.dumps(content))

    async def send_error(self, code: str, detail: str, client_id: object = None) -> None:
        await self.send_json(protocol.error_frame(code, detail, client_id))
