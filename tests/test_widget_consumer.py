"""The widget socket through the real ASGI app (SPEC §4, §9 widget rows)."""

from __future__ import annotations

import json

import pytest
from channels.db import database_sync_to_async

from conversations import services
from conversations.models import Conversation, Message, Mode, Role, Service
from tests.conftest import make_service
from tests.widget import Widget, stored_quietly

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def service(transactional_db) -> Service:
    return make_service()


async def test_hello_gets_ready_with_a_signed_token_and_no_conversation(service):
    async with Widget() as w:
        ready = await w.hello(timezone="Europe/Berlin")
        assert ready["conversation_id"] is None
        assert ready["mode"] == "human_supported"
        assert ready["human_available"] is True
        assert ready["ai_paused"] is False
        assert ":" in ready["visitor_token"]  # django.core.signing
        assert ready["greeting"] == service.greeting


async def test_a_message_is_stored_echoed_with_its_seq_and_answered_by_the_ai(service):
    async with Widget() as w:
        await w.hello()
        echo = await w.say("How do I reset my password?", client_id="abc")
        assert (echo["seq"], echo["role"], echo["client_id"]) == (1, "user", "abc")
        reply = await w.message(2)
        assert reply["role"] == "ai"
        assert reply["specialist"] == "Tech Support"
        assert "Forgot password" in reply["text"]


async def test_the_same_client_id_twice_stores_one_message_and_answers_with_it(service):
    async with Widget() as w:
        await w.hello()
        first = await w.say("Where can I download my invoices?", client_id="same")
        await w.message(2)
        again = await w.say("Where can I download my invoices?", client_id="same")
        assert again["seq"] == first["seq"] == 1
    assert await database_sync_to_async(Message.objects.filter(role=Role.USER).count)() == 1


async def test_a_reload_resumes_the_same_conversation_from_last_seq(service):
    async with Widget() as w:
        await w.hello()
        await w.say("How do I reset my password?")
        await w.message(2)
        token = w.token
    async with Widget() as again:
        ready = await again.hello(token=token, last_seq=1)
        assert ready["conversation_id"] is not None
        replayed = await again.receive()
        assert (replayed["type"], replayed["seq"]) == ("message", 2)
        status = await again.receive()
        assert status["type"] == "status"
        assert await again.nothing()
    async with Widget() as fresh:
        await fresh.hello(token=token, last_seq=0)
        seqs = [(await fresh.receive())["seq"] for _ in range(2)]
        assert seqs == [1, 2]


async def test_a_forged_token_is_a_new_visitor_and_reveals_nothing(service):
    async with Widget() as w:
        await w.hello()
        await w.say("secret question")
        token = w.token
    async with Widget() as forger:
        ready = await forger.hello(token=token[:-2] + "xx")
        assert ready["conversation_id"] is None
        assert ready["visitor_token"] != token
        assert await forger.nothing()


