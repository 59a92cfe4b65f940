"""Shared fixtures: a service with specialists and knowledge, and users by role."""

from __future__ import annotations

import contextlib
import gc

import pytest
from channels.layers import channel_layers
from django.contrib.auth.models import Group, Permission
from django.core.cache import cache

from conversations.consumers import ChatConsumer
from conversations.models import KnowledgeEntry, Mode, Service, Specialist


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup):
    """The test database; before it is dropped, the connections of finished threads close.

    Consumers run their database work on the event loop's worker threads, and Channels'
    test communicator leaves those threads' connections open while a test waits on a socket;
    the threads are gone by the end of the session, their connections not yet collected.
    """
    yield
    gc.collect()


@pytest.fixture(autouse=True)
def _fresh_cache_and_layers():
    """Rate limits and in-memory layers must not leak from one test into the next."""
    cache.clear()
    channel_layers.backends = {}
    yield
    cache.clear()
    channel_layers.backends = {}


def sql_verb(sql: str) -> str:
    """What a statement does: `WITH v AS (VALUES …) UPDATE …` (handoff.db.update_fields) is an
    UPDATE."""
    verb = sql.split()[0]
    if verb == "WITH" and ") UPDATE " in sql:
        return "UPDATE"
    return verb


def make_service(
    *, slug: str = "support", name: str = "Support", mode: str = Mode.HUMAN_SUPPORTED, **fields
) -> Service:
    service = Service.objects.create(name=name, slug=slug, mode=mode, **fields)
    tech = Specialist.objects.create(
        service=service, name="Tech Support", description="Fixes problems", position=0
    )
    billing = Specialist.objects.create(
        service=service, name="Billing", description="Invoices and payments", position=1
    )
    KnowledgeEntry.objects.create(
        service=service,
        specialist=tech,
        question="How do I reset my password?\nI forgot my password",
        answer="Click 'Forgot password' on the sign-in page and follow the link we email you.",
    )
    KnowledgeEntry.objects.create(
        service=service,
        specialist=billing,
        question="How do I get a refund?\nCan I have my money back?",
        answer="Refunds are available within 30 days from Settings → Billing → Request refund.",
    )
    KnowledgeEntry.objects.create(
        service=service,
        specialist=billing,
        question="Where can I download my invoices?\nI need an invoice",
        answer="Invoices are under Settings → Billing → Invoices, as PDF.",
    )
    return service


@pytest.fixture
def service(db) -> Service:
    return make_service()


def record_compilations(monkeypatch, compiler=None) -> list:
    """From now on, every compiler whose SQL Django compiles (SELECTs by default)."""
    from django.db.models.sql.compiler import SQLCompiler

    compiler = compiler or SQLCompiler
    compiled: list = []
    as_sql = compiler.as_sql
    monkeypatch.setattr(
        compiler, "as_sql", lambda self, *a, **k: compiled.append(self) or as_sql(self, *a, **k)
    )
    return compiled


def chatting_visitors(service: Service, n: int) -> list:
    """`n` visitors with an open conversation (their first message, seq 1, "Hi")."""
    from conversations import services

    visitors = [services.visitor_identify(service=service, token=None)[0] for _ in range(n)]
    for visitor in visitors:
        services.conversation_post_customer_message(visitor=visitor, text="Hi", client_id="0")
    return visitors


@pytest.fixture
def batch_sizes(monkeypatch) -> list[int]:
    """The size of every batch of customer messages stored from here on."""
    from conversations import services

    sizes: list[int] = []
    post = services.conversation_post_customer_messages

    def spy(posts, **kwargs):
        sizes.append(len(posts))
        return post(posts, **kwargs)

    monkeypatch.setattr(services, "conversation_post_customer_messages", spy)
    return sizes


def make_agent(django_user_model, username: str, first_name: str = ""):
    user = django_user_model.objects.create_user(
        username=username, password="pw-" + username, first_name=first_name
    )
    group, _ = Group.objects.get_or_create(name="Agents")
    user.groups.add(group)
    return user


@pytest.fixture
def agent(db, django_user_model):
    return make_agent(django_user_model, "alice", "Alice")


@pytest.fixture
def agent2(db, django_user_model):
    return make_agent(django_user_model, "bob", "Bob")


@pytest.fixture
def admin(db, django_user_model):
    user = django_user_model.objects.create_user(
        username="ada", password="pw-ada", first_name="Ada"
    )
    user.user_permissions.add(Permission.objects.get(codename="change_service"))
    user.is_staff = True
    user.save()
    return user


