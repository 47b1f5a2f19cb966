"""The HTTP side: health and the chat page."""

from __future__ import annotations

import io
import re
import zipfile

import pytest
from django.contrib.auth.models import User
from django.core import mail
from django.test import Client
from django.utils import timezone

from runs.models import Conversation, Message
from runs.services import VISITOR_SESSION_KEY
from tests.test_api import post, say, thread_is_gone

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


def a_visitors_conversation(client) -> Conversation:
    """A conversation the visitor of `client` started before having an account."""
    client.get("/")
    return Conversation.objects.create(
        title="before the account", session_key=client.session[VISITOR_SESSION_KEY]
    )


def test_a_visitor_creates_an_account_and_keeps_their_conversations(client):
    before = a_visitors_conversation(client)
    page = client.get("/").content.decode()
    assert 'href="/accounts/signup/"' in page and "Create account" in page
    login_page = client.get("/accounts/login/?next=/c/x/").content.decode()
    assert 'href="/accounts/signup/?next=/c/x/"' in login_page

    form = client.get("/accounts/signup/").content.decode()
    assert 'name="username"' in form and 'autocomplete="new-password"' in form
    created = client.post(
        "/accounts/signup/",
        {"username": "ines", "password1": "a-long-pw-for-ines", "password2": "a-long-pw-for-ines"},
    )
    assert created.status_code == 302 and created["Location"] == "/"
    page = client.get("/").content.decode()
    assert ">ines</a>" in page and "Create account" not in page, "signed in as the new account"
    before.refresh_from_db()
    assert before.owner.username == "ines" and before.session_key == ""
    # Signed in, the page only sends them back; the account signs in again with its password.
    assert client.get("/accounts/signup/")["Location"] == "/"
    client.post("/accounts/logout/")
    assert client.login(username="ines", password="a-long-pw-for-ines")


@pytest.mark.parametrize(
    ("username", "password1", "password2", "reason"),
    [
        ("juno", "a-long-pw-for-juno", "another-long-pw", "didn\u2019t match"),
        ("TAKEN", "a-long-pw-for-juno", "a-long-pw-for-juno", "already exists"),
        ("juno", "password123", "password123", "This password is too common."),
        ("juno", "short", "short", "too short"),
        ("juno ?", "a-long-pw-for-juno", "a-long-pw-for-juno", "Enter a valid username"),
        ("", "a-long-pw-for-juno", "a-long-pw-for-juno", "This field is required."),
    ],
)
def test_a_refused_account_says_why_and_creates_nothing(
    client, username, password1, password2, reason
):
    User.objects.create_user("taken", password="pw-taken-12345")
    refused = client.post(
        "/accounts/signup/",
        {"username": username, "password1": password1, "password2": password2},
    )
    assert refused.status_code == 200
    page = refused.content.decode()
    assert reason in page and 'role="alert"' in page
    assert f'value="{username}"' in page or not username, "what was typed stays"
    assert list(User.objects.values_list("username", flat=True)) == ["taken"]
    assert not client.get("/").context["user"].is_authenticated


def test_a_new_account_goes_on_to_the_page_it_came_from_but_never_off_the_site(client):
    conversation = a_visitors_conversation(client)
    back = f"/c/{conversation.pk}/"
    form = client.get(f"/accounts/signup/?next={back}").content.decode()
    assert f'name="next" value="{back}"' in form
    fields = {"password1": "a-long-pw-for-kim", "password2": "a-long-pw-for-kim"}
    created = client.post("/accounts/signup/", {"username": "kim", "next": back, **fields})
    assert created["Location"] == back
    assert client.get(back).status_code == 200, "the conversation is the account's now"

    client.post("/accounts/logout/")
    away = {"username": "lea", "next": "https://elsewhere.example/", **fields}
    assert client.post("/accounts/signup/", away)["Location"] == "/"


