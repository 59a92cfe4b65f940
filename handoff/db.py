"""Database connections and threads: database work from a consumer's event loop."""

from __future__ import annotations

import asyncio
import copy
import weakref
from collections.abc import Callable, Sequence
from typing import Generic, NamedTuple, TypeVar

from channels.consumer import get_handler_name
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import connections, models, router
from django.db.backends.utils import CursorDebugWrapper, CursorWrapper
from django.db.models.expressions import RawSQL
from django.db.models.sql.compiler import SQLCompiler

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")


def db(func: Callable) -> Callable:
    """`func` made awaitable, run where the database can take it.

    On PostgreSQL on any of the event loop's few worker threads, so one socket's queries
    never wait behind another's (each thread keeps its connection, `DATABASE_CONN_MAX_AGE`);
    on SQLite (the embedded default) on Channels' one shared thread, as one file takes one
    writer at a time anyway. Either way, broken or old connections are closed before and
    after, as Channels does.
    """
    return database_sync_to_async(func, thread_sensitive=_single_writer())


def _single_writer() -> bool:
    return settings.DATABASES["default"]["ENGINE"].endswith("sqlite3")


def update_fields(rows: Sequence[models.Model], fields: Sequence[str]) -> None:
    """Save `fields` of rows of one model in one statement: UPDATE … FROM a list of VALUES.

    What `QuerySet.bulk_update` stores, without its CASE WHEN per row and field, which Django
    builds and compiles through its expression machinery: under load that was a sixth of the
    Python of both the web process and the worker (bench/README.md). Each value is prepared
    by its field, as `save()` does; no signals are sent, as with `bulk_update`.
    """
    if not rows:
        return
    meta = type(rows[0])._meta
    connection = connections[router.db_for_write(type(rows[0]))]
    quote = connection.ops.quote_name
    columns = [meta.pk, *(meta.get_field(name) for name in fields)]

    def new_value(field) -> str:
        value = f"v.{quote(field.column)}"
        if connection.vendor == "postgresql":  # a column of NULLs only would be text
            return f"CAST({value} AS {field.cast_db_type(connection)})"
        return value

    row = f"({', '.join(['%s'] * len(columns))})"
    table, pk = quote(meta.db_table), quote(meta.pk.column)
    sql = (
        f"WITH v ({', '.join(quote(field.column) for field in columns)}) "
        f"AS (VALUES {', '.join([row] * len(rows))}) "
        f"UPDATE {table} SET "
        + ", ".join(f"{quote(field.column)} = {new_value(field)}" for field in columns[1:])
        + f" FROM v WHERE {table}.{pk} = v.{pk}"
    )
    params = [
        field.get_db_prep_save(getattr(row, field.attname), connection)
        for row in rows
        for field in columns
    ]
    with connection.cursor() as cursor:
        cursor.execute(sql, params)


def insert_rows(rows: Sequence[models.Model]) -> None:
    """Insert new rows of one model in one statement and give them their primary keys: what
    `bulk_create` does (no signals either), without its machinery around each call. The rows
    all have a primary key, or none has (an auto-incremented one is returned).

    On PostgreSQL the statement is the same for any number of rows, one array per column
    (`INSERT … SELECT * FROM unnest(…) RETURNING pk`), so it is prepared and planned once
    per connection (`_Preparing`). Under load the inserts of each batch of messages were a
    fifth of the worker's Python (bench/README.md, eleventh round). The arrays go in
    PostgreSQL's binary format (`%b`): psycopg writes the text format in Python, quoting
    and escaping every element, which took twice the CPU of the binary one for a batch of
    messages (twelfth round). Elsewhere (SQLite, the embedded default) `bulk_create`.
    """
    if not rows:
        return
    model = type(rows[0])
    alias = router.db_for_write(model)
    connection = connections[alias]
    if connection.vendor != "postgresql":
        model.objects.using(alias).bulk_create(rows)
        return
    meta = model._meta
    returned = meta.pk if rows[0].pk is None else None
    fields = [field for field in meta.concrete_fields if field is not returned]
    key = (model, alias, returned is None)
    sql = _inserts.get(key)
    if sql is None:
        sql = _inserts[key] = _insert_sql(connection, meta, fields, returned)
    for row in rows:
        row._prepare_related_fields_for_save(operation_name="bulk_create")
    columns = [
        [field.get_db_prep_save(field.pre_save(row, add=True), connection) for row in rows]
        for field in fields
    ]
    with _Preparing(connection).cursor() as cursor:
        cursor.execute(sql, columns)
        if returned is not None:
            for row, (pk,) in zip(rows, cursor.fetchall(), strict=True):
                row.pk = pk
    for row in rows:
        row._state.adding, row._state.db = False, alias