@pytest.fixture
def stranger(db, django_user_model):
    return django_user_model.objects.create_user(username="eve", password="pw-eve")


@pytest.fixture
def redis_layer(settings):
    """Switch the channel layer to production's (CHANNEL_LAYER) on the real Redis server."""
    yield from _redis_layer(settings, settings.CHANNEL_LAYER)


@pytest.fixture
def core_layer(settings):
    """Switch the channel layer to the core Redis layer on the real Redis server."""
    yield from _redis_layer(settings, "core")


@pytest.fixture
def pubsub_layer(settings):
    """Switch the channel layer to the pub/sub layer on the real Redis server."""
    yield from _redis_layer(settings, "pubsub")


def _redis_layer(settings, kind: str):
    import redis

    from handoff.settings import redis_channel_layer

    client = redis.Redis.from_url(settings.TEST_REDIS_URL)
    try:
        client.ping()
    except redis.ConnectionError:
        pytest.fail(f"Redis is not reachable at {settings.TEST_REDIS_URL}")
    client.flushdb()
    settings.CHANNEL_LAYERS = {
        "default": redis_channel_layer(settings.TEST_REDIS_URL, kind, "handoff-test")
    }
    channel_layers.backends = {}
    yield settings.CHANNEL_LAYERS
    channel_layers.backends = {}
    client.flushdb()
    client.close()


def _wait_for(predicate, *, timeout: float, what: str, proc=None) -> None:
    """Poll `predicate` until it holds; fail with the process output if it never does."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            out = proc.stdout.read() if getattr(proc.stdout, "read", None) else ""
            pytest.fail(f"{what} exited early with {proc.returncode}:\n{out}")
        if predicate():
            return
        time.sleep(0.1)
    pytest.fail(f"{what} did not come up within {timeout} s")


def _production_env(secret_key: str) -> dict[str, str]:
    """Production settings (DEBUG off) for a product process on plain HTTP over loopback."""
    import os

    env = {
        k: v
        for k, v in os.environ.items()
        if k not in {"DEBUG", "HANDOFF_ALLOW_DEBUG", "HANDOFF_SECURE", "STATIC_ROOT"}
    }
    return {
        **env,
        "DJANGO_SETTINGS_MODULE": "handoff.settings",
        "SECRET_KEY": secret_key,
        "DEBUG": "false",
        # Secure cookies and HSTS need HTTPS; these processes are reached over http://127.0.0.1.
        "HANDOFF_SECURE": "false",
        "ALLOWED_HOSTS": "127.0.0.1,localhost,testserver",
        "PYTHONUNBUFFERED": "1",
    }


_static_roots: dict[str, str] = {}


def collected_static(secret_key: str) -> str:
    """A STATIC_ROOT filled by `collectstatic` as the Procfile's `release` does, once a run.

    With DEBUG off the manifest storage serves only collected, hashed files, exactly as in
    production; the folder is removed when the test run ends.
    """
    import atexit
    import shutil
    import subprocess
    import sys
    import tempfile
    from pathlib import Path

    if "root" not in _static_roots:
        root = tempfile.mkdtemp(prefix="handoff-static-")
        atexit.register(shutil.rmtree, root, True)
        env = {**_production_env(secret_key), "STATIC_ROOT": root}
        env.pop("DATABASE_URL", None)
        env.pop("REDIS_URL", None)
        subprocess.run(
            [sys.executable, "manage.py", "collectstatic", "--noinput", "-v0"],
            cwd=Path(__file__).resolve().parent.parent,
            env=env,
            check=True,
            timeout=120,
        )
        _static_roots["root"] = root
    return _static_roots["root"]


def server_env(settings, *, redis: bool) -> dict[str, str]:
    """Environment for a product process sharing this test session's database."""
    db = settings.DATABASES["default"]
    env = {
        **_production_env(settings.SECRET_KEY),
        "DATABASE_URL": f"postgres://{db['USER']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
        "STATIC_ROOT": collected_static(settings.SECRET_KEY),
    }
    if redis:
        env["REDIS_URL"] = settings.TEST_REDIS_URL
        env["CELERY_BROKER_URL"] = settings.TEST_BROKER_URL
        env["CHANNEL_PREFIX"] = "handoff-test"
    return env