def test_with_sign_up_closed_only_staff_create_accounts(client, settings):
    settings.CHAT_SIGNUP_OPEN = False
    assert "Create account" not in client.get("/").content.decode()
    assert "/accounts/signup/" not in client.get("/accounts/login/").content.decode()
    closed = client.get("/accounts/signup/")
    assert closed.status_code == 403
    assert "created by its staff" in closed.content.decode()
    fields = {"username": "mia", "password1": "a-long-pw-for-mia", "password2": "a-long-pw-for-mia"}
    assert client.post("/accounts/signup/", fields).status_code == 403
    assert not User.objects.filter(username="mia").exists()


def test_sign_up_stays_open_when_the_chat_requires_sign_in(client, settings):
    settings.CHAT_REQUIRE_LOGIN = True
    assert client.get("/")["Location"].startswith("/accounts/login/")
    assert client.get("/accounts/signup/").status_code == 200
    fields = {"username": "noa", "password1": "a-long-pw-for-noa", "password2": "a-long-pw-for-noa"}
    assert client.post("/accounts/signup/", fields)["Location"] == "/"
    assert client.get("/").status_code == 200


def reset_link_in(message: mail.EmailMessage) -> str:
    """The path of the reset link in a mail the site sent."""
    match = re.search(r"http://testserver(/accounts/reset/\S+/)", message.body)
    assert match, message.body
    return match.group(1)


def confirm_link_in(message: mail.EmailMessage) -> str:
    """The path of the link that confirms an e-mail address, in a mail the site sent."""
    assert message.subject == "Confirm the e-mail address of your chat account"
    match = re.search(r"http://testserver(/accounts/email/confirm/\S+/)", message.body)
    assert match, message.body
    return match.group(1)


def test_a_forgotten_password_is_set_anew_through_the_link_mailed_to_the_account(client):
    fields = {"password1": "a-long-pw-for-olga", "password2": "a-long-pw-for-olga"}
    form = client.get("/accounts/signup/").content.decode()
    assert 'name="email"' in form and "if you forget your password" in form
    assert 'type="email" name="email" autocomplete="email"' in form
    client.post("/accounts/signup/", {"username": "olga", "email": "Olga@EXAMPLE.com", **fields})
    assert User.objects.get(username="olga").email == "", "not before it is confirmed"
    assert "We sent a link to Olga@example.com" in client.get("/").content.decode()
    (confirmation,) = mail.outbox
    assert confirmation.to == ["Olga@example.com"]
    Client().get(confirm_link_in(confirmation))
    assert User.objects.get(username="olga").email == "Olga@example.com"
    mail.outbox.clear()
    User.objects.create_user("olga2", email="olga@example.com", password="pw-olga2-12345")
    User.objects.create_user("piet", email="piet@example.com", password="pw-piet-12345")

    visitor = Client()
    login_page = visitor.get("/accounts/login/").content.decode()
    assert (
        'href="/accounts/password/reset/"' in login_page and "Forgot your password?" in login_page
    )
    asked = visitor.post("/accounts/password/reset/", {"email": "OLGA@example.com"})
    assert asked["Location"] == "/accounts/password/reset/sent/"
    assert "If an account has that address" in visitor.get(asked["Location"]).content.decode()
    # One mail an account with that address, in any letter case, each naming its account.
    assert sorted(m.to[0] for m in mail.outbox) == ["Olga@example.com", "olga@example.com"]
    olgas = next(m for m in mail.outbox if m.to == ["Olga@example.com"])
    assert olgas.subject == "Set a new password for your chat account"
    assert '"olga"' in olgas.body and "a-long-pw-for-olga" not in olgas.body
    link = reset_link_in(olgas)

    opened = visitor.get(link)
    assert opened.status_code == 302, "Django moves the token out of the address bar"
    form = visitor.get(opened["Location"]).content.decode()
    assert "<strong>olga</strong>" in form and 'autocomplete="new-password"' in form
    new = {"new_password1": "olgas-new-pw-2026", "new_password2": "olgas-new-pw-2026"}
    refused = visitor.post(opened["Location"], {**new, "new_password2": "something-else"})
    assert refused.status_code == 200 and "didn\u2019t match" in refused.content.decode()
    done = visitor.post(opened["Location"], new)
    assert done["Location"] == "/accounts/reset/done/"
    assert "Your new password is set" in visitor.get(done["Location"]).content.decode()
    assert visitor.get("/").context["user"].username == "olga", "signed in here"

    assert not client.get("/").context["user"].is_authenticated, "signed out elsewhere"
    assert not client.login(username="olga", password="a-long-pw-for-olga")
    assert client.login(username="olga", password="olgas-new-pw-2026")
    assert client.login(username="olga2", password="pw-olga2-12345"), "the other stays as it was"
    used = Client().get(link, follow=True).content.decode()
    assert "This link has expired or has been used already." in used