_inserts: dict[tuple, str] = {}


def _insert_sql(connection, meta, fields, returned) -> str:
    quote = connection.ops.quote_name
    arrays = ", ".join(f"%b::{field.db_type(connection).split('(')[0]}[]" for field in fields)
    sql = (
        f"INSERT INTO {quote(meta.db_table)} ({', '.join(quote(f.column) for f in fields)}) "
        f"SELECT * FROM unnest({arrays})"
    )
    return sql + (f" RETURNING {quote(returned.column)}" if returned is not None else "")


class CompiledQuery:
    """A queryset of rows by ids whose SQL Django compiles once per database, not every run.

    `build(ids, …)` returns a queryset filtered with `…__in=ids` (one argument for each of
    `id_types`, "uuid" if none is named; each may be used more than once): model instances
    (with what they select_related, locked `select_for_update` if asked) or `values_list`
    rows. Django builds and compiles a queryset anew every time it runs, and for the reads
    that run for every batch of messages that was most of their cost (bench/README.md,
    tenth and eleventh rounds). On PostgreSQL each list of ids goes in as one array (`=
    ANY(%b::<type>[])`, in binary as `insert_rows`'s columns), so the statement is the
    same for any number of them: it is compiled the first time, and later runs send it
    with the new ids, Django turning the rows into what the queryset gives as usual.
    Elsewhere (SQLite, the embedded default) the queryset runs as built.

    Whatever else `build` puts in the statement is compiled in once: a value that changes
    (a setting, say) needs a `CompiledQuery` of its own.
    """

    def __init__(self, build: Callable[..., models.QuerySet], *id_types: str) -> None:
        self.build, self.id_types = build, id_types or ("uuid",)
        self._compiled: dict[str, _Compiled] = {}
        self._probe: models.QuerySet | None = None  # which database the queryset goes to

    def __call__(self, *ids: Sequence) -> list:
        if self._probe is None:
            self._probe = self.build(*([] for _ in self.id_types))
        alias = self._probe.db
        connection = connections[alias]
        if connection.vendor != "postgresql":
            return list(self.build(*(list(each) for each in ids)))
        compiled = self._compiled.get(alias) or self._compile(alias)
        arrays = [[str(value) for value in each] for each in ids]
        params = list(compiled.params)
        for position, which in compiled.arrays:
            params[position] = arrays[which]
        run = copy.copy(compiled.compiler)  # its select and converters, set up by compiling
        run.connection = _Preparing(connection)  # this thread's
        run.as_sql = lambda *args, **kwargs: (compiled.sql, params)
        queryset = compiled.queryset._chain()
        queryset.query.get_compiler = lambda *args, **kwargs: run
        return list(queryset)

    def _compile(self, alias: str) -> _Compiled:
        markers: list[list] = [[] for _ in self.id_types]
        queryset = self.build(
            *(
                RawSQL(f"SELECT unnest(%b::{id_type}[])", (marker,))
                for id_type, marker in zip(self.id_types, markers, strict=True)
            )
        )
        compiler = queryset.query.get_compiler(using=alias)
        sql, params = compiler.as_sql()
        # Django puts a list it is given as SQL in a subquery. Prepared statements are
        # planned once for any ids (`force_generic_plan`), not knowing how many: PostgreSQL
        # plans `IN (SELECT unnest($1))` for a hundred rows, which it joins by reading the
        # whole table (a hub's card read scanned every conversation, a transcript every
        # message), and `= ANY($1)` for ten, which it looks up in an index.
        for id_type in set(self.id_types):
            sql = sql.replace(f"IN (SELECT unnest(%b::{id_type}[]))", f"= ANY(%b::{id_type}[])")
        if "unnest(" in sql:
            raise ValueError(f"ids used other than in `__in` lookups: {sql}")
        arrays = [
            (position, which)
            for position, param in enumerate(params)
            for which, marker in enumerate(markers)
            if param is marker
        ]
        self._compiled[alias] = _Compiled(queryset, compiler, sql, tuple(params), arrays)
        return self._compiled[alias]


