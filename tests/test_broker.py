"""Tasks enqueued from the publisher thread: the caller never waits for the broker."""

from __future__ import annotations

import logging
import threading
from types import SimpleNamespace

import pytest

from conversations import tasks
from handoff.broker import Publisher


class Broker:
    """A task whose `apply_async` records its arguments, and can be made to hang or fail."""

    name = "conversations.tasks.fake"

    def __init__(self, eager: bool = False) -> None:
        self.app = SimpleNamespace(conf=SimpleNamespace(task_always_eager=eager))
        self.applied: list[tuple] = []
        self.threads: set[str] = set()
        self.open = threading.Event()
        self.open.set()
        self.failing: set[tuple] = set()

    def apply_async(self, args: tuple) -> None:
        self.open.wait()
        self.threads.add(threading.current_thread().name)
        if args in self.failing:
            raise ConnectionError("broker down")
        self.applied.append(args)


@pytest.fixture
def publisher(monkeypatch):
    publisher = Publisher()
    monkeypatch.setattr(tasks, "publisher", publisher)
    return publisher


def test_the_caller_goes_on_while_the_broker_is_slow_and_tasks_go_out_in_order(publisher):
    broker = Broker()
    broker.open.clear()  # the broker does not answer yet

    for n in range(5):
        tasks.dispatch_soon(broker, "conversation", n, 0)

    assert broker.applied == []  # all five handed over without waiting
    broker.open.set()
    assert publisher.drain()
    assert broker.applied == [("conversation", n, 0) for n in range(5)]
    assert broker.threads == {"task-publisher"}


def test_a_task_the_broker_refuses_is_logged_and_the_next_still_goes(publisher, caplog):
    broker = Broker()
    broker.failing.add(("lost", 1))

    with caplog.at_level(logging.ERROR, logger="handoff.broker"):
        tasks.dispatch_soon(broker, "lost", 1)
        tasks.dispatch_soon(broker, "kept", 2)
        assert publisher.drain()

    assert broker.applied == [("kept", 2)]
    assert "could not enqueue conversations.tasks.fake('lost', 1)" in caplog.text


def test_a_drain_that_times_out_says_so(publisher, caplog):
    broker = Broker()
    broker.open.clear()
    tasks.dispatch_soon(broker, "stuck", 1)

    with caplog.at_level(logging.WARNING, logger="handoff.broker"):
        assert publisher.drain(timeout=0.05) is False
    assert "not yet enqueued" in caplog.text
    broker.open.set()
    assert publisher.drain()
    assert broker.applied == [("stuck", 1)]


def test_in_process_tasks_run_as_before_without_the_thread(publisher):
    broker = Broker(eager=True)

    tasks.dispatch_soon(broker, "inline", 1)

    assert broker.applied == [("inline", 1)]
    assert broker.threads == {threading.current_thread().name}
    assert publisher.thread is None
