"""Enqueuing Celery tasks without waiting for the broker.

A web process stores customer messages one batch at a time (`handoff.db.GroupCommit`), and
the batch's commit hooks enqueue the worker's turn: Celery's publish (kombu, then a Redis
round trip) held the next batch for a seventh of its time under load (bench/README.md).
Here each process has one publisher thread: callers hand it a task and go on, and it
enqueues them in the order they came, over the connection Celery keeps for that thread.

A task still waiting in the thread when the process is killed outright is lost, as it would
be if the process died just before a publish of its own; the beat's sweep for unanswered
customer messages (`answer_unanswered_messages`) dispatches their turns again. A clean exit
enqueues what is waiting first.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading

logger = logging.getLogger(__name__)

DRAIN_SECONDS = 5.0


class Publisher:
    def __init__(self) -> None:
        self._reset()
        # A forked child (a Celery pool process) inherits the state but not the thread.
        os.register_at_fork(after_in_child=self._reset)

    def _reset(self) -> None:
        self.lock = threading.Lock()
        self.queue: queue.SimpleQueue = queue.SimpleQueue()
        self.thread: threading.Thread | None = None

    def apply_async(self, task, args: tuple) -> None:
        """Queue `task(*args)` for the broker; a broker that is down is logged, never raised."""
        with self.lock:
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="task-publisher", daemon=True)
                self.thread.start()
        self.queue.put((task, args))

    def _run(self) -> None:
        while True:
            task, args = self.queue.get()
            if task is None:  # a drain's marker: everything before it went out
                args.set()
                continue
            try:
                task.apply_async(args=args)
            except Exception:
                logger.exception("could not enqueue %s%r", task.name, args)

    def drain(self, timeout: float = DRAIN_SECONDS) -> bool:
        """Wait until everything queued so far was handed to the broker (at exit)."""
        if self.thread is None or not self.thread.is_alive():
            return True
        done = threading.Event()
        self.queue.put((None, done))
        if not done.wait(timeout):
            logger.warning("exiting with task(s) not yet enqueued")
            return False
        return True


publisher = Publisher()
atexit.register(publisher.drain)
