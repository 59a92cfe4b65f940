"""The periodic schedule, run inside the web process when there is no `celery beat`.

The embedded default has no broker and no beat; this keeps idle conversations closing and
handoff waits expiring there. It runs on the server's event loop and calls each task in a
worker thread, so broadcasts reach the in-memory channel layer from the right loop.
"""

from __future__ import annotations

import asyncio
import logging

from asgiref.sync import sync_to_async
from django.conf import settings

logger = logging.getLogger(__name__)

_task: asyncio.Task | None = None


def ensure_started() -> None:
    """Start the schedule on the running loop once per process, if this setup wants it."""
    global _task
    if _task is not None or not getattr(settings, "HANDOFF_INPROCESS_BEAT", False):
        return
    _task = asyncio.get_running_loop().create_task(_run())


def scheduled() -> list[tuple]:
    """Each periodic task with its interval in seconds, its module imported first.

    A Celery worker imports every app's `tasks` module when it starts; a web process has
    imported only those its code touched, and the others would not be registered.
    """
    from celery import current_app

    current_app.loader.import_default_modules()
    return [
        (current_app.tasks[entry["task"]], float(entry["schedule"]))
        for entry in settings.CELERY_BEAT_SCHEDULE.values()
    ]


async def _run() -> None:
    entries = scheduled()
    tick = min(interval for _, interval in entries)
    elapsed = 0.0
    while True:
        await asyncio.sleep(tick)
        elapsed += tick
        for task, interval in entries:
            if elapsed % interval < tick:
                try:
                    await sync_to_async(task.apply, thread_sensitive=True)()
                except Exception:
                    logger.exception("periodic task %s failed", task.name)