def test_a_reset_for_an_address_no_account_has_looks_the_same_and_sends_nothing(client):
    User.objects.create_user("rosa", password="pw-rosa-12345")  # no address
    asked = client.post("/accounts/password/reset/", {"email": "nobody@example.com"})
    assert asked["Location"] == "/accounts/password/reset/sent/"
    refused = client.post("/accounts/password/reset/", {"email": "not an address"})
    assert refused.status_code == 200 and "Enter a valid email address." in refused.content.decode()
    assert mail.outbox == []


def test_an_account_gives_its_email_address_with_its_password(client):
    User.objects.create_user("sami", password="pw-sami-12345")
    assert client.get("/accounts/email/")["Location"].startswith("/accounts/login/")
    client.login(username="sami", password="pw-sami-12345")
    page = client.get("/accounts/password/").content.decode()
    assert 'href="/accounts/email/"' in page and "Add an e-mail address" in page
    refused = client.post("/accounts/email/", {"email": "sami@example.com", "password": "no"})
    assert refused.status_code == 400 and "That is not your password." in refused.content.decode()
    assert User.objects.get(username="sami").email == ""

    def give(address: str) -> str:
        given = client.post("/accounts/email/", {"email": address, "password": "pw-sami-12345"})
        assert given["Location"] == "/accounts/password/"
        return client.get("/accounts/password/").content.decode()

    page = give("sami@EXAMPLE.com")
    assert "We sent a link to sami@example.com: open it (within a day)" in page
    assert User.objects.get(username="sami").email == "", "not before it is confirmed"
    client.post("/accounts/password/reset/", {"email": "sami@example.com"})
    assert [m.to for m in mail.outbox] == [["sami@example.com"]], "no reset to it yet"
    link = confirm_link_in(mail.outbox[0])
    confirmed = Client().get(link)
    assert confirmed.status_code == 200
    assert "<strong>sami@example.com</strong> is the address" in confirmed.content.decode()
    assert User.objects.get(username="sami").email == "sami@example.com"
    used = Client().get(link)
    assert used.status_code == 400 and "it was used already" in used.content.decode()
    assert "Your e-mail address is sami@example.com already." in give("sami@example.com")
    page = client.get("/accounts/password/").content.decode()
    assert "<strong>sami@example.com</strong>" in page
    assert 'value="sami@example.com"' in client.get("/accounts/email/").content.decode()
    mail.outbox.clear()
    client.post("/accounts/password/reset/", {"email": "sami@example.com"})
    assert [m.to for m in mail.outbox] == [["sami@example.com"]]

    # Of two new addresses asked for, the one confirmed first wins; the other link is void.
    mail.outbox.clear()
    give("first@example.com")
    give("second@example.com")
    first, second = (confirm_link_in(m) for m in mail.outbox)
    Client().get(second)
    assert Client().get(first).status_code == 400
    assert User.objects.get(username="sami").email == "second@example.com"
    forged = Client().get(second.replace("/confirm/", "/confirm/x"))
    assert forged.status_code == 400 and "This link does not work" in forged.content.decode()

    client.post("/accounts/email/", {"email": "", "password": "pw-sami-12345"})
    assert User.objects.get(username="sami").email == ""
    assert "has no e-mail address now" in client.get("/accounts/password/").content.decode()


