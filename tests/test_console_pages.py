"""The console pages: login, logout, who may see them, and what they must not cache."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db


def test_anonymous_visitors_are_sent_to_the_login_page(client):
    response = client.get("/console/")
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=/console/")


def test_an_agent_logs_in_with_the_form_and_lands_on_the_console(client, agent):
    page = client.get("/accounts/login/")
    assert page.status_code == 200
    response = client.post(
        "/accounts/login/", {"username": "alice", "password": "pw-alice"}, follow=True
    )
    assert response.redirect_chain[-1][0] == "/console/"
    body = response.content.decode()
    assert 'data-ws-url="/ws/console/"' in body
    assert "Alice" in body


def test_a_wrong_password_is_refused_with_a_message(client, agent):
    response = client.post("/accounts/login/", {"username": "alice", "password": "nope"})
    assert response.status_code == 200
    assert "_auth_user_id" not in client.session
    assert "correct username and password" in response.content.decode()


def test_logging_out_ends_the_session(client, agent):
    client.force_login(agent)
    response = client.post("/accounts/logout/")
    assert response.status_code == 302
    assert client.get("/console/").status_code == 302


def test_a_user_who_is_not_an_agent_is_refused(client, stranger):
    client.force_login(stranger)
    assert client.get("/console/").status_code == 403


def test_the_console_is_never_cached(client, agent):
    client.force_login(agent)
    response = client.get("/console/")
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"] or "private" in response["Cache-Control"]


def test_admins_get_the_mode_controls_and_agents_do_not(client, agent, admin):
    client.force_login(admin)
    assert 'data-is-admin="true"' in client.get("/console/").content.decode()
    client.force_login(agent)
    assert 'data-is-admin="false"' in client.get("/console/").content.decode()


def test_the_home_page_sends_agents_to_the_console_and_others_to_the_demo(client, agent, service):
    assert client.get("/")["Location"] == "/widget/demo/support/"
    client.force_login(agent)
    assert client.get("/")["Location"] == "/console/"
