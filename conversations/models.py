"""Services, specialists, knowledge, visitors, conversations, messages and their audit trail."""

from __future__ import annotations

import uuid
from urllib.parse import urlsplit

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.validators import MaxLengthValidator
from django.db import models
from django.db.models import Q

MAX_MESSAGE_LENGTH = 4000


class Mode(models.TextChoices):
    AI_ONLY = "ai_only", "AI Only"
    HUMAN_SUPPORTED = "human_supported", "Human-Supported AI"
    HUMAN_ONLY = "human_only", "Human Only"


def validate_origins(value: str) -> None:
    for origin in parse_origins(value):
        parts = urlsplit(origin)
        if parts.scheme not in {"http", "https"} or not parts.netloc or parts.path not in {"", "/"}:
            raise ValidationError(
                f"{origin!r} is not an origin: use scheme://host[:port], e.g. https://shop.example"
            )


def parse_origins(value: str) -> list[str]:
    return [
        item.strip().rstrip("/").lower()
        for item in value.replace(",", "\n").splitlines()
        if item.strip()
    ]


class Service(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=60, unique=True)
    mode = models.CharField(max_length=20, choices=Mode.choices, default=Mode.HUMAN_SUPPORTED)
    greeting = models.CharField(
        max_length=500,
        blank=True,
        default="Hi! I'm the virtual assistant. How can I help you today?",
        help_text="First AI message shown in the widget (not in Human Only mode).",
    )
    allowed_origins = models.TextField(
        blank=True,
        validators=[validate_origins],
        help_text="Websites that may embed the widget, one origin per line "
        "(https://shop.example). Empty: this host only.",
    )
    handoff_wait_seconds = models.PositiveIntegerField(
        default=300,
        help_text="How long a handed-off conversation waits for a human before the AI "
        "resumes. 0 waits forever.",
    )
    created_at = models.DateTimeField(auto_now_add=True)
    # Changes whenever any specialist or knowledge entry does (conversations.selectors), so
    # processes can keep what the AI needs in memory and know when to read it again.
    knowledge_version = models.UUIDField(default=uuid.uuid4, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @property
    def origin_list(self) -> list[str]:
        return parse_origins(self.allowed_origins)

    @property
    def ai_answers(self) -> bool:
        return self.mode != Mode.HUMAN_ONLY

    @property
    def humans_available(self) -> bool:
        return self.mode != Mode.AI_ONLY


class Specialist(models.Model):
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="specialists")
    name = models.CharField(max_length=100)
    description = models.CharField(max_length=300, blank=True)
    instructions = models.TextField(
        blank=True, help_text="System prompt for language-model backends."
    )
    position = models.PositiveSmallIntegerField(
        default=0, help_text="Lower comes first; the first is the default specialist."
    )

    class Meta:
        ordering = ["service", "position", "name"]
        constraints = [
            models.UniqueConstraint(fields=["service", "name"], name="specialist_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


class KnowledgeEntry(models.Model):
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="knowledge")
    specialist = models.ForeignKey(
        Specialist, on_delete=models.SET_NULL, null=True, blank=True, related_name="knowledge"
    )
    question = models.TextField(help_text="One or more phrasings of the question, one per line.")
    answer = models.TextField()
    is_active = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["service", "specialist", "id"]
        verbose_name_plural = "knowledge entries"

    def __str__(self) -> str:
        return self.question.splitlines()[0][:80] if self.question else f"Entry {self.pk}"

    def clean(self) -> None:
        if self.specialist_id and self.specialist.service_id != self.service_id:
            raise ValidationError({"specialist": "Choose a specialist of the same service."})


class Visitor(models.Model):
    """A customer's browser, known by the signed token its widget keeps."""

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="visitors")
    name = models.CharField(max_length=200, blank=True)
    email = models.EmailField(blank=True)
    profile = models.JSONField(default=dict, blank=True)
    city = models.CharField(max_length=100, blank=True)
    region = models.CharField(max_length=100, blank=True)
    country = models.CharField(max_length=100, blank=True)
    timezone = models.CharField(max_length=64, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(auto_now=True)

    def __str__(self) -> str:
        return self.name or self.email or f"Visitor {str(self.id)[:8]}"

    @property
    def location(self) -> dict[str, str]:
        return {"city": self.city, "region": self.region, "country": self.country}


class Status(models.TextChoices):
    OPEN = "open", "Open"
    CLOSED = "closed", "Closed"


class Conversation(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    service = models.ForeignKey(Service, on_delete=models.CASCADE, related_name="conversations")
    visitor = models.ForeignKey(Visitor, on_delete=models.CASCADE, related_name="conversations")
    specialist = models.ForeignKey(
        Specialist, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.OPEN)
    ai_paused = models.BooleanField(default=False)
    claimed_by = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        on_delete=models.SET_NULL,
        null=True,
        blank=True,
        related_name="claimed_conversations",
    )
    claimed_at = models.DateTimeField(null=True, blank=True)
    # The last take-over: attention raised before it has been seen by a human.
    attention_acknowledged_at = models.DateTimeField(null=True, blank=True)
    # Set while the AI is paused and nobody holds the conversation (the handoff queue).
    waiting_since = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(auto_now_add=True)
    last_activity_at = models.DateTimeField(auto_now_add=True)
    closed_at = models.DateTimeField(null=True, blank=True)
    opening_question = models.CharField(max_length=MAX_MESSAGE_LENGTH, blank=True)
    # Also the last message's seq: messages are numbered 1..message_count.
    message_count = models.PositiveIntegerField(default=0)
    version = models.PositiveIntegerField(default=1)
    # Bumped whenever the AI is paused, or its pending reply was answered another way: a
    # reply generated under an older epoch is dropped, so the AI never talks over a human
    # nor answers the backlog after a resume.
    ai_epoch = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-last_activity_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["visitor", "service"],
                condition=Q(status="open"),
                name="one_open_conversation_per_visitor",
            ),
        ]
        indexes = [
            models.Index(fields=["status", "service"], name="conversation_status_service"),
            models.Index(fields=["status", "last_activity_at"], name="conversation_idle"),
        ]

    def __str__(self) -> str:
        return f"{self.service} · {str(self.id)[:8]}"

    @property
    def is_open(self) -> bool:
        return self.status == Status.OPEN


