"""handoff.db: many rows' fields saved in one statement, queries compiled once."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from conversations import services
from conversations.models import Conversation, Message, Role
from handoff.db import CompiledQuery, update_fields
from tests.conftest import chatting_visitors, make_agent, record_compilations

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


@pytest.fixture
def compilations(monkeypatch) -> list:
    """Every SQL compilation of a query from here on."""
    return record_compilations(monkeypatch)


def test_a_compiled_query_gives_what_its_queryset_gives_compiled_once(service, compilations):
    visitors = chatting_visitors(service, 3)
    for n, visitor in enumerate(visitors):
        services.conversation_post_customer_message(visitor=visitor, text=f"m{n}", client_id="1")
    build = CompiledQuery(
        lambda visitor_ids, client_ids: (
            Message.objects.filter(
                conversation__visitor_id__in=visitor_ids, client_id__in=client_ids, role=Role.USER
            )
            .select_related("conversation__service")
            .order_by("pk")
        ),
        "uuid",
        "text",
    )
    asked = ([v.pk for v in visitors[:2]], ["1", "nope"])
    expected = list(build.build(*asked))
    assert [m.text for m in expected] == ["m0", "m1"]

    first = build(*asked)
    compilations.clear()
    with CaptureQueriesContext(connection) as again:
        found = build([visitors[2].pk], ["0", "1"])

    assert first == expected
    assert [m.conversation.service.slug for m in first] == [service.slug] * 2
    assert [m.text for m in found] == ["Hi", "m2"]
    assert compilations == [] and len(again.captured_queries) == 1
    assert found[0].conversation.visitor_id == visitors[2].pk  # the related rows came along
    assert build([], []) == []


def test_ids_used_twice_in_a_compiled_query_go_to_both_places(service):
    from django.db.models import Exists, OuterRef

    def build(ids):
        batch = Message.objects.filter(pk__in=ids)
        return (
            Message.objects.filter(
                Exists(batch.filter(conversation_id=OuterRef("conversation_id"))),
                pk__in=batch.values("pk"),
            )
            .order_by()
            .values_list("text", flat=True)
        )

    visitors = chatting_visitors(service, 2)
    ids = list(
        Message.objects.filter(conversation__visitor=visitors[1]).values_list("pk", flat=True)
    )
    read = CompiledQuery(build, "bigint")
    assert read([]) == []
    assert read(ids) == ["Hi"]


@pytest.mark.django_db(transaction=True)
def test_a_compiled_query_runs_on_the_connection_of_the_thread_that_runs_it(service):
    from concurrent.futures import ThreadPoolExecutor

    from django.db import connections

    [visitor] = chatting_visitors(service, 1)
    read = CompiledQuery(
        lambda ids: (
            Conversation.objects.select_for_update(of=("self",))
            .filter(visitor_id__in=ids)
            .values_list("visitor_id", flat=True)
        )
    )

    def locked_elsewhere():
        try:
            with services.transaction.atomic():
                return read([visitor.pk])
        finally:
            connections.close_all()

    with services.transaction.atomic():
        assert read([visitor.pk]) == [visitor.pk]  # compiled here, on this thread's connection
    with ThreadPoolExecutor(1) as pool:
        assert pool.submit(locked_elsewhere).result(timeout=10) == [visitor.pk]


def test_a_compiled_query_run_often_is_prepared_and_planned_once(service):
    visitors = chatting_visitors(service, 2)
    read = CompiledQuery(
        lambda ids: Conversation.objects.filter(visitor_id__in=ids).values_list("visitor_id")
    )

    def prepared() -> list[tuple[int, int]]:
        """(generic plans, custom plans) of the statement, if it is prepared."""
        with connection.cursor() as cursor:
            cursor.execute(
                "SELECT statement, generic_plans, custom_plans FROM pg_prepared_statements"
            )
            return [tuple(row[1:]) for row in cursor.fetchall() if "= ANY(" in row[0]]

    for visitor in visitors * 3:  # psycopg prepares a statement on its fifth run
        assert read([visitor.pk]) == [(visitor.pk,)]
    # Planned once for any ids (a generic plan), never again for the ids of a run.
    [(generic, custom)] = prepared()
    assert generic >= 1 and custom == 0
    with CaptureQueriesContext(connection) as logged:
        assert sorted(read([v.pk for v in visitors])) == sorted((v.pk,) for v in visitors)
    # The log shows what ran, the ids in: psycopg keeps no text of a prepared run.
    [statement] = [q["sql"] for q in logged.captured_queries]
    assert all(str(v.pk) in statement for v in visitors)


def test_a_compiled_query_is_planned_once_to_look_its_ids_up_not_to_read_the_table(service):
    """Planned once for any ids (a generic plan), not knowing how many there will be, the
    read must still use the index: under load a hub's card read that scanned every
    conversation, or a transcript read every message, ran dozens of times a second."""
    [visitor] = chatting_visitors(service, 1)
    conversation = Conversation.objects.get(visitor=visitor)
    Message.objects.bulk_create(
        Message(conversation=conversation, seq=seq, role=Role.USER, text="x")
        for seq in range(2, 502)
    )
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE conversations_message")
    wanted = list(Message.objects.order_by("?").values_list("pk", flat=True)[:3])
    read = CompiledQuery(lambda ids: Message.objects.filter(pk__in=ids).values_list("pk"), "bigint")
    for _ in range(6):  # psycopg prepares a statement on its fifth run
        assert sorted(read(wanted)) == sorted((pk,) for pk in wanted)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT name FROM pg_prepared_statements"
            " WHERE statement LIKE '%%conversations_message%%' AND generic_plans > 0"
        )
        [(name,)] = cursor.fetchall()
        cursor.execute(f"EXPLAIN EXECUTE {name}(%s::bigint[])", [wanted])
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "Index" in plan and "Seq Scan" not in plan, plan


def _stored(model, rows) -> list[dict]:
    from django.forms.models import model_to_dict

    fields = [f.name for f in model._meta.concrete_fields if not f.primary_key]
    found = model.objects.in_bulk([row.pk for row in rows])
    return [model_to_dict(found[row.pk], fields=fields) for row in rows]


def test_inserted_rows_are_stored_as_bulk_create_stores_them(service, agent, monkeypatch):
    from django.db.models.sql.compiler import SQLInsertCompiler

    from conversations.models import AuditEvent
    from handoff.db import insert_rows

    [visitor] = chatting_visitors(service, 1)
    conversation = Conversation.objects.get(visitor=visitor)

    def rows():
        return [
            AuditEvent(
                action="message_posted",
                actor=agent,
                actor_kind="agent",
                service=service,
                conversation=conversation,
                detail={"seq": 2, "text": "<b>'\"{}"},
            ),
            AuditEvent(action="conversation_started", actor_kind="visitor", detail={}),
            AuditEvent(action="x", actor_kind="system", service=service, detail=[1, None]),
        ]

    expected = rows()
    AuditEvent.objects.bulk_create(expected)
    compiled = record_compilations(monkeypatch, SQLInsertCompiler)
    inserted, alone = rows(), rows()[:1]
    insert_rows(inserted)
    insert_rows(alone)
    insert_rows([])

    assert compiled == []  # no insert compiled by Django
    assert all(row.pk and not row._state.adding for row in inserted + alone)
    assert len({row.pk for row in inserted + alone}) == 4
    got, want = _stored(AuditEvent, inserted), _stored(AuditEvent, expected)
    assert all(row.created_at is not None for row in inserted)  # auto_now_add, as on save
    assert got == want and _stored(AuditEvent, alone) == want[:1]


def test_inserted_rows_keep_the_primary_keys_they_have(service):
    from conversations.models import Visitor
    from handoff.db import insert_rows

    visitors = [Visitor(service=service), Visitor(service=service, name="Zoë")]
    keys = [v.pk for v in visitors]
    insert_rows(visitors)
    assert [v.pk for v in visitors] == keys
    assert list(
        Visitor.objects.filter(pk__in=keys).order_by("name").values_list("name", flat=True)
    ) == ["", "Zoë"]


def test_rows_a_batch_could_not_insert_are_left_unsaved(service):
    from django.db import IntegrityError, transaction

    from handoff.db import insert_rows

    [visitor] = chatting_visitors(service, 1)
    conversation = Conversation.objects.get(visitor=visitor)
    taken = Message(conversation=conversation, seq=1, role=Role.USER, text="again")
    with pytest.raises(IntegrityError), transaction.atomic():
        insert_rows([Message(conversation=conversation, seq=9, role=Role.USER, text="x"), taken])
    assert taken.pk is None and taken._state.adding
    assert not Message.objects.filter(seq=9).exists()


def test_inserted_columns_and_compiled_ids_go_to_postgresql_in_binary(service):
    """psycopg writes an array in PostgreSQL's text format in Python, quoting and escaping
    each element: for a batch of messages that took twice the CPU of the binary format."""
    from conversations.models import Visitor
    from handoff.db import insert_rows

    read = CompiledQuery(lambda ids: Visitor.objects.filter(pk__in=ids).values_list("name"))
    statements = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    visitors = [Visitor(service=service, name='O\'Brien {"x"} \\ ,'), Visitor(service=service)]
    with connection.execute_wrapper(record):
        insert_rows(visitors)
        names = read([v.pk for v in visitors])
    assert sorted(names) == sorted([("",), ('O\'Brien {"x"} \\ ,',)])
    assert len(statements) == 2
    assert all("%b::" in sql and "%s" not in sql for sql in statements)