def test_without_a_way_to_send_email_a_password_is_reset_by_staff(client, settings):
    settings.CHAT_PASSWORD_RESET = False
    User.objects.create_user("tove", email="tove@example.com", password="pw-tove-12345")
    assert "/accounts/password/reset/" not in client.get("/accounts/login/").content.decode()
    closed = client.post("/accounts/password/reset/", {"email": "tove@example.com"})
    assert closed.status_code == 403 and "ask its staff" in closed.content.decode()
    assert mail.outbox == []
    assert 'name="email"' not in client.get("/accounts/signup/").content.decode()
    client.login(username="tove", password="pw-tove-12345")
    assert "/accounts/email/" not in client.get("/accounts/password/").content.decode()
    assert client.get("/accounts/email/").status_code == 403


def test_an_address_that_fails_to_sign_in_too_often_waits_an_hour(client, settings):
    settings.CHAT_ACCOUNT_RATE_LIMIT = 3
    User.objects.create_user("ulla", password="pw-ulla-12345")
    right = {"username": "ulla", "password": "pw-ulla-12345"}
    for _ in range(4):  # signing in does not count
        assert client.post("/accounts/login/", right)["Location"] == "/"
        client.post("/accounts/logout/")
    for _ in range(3):
        failed = client.post("/accounts/login/", {**right, "password": "guess"})
        assert failed.status_code == 200 and "didn't match" in failed.content.decode()

    refused = client.post("/accounts/login/", right)
    assert refused.status_code == 429
    page = refused.content.decode()
    assert "Too many attempts from here: try again in an hour." in page
    assert 'value="ulla"' in page and "didn't match" not in page
    assert not client.get("/").context["user"].is_authenticated
    elsewhere = Client(REMOTE_ADDR="192.0.2.7")
    assert elsewhere.post("/accounts/login/", right)["Location"] == "/"


def test_an_address_creates_a_limited_number_of_accounts_an_hour(client, settings):
    settings.CHAT_ACCOUNT_RATE_LIMIT = 2
    fields = {"password1": "a-long-pw-for-all", "password2": "a-long-pw-for-all"}
    refused = client.post("/accounts/signup/", {"username": "v1", **fields, "password2": "x"})
    assert refused.status_code == 200, "a refused form does not count"
    for name in ("v1", "v2"):
        assert client.post("/accounts/signup/", {"username": name, **fields}).status_code == 302
        client.post("/accounts/logout/")
    third = client.post("/accounts/signup/", {"username": "v3", **fields})
    assert third.status_code == 429 and "Too many attempts" in third.content.decode()
    assert not User.objects.filter(username="v3").exists()
    other = Client(REMOTE_ADDR="192.0.2.8")
    assert other.post("/accounts/signup/", {"username": "v3", **fields}).status_code == 302


def test_reset_links_are_limited_per_address_and_per_inbox(client, settings):
    settings.CHAT_ACCOUNT_RATE_LIMIT = 2
    User.objects.create_user("wim", email="wim@example.com", password="pw-wim-12345")
    for address in ("192.0.2.1", "192.0.2.2", "192.0.2.3"):
        asked = Client(REMOTE_ADDR=address).post(
            "/accounts/password/reset/", {"email": "WIM@example.com"}
        )
        assert asked["Location"] == "/accounts/password/reset/sent/", "the same page each time"
    assert len(mail.outbox) == 2, "an inbox gets two an hour, from wherever they are asked"

    for _ in range(2):
        client.post("/accounts/password/reset/", {"email": "someone@example.com"})
    refused = client.post("/accounts/password/reset/", {"email": "other@example.com"})
    assert refused.status_code == 429 and "Too many attempts" in refused.content.decode()