class Role(models.TextChoices):
    USER = "user", "Customer"
    AI = "ai", "AI"
    HUMAN = "human", "Agent"
    SYSTEM = "system", "System"


class Feedback(models.TextChoices):
    UP = "up", "Thumbs up"
    DOWN = "down", "Thumbs down"


class Message(models.Model):
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, related_name="messages"
    )
    seq = models.PositiveIntegerField()
    role = models.CharField(max_length=10, choices=Role.choices)
    text = models.TextField(validators=[MaxLengthValidator(MAX_MESSAGE_LENGTH)])
    author = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    specialist = models.ForeignKey(
        Specialist, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    created_at = models.DateTimeField(auto_now_add=True)
    client_id = models.CharField(max_length=64, null=True, blank=True)
    feedback = models.CharField(max_length=4, choices=Feedback.choices, null=True, blank=True)
    sentiment = models.FloatField(null=True, blank=True)
    non_answer = models.BooleanField(null=True, blank=True)
    # The responder's own confidence and reasoning for `ai` messages.
    confidence = models.FloatField(null=True, blank=True)
    evidence = models.JSONField(default=dict, blank=True)

    class Meta:
        # By the column, not the conversation: "conversation" would sort by the
        # conversation's own ordering, joining its table into every message query.
        ordering = ["conversation_id", "seq"]
        constraints = [
            models.UniqueConstraint(fields=["conversation", "seq"], name="message_unique_seq"),
            models.UniqueConstraint(
                fields=["conversation", "client_id"],
                condition=Q(client_id__isnull=False),
                name="message_unique_client_id",
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.seq} {self.role}: {self.text[:60]}"


class AuditAction(models.TextChoices):
    CONVERSATION_STARTED = "conversation_started", "Conversation started"
    MESSAGE_POSTED = "message_posted", "Message posted"
    AI_REPLY_DROPPED = "ai_reply_dropped", "AI reply dropped"
    FEEDBACK = "feedback", "Feedback given"
    HELP_REQUESTED = "help_requested", "Human requested"
    HANDED_OFF = "handed_off", "Handed off to a human"
    TAKEN_OVER = "taken_over", "Taken over"
    AI_RESUMED = "ai_resumed", "AI resumed"
    RELEASED = "released", "Released"
    CLOSED = "closed", "Closed"
    WAIT_EXPIRED = "wait_expired", "Wait for a human expired"
    SPECIALIST_CHANGED = "specialist_changed", "Specialist changed"
    MODE_CHANGED = "mode_changed", "Service mode changed"


class AuditEvent(models.Model):
    """Who did what, when, to which conversation: one row per state change."""

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    action = models.CharField(max_length=32, choices=AuditAction.choices)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.SET_NULL, null=True, blank=True, related_name="+"
    )
    # "agent", "admin", "visitor", "ai" or "system": who acted when there is no user.
    actor_kind = models.CharField(max_length=16)
    service = models.ForeignKey(Service, on_delete=models.CASCADE, null=True, related_name="+")
    conversation = models.ForeignKey(
        Conversation, on_delete=models.CASCADE, null=True, blank=True, related_name="audit_events"
    )
    detail = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.get_action_display()} by {self.actor or self.actor_kind}"
