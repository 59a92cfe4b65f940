"""The production shape on loopback: two daphne processes, a Celery worker and beat.

They run the Procfile's own commands with production settings (DEBUG off, REDIS_URL set)
against this test run's PostgreSQL database and two private `redis-server` processes:
one for the channel layer and cache, one for the Celery broker. Private servers, because
the tests kill and restart them, and the machine's shared Redis serves other suites.
The processes start once per module; before each test anything a previous test killed is
started again.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from celery import Celery

from tests.conftest import server_env
from tests.integration.fake_ai import FakeAI
from tests.integration.processes import (
    Daphne,
    Process,
    ProcessGroup,
    RedisServer,
    procfile_command,
    wait_until,
)

# Scoring sweeps every 2 s here (30 s in production) so late flags arrive quickly.
SWEEP_SECONDS = 2
# A task of a SIGKILLed worker comes back after this (an hour in production).
VISIBILITY_TIMEOUT = 5


@dataclass
class Stack:
    """The running production processes and how to reach them."""

    layer: RedisServer
    broker: RedisServer
    web1: Daphne
    web2: Daphne
    worker: Process
    beat: Process
    control: Celery
    log_dir: Path

    @property
    def webs(self) -> list[Daphne]:
        return [self.web1, self.web2]

    def healthz(self, web: Daphne, timeout: float = 10) -> httpx.Response:
        return httpx.get(f"{web.http}/healthz", timeout=timeout)

    def web_healthy(self, web: Daphne) -> bool:
        if not web.ready():
            return False
        try:
            return self.healthz(web, timeout=5).status_code == 200
        except httpx.HTTPError:
            return False

    def worker_ready(self) -> bool:
        self.worker.check_running()
        try:
            return bool(self.control.control.ping(timeout=0.5))
        except Exception:  # the broker may still be coming back
            return False

    def start_worker(self) -> None:
        self.worker.start()
        wait_until(self.worker_ready, timeout=30, what="the Celery worker")

    def start_web(self, web: Daphne) -> None:
        web.start()
        wait_until(lambda: self.web_healthy(web), timeout=30, what=f"{web.name}")

    def ensure_running(self) -> None:
        """Start again whatever a previous test killed, and wait until it serves."""
        for server in (self.layer, self.broker):
            if not server.running():
                server.start()
        for web in self.webs:
            if not web.running():
                web.start()
        if not self.beat.running():
            self.beat.start()
        if not self.worker.running():
            self.worker.start()
        for web in self.webs:
            wait_until(lambda web=web: self.web_healthy(web), timeout=30, what=web.name)
        wait_until(self.worker_ready, timeout=30, what="the Celery worker")

    def logs(self) -> str:
        processes = [self.web1, self.web2, self.worker, self.beat]
        return "\n\n".join(f"===== {p.name} =====\n{p.tail(40)}" for p in processes)


@pytest.fixture(scope="module")
def fake_ai() -> Iterator[FakeAI]:
    server = FakeAI().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(django_db_setup, fake_ai, tmp_path_factory) -> Iterator[Stack]:
    from django.conf import settings

    log_dir = tmp_path_factory.mktemp("production")
    group = ProcessGroup()
    control = None
    try:
        layer = group.add(RedisServer("redis-layer", log_dir)).start()
        broker = group.add(RedisServer("redis-broker", log_dir)).start()
        env = {
            **server_env(settings, redis=True),
            "REDIS_URL": layer.url(0),
            "CELERY_BROKER_URL": broker.url(1),
            "CHANNEL_PREFIX": "handoff-it",
            "HANDOFF_AI_BACKEND": "openai",
            "AI_BASE_URL": fake_ai.url,
            "AI_API_KEY": "sk-integration-test",
            "AI_MODEL": "fake-model",
            "AI_TIMEOUT_SECONDS": "15",
            # Every test client connects from 127.0.0.1.
            "WIDGET_MAX_SOCKETS_PER_IP": "100000",
            "WORKER_CONCURRENCY": "2",
            "HANDOFF_SWEEP_SECONDS": str(SWEEP_SECONDS),
            "CELERY_VISIBILITY_TIMEOUT": str(VISIBILITY_TIMEOUT),
        }
        beat_command = procfile_command("beat")
        assert "--schedule=/tmp/celerybeat-schedule" in beat_command, beat_command
        beat_command = beat_command.replace(
            "/tmp/celerybeat-schedule", str(log_dir / "celerybeat-schedule")
        )
        # Not the current app: the test process's own tasks must keep their broker.
        control = Celery("integration-control", broker=broker.url(1), set_as_current=False)
        control.conf.broker_connection_retry_on_startup = False
        control.conf.broker_transport_options = {"socket_timeout": 2, "socket_connect_timeout": 1}
        stack = Stack(
            layer=layer,
            broker=broker,
            web1=group.add(Daphne("web1", env, log_dir)),
            web2=group.add(Daphne("web2", env, log_dir)),
            worker=group.add(Process("worker", procfile_command("worker"), env, log_dir)),
            beat=group.add(Process("beat", beat_command, env, log_dir)),
            control=control,
            log_dir=log_dir,
        )
        stack.ensure_running()
        yield stack
    finally:
        group.close()
        if control is not None:
            with contextlib.suppress(Exception):
                control.close()


@pytest.fixture
def production(stack: Stack, fake_ai: FakeAI) -> Iterator[Stack]:
    """The running stack, with everything up and the fake AI answering at once."""
    stack.ensure_running()
    fake_ai.release_all()
    yield stack
    fake_ai.release_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    report = yield
    # A failing integration test shows what the processes said.
    if report.failed and "stack" in getattr(item, "funcargs", {}):
        report.sections.append(("production processes", item.funcargs["stack"].logs()))
    return report