def test_confirmation_links_to_one_inbox_are_limited(client, settings):
    settings.CHAT_ACCOUNT_RATE_LIMIT = 2
    User.objects.create_user("xia", password="pw-xia-12345")
    client.login(username="xia", password="pw-xia-12345")
    pages = []
    for _ in range(3):
        client.post("/accounts/email/", {"email": "xia@example.com", "password": "pw-xia-12345"})
        pages.append(client.get("/accounts/password/").content.decode())
    assert len(mail.outbox) == 2
    assert "Too many links went to xia@example.com in the last hour" in pages[-1]
    client.post("/accounts/email/", {"email": "xia@example.org", "password": "pw-xia-12345"})
    assert len(mail.outbox) == 3, "another inbox is still served"


def test_an_account_is_deleted_with_its_conversations_and_their_memory(client, backend_url):
    User.objects.create_user("pat", password="pw-pat-12345")
    User.objects.create_user("quinn", password="pw-quinn-12345")
    client.login(username="pat", password="pw-pat-12345")
    remembered = say(client, "remember me", memory=True)["conversation"]
    say(client, "not this", memory=False)
    thread_id = Conversation.objects.get(pk=remembered).thread_id
    other = Client()
    other.login(username="quinn", password="pw-quinn-12345")
    kept = say(other, "mine stays", memory=True)["conversation"]

    password_page = client.get("/accounts/password/").content.decode()
    assert 'href="/accounts/delete/"' in password_page
    page = client.get("/accounts/delete/").content.decode()
    assert "your 2 conversations: their transcripts and the assistant" in page
    assert 'autocomplete="current-password"' in page
    refused = client.post("/accounts/delete/", {"password": "not-it"})
    assert refused.status_code == 400 and "That is not your password." in refused.content.decode()
    assert User.objects.filter(username="pat").exists() and not thread_is_gone(thread_id)

    deleted = client.post("/accounts/delete/", {"password": "pw-pat-12345"})
    assert deleted.status_code == 302 and deleted["Location"] == "/"
    assert not User.objects.filter(username="pat").exists()
    assert not Conversation.objects.filter(pk=remembered).exists()
    assert not Message.objects.filter(text__in=["remember me", "not this"]).exists()
    assert thread_is_gone(thread_id), "the assistant's memory goes with it"
    chat = client.get("/")
    assert not chat.context["user"].is_authenticated
    assert "Your account was deleted" in chat.content.decode()
    assert not client.login(username="pat", password="pw-pat-12345")
    assert Conversation.objects.filter(pk=kept).exists(), "another account's stays"


def test_only_a_signed_in_non_staff_account_deletes_itself(client, django_user_model):
    assert client.get("/accounts/delete/")["Location"].startswith("/accounts/login/")
    django_user_model.objects.create_user("root", password="pw-root-12345", is_staff=True)
    client.login(username="root", password="pw-root-12345")
    refused = client.post("/accounts/delete/", {"password": "pw-root-12345"})
    assert refused.status_code == 403 and "admin console" in refused.content.decode()
    assert django_user_model.objects.filter(username="root").exists()


def test_a_conversation_downloads_as_markdown_as_its_transcript_shows_it(client, backend_url):
    conv = say(client, "one", memory=True)["conversation"]
    old = say(client, "**two**", memory=False, conversation=conv)["reply"]
    again = post(client, f"/api/conversations/{conv}/regenerate/").json()["reply"]
    client.patch(
        f"/api/conversations/{conv}/", {"title": "Notes: día 1"}, content_type="application/json"
    )
    assert f'href="/c/{conv}/download/"' in client.get(f"/c/{conv}/").content.decode()

    response = client.get(f"/c/{conv}/download/")
    assert response.status_code == 200
    assert response["Content-Type"] == "text/markdown; charset=utf-8"
    assert response["Content-Disposition"] == 'attachment; filename="notes-dia-1.md"'
    document = response.content.decode()
    day = again["created_at"][:10]
    headings = [line for line in document.splitlines() if line.startswith("#")]
    assert headings[0] == "# Notes: día 1"
    assert [h.split(" · ")[0] for h in headings[1:]] == ["## You", "## Assistant"] * 2
    assert headings[1].startswith(f"## You · {day} ") and headings[1].endswith(" · remembered")
    assert headings[4].endswith(" · not remembered")
    assert "\n**two**\n" in document, "the text as it was typed, markdown and all"
    assert again["text"] in document and old["id"] != again["id"]
    assert document.count("You said: **two**") == 1, "the reply it replaced is left out"
    assert Client().get(f"/c/{conv}/download/").status_code == 404, "a stranger's"