def use_broker(app, url: str, *, eager: bool) -> None:
    """Point this process's Celery app at another broker, dropping its pooled connections."""
    from kombu import pools

    app.conf.update(broker_url=url, task_always_eager=eager)
    # kombu keeps producer pools per broker address; drop them all so the next publish
    # (eager tasks publish too) opens a fresh one for the new address.
    pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


class WorkerProcess:
    """`celery -A handoff worker` as production runs it, logging to a file."""

    def __init__(self, env: dict[str, str], log_path, name: str = "test-worker"):
        self.env, self.log_path, self.name = env, log_path, name
        self.proc = None

    def start(self, app) -> None:
        import subprocess
        import sys

        log = open(self.log_path, "a")  # noqa: SIM115 - the child process owns it
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "handoff",
                "worker",
                "--pool=prefork",
                "--concurrency=2",
                "--loglevel=INFO",
                "--without-gossip",
                "--without-mingle",
                f"--hostname={self.name}@%h",
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        _wait_for(
            lambda: any(
                key.startswith(f"{self.name}@")
                for reply in app.control.ping(timeout=0.5)
                for key in reply
            ),
            timeout=30,
            what="celery worker",
            proc=self.proc,
        )

    def stop(self, sig=None) -> None:
        import signal
        import subprocess

        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig or signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def logs(self) -> str:
        return self.log_path.read_text() if self.log_path.exists() else ""


@pytest.fixture(scope="session")
def _worker_process(django_db_setup, django_db_blocker, tmp_path_factory):
    from django.conf import settings

    from handoff.celery import app

    worker = WorkerProcess(
        server_env(settings, redis=True), tmp_path_factory.mktemp("worker") / "worker.log"
    )
    saved = app.conf.broker_url, app.conf.task_always_eager
    use_broker(app, settings.TEST_BROKER_URL, eager=False)
    try:
        worker.start(app)
    finally:
        use_broker(app, saved[0], eager=saved[1])
    yield worker
    worker.stop()


@pytest.fixture
def celery_worker(_worker_process, settings):
    """A real Celery worker on the Redis broker, against the test database.

    The process lives for the session; this test's tasks go to its broker instead of
    running eagerly, and later tests run eagerly again.
    """
    from handoff.celery import app

    saved = app.conf.broker_url, app.conf.task_always_eager
    use_broker(app, settings.TEST_BROKER_URL, eager=False)
    if _worker_process.proc.poll() is not None:
        _worker_process.start(app)
    yield _worker_process
    use_broker(app, saved[0], eager=saved[1])


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@contextlib.contextmanager
def daphne_process(env: dict[str, str], *, frame_limit: int = 65536, output=None):
    """(base URL, process) of daphne run as the Procfile runs it, stopped on the way out."""
    import subprocess
    import sys

    port = _free_port()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "daphne",
            "-b",
            "127.0.0.1",
            "-p",
            str(port),
            "--websocket-max-message-size",
            str(frame_limit),
            "handoff.asgi:application",
        ],
        env=env,
        stdout=subprocess.PIPE if output is None else output,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        _wait_for(lambda: _port_open(port), timeout=30, what="daphne", proc=proc)
        yield f"http://127.0.0.1:{port}", proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="session")
def live_server_url(django_db_setup, django_db_blocker):
    """The product served by a real daphne process on the embedded layer and test database."""
    from django.conf import settings

    with daphne_process(server_env(settings, redis=False)) as (url, _):
        yield url


CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium driven by Playwright (never a downloaded browser).

    Module-scoped: Playwright's loop must be gone before the next module's async tests.
    """
    import os

    from playwright.sync_api import sync_playwright

    # Playwright's sync API keeps an event loop on the test thread; the ORM calls of browser
    # tests (and their database flushes) are plain blocking calls between browser steps.
    os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"
    try:
        with sync_playwright() as playwright:
            browser = playwright.chromium.launch(
                executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS
            )
            yield browser
            browser.close()
    finally:
        os.environ.pop("DJANGO_ALLOW_ASYNC_UNSAFE", None)


@pytest.fixture
def artifacts():
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "test-artifacts"
    path.mkdir(exist_ok=True)
    return path


@pytest.fixture
def transcript_reads(monkeypatch) -> list[int]:
    """The `after_seq` of every transcript read the widget sockets make."""
    reads: list[int] = []
    frames_since = ChatConsumer._frames_since

    def counted(self, after_seq):
        reads.append(after_seq)
        return frames_since(self, after_seq)

    monkeypatch.setattr(ChatConsumer, "_frames_since", counted)
    return reads
