"""The HTTP side: health and the chat page."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.django_db(transaction=True)


def test_healthz_is_200_when_database_and_backend_are_up(client, backend_url):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "database": "up", "backend": "up"}


def test_healthz_is_503_when_the_backend_is_down(client, closed_port_url):
    response = client.get("/healthz")
    assert response.status_code == 503
    assert response.json()["backend"] == "down"
    assert response.json()["database"] == "up"


def test_chat_page_answers_and_explains_the_memory_switch(client):
    response = client.get("/")
    assert response.status_code == 200
    page = response.content.decode()
    assert 'role="switch"' in page
    assert "the assistant remembers everything you send" in page
    assert client.cookies.get("sessionid"), "an anonymous visitor gets a session"


def test_a_signed_in_user_changes_their_password_from_their_name(client, django_user_model):
    assert client.get("/accounts/password/")["Location"].startswith("/accounts/login/")
    django_user_model.objects.create_user("hana", password="pw-hana-12345")
    client.login(username="hana", password="pw-hana-12345")
    page = client.get("/").content.decode()
    assert 'href="/accounts/password/"' in page and ">hana</a>" in page

    form = {"new_password1": "a-new-pw-for-hana-6", "new_password2": "a-new-pw-for-hana-6"}
    refused = client.post("/accounts/password/", {"old_password": "wrong", **form})
    assert refused.status_code == 200
    assert "Your old password was entered incorrectly" in refused.content.decode()
    changed = client.post("/accounts/password/", {"old_password": "pw-hana-12345", **form})
    assert changed["Location"] == "/accounts/password/done/"
    done = client.get(changed["Location"]).content.decode()
    assert "Password changed" in done and "other browsers and devices were signed out" in done
    assert client.get("/").context["user"].is_authenticated, "still signed in here"
    client.logout()
    assert client.login(username="hana", password="a-new-pw-for-hana-6")
