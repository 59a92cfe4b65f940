"""Every kind of page still works in Chromium under the Content-Security-Policy."""

from __future__ import annotations

import time
from urllib.parse import urlsplit

import pytest
from django.contrib.auth.hashers import PBKDF2PasswordHasher
from playwright.sync_api import expect

from conversations.models import Service
from tests.conftest import make_agent, make_service
from tests.console import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

# Fires before any page script: Playwright's init scripts are not subject to the policy.
RECORD_VIOLATIONS = """
window.__csp = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__csp.push(e.violatedDirective + ' ' + (e.blockedURI || 'inline'));
});
"""


@pytest.fixture
def service(transactional_db):
    return make_service()


@pytest.fixture
def visit(browser, live_server_url):
    """Open a path (logged in as `user` when given); fail on any policy violation."""
    contexts = []

    def visit(path: str, user=None):
        context = browser.new_context(base_url=live_server_url)
        contexts.append(context)
        context.add_init_script(RECORD_VIOLATIONS)
        if user is not None:
            name, value = session_cookie(user).decode().split("=", 1)
            host = urlsplit(live_server_url).hostname
            context.add_cookies([{"name": name, "value": value, "domain": host, "path": "/"}])
        page = context.new_page()
        page.reports = []
        page.on(
            "console",
            lambda m: page.reports.append(m.text) if "Content Security Policy" in m.text else None,
        )
        response = page.goto(path)
        assert "script-src 'self'" in response.headers["content-security-policy"]
        return page

    yield visit
    for context in contexts:
        context.close()


def until(page, expression: str, timeout: float = 10) -> None:
    """Poll `expression` in the page (wait_for_function would need eval, which CSP forbids)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        assert time.monotonic() < deadline, f"{expression} within {timeout} s"
        page.wait_for_timeout(50)


def assert_clean(page) -> None:
    assert page.evaluate("window.__csp") == [], page.evaluate("window.__csp")
    assert page.reports == []


def test_signing_in_and_the_console_work_under_the_policy(service, visit, django_user_model):
    alice = make_agent(django_user_model, "alice", "Alice")
    # The server knows production's hashers only, not the tests' fast MD5 one.
    hasher = PBKDF2PasswordHasher()
    alice.password = hasher.encode("pw-alice", hasher.salt(), iterations=1000)
    alice.save(update_fields=["password"])
    page = visit("/accounts/login/?next=/console/")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill("pw-alice")
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url("/console/")
    expect(page.get_by_test_id("hh-conn")).to_have_attribute("data-state", "connected")
    assert_clean(page)


def test_the_admin_works_under_the_policy(service, visit, django_user_model):
    admin = django_user_model.objects.create_superuser("root", password="pw-root")
    page = visit("/admin/", admin)
    expect(page.locator("#site-name")).to_contain_text("Human Handoff administration")
    # The attention toasts' script runs on admin pages too, and its socket connects.
    until(page, "window.HandoffNotify && window.HandoffNotify.socket.readyState === 1")
    service_id = Service.objects.get(slug="support").pk
    page.goto(f"/admin/conversations/service/{service_id}/change/")
    expect(page.locator("#service_form")).to_be_visible()
    page.goto("/admin/conversations/conversation/")
    expect(page.locator("#changelist")).to_be_visible()
    assert_clean(page)


def test_the_widget_on_its_demo_page_works_under_the_policy(service, visit):
    page = visit("/widget/demo/support/")
    expect(page.locator("[data-state]").first).to_have_attribute(
        "data-state", "connected", timeout=10_000
    )
    bubble = page.get_by_test_id("hh-bubble")
    # Its styles come from the <style> it puts in its shadow root.
    assert bubble.bounding_box()["width"] > 20
    bubble.click()
    page.get_by_test_id("hh-input").fill("How do I reset my password?")
    page.get_by_test_id("hh-send").click()
    answer = page.locator("[data-testid=hh-message][data-role=ai]").last
    expect(answer).to_contain_text("Forgot password")
    assert_clean(page)


def test_the_api_docs_render_under_their_own_policy(service, visit, django_user_model):
    agent = make_agent(django_user_model, "alice", "Alice")
    page = visit("/api/v1/docs/", agent)
    expect(page.locator(".opblock").first).to_be_visible(timeout=10_000)
    assert_clean(page)
