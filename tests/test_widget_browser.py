"""The customer widget in headless Chromium against a real daphne server."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from conversations.models import Message, Role
from tests.conftest import make_service

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]


@pytest.fixture
def service(transactional_db):
    return make_service()


@pytest.fixture
def page(browser, live_server_url):
    context = browser.new_context(viewport={"width": 1280, "height": 820}, base_url=live_server_url)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    context.close()
    assert not errors, errors


def open_widget(page, slug: str = "support"):
    page.goto(f"/widget/demo/{slug}/")
    host = page.locator("[data-state]").first
    expect(host).to_have_attribute("data-state", "connected", timeout=10_000)
    bubble = page.get_by_test_id("hh-bubble")
    if bubble.get_attribute("aria-expanded") != "true":
        bubble.click()
    expect(page.get_by_test_id("hh-panel")).to_be_visible()


def messages(page, role: str | None = None):
    selector = "[data-testid=hh-message]" + (f"[data-role={role}]" if role else "")
    return page.locator(selector)


def test_a_customer_chats_with_the_ai_rates_it_and_finds_the_chat_after_a_reload(
    service, page, artifacts
):
    open_widget(page)
    page.get_by_test_id("hh-input").fill("How do I reset my password?")
    page.get_by_test_id("hh-send").click()
    answer = messages(page, "ai").last
    expect(answer).to_contain_text("Forgot password", timeout=10_000)
    expect(answer).to_contain_text("Tech Support")

    answer.get_by_test_id("hh-down").click()
    expect(answer.get_by_test_id("hh-down")).to_have_attribute("aria-pressed", "true")
    assert Message.objects.get(role=Role.AI).feedback == "down"
    page.screenshot(path=artifacts / "widget-chat.png")

    page.reload()
    open_widget(page)
    expect(messages(page, "user")).to_have_count(1)
    expect(messages(page, "user").first).to_contain_text("How do I reset my password?")
    expect(messages(page, "ai")).to_have_count(1)
    expect(messages(page, "ai").get_by_test_id("hh-down")).to_have_attribute("aria-pressed", "true")


def test_customer_html_is_shown_as_text_and_never_runs(service, page, artifacts):
    open_widget(page)
    hostile = '<img src=x onerror="window.__owned=1"><b>bold</b><script>window.__owned=2</script>'
    page.get_by_test_id("hh-input").fill(hostile)
    page.get_by_test_id("hh-input").press("Enter")
    echoed = messages(page, "user").last
    expect(echoed).to_contain_text(hostile)
    expect(messages(page, "ai")).to_have_count(1, timeout=10_000)
    assert page.evaluate("window.__owned") is None
    assert echoed.locator("img, b, script").count() == 0
    page.screenshot(path=artifacts / "widget-hostile-text.png")


def test_talk_to_a_person_hands_off_and_is_hidden_in_ai_only(service, page):
    open_widget(page)
    page.get_by_test_id("hh-input").fill("hello")
    page.get_by_test_id("hh-send").click()
    expect(messages(page, "ai")).to_have_count(1, timeout=10_000)
    page.get_by_test_id("hh-human").click()
    expect(messages(page, "system").last).to_contain_text("connecting you with a member")

    make_service(slug="bot", name="Bot", mode="ai_only")
    open_widget(page, "bot")
    expect(page.get_by_test_id("hh-human")).to_be_hidden()