async def test_another_services_token_is_a_new_visitor(service):
    await database_sync_to_async(make_service)(slug="sales", name="Sales")
    async with Widget() as w:
        await w.hello()
        await w.say("hello")
        token = w.token
    async with Widget("sales") as other:
        ready = await other.hello(token=token)
        assert ready["conversation_id"] is None


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "bad_json"),
        ("[1, 2]", "bad_json"),
        ('"hello"', "bad_json"),
        ("null", "bad_json"),
        ('{"type": "dance"}', "unknown_type"),
        ('{"type": 5}', "unknown_type"),
        ('{"no": "type"}', "unknown_type"),
        ('{"type": "message", "text": "hi", "client_id": "1"}', "hello_required"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_open(service, raw, code):
    async with Widget() as w:
        await w.send(raw)
        error = await w.error()
        assert error["code"] == code
        assert error["detail"]
        await w.hello()  # still alive and usable


async def test_a_binary_frame_is_bad_json(service):
    async with Widget() as w:
        await w.communicator.send_to(bytes_data=b"\x00\x01")
        assert (await w.error())["code"] == "bad_json"


async def test_a_second_hello_is_refused(service):
    async with Widget() as w:
        await w.hello()
        await w.send({"type": "hello", "visitor_token": None, "last_seq": 0})
        assert (await w.error())["code"] == "already_started"


@pytest.mark.parametrize(
    ("text", "code"), [("", "empty"), ("   ", "empty"), (None, "empty"), ("x" * 4001, "too_long")]
)
async def test_bad_text_gets_its_error_and_nothing_is_stored(service, text, code):
    async with Widget() as w:
        await w.hello()
        await w.send({"type": "message", "text": text, "client_id": "c1"})
        error = await w.error()
        assert (error["code"], error["client_id"]) == (code, "c1")
        echo = await w.say("still here")
        assert echo["seq"] == 1
    assert await database_sync_to_async(Message.objects.filter(role=Role.USER).count)() == 1


async def test_feedback_on_an_ai_message_is_confirmed_and_elsewhere_is_bad_seq(service):
    async with Widget() as w:
        await w.hello()
        await w.say("How do I reset my password?")
        await w.message(2)
        await w.send({"type": "feedback", "seq": 1, "value": "down"})
        assert (await w.error())["code"] == "bad_seq"
        await w.send({"type": "feedback", "seq": 77, "value": "down"})
        assert (await w.error())["code"] == "bad_seq"
        await w.send({"type": "feedback", "seq": "2", "value": "down"})
        assert (await w.error())["code"] == "bad_seq"
        await w.send({"type": "feedback", "seq": 2, "value": "down"})
        ok = await w.receive_until(lambda f: f["type"] == "feedback_ok")
        assert ok == {"type": "feedback_ok", "seq": 2, "value": "down"}
    message = await database_sync_to_async(Message.objects.get)(seq=2)
    assert message.feedback == "down"


async def test_messages_over_the_rate_limit_are_refused_and_not_stored(service, settings):
    settings.WIDGET_RATE_LIMIT = 3
    async with Widget() as w:
        await w.hello()
        for n in range(3):
            assert (await w.say(f"message {n}"))["type"] == "message"
        await w.send({"type": "message", "text": "one too many", "client_id": "x"})
        assert (await w.error())["code"] == "rate_limited"
    texts = await database_sync_to_async(
        lambda: list(Message.objects.filter(role=Role.USER).values_list("text", flat=True))
    )()
    assert "one too many" not in texts


async def test_sockets_per_address_are_capped(service, settings):
    settings.WIDGET_MAX_SOCKETS_PER_IP = 2
    first, second, third = (
        Widget(ip="198.51.100.7"),
        Widget(ip="198.51.100.7"),
        Widget(ip="198.51.100.7"),
    )
    assert (await first.connect())[0] and (await second.connect())[0]
    connected, _ = await third.connect()
    assert not connected
    elsewhere = Widget(ip="198.51.100.8")
    assert (await elsewhere.connect())[0]
    await first.close()
    fourth = Widget(ip="198.51.100.7")
    assert (await fourth.connect())[0]
    for w in (second, elsewhere, fourth):
        await w.close()


async def test_an_unknown_service_is_closed_with_4404(service):
    w = Widget("no-such-service")
    connected, _ = await w.connect()
    assert connected
    assert await w.communicator.receive_output(2) == {"type": "websocket.close", "code": 4404}


async def test_origins_are_checked_against_the_service(service):
    service.allowed_origins = "https://shop.example"
    await database_sync_to_async(service.save)()
    good = Widget(origin="https://shop.example")
    assert (await good.connect())[0]
    await good.close()
    bad = Widget(origin="https://evil.example")
    assert not (await bad.connect())[0]


async def test_without_allowed_origins_only_the_same_host_may_connect(service):
    same = Widget(origin="http://testserver")
    assert (await same.connect())[0]
    await same.close()
    other = Widget(origin="https://evil.example")
    assert not (await other.connect())[0]


async def test_asking_for_a_person_hands_off_and_the_ai_goes_quiet(service):
    async with Widget() as w:
        await w.hello()
        await w.say("hi")
        await w.message(2)
        await w.send({"type": "request_human"})
        handoff = await w.message(3)
        assert (handoff["role"], handoff["text"]) == ("system", services.TEXT_HANDOFF)
        status = await w.receive_until(lambda f: f["type"] == "status")
        assert status["ai_paused"] is True
        await w.say("How do I reset my password?")
        assert await w.nothing(0.3)


async def test_a_human_only_service_says_nothing_automated(service):
    service.mode = Mode.HUMAN_ONLY
    await database_sync_to_async(service.save)()
    async with Widget() as w:
        ready = await w.hello()
        assert ready["greeting"] is None
        await w.say("anyone there?")
        status = await w.receive_until(lambda f: f["type"] == "status")
        assert status["ai_paused"] is True
        assert await w.nothing(0.3)


async def test_the_customer_sees_the_agent_join_reply_and_hand_back(service, agent):
    async with Widget() as w:
        await w.hello()
        await w.say("hi")
        await w.message(2)
        conversation = await database_sync_to_async(Conversation.objects.get)()
        await database_sync_to_async(services.conversation_take_over)(
            conversation=conversation, agent=agent
        )
        joined = await w.message(3)
        assert joined["text"] == "Alice has joined the conversation."
        status = await w.receive_until(lambda f: f["type"] == "status")
        assert (status["ai_paused"], status["agent"]) == (True, "Alice")
        await database_sync_to_async(services.conversation_send_as_agent)(
            conversation=conversation, agent=agent, text="<b>Hello</b>, I'm Alice"
        )
        human = await w.message(4)
        assert (human["role"], human["author"], human["text"]) == (
            "human",
            "Alice",
            "<b>Hello</b>, I'm Alice",
        )


async def test_ending_the_chat_closes_it_and_the_next_message_starts_anew(service):
    async with Widget() as w:
        await w.hello()
        first = await w.say("hi")
        await w.message(2)
        await w.send({"type": "end"})
        await w.receive_until(
            lambda f: f["type"] == "message" and f["text"] == services.TEXT_CLOSED
        )
        again = await w.say("one more thing")
        assert again["seq"] == 1
        assert first["seq"] == 1
    assert await database_sync_to_async(Conversation.objects.count)() == 2


async def test_a_mode_change_reaches_a_socket_without_a_conversation(service, admin):
    async with Widget() as w:
        await w.hello()
        await database_sync_to_async(services.service_set_mode)(
            service=service, mode=Mode.AI_ONLY, user=admin
        )
        status = await w.receive_until(lambda f: f["type"] == "status")
        assert (status["mode"], status["human_available"]) == ("ai_only", False)


async def test_frames_are_json_text_that_escapes_nothing_it_should_not(service):
    async with Widget() as w:
        await w.hello()
        echo = await w.say('<script>alert("x")</script>')
        assert echo["text"] == '<script>alert("x")</script>'
        raw = json.dumps(echo)
        assert "script" in raw


async def test_the_location_comes_from_the_time_zone_when_the_address_is_private(service):
    async with Widget(ip="10.1.2.3") as w:
        await w.hello(timezone="Europe/Berlin")
        await w.say("hello")
    visitor = await database_sync_to_async(lambda: Conversation.objects.get().visitor)()
    assert (visitor.city, visitor.country) == ("Berlin", "Germany")


async def test_the_country_comes_from_the_client_address_when_it_is_public(service):
    async with Widget(ip="8.8.8.8") as w:
        await w.hello(timezone="Europe/Berlin")
        await w.say("hello")
    visitor = await database_sync_to_async(lambda: Conversation.objects.get().visitor)()
    assert visitor.country == "United States"


async def test_the_visitor_token_never_reaches_the_logs(service, caplog):
    caplog.set_level("DEBUG")
    async with Widget() as w:
        await w.hello()
        await w.say("hi")
        await w.send({"type": "hello", "visitor_token": w.token, "last_seq": 0})
        await w.error()
        token = w.token
    assert caplog.records
    assert token not in caplog.text
    assert token.split(":")[0] not in caplog.text


async def test_the_in_process_schedule_expires_a_handoff_wait_on_the_embedded_default(
    service, settings, monkeypatch
):
    from datetime import timedelta

    from django.utils import timezone

    from handoff import inprocess_beat

    settings.HANDOFF_INPROCESS_BEAT = True
    settings.CELERY_BEAT_SCHEDULE = {
        "expire": {"task": "conversations.tasks.expire_handoff_waits", "schedule": 0.05}
    }
    monkeypatch.setattr(inprocess_beat, "_task", None)
    async with Widget() as w:  # the first socket starts the schedule
        assert inprocess_beat._task is not None
        await w.hello()
        await w.say("hi")
        await w.send({"type": "request_human"})
        await w.receive_until(lambda f: f["type"] == "status" and f["ai_paused"])
        await database_sync_to_async(
            lambda: Conversation.objects.update(
                waiting_since=timezone.now() - timedelta(seconds=service.handoff_wait_seconds + 1)
            )
        )()
        try:
            expired = await w.receive_until(
                lambda f: f["type"] == "message" and f["text"] == services.TEXT_WAIT_EXPIRED
            )
            assert expired["role"] == "system"
            status = await w.receive_until(lambda f: f["type"] == "status")
            assert status["ai_paused"] is False
        finally:
            inprocess_beat._task.cancel()


async def test_the_sender_gets_its_echo_once_without_waiting_on_the_layer(service, monkeypatch):
    async with Widget() as w:
        await w.hello()
        await w.say("How do I reset my password?")  # seq 1: this socket follows it now
        await w.message(2)
        sent_through_layer = []
        monkeypatch.setattr(
            "conversations.protocol.send_message", lambda m: sent_through_layer.append(m.seq)
        )
        monkeypatch.setattr("conversations.tasks.dispatch", lambda *args: None)  # no answer
        echo = await w.say("And my username?")
        assert echo["seq"] == 3
        assert 3 in sent_through_layer  # other tabs still get it through the group
        monkeypatch.undo()
        await w.say("Thanks")
        frames = [f for f in w.frames if f["type"] == "message"]
        seqs = [f["seq"] for f in frames]
        assert seqs == sorted(set(seqs)), seqs  # nothing twice, nothing out of order


async def test_a_frame_that_overtakes_another_waits_for_it_instead_of_reading(
    service, transcript_reads
):
    async with Widget() as w:
        await w.answered_once()
        reads_before = len(transcript_reads)
        (third, fourth), announce = await stored_quietly("third", "fourth")
        await announce(fourth)  # overtakes the third, still in flight
        assert await w.nothing()  # held: the fourth never shows before the third
        await announce(third)
        assert [(await w.receive())["seq"] for _ in range(2)] == [3, 4]
        assert await w.nothing(1.2)  # nothing twice, and no read when the timer would fire
        assert len(transcript_reads) == reads_before


async def test_other_frames_that_come_while_messages_are_held_follow_them(service):
    async with Widget() as w:
        await w.answered_once()
        (third, fourth), announce = await stored_quietly("third", "fourth")
        await announce(fourth)
        await announce({"type": "typing", "on": False, "who": "ai"})
        await announce(third)
        frames = [await w.receive() for _ in range(3)]
        assert [f.get("seq", f["type"]) for f in frames] == [3, 4, "typing"]


async def test_a_frame_that_never_comes_is_read_from_the_transcript(
    service, transcript_reads, monkeypatch
):
    monkeypatch.setattr("conversations.consumers.GAP_WAIT", 0.05)
    async with Widget() as w:
        await w.answered_once()
        reads_before = len(transcript_reads)
        (_, _, fifth), announce = await stored_quietly("third", "fourth", "fifth")
        await announce(fifth)  # the layer lost the third and the fourth
        frames = [await w.receive() for _ in range(3)]
        assert [(f["seq"], f["text"]) for f in frames] == [
            (3, "third"),
            (4, "fourth"),
            (5, "fifth"),
        ]
        assert transcript_reads[reads_before:] == [2]
        await announce(fifth)
        assert await w.nothing()


async def test_a_socket_that_cannot_read_its_gap_closes_so_that_the_widget_resumes(
    service, monkeypatch
):
    from conversations.consumers import ChatConsumer

    monkeypatch.setattr("conversations.consumers.GAP_WAIT", 0.05)
    async with Widget() as w:
        await w.answered_once()

        def database_gone(self, after_seq):
            raise ConnectionError("database gone")

        monkeypatch.setattr(ChatConsumer, "_frames_since", database_gone)
        (_, fourth), announce = await stored_quietly("third", "fourth")
        await announce(fourth)
        closed = await w.communicator.receive_output(2)
        assert closed == {"type": "websocket.close", "code": 1011}
