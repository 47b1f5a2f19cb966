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