class _Preparing:
    """A PostgreSQL connection as a compiler uses it, but with cursors that bind parameters
    on the server: psycopg then prepares a statement that the connection runs often
    (its `prepare_threshold`, 5 by default), and PostgreSQL no longer plans it on every
    run. For the statements of `CompiledQuery` and `insert_rows`, the same for any ids or
    rows, planning took longer than running them (0.5-0.9 ms against 0.2-0.7 ms)."""

    def __init__(self, connection) -> None:
        self._connection = connection

    def __getattr__(self, name: str):
        return getattr(self._connection, name)

    def cursor(self):
        """What `connection.cursor()` gives (logged, errors translated), binding on the server."""
        from django.db.backends.postgresql.base import ServerBindingCursor
        from django.db.backends.postgresql.psycopg_any import register_tzloader
        from psycopg.pq import Format

        connection = self._connection
        connection.close_if_health_check_failed()
        connection.ensure_connection()
        connection.validate_thread_sharing()
        with connection.wrap_database_errors:
            raw = ServerBindingCursor(connection.connection)
            adapters = connection.connection.adapters
            loader = adapters.get_loader(adapters.types["timestamptz"].oid, Format.TEXT)
            if connection.timezone != loader.timezone:  # as Django's own cursors do
                register_tzloader(connection.timezone, raw)
        if connection.queries_logged:
            return _LoggedCursor(raw, connection)
        return connection.make_cursor(raw)


class _LoggedCursor(CursorDebugWrapper):
    """A cursor that logs each statement with its parameters in, as Django does for a
    connection that binds on the server: psycopg keeps no text of a prepared statement's run
    for `last_executed_query` to return."""

    def execute(self, sql, params=None):
        from psycopg import DataError

        try:
            shown = self.db.ops.compose_sql(sql, params)
        except DataError:  # what Django's own log does with what it cannot show
            shown = None
        with self.debug_sql(shown):
            return CursorWrapper.execute(self, sql, params)


class _Compiled(NamedTuple):
    queryset: models.QuerySet
    compiler: SQLCompiler
    sql: str
    params: tuple
    arrays: list[tuple[int, int]]  # (position in params, which list of ids)


class DirectDispatch:
    """A consumer mixin: run each handler without Channels' hop to close old connections.

    `AsyncConsumer.dispatch` calls `aclose_old_connections()` before every handler: a trip
    through Channels' one sync thread for every frame and every layer message, which
    profiles of a bare Channels app put at a third or more of the server's CPU. A consumer
    that touches the database only through `db()` (which closes stale connections itself)
    needs none of it.
    """

    async def dispatch(self, message: dict) -> None:
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)


class GroupCommit(Generic[Item, Outcome]):
    """Database work that arrives while a batch is being stored goes into the next batch.

    `store(items)` runs in a database thread (`db()`) and returns one outcome per item, in
    order: a result, or an exception for that item alone. Up to `in_flight` batches run at
    once per event loop: an idle process stores each item at once, a busy one (every batch
    slot taken) stores many per transaction, sharing the cost of a commit among everything
    that arrived meanwhile. One at a time by default: batches that run side by side only
    compete for the same cores and the same interpreter, and a busy web process stored
    its customer messages in two thirds of the time with one (bench/README.md). `store`
    must then never wait for a row lock: the customer messages' leaves such posts to be
    stored on their own.
    """

    def __init__(
        self, store: Callable[[Sequence[Item]], list[Outcome | Exception]], in_flight: int = 1
    ) -> None:
        self.store, self.in_flight = store, in_flight
        self._queues: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    async def submit(self, item: Item) -> Outcome:
        """Store `item` with whatever else is waiting; its outcome, or its error raised."""
        loop = asyncio.get_running_loop()
        queue = self._queues.get(loop)
        if queue is None:
            queue = self._queues[loop] = _Queue()
        future = loop.create_future()
        queue.waiting.append((item, future))
        if queue.draining < self.in_flight:
            queue.draining += 1
            queue.drainers.add(loop.create_task(self._drain(queue)))
        return await future

    async def _drain(self, queue: _Queue) -> None:
        task = asyncio.current_task()
        try:
            while queue.waiting:
                batch, queue.waiting = queue.waiting, []
                try:
                    outcomes = await db(self.store)([item for item, _ in batch])
                except Exception as error:
                    outcomes = [error] * len(batch)
                for (_, future), outcome in zip(batch, outcomes, strict=True):
                    if future.done():  # its socket went away: the item is stored all the same
                        continue
                    if isinstance(outcome, Exception):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
        finally:
            queue.draining -= 1
            queue.drainers.discard(task)


class _Queue:
    def __init__(self) -> None:
        self.waiting: list[tuple[object, asyncio.Future]] = []
        # Counted down in the drainer itself as it returns, so that an item queued right
        # after always finds a drainer (a done-callback on the set would run a step late).
        self.draining = 0
        # The running drainers, held so that none is garbage-collected mid-batch.
        self.drainers: set[asyncio.Task] = set()
