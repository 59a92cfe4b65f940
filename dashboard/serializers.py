"""The REST API's request validation and the shapes its responses document (SPEC §5, §6).

Cards and messages are built by `dashboard.cards`, the one owner of that wire format; the
serializers named after them here only describe it to the OpenAPI schema.
"""

from __future__ import annotations

from datetime import datetime

from rest_framework import serializers

from conversations.models import Mode, Status, Visitor
from escalation.models import Flag, Reason

MODE_CHOICES_TEXT = ", ".join(Mode.values)


class IsoDateTimeField(serializers.DateTimeField):
    """ISO-8601 with a numeric offset, exactly as cards and messages write it."""

    def to_representation(self, value: datetime | None) -> str | None:
        return value.isoformat() if value else None


# --- Requests ------------------------------------------------------------------------------


class ModeSerializer(serializers.Serializer):
    mode = serializers.ChoiceField(
        choices=Mode.choices,
        error_messages={
            "invalid_choice": f'"{{input}}" is not a mode; use one of: {MODE_CHOICES_TEXT}.'
        },
    )


class ConversationFilterSerializer(serializers.Serializer):
    """The list's query string; validated from a plain dict, so absent means absent."""

    status = serializers.ChoiceField(choices=Status.choices, default=Status.OPEN)
    service = serializers.SlugField(required=False)
    needs_attention = serializers.BooleanField(required=False)


class AfterSeqSerializer(serializers.Serializer):
    after_seq = serializers.IntegerField(min_value=0, default=0)


class SendMessageSerializer(serializers.Serializer):
    # Blank and long texts are the state machine's to refuse (`empty` 400, `too_long` 413).
    text = serializers.CharField(allow_blank=True, trim_whitespace=False)


# --- Responses -----------------------------------------------------------------------------


class ErrorSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Machine-readable error code, e.g. `already_claimed`.")
    detail = serializers.CharField(help_text="Human-readable explanation.")
    errors = serializers.DictField(
        required=False, help_text="Per-field messages (only for `invalid`)."
    )
    claimed_by = serializers.CharField(
        required=False, help_text="Who holds the conversation (only for `already_claimed`)."
    )


class ServiceSerializer(serializers.Serializer):
    slug = serializers.SlugField()
    name = serializers.CharField()
    mode = serializers.ChoiceField(choices=Mode.choices)
    mode_label = serializers.CharField(source="get_mode_display")
    conversations_open = serializers.IntegerField()


class LocationSerializer(serializers.Serializer):
    city = serializers.CharField(allow_blank=True)
    region = serializers.CharField(allow_blank=True)
    country = serializers.CharField(allow_blank=True)


class ClaimedBySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    name = serializers.CharField()


class CardSerializer(serializers.Serializer):
    """CARD (SPEC §5): what the console shows for one conversation."""

    id = serializers.UUIDField()
    service = serializers.SlugField()
    version = serializers.IntegerField()
    status = serializers.ChoiceField(choices=["ai_active", "paused"])
    specialist = serializers.CharField(allow_null=True)
    location = LocationSerializer()
    opening_question = serializers.CharField(allow_blank=True)
    started_at = serializers.DateTimeField()
    last_activity_at = serializers.DateTimeField()
    message_count = serializers.IntegerField()
    claimed_by = ClaimedBySerializer(allow_null=True)
    needs_attention = serializers.BooleanField()
    reasons = serializers.ListField(child=serializers.ChoiceField(choices=Reason.choices))
    waiting_since = serializers.DateTimeField(allow_null=True)


class CardPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    next = serializers.URLField(allow_null=True)
    previous = serializers.URLField(allow_null=True)
    results = CardSerializer(many=True)


class VisitorSerializer(serializers.ModelSerializer):
    location = LocationSerializer(read_only=True)
    profile = serializers.JSONField(read_only=True)

    class Meta:
        model = Visitor
        fields = ["name", "email", "profile", "location", "timezone"]
        read_only_fields = fields


class FlagSerializer(serializers.ModelSerializer):
    label = serializers.CharField(source="get_reason_display", read_only=True)
    message_seq = serializers.IntegerField(source="message.seq", allow_null=True, read_only=True)
    evidence = serializers.JSONField(read_only=True)
    created_at = IsoDateTimeField(read_only=True)
    acknowledged = serializers.BooleanField(read_only=True)

    class Meta:
        model = Flag
        fields = ["id", "reason", "label", "message_seq", "evidence", "created_at", "acknowledged"]
        read_only_fields = fields


class ConversationDetailSerializer(CardSerializer):
    """A card with the visitor, every flag, and the service's mode."""

    visitor = VisitorSerializer()
    flags = FlagSerializer(many=True)
    mode = serializers.ChoiceField(choices=Mode.choices)


class MessageSerializer(serializers.Serializer):
    """MESSAGE: a transcript message as consoles see it."""

    seq = serializers.IntegerField()
    role = serializers.ChoiceField(choices=["user", "ai", "human", "system"])
    text = serializers.CharField()
    created_at = serializers.DateTimeField()
    client_id = serializers.CharField(allow_null=True)
    author = serializers.CharField(allow_null=True)
    specialist = serializers.CharField(allow_null=True)
    feedback = serializers.ChoiceField(choices=["up", "down"], allow_null=True)
    sentiment = serializers.FloatField(allow_null=True)
    non_answer = serializers.BooleanField(allow_null=True)


class TranscriptSerializer(serializers.Serializer):
    results = MessageSerializer(many=True)
    next = serializers.URLField(
        allow_null=True, help_text="The next page (`after_seq` cursor), or null at the end."
    )


class CountersSerializer(serializers.Serializer):
    active = serializers.IntegerField()
    needs_attention = serializers.IntegerField()
    paused = serializers.IntegerField()
