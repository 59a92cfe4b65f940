"""The Django admin: every page renders, history is read-only, modes go through the services."""

from __future__ import annotations

import pytest
from django.urls import reverse

from conversations import services
from conversations.models import (
    AuditEvent,
    Conversation,
    KnowledgeEntry,
    Mode,
    Service,
    Specialist,
    Visitor,
)

pytestmark = pytest.mark.django_db

HOSTILE = '<script>alert("owned")</script><img src=x onerror=alert(1)>'


@pytest.fixture
def superuser_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "pw")
    client.force_login(user)
    return client


@pytest.fixture
def conversation(service, django_capture_on_commit_callbacks):
    visitor, _ = services.visitor_identify(service=service, token=None, profile={"name": HOSTILE})
    with django_capture_on_commit_callbacks(execute=True):
        posted = services.conversation_post_customer_message(
            visitor=visitor, text=HOSTILE, client_id="x"
        )
    return posted.message.conversation


def test_every_changelist_and_change_page_renders(superuser_client, conversation):
    for model in (Service, Specialist, KnowledgeEntry, Conversation, Visitor, AuditEvent):
        opts = model._meta
        changelist = reverse(f"admin:{opts.app_label}_{opts.model_name}_changelist")
        assert superuser_client.get(changelist).status_code == 200, changelist
        obj = model.objects.first()
        change = reverse(f"admin:{opts.app_label}_{opts.model_name}_change", args=[obj.pk])
        assert superuser_client.get(change).status_code == 200, change


def test_customer_text_is_escaped_in_the_admin(superuser_client, conversation):
    for url in (
        reverse("admin:conversations_conversation_change", args=[conversation.pk]),
        reverse("admin:conversations_conversation_changelist"),
        reverse("admin:conversations_visitor_changelist"),
    ):
        body = superuser_client.get(url).content.decode()
        assert "<script>alert(" not in body
        assert "<img src=x" not in body
        assert "&lt;script&gt;" in body


def test_history_cannot_be_edited_in_the_admin(superuser_client, conversation):
    url = reverse("admin:conversations_conversation_change", args=[conversation.pk])
    superuser_client.post(url, {"status": "closed"})
    conversation.refresh_from_db()
    assert conversation.status == "open"
    assert superuser_client.get(reverse("admin:conversations_auditevent_add")).status_code == 403


def test_a_mode_changed_in_the_admin_is_applied_to_open_conversations(
    superuser_client, conversation, service
):
    url = reverse("admin:conversations_service_change", args=[service.pk])
    form = {
        "name": service.name,
        "slug": service.slug,
        "mode": Mode.HUMAN_ONLY,
        "greeting": service.greeting,
        "allowed_origins": "",
        "handoff_wait_seconds": 300,
        "specialists-TOTAL_FORMS": 0,
        "specialists-INITIAL_FORMS": 0,
        "specialists-MIN_NUM_FORMS": 0,
        "specialists-MAX_NUM_FORMS": 1000,
        "escalation_policy-TOTAL_FORMS": 0,
        "escalation_policy-INITIAL_FORMS": 0,
    }
    response = superuser_client.post(url, form)
    assert response.status_code == 302, response.content.decode()[:2000]
    conversation.refresh_from_db()
    service.refresh_from_db()
    assert service.mode == Mode.HUMAN_ONLY
    assert conversation.ai_paused is True
    assert conversation.messages.order_by("-seq").first().text == services.TEXT_HUMAN_ONLY


def test_bad_allowed_origins_are_refused_with_a_clear_message(superuser_client, service):
    url = reverse("admin:conversations_service_change", args=[service.pk])
    response = superuser_client.post(
        url,
        {
            "name": service.name,
            "slug": service.slug,
            "mode": service.mode,
            "greeting": "",
            "allowed_origins": "shop.example/path",
            "handoff_wait_seconds": 300,
            "specialists-TOTAL_FORMS": 0,
            "specialists-INITIAL_FORMS": 0,
            "escalation_policy-TOTAL_FORMS": 0,
            "escalation_policy-INITIAL_FORMS": 0,
        },
    )
    assert response.status_code == 200
    assert "is not an origin" in response.content.decode()
