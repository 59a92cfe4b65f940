"""The Celery application: broker on Redis in production, eager in the embedded default."""

from __future__ import annotations

import logging
import os

from celery import Celery, signals

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "handoff.settings")

logger = logging.getLogger(__name__)


def _survive_broker_loss_with_tasks_in_flight() -> None:
    """Keep the worker alive when the Redis broker goes away while tasks are running.

    On a lost connection Celery 5.7 collects the old connection, which detaches its channels
    from their transport, and later uses those channels again: to put the unacknowledged
    tasks back, and to acknowledge tasks that finish meanwhile. Each use raises
    AttributeError, which Celery treats as unrecoverable, and the worker exits. Here a
    detached channel raises a connection error instead, which Celery already handles
    ("Couldn't ack"), and the put-back is skipped: the tasks are still listed as
    unacknowledged in Redis, which hands them out again after the visibility timeout.
    """
    from kombu.transport import redis as kombu_redis
    from redis.exceptions import ConnectionError as RedisConnectionError

    channel, qos = kombu_redis.Channel, kombu_redis.QoS
    if getattr(channel, "_handoff_guarded", False):
        return
    connparams, restore_unacked = channel._connparams, qos.restore_unacked

    def detached(chan) -> bool:
        transport = chan.connection
        return transport is None or transport.client is None

    def guarded_connparams(self, asynchronous=False):
        if detached(self):
            raise RedisConnectionError("this broker connection was already closed")
        return connparams(self, asynchronous=asynchronous)

    def guarded_restore_unacked(self, client=None):
        if client is None and detached(self.channel):
            logger.warning(
                "broker connection lost: %d unacknowledged task(s) come back after the "
                "visibility timeout",
                len(self._delivered),
            )
            self._delivered.clear()
            return None
        return restore_unacked(self, client)

    channel._connparams = guarded_connparams
    qos.restore_unacked = guarded_restore_unacked
    channel._handoff_guarded = True


_survive_broker_loss_with_tasks_in_flight()


@signals.worker_init.connect
def _settle_collector(**kwargs) -> None:
    """Before the pool forks: its processes share what start-up made, frozen (handoff/memory.py)."""
    from handoff.memory import settle_collector

    settle_collector()


@signals.worker_process_shutdown.connect
def _send_what_is_queued(**kwargs) -> None:
    from dashboard.broadcast import outbox

    outbox.drain()


@signals.task_prerun.connect
def _check_connection(task=None, **kwargs) -> None:
    """Keep the worker process's connection across tasks, replacing it when broken or old.

    Celery's Django fixup would close it after every task (`CELERY_DB_REUSE_MAX` stops that),
    so each task would pay for a new connection and a cold PostgreSQL backend.
    """
    if task is None or getattr(task.request, "is_eager", False):
        return  # in-process: the caller's connection and transaction, not the worker's
    from django.db import close_old_connections

    close_old_connections()


app = Celery("handoff")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