def test_all_of_an_accounts_conversations_download_as_one_zip(client, backend_url, settings):
    User.objects.create_user("ines", password="pw-ines-12345")
    client.login(username="ines", password="pw-ines-12345")
    first = say(client, "one", memory=True)["conversation"]
    say(client, "two", memory=False, conversation=first)
    post(client, f"/api/conversations/{first}/regenerate/")
    second = say(client, "another", memory=False)["conversation"]
    client.patch(
        f"/api/conversations/{second}/", {"title": "Día 2"}, content_type="application/json"
    )
    stranger = Client()
    say(stranger, "not hers", memory=False)
    for page in ("/accounts/password/", "/accounts/delete/"):
        assert 'href="/download/" download' in client.get(page).content.decode(), page

    response = client.get("/download/")
    assert response.status_code == 200
    assert response["Content-Type"] == "application/zip"
    day = timezone.now().strftime("%Y-%m-%d")
    assert response["Content-Disposition"] == f'attachment; filename="conversations-{day}.zip"'
    archive = zipfile.ZipFile(io.BytesIO(response.content))
    names = archive.namelist()
    assert names == [
        f"{day}-one-{first.replace('-', '')[:8]}.md",
        f"{day}-dia-2-{second.replace('-', '')[:8]}.md",
    ], "oldest first, named after the day, the title and the id"
    for name, conversation in zip(names, (first, second), strict=True):
        alone = client.get(f"/c/{conversation}/download/").content.decode()
        assert archive.read(name).decode() == alone, "each as its own Download saves it"
    assert "not hers" not in str([archive.read(name) for name in names])
    theirs = stranger.get("/download/")
    assert theirs.status_code == 200
    assert len(zipfile.ZipFile(io.BytesIO(theirs.content)).namelist()) == 1

    settings.CHAT_REQUIRE_LOGIN = True
    assert Client().get("/download/")["Location"].startswith("/accounts/login/")


def test_the_sidebar_offers_download_all_once_there_is_something_to_save(client, backend_url):
    def offered(path: str) -> bool:
        link = re.search(r'<a [^>]*id="download-all"[^>]*>', client.get(path).content.decode())
        assert link is not None and 'href="/download/"' in link.group()
        return " hidden" not in link.group()

    assert not offered("/"), "a new visitor has nothing to save"
    say(client, "something to keep", memory=False)
    assert offered("/")
    assert offered("/?q=nothing-matches"), "a search that finds nothing still has them all"
    assert offered("/?offset=20"), "past the last page too"


def _share_link(client: Client, conversation: str, action: str) -> str:
    answer = client.post(f"/c/{conversation}/share/", {"action": action})
    assert answer["Location"] == f"/c/{conversation}/share/"
    page = client.get(answer["Location"]).content.decode()
    link = re.search(r'id="share-url" value="http://testserver(/s/[^"]+/)"', page)
    assert link, page
    return link.group(1)


