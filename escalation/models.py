"""Attention flags and the escalation policy each service configures."""

from __future__ import annotations

from django.db import models
from django.db.models import Q

from conversations.models import Conversation, Message, Service


class Reason(models.TextChoices):
    THUMBS_DOWN = "thumbs_down", "Thumbs Down"
    NON_ANSWER = "non_answer", "Non-Answer"
    NEGATIVE_SENTIMENT = "negative_sentiment", "Negative Feedback"
    HELP_REQUESTED = "help_requested", "Help Requested"
    KEYWORD = "keyword", "Keyword"
    REPEATED_FAILURES = "repeated_failures", "Repeated Failures"
    AWAITING_HUMAN = "awaiting_human", "Waiting"


class Action(models.TextChoices):
    FLAG = "flag", "Flag only"
    HANDOFF = "handoff", "Flag and hand off to a human"


class EscalationPolicy(models.Model):
    """When a service's conversations get flagged, and which flags also hand off."""

    service = models.OneToOneField(
        Service, on_delete=models.CASCADE, related_name="escalation_policy"
    )
    keywords = models.TextField(
        blank=True,
        help_text="Phrases that flag a customer message, one per line "
        "(whole words, case-insensitive), e.g. 'cancel my account'.",
    )
    keyword_action = models.CharField(max_length=10, choices=Action.choices, default=Action.HANDOFF)
    sentiment_threshold = models.FloatField(
        default=-0.5,
        help_text="VADER compound score (-1 … 1); at or below it the customer is upset.",
    )
    sentiment_window = models.PositiveSmallIntegerField(
        default=2, help_text="How many of the customer's latest messages are averaged."
    )
    sentiment_action = models.CharField(
        max_length=10, choices=Action.choices, default=Action.HANDOFF
    )
    non_answer_action = models.CharField(max_length=10, choices=Action.choices, default=Action.FLAG)
    repeated_failures_limit = models.PositiveSmallIntegerField(
        default=2, help_text="Consecutive non-answers before 'Repeated Failures'."
    )
    repeated_failures_action = models.CharField(
        max_length=10, choices=Action.choices, default=Action.HANDOFF
    )
    thumbs_down_action = models.CharField(
        max_length=10, choices=Action.choices, default=Action.FLAG
    )

    class Meta:
        verbose_name_plural = "escalation policies"

    def __str__(self) -> str:
        return f"Escalation policy of {self.service}"

    @property
    def keyword_list(self) -> list[str]:
        return [line.strip() for line in self.keywords.splitlines() if line.strip()]

    def hands_off(self, reason: str) -> bool:
        """An explicit request for a human always hands off; the rest as configured."""
        if reason == Reason.HELP_REQUESTED:
            return True
        action = {
            Reason.KEYWORD: self.keyword_action,
            Reason.NEGATIVE_SENTIMENT: self.sentiment_action,
            Reason.NON_ANSWER: self.non_answer_action,
            Reason.REPEATED_FAILURES: self.repeated_failures_action,
            Reason.THUMBS_DOWN: self.thumbs_down_action,
        }.get(reason, Action.FLAG)
        return action == Action.HANDOFF


class Flag(models.Model):
    """One reason a conversation needs a human: unacknowledged until someone takes it over."""

    conversation = models.ForeignKey(Conversation, on_delete=models.CASCADE, related_name="flags")
    reason = models.CharField(max_length=24, choices=Reason.choices)
    message = models.ForeignKey(
        Message, on_delete=models.CASCADE, null=True, blank=True, related_name="flags"
    )
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            # A detector that runs twice on one message raises one flag.
            models.UniqueConstraint(
                fields=["conversation", "reason", "message"],
                condition=Q(message__isnull=False),
                name="flag_once_per_message",
            ),
        ]

    def __str__(self) -> str:
        return f"{self.get_reason_display()} on {self.conversation}"

    @property
    def acknowledged(self) -> bool:
        seen = self.conversation.attention_acknowledged_at
        return seen is not None and self.created_at <= seen
