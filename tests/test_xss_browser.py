"""Hostile text is inert everywhere it is shown, checked in headless Chromium (SPEC §9).

A payload set (script tags, event-handler attributes, `javascript:` links, a markdown link,
an iframe breaking out of an attribute, a right-to-left override) is placed in everything a
customer, an agent or an admin can write: customer text, the visitor's profile, AI output
(a knowledge-base answer), agent names, service, specialist and keyword names. Each page
that shows them (the widget, the console with its cards, panel, visitor details and flags,
the toasts on the console and on an admin page, and the Django admin) must run none of it:
no dialog, no `window.__xss`, no injected element (in shadow roots too), and the payload
visible as plain text.

Live events come from the daphne process serving the pages (its own in-memory layer), so
whatever must arrive live is done through it: customers type in a browser page, agents act
through the REST API with a token. Everything else is stored before the page loads.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.test import Client
from playwright.sync_api import Page, expect
from rest_framework.authtoken.models import Token

from conversations import services
from conversations.models import Conversation, KnowledgeEntry, Mode, Service, Specialist
from escalation.models import EscalationPolicy, Flag
from tests.conftest import make_agent
from tests.console import session_cookie

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.browser]

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(1)>"
SVG = "<svg onload=alert(1)>"
JS_URL = "javascript:alert(1)"
MD_LINK = "[click](javascript:alert(1))"
IFRAME = '"><iframe srcdoc="<script>parent.__xss=1</script>">'
RLO = "\u202etxt.exe\u202c"
PAYLOADS = [SCRIPT, IMG, SVG, JS_URL, MD_LINK, IFRAME, RLO]

# One payload string per place, each tagged so it can be found on the page.
CUSTOMER_TEXT = "Customer " + " ".join(PAYLOADS)
AI_ANSWER = "Answer " + " ".join(PAYLOADS)
HUMAN_TEXT = "Human " + " ".join(PAYLOADS)
SERVICE_NAME = f"Svc {IMG}{IFRAME}{RLO}"  # at most 100 characters
SPECIALIST_NAME = f"Spec {SCRIPT}{SVG}{RLO}"
AGENT_NAME = f"Agent {SCRIPT}{IMG}{IFRAME}"  # first_name: at most 150
AGENT_USERNAME = f"mallory{SVG}"  # what the Django admin shows for a user
KEYWORD = f"refund {SVG}"
TOAST_TEXT = f"{IMG} I want a {KEYWORD} {MD_LINK}"  # under the 140-character preview
VISITOR_NAME = f"Visitor {SCRIPT}{SVG}"
VISITOR_EMAIL = f'"{IMG}"@example.com'
PROFILE = {
    "name": VISITOR_NAME,
    "email": VISITOR_EMAIL,
    "plan": f"Plan {IFRAME}",
    f"key {SVG}": MD_LINK,
}
QUESTION = "How do I reset my password?"

# Anything a payload could have become. Pages use no inline scripts or handlers at all.
INJECTED = ", ".join(
    [
        'img[src="x"]',
        "iframe",
        "svg[onload]",
        "[onerror]",
        "[onload]",
        "[onclick]",
        'a[href^="javascript:" i]',
        'script:not([src]):not([type="application/json"])',
    ]
)
FIND_INJECTED = """(selector) => {
  const roots = [document];
  for (let i = 0; i < roots.length; i++) {
    for (const el of roots[i].querySelectorAll("*")) if (el.shadowRoot) roots.push(el.shadowRoot);
  }
  return roots.flatMap((root) => [...root.querySelectorAll(selector)].map((el) => el.outerHTML));
}"""


@dataclass
class Hostile:
    """The stored world: a service named with a payload, its specialist, agents, customers."""

    service: Service
    agent: object  # holds conversation `held`; named with a payload
    viewer: object  # a plain agent who watches the console
    admin: object  # a superuser
    token: str  # the payload-named agent's API token
    held: Conversation | None = None
    waiting: Conversation | None = None


def create_world() -> Hostile:
    user_model = get_user_model()
    service = Service.objects.create(name=SERVICE_NAME, slug="xss", mode=Mode.HUMAN_SUPPORTED)
    specialist = Specialist.objects.create(service=service, name=SPECIALIST_NAME, position=0)
    KnowledgeEntry.objects.create(
        service=service, specialist=specialist, question=QUESTION, answer=AI_ANSWER
    )
    EscalationPolicy.objects.create(service=service, keywords=KEYWORD)
    agent = make_agent(user_model, AGENT_USERNAME, AGENT_NAME)
    viewer = make_agent(user_model, "victor", "Victor")
    admin = user_model.objects.create_superuser(username="root", password="pw", first_name="Ro")
    admin.user_permissions.add(Permission.objects.get(codename="change_service"))
    token = Token.objects.create(user=agent).key
    return Hostile(service, agent, viewer, admin, token)


def store_conversations(world: Hostile) -> None:
    """Conversations shown at page load: one held by the payload agent, one flagged."""
    visitor, _ = services.visitor_identify(service=world.service, token=None, profile=PROFILE)
    for n, text in enumerate([CUSTOMER_TEXT, QUESTION, f"and a {KEYWORD}"]):
        # The AI answers the question; the keyword flags the conversation and hands it off.
        services.conversation_post_customer_message(visitor=visitor, text=text, client_id=str(n))
    held = Conversation.objects.get(visitor=visitor)
    services.conversation_take_over(conversation=held, agent=world.agent)
    services.conversation_send_as_agent(conversation=held, agent=world.agent, text=HUMAN_TEXT)
    other, _ = services.visitor_identify(service=world.service, token=None)
    services.conversation_post_customer_message(
        visitor=other, text=f"{CUSTOMER_TEXT} {KEYWORD}", client_id="0"
    )
    world.held, world.waiting = held, Conversation.objects.get(visitor=other)
    assert Flag.objects.filter(conversation=world.held).exists()
    assert world.held.messages.filter(role="ai", text=AI_ANSWER).exists()


@pytest.fixture
def world(transactional_db) -> Hostile:
    return create_world()


class Pages:
    """Browser pages that record every dialog and script error, checked at the end."""

    def __init__(self, browser, base_url: str) -> None:
        self.browser, self.base_url = browser, base_url
        self.contexts: list = []
        self.dialogs: list[str] = []
        self.errors: list[str] = []

    def open(self, user=None, *, profile: dict | None = None) -> Page:
        context = self.browser.new_context(
            base_url=self.base_url, viewport={"width": 1400, "height": 900}
        )
        context.set_default_timeout(10_000)
        self.contexts.append(context)
        if user is not None:
            name, key = session_cookie(user).decode().split("=", 1)
            context.add_cookies([{"name": name, "value": key, "url": self.base_url}])
        if profile is not None:
            context.add_init_script(f"window.HandoffWidgetProfile = {_js(profile)};")
        page = context.new_page()
        page.on("dialog", lambda dialog: (self.dialogs.append(dialog.message), dialog.dismiss()))
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        return page

    def close(self) -> None:
        for context in self.contexts:
            context.close()


def _js(value: object) -> str:
    import json

    return json.dumps(value)


@pytest.fixture
def pages(browser, live_server_url) -> Iterator[Pages]:
    opened = Pages(browser, live_server_url)
    yield opened
    opened.close()
    assert not opened.dialogs, opened.dialogs
    assert not opened.errors, opened.errors


def assert_inert(page: Page, pages: Pages) -> None:
    """Nothing ran and nothing was injected, in the page and in every open shadow root."""
    page.wait_for_timeout(100)  # let a handler that might fire (onload, onerror) run first
    assert pages.dialogs == [], pages.dialogs
    assert page.evaluate("window.__xss") is None
    assert page.evaluate(FIND_INJECTED, INJECTED) == []


def api(base_url: str, token: str, path: str, body: dict | None = None) -> httpx.Response:
    """Act as an agent through the server under test (its events reach its sockets)."""
    response = httpx.post(
        f"{base_url}/api/v1/{path}",
        json=body,
        headers={"Authorization": f"Token {token}"},
        timeout=10,
    )
    assert response.status_code in (200, 201), response.text
    return response


def open_widget(page: Page, slug: str = "xss") -> None:
    page.goto(f"/widget/demo/{slug}/")
    expect(page.locator("[data-state]").first).to_have_attribute("data-state", "connected")
    bubble = page.get_by_test_id("hh-bubble")
    if bubble.get_attribute("aria-expanded") != "true":
        bubble.click()
    expect(page.get_by_test_id("hh-panel")).to_be_visible()


def say(page: Page, text: str) -> None:
    page.get_by_test_id("hh-input").fill(text)
    page.get_by_test_id("hh-send").click()


def widget_messages(page: Page, role: str):
    return page.locator(f"[data-testid=hh-message][data-role={role}]")


# --- The widget ------------------------------------------------------------------------------


def test_hostile_text_is_inert_in_the_widget_and_its_demo_page(world, pages, live_server_url):
    page = pages.open(profile=PROFILE)
    page.goto(f"{live_server_url}/widget/demo/xss/")
    expect(page.locator("body")).to_contain_text(SERVICE_NAME)
    assert SERVICE_NAME in page.title()
    open_widget(page)

    say(page, CUSTOMER_TEXT)
    expect(widget_messages(page, "user").last).to_contain_text(CUSTOMER_TEXT)
    expect(widget_messages(page, "ai")).to_have_count(1)
    say(page, QUESTION)
    answer = widget_messages(page, "ai").nth(1)
    expect(answer).to_contain_text(AI_ANSWER)
    expect(answer).to_contain_text(SPECIALIST_NAME)

    conversation = Conversation.objects.get(service=world.service)
    assert conversation.visitor.name == VISITOR_NAME  # the profile arrived with hello
    api(live_server_url, world.token, f"conversations/{conversation.pk}/take-over/")
    expect(widget_messages(page, "system").last).to_contain_text(
        f"{AGENT_NAME} has joined the conversation."
    )
    api(
        live_server_url,
        world.token,
        f"conversations/{conversation.pk}/messages/",
        {"text": HUMAN_TEXT},
    )
    human = widget_messages(page, "human").last
    expect(human).to_contain_text(HUMAN_TEXT)
    expect(human).to_contain_text(AGENT_NAME)
    assert_inert(page, pages)


# --- The console -----------------------------------------------------------------------------


def test_hostile_text_is_inert_in_the_console_cards_panel_details_flags_and_toasts(
    world, pages, live_server_url
):
    store_conversations(world)
    console = pages.open(world.viewer)
    console.goto(f"{live_server_url}/console/")
    expect(console.get_by_test_id("hh-conn")).to_have_attribute("data-state", "connected")
    section = console.get_by_test_id("hh-service")
    expect(section).to_contain_text(SERVICE_NAME)
    cards = console.get_by_test_id("hh-card")
    expect(cards).to_have_count(2)
    for card in (cards.nth(0), cards.nth(1)):
        expect(card).to_contain_text(CUSTOMER_TEXT)
        expect(card).to_contain_text(SPECIALIST_NAME)
    expect(cards.filter(has_text="Claimed by")).to_contain_text(AGENT_NAME)
    assert_inert(console, pages)

    # The panel: visitor details, profile, flags and the transcript of the held conversation.
    console.goto(f"{live_server_url}/console/#c={world.held.pk}")
    panel = console.get_by_test_id("hh-panel")
    expect(panel).to_be_visible()
    transcript = panel.locator("[data-p=transcript]")
    expect(transcript.get_by_test_id("hh-message")).to_have_count(world.held.messages.count())
    for text in (CUSTOMER_TEXT, AI_ANSWER, SPECIALIST_NAME, HUMAN_TEXT, AGENT_NAME):
        expect(transcript).to_contain_text(text)
    expect(panel.locator("[data-p=title]")).to_contain_text(VISITOR_NAME)
    expect(panel.locator("[data-p=email]")).to_contain_text(VISITOR_EMAIL)
    assert panel.locator("[data-p=email]").get_attribute("href") == f"mailto:{VISITOR_EMAIL}"
    panel.locator("[data-p=profile-box] summary").click()
    for key, value in PROFILE.items():
        expect(panel.locator("[data-p=profile]")).to_contain_text(key)
        expect(panel.locator("[data-p=profile]")).to_contain_text(value)
    panel.locator("[data-p=flags-box] summary").click()
    expect(panel.locator("[data-p=flags]")).to_contain_text(KEYWORD)
    expect(panel.get_by_test_id("hh-claimed-banner")).to_contain_text(AGENT_NAME)
    assert_inert(console, pages)

    # A toast: a customer writes the keyword while the console is open.
    customer = pages.open()
    customer.goto(f"{live_server_url}/widget/demo/xss/")
    open_widget(customer)
    say(customer, TOAST_TEXT)
    toast = console.get_by_test_id("hh-toast").last
    expect(toast).to_contain_text(TOAST_TEXT)
    expect(toast).to_contain_text(SERVICE_NAME)
    assert_inert(console, pages)
    assert_inert(customer, pages)


def test_toasts_on_an_admin_page_are_inert(world, pages, live_server_url):
    page = pages.open(world.admin)
    page.goto(f"{live_server_url}/admin/")
    expect(page.locator("#site-name")).to_be_visible()
    # notify.js opens its own socket on admin pages: open means it joined the consoles.
    page.wait_for_function("() => window.HandoffNotify?.socket?.readyState === WebSocket.OPEN")
    customer = pages.open()
    customer.goto(f"{live_server_url}/widget/demo/xss/")
    open_widget(customer)
    say(customer, TOAST_TEXT)
    toast = page.get_by_test_id("hh-toast")
    expect(toast.first).to_contain_text(TOAST_TEXT)
    expect(toast.first).to_contain_text(SERVICE_NAME)
    assert_inert(page, pages)


# --- The Django admin ------------------------------------------------------------------------


def test_hostile_text_is_shown_as_text_in_the_django_admin(world, pages, live_server_url):
    store_conversations(world)
    flag = Flag.objects.filter(conversation=world.held).first()
    page = pages.open(world.admin)
    checks = [
        (f"/admin/conversations/conversation/{world.held.pk}/change/", [
            CUSTOMER_TEXT, AI_ANSWER, HUMAN_TEXT, SPECIALIST_NAME, AGENT_NAME, AGENT_USERNAME,
            SERVICE_NAME,
        ]),
        ("/admin/conversations/conversation/", [CUSTOMER_TEXT, SERVICE_NAME, AGENT_USERNAME]),
        ("/admin/escalation/flag/", [SERVICE_NAME, CUSTOMER_TEXT[:100]]),
        (f"/admin/escalation/flag/{flag.pk}/change/", [SERVICE_NAME]),
        ("/admin/conversations/service/", [SERVICE_NAME]),
        ("/admin/conversations/specialist/", [SPECIALIST_NAME, SERVICE_NAME]),
        ("/admin/conversations/knowledgeentry/", [SERVICE_NAME, SPECIALIST_NAME]),
        ("/admin/conversations/visitor/", [VISITOR_NAME]),
        ("/admin/conversations/auditevent/", [AGENT_USERNAME, SERVICE_NAME]),
    ]  # fmt: skip
    for path, texts in checks:
        page.goto(f"{live_server_url}{path}")
        content = page.locator("#content")
        for text in texts:
            expect(content).to_contain_text(text)
        assert_inert(page, pages)
    # Forms carry the names as values, escaped into their attributes.
    page.goto(f"{live_server_url}/admin/conversations/service/{world.service.pk}/change/")
    expect(page.locator("input[name=name]")).to_have_value(SERVICE_NAME)
    expect(page.locator("textarea[name$='-0-keywords']")).to_have_value(KEYWORD)
    expect(page.locator("input[name$='-0-name']")).to_have_value(SPECIALIST_NAME)
    assert_inert(page, pages)


# --- Headers ---------------------------------------------------------------------------------


def csp_directives(header: str) -> dict[str, list[str]]:
    directives = {}
    for part in header.split(";"):
        if part.strip():
            name, *values = part.split()
            directives[name.lower()] = values
    return directives


@pytest.mark.parametrize("path", ["/console/", "/admin/"])
def test_console_pages_send_a_content_security_policy_without_inline_script(world, path):
    client = Client()
    client.force_login(world.admin)
    response = client.get(path)
    assert response.status_code == 200
    directives = csp_directives(response.get("Content-Security-Policy", ""))
    scripts = directives.get("script-src", directives.get("default-src"))
    assert scripts, response.get("Content-Security-Policy")
    assert "'unsafe-inline'" not in scripts and "'unsafe-eval'" not in scripts
    assert "*" not in scripts and not any(
        s.startswith(("http:", "https:", "data:")) for s in scripts
    )
    assert directives.get("object-src", directives.get("default-src")) in (["'none'"], ["'self'"])
    assert "frame-ancestors" in directives  # the console cannot be framed either


@pytest.mark.parametrize(
    "path", ["/console/", "/admin/", "/api/v1/stats/", "/api/v1/conversations/"]
)
def test_console_and_api_responses_are_never_stored_by_shared_caches(world, path):
    client = Client()
    client.force_login(world.admin)
    response = client.get(path)
    assert response.status_code == 200
    cache_control = {part.strip() for part in response["Cache-Control"].split(",")}
    assert cache_control & {"private", "no-store"}, response["Cache-Control"]
    assert "public" not in cache_control


def test_the_widget_script_never_writes_html_from_data():
    from pathlib import Path

    import conversations

    source = (Path(conversations.__file__).parent / "static/widget/handoff-widget.js").read_text()
    # Markup only from constants: no innerHTML/outerHTML/insertAdjacentHTML/document.write.
    assert not re.search(r"\.(innerHTML|outerHTML)\s*=|insertAdjacentHTML|document\.write", source)
