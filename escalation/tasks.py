"""Escalation's Celery tasks: ids in, idempotent, retrying only transient failures."""

from __future__ import annotations

from celery import shared_task
from django.db import OperationalError

from escalation import services

TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_jitter": True,
    "max_retries": 6,
    "acks_late": True,
}


@shared_task(**RETRY)
def score_sentiment(message_id: int) -> bool:
    """Score a customer message and raise `negative_sentiment` if the mood turned."""
    message = services.message_with_policy(message_id)
    return message is not None and services.message_score_sentiment(message=message) is not None


@shared_task(**RETRY)
def check_answer(message_id: int) -> int:
    """Classify an AI reply; raise `non_answer` and `repeated_failures` as they apply."""
    message = services.message_with_policy(message_id)
    return len(services.message_check_answer(message=message)) if message else 0


@shared_task(**RETRY)
def score_unscored_messages() -> dict[str, int]:
    """Catch up on messages whose scoring task was lost (run by beat)."""
    return services.messages_unscored()
