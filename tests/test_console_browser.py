"""The seed's use cases end to end: agents' consoles and customers' widgets in Chromium."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
from playwright.sync_api import expect

from conversations.models import Conversation, Message, Mode, Role, Service
from tests.conftest import make_service
from tests.console import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

NOTIFY_CONNECTED = (
    "window.HandoffNotify && window.HandoffNotify.socket"
    " && window.HandoffNotify.socket.readyState === 1"
)
HOSTILE = '<img src=x onerror="window.__owned=1"><b>bold</b>'


@pytest.fixture
def service(transactional_db):
    support = make_service()
    make_service(slug="sales", name="Sales")
    return support


@pytest.fixture
def open_page(browser, live_server_url):
    """A page in its own browser context, logged in as `user` when given."""
    contexts = []

    def open_page(path: str, user=None, *, width: int = 1440):
        context = browser.new_context(
            viewport={"width": width, "height": 900},
            base_url=live_server_url,
            timezone_id="Europe/Berlin",
            # wait_for_function polls with eval, which the pages' CSP forbids (rightly);
            # tests/test_csp_browser.py checks the pages under the policy.
            bypass_csp=True,
        )
        contexts.append(context)
        if user is not None:
            name, value = session_cookie(user).decode().split("=", 1)
            context.add_cookies(
                [
                    {
                        "name": name,
                        "value": value,
                        "domain": urlsplit(live_server_url).hostname,
                        "path": "/",
                    }
                ]
            )
        page = context.new_page()
        page.errors = []
        page.on("pageerror", lambda error: page.errors.append(str(error)))
        page.goto(path)
        return page

    yield open_page
    for context in contexts:
        context.close()


def console_page(open_page, user):
    page = open_page("/console/", user)
    expect(page.get_by_test_id("hh-conn")).to_have_attribute("data-state", "connected")
    return page


def widget_page(open_page, slug: str = "support"):
    page = open_page(f"/widget/demo/{slug}/", width=1100)
    expect(page.locator("[data-state]").first).to_have_attribute(
        "data-state", "connected", timeout=10_000
    )
    page.get_by_test_id("hh-bubble").click()
    return page


def widget_say(page, text: str) -> None:
    page.get_by_test_id("hh-input").fill(text)
    page.get_by_test_id("hh-send").click()


def widget_messages(page, role: str):
    return page.locator(f"[data-testid=hh-message][data-role={role}]")


def test_thumbs_down_to_take_over_reply_and_resume(service, open_page, agent, artifacts):
    console = console_page(open_page, agent)
    customer = widget_page(open_page)

    widget_say(customer, "How do I reset my password?")
    answer = widget_messages(customer, "ai").last
    expect(answer).to_contain_text("Forgot password", timeout=10_000)
    card = console.get_by_test_id("hh-card").first
    expect(card).to_contain_text("How do I reset my password?")
    expect(card).to_contain_text("Berlin")
    expect(console.get_by_test_id("hh-counter-active")).to_have_text("1")

    answer.get_by_test_id("hh-down").click()
    expect(card).to_have_attribute("data-needs-attention", "true")
    expect(card.get_by_test_id("hh-badge")).to_have_attribute("data-reason", "thumbs_down")
    expect(console.get_by_test_id("hh-counter-attention")).to_have_text("1")
    toast = console.get_by_test_id("hh-toast").last
    expect(toast).to_contain_text("Thumbs Down")
    assert console.evaluate("window.HandoffNotify.chimeCount") == 1
    console.screenshot(path=artifacts / "console-flagged.png")

    card.click()
    panel = console.get_by_test_id("hh-panel")
    expect(panel.get_by_test_id("hh-message")).to_have_count(2)
    console.get_by_test_id("hh-take-over").click()
    expect(customer.locator("[data-testid=hh-message][data-role=system]").last).to_contain_text(
        "Alice has joined the conversation."
    )
    expect(console.get_by_test_id("hh-counter-attention")).to_have_text("0")
    expect(console.get_by_test_id("hh-counter-paused")).to_have_text("1")

    reply = console.get_by_test_id("hh-reply")
    reply.fill("Hi, I'm Alice. Did the reset link arrive?")
    reply.press("Control+Enter")
    expect(widget_messages(customer, "human").last).to_contain_text("Did the reset link arrive?")
    expect(reply).to_have_value("")
    console.screenshot(path=artifacts / "console-taken-over.png")
    customer.screenshot(path=artifacts / "widget-with-agent.png")

    console.get_by_test_id("hh-resume").click()
    expect(widget_messages(customer, "system").last).to_contain_text("virtual assistant again")
    widget_say(customer, "Where can I download my invoices?")
    expect(widget_messages(customer, "ai").last).to_contain_text("Invoices", timeout=10_000)
    expect(console.get_by_test_id("hh-counter-paused")).to_have_text("0")
    # The open transcript follows live: the customer's question, then the AI's answer.
    lines = panel.get_by_test_id("hh-message")
    expect(lines.filter(has_text="Where can I download my invoices?")).to_have_count(1)
    expect(lines.last).to_contain_text("Invoices")
    assert not console.errors and not customer.errors


def test_a_snapshot_further_on_than_the_open_transcript_fills_it(service, open_page, agent):
    """A line lost with a batch the server dropped under load comes back with a snapshot."""
    from django.db.models import F

    console = console_page(open_page, agent)
    customer = widget_page(open_page)
    widget_say(customer, "How do I reset my password?")
    expect(widget_messages(customer, "ai").last).to_contain_text("Forgot password", timeout=10_000)
    console.get_by_test_id("hh-card").first.click()
    lines = console.get_by_test_id("hh-panel").get_by_test_id("hh-message")
    expect(lines).to_have_count(2)
    # Stored without a word to the consoles, as when the batch carrying it was dropped.
    conversation = Conversation.objects.get()
    Message.objects.create(conversation=conversation, seq=3, role=Role.USER, text="Hello?")
    Conversation.objects.filter(pk=conversation.pk).update(
        message_count=3, version=F("version") + 1
    )
    console.evaluate("window.HandoffConsole.resync()")
    expect(lines).to_have_count(3)
    expect(lines.last).to_contain_text("Hello?")
    assert not console.errors and not customer.errors


def test_a_second_agent_sees_who_holds_the_conversation(
    service, open_page, agent, agent2, artifacts
):
    customer = widget_page(open_page)
    widget_say(customer, "How do I reset my password?")
    expect(widget_messages(customer, "ai")).to_have_count(1, timeout=10_000)
    alice = console_page(open_page, agent)
    bob = console_page(open_page, agent2)
    alice.get_by_test_id("hh-card").first.click()
    alice.get_by_test_id("hh-take-over").click()
    expect(alice.get_by_test_id("hh-reply")).to_be_visible()

    bob.get_by_test_id("hh-card").first.click()
    banner = bob.get_by_test_id("hh-claimed-banner")
    expect(banner).to_be_visible()
    expect(banner).to_contain_text("Alice")
    take_over = bob.get_by_test_id("hh-take-over")
    if take_over.is_visible():
        expect(take_over).to_be_disabled()
    expect(bob.get_by_test_id("hh-reply")).to_be_hidden()
    bob.screenshot(path=artifacts / "console-claimed-by-colleague.png")


def test_human_only_in_one_click_and_a_new_customer_hears_no_ai(
    service, open_page, admin, artifacts
):
    console = console_page(open_page, admin)
    section = console.locator("[data-testid=hh-service][data-slug=support]")
    section.get_by_test_id("hh-mode-human_only").click()
    expect(section.get_by_test_id("hh-mode-human_only")).to_have_attribute("aria-pressed", "true")
    assert Service.objects.get(slug="support").mode == Mode.HUMAN_ONLY

    customer = widget_page(open_page)
    widget_say(customer, "How do I reset my password?")
    card = console.get_by_test_id("hh-card").first
    expect(card).to_have_attribute("data-status", "paused")
    expect(card.locator("[data-testid=hh-badge][data-reason=awaiting_human]")).to_be_visible()
    expect(customer.get_by_test_id("hh-human")).to_be_hidden()
    conversation = Conversation.objects.get()
    assert not conversation.messages.filter(role=Role.AI).exists()
    assert conversation.messages.count() == 1
    console.screenshot(path=artifacts / "console-human-only.png")


def test_agents_see_modes_but_cannot_change_them(service, open_page, agent):
    console = console_page(open_page, agent)
    button = console.locator("[data-testid=hh-service][data-slug=support]").get_by_test_id(
        "hh-mode-ai_only"
    )
    expect(button).to_be_disabled()
    expect(console.get_by_test_id("hh-set-all-ai_only")).to_be_disabled()


def test_customer_html_is_literal_text_in_the_console(service, open_page, agent):
    console = console_page(open_page, agent)
    customer = widget_page(open_page)
    widget_say(customer, HOSTILE)
    card = console.get_by_test_id("hh-card").first
    expect(card).to_contain_text(HOSTILE)
    card.click()
    expect(console.get_by_test_id("hh-panel").get_by_test_id("hh-message").first).to_contain_text(
        HOSTILE
    )
    assert console.evaluate("window.__owned") is None
    assert console.locator("img[src=x], [data-testid=hh-card] b").count() == 0


def test_toasts_and_the_sound_reach_admin_pages_and_mute_is_remembered(service, open_page, admin):
    admin.is_superuser = True
    admin.save()
    page = open_page("/admin/", admin)
    page.wait_for_function(NOTIFY_CONNECTED)
    customer = widget_page(open_page)
    widget_say(customer, "Can I talk to a real person please?")
    toast = page.get_by_test_id("hh-toast").first
    expect(toast).to_contain_text("Help Requested", timeout=10_000)
    assert page.evaluate("window.HandoffNotify.chimeCount") == 1

    page.get_by_test_id("hh-mute").click()
    page.reload()
    page.wait_for_function(NOTIFY_CONNECTED)
    assert page.evaluate("window.HandoffNotify.isMuted()") is True
    second = widget_page(open_page)
    widget_say(second, "I want to speak to a human")
    expect(page.get_by_test_id("hh-toast").first).to_contain_text("Help Requested", timeout=10_000)
    assert page.evaluate("window.HandoffNotify.chimeCount") == 0
    assert Message.objects.filter(role=Role.AI).count() == 0