def test_a_shared_link_shows_the_conversation_as_it_was_when_shared(client, backend_url):
    User.objects.create_user("hana", password="pw-hana-12345")
    client.login(username="hana", password="pw-hana-12345")
    conv = say(client, "first question", memory=True)["conversation"]
    say(client, "second question", memory=True, conversation=conv)
    assert f'href="/c/{conv}/share/"' in client.get(f"/c/{conv}/").content.decode()
    assert "Create link" in client.get(f"/c/{conv}/share/").content.decode()
    stranger = Client()
    assert stranger.get(f"/c/{conv}/share/").status_code == 404, "only its owner shares it"
    assert stranger.post(f"/c/{conv}/share/", {"action": "share"}).status_code == 404

    link = _share_link(client, conv, "share")
    # After sharing: the second question edited (its old reply replaced), then a third.
    second = Message.objects.get(text="second question")
    edited = post(
        client,
        f"/api/conversations/{conv}/regenerate/",
        {"message": str(second.pk), "text": "second, edited"},
    )
    assert edited.status_code == 200
    say(client, "third question", memory=True, conversation=conv)

    reader = Client()
    shared = reader.get(link)
    assert shared.status_code == 200
    assert shared["X-Robots-Tag"] == "noindex, nofollow"
    assert "no-store" in shared["Cache-Control"], "a stopped share must not live on in a cache"
    page = shared.content.decode()
    assert "first question" in page and "You said: second question" in page
    assert "second, edited" not in page and "third question" not in page
    assert "hana" not in page, "not the owner's name"
    assert "Start a chat of your own" in page and 'name="text"' not in page, "read only"
    assert "It is yours" in client.get(link).content.decode()
    assert not reader.cookies.get("sessionid"), "reading it gives a visitor no session"

    assert _share_link(client, conv, "update") == link, "the same link, as it is now"
    page = stranger.get(link).content.decode()
    assert "second, edited" in page and "third question" in page
    assert "You said: second question" not in page, "what the edit replaced has left"

    stopped = client.post(f"/c/{conv}/share/", {"action": "stop"})
    assert "No longer shared" in client.get(stopped["Location"]).content.decode()
    gone = stranger.get(link)
    assert gone.status_code == 404 and "This link does not work" in gone.content.decode()
    assert _share_link(client, conv, "share") != link


def test_sharing_is_refused_while_a_reply_is_written_and_follows_sign_in_rules(
    client, settings, backend_url
):
    conv = say(client, "hello", memory=False)["conversation"]
    Conversation.objects.filter(pk=conv).update(share_token="tok-en_1", shared_at=timezone.now())
    busy = Message.objects.get(text="hello").run
    busy.status = "streaming"
    busy.save()
    Conversation.objects.filter(pk=conv).update(active_run=busy)
    refused = client.post(f"/c/{conv}/share/", {"action": "update"}, follow=True)
    assert "Wait for the reply to finish (or stop it) before sharing it." in (
        refused.content.decode()
    )
    assert client.post(f"/c/{conv}/share/", {"action": "nonsense"}).status_code == 400
    settings.CHAT_REQUIRE_LOGIN = True
    assert Client().get("/s/tok-en_1/")["Location"].startswith("/accounts/login/")


def test_a_reply_is_rated_without_javascript(client, backend_url):
    conv = say(client, "rate me here", memory=False)["conversation"]
    reply = Message.objects.get(conversation_id=conv, role="assistant")
    page = client.get(f"/c/{conv}/").content.decode()
    assert f'action="/c/{conv}/feedback/"' in page
    assert 'aria-label="Bad reply"' in page and 'aria-pressed="false"' in page

    rated = client.post(f"/c/{conv}/feedback/", {"message": str(reply.pk), "feedback": "bad"})
    assert rated["Location"] == f"/c/{conv}/#m-{reply.pk}"
    page = client.get(f"/c/{conv}/").content.decode()
    pressed = re.search(
        r'value="(\w*)" class="rate link small" data-rating="bad" '
        r'aria-pressed="(\w+)"',
        page,
    )
    assert pressed and pressed.groups() == ("", "true"), "pressed; pressed again takes it back"
    client.post(f"/c/{conv}/feedback/", {"message": str(reply.pk), "feedback": ""})
    assert Message.objects.get(pk=reply.pk).feedback == ""

    refused = client.post(f"/c/{conv}/feedback/", {"message": "nonsense", "feedback": "bad"})
    assert "not a valid uuid" in client.get(refused["Location"]).content.decode()
    assert Client().post(f"/c/{conv}/feedback/", {"message": str(reply.pk)}).status_code == 404
