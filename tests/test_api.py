"""The JSON API, the form without JavaScript, ownership on every path, and CSRF."""

from __future__ import annotations

import uuid

import pytest
from asgiref.sync import async_to_sync
from django.contrib.auth.models import User
from django.test import Client

from runs import services
from runs.backend import get_backend
from runs.exceptions import ThreadNotFound
from runs.models import Conversation, Message, Run
from tests.conftest import Socket, conversations_for, seen_count

pytestmark = pytest.mark.django_db(transaction=True)


def post(client: Client, path: str, body: dict | None = None, **extra):
    return client.post(path, body or {}, content_type="application/json", **extra)


def say(client: Client, text: str, *, memory: bool, conversation: str | None = None) -> dict:
    response = post(
        client, "/api/chat/", {"text": text, "memory": memory, "conversation": conversation}
    )
    assert response.status_code == 200, response.content
    return response.json()


def thread_is_gone(thread_id: str) -> bool:
    async def check() -> bool:
        try:
            await get_backend().thread_state(thread_id=thread_id)
        except ThreadNotFound:
            return True
        return False

    return async_to_sync(check)()


# The API in both modes: the counts prove what the backend saw.


def test_api_memory_off_each_reply_sees_one_message(client, backend_url):
    first = say(client, "hello", memory=False)
    assert first["mode"] == "stateless"
    assert first["reply"]["role"] == "assistant" and first["reply"]["remembered"] is False
    assert seen_count(first["reply"]["text"]) == 1
    second = say(client, "again", memory=False, conversation=first["conversation"])
    assert second["conversation"] == first["conversation"]
    assert seen_count(second["reply"]["text"]) == 1
    assert Conversation.objects.get(pk=first["conversation"]).thread_id == ""


def test_api_a_reply_cut_at_the_length_limit_says_so(client, short_backend_url):
    done = say(client, "tell me everything", memory=False)
    assert done["reply"]["text"] == "You said: tell me "
    assert done["reply"]["status"] == "completed"
    assert done["reply"]["notice"] == services.REPLY_CUT_NOTICE


def test_api_continues_a_cut_reply_and_the_form_does_without_javascript(client, short_backend_url):
    done = say(client, "tell me everything", memory=True)
    conv = done["conversation"]
    assert done["reply"]["cut"] is True
    response = post(client, f"/api/conversations/{conv}/continue/")
    assert response.status_code == 200, response.content
    more = response.json()
    assert more["conversation"] == conv and more["mode"] == "thread" and more["replaces"] == []
    assert more["reply"]["id"] == done["reply"]["id"]
    assert more["reply"]["text"] == "You said: tell me You said: Continue your "
    assert more["reply"]["cut"] is True
    refused = post(client, f"/api/conversations/{conv}/continue/", {"message": "x"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_frame"

    # Without JavaScript: the cut reply has a Continue button, which posts and waits.
    page = client.get(f"/c/{conv}/")
    assert f'action="/c/{conv}/continue/"'.encode() in page.content
    assert b'data-cut="true"' in page.content
    posted = client.post(f"/c/{conv}/continue/")
    assert posted.status_code == 302 and posted["Location"] == f"/c/{conv}/"
    messages = client.get(f"/api/conversations/{conv}/").json()["messages"]
    assert len(messages) == 2
    assert (
        messages[1]["text"] == "You said: tell me You said: Continue your You said: Continue your "
    )
    assert Client().post(f"/c/{conv}/continue/").status_code == 404, "a stranger's"


def test_api_continue_refuses_a_reply_that_was_not_cut(client, backend_url):
    done = say(client, "hello", memory=False)
    conv = done["conversation"]
    assert done["reply"]["cut"] is False
    refused = post(client, f"/api/conversations/{conv}/continue/")
    assert refused.status_code == 409 and refused.json()["error"]["code"] == "not_continuable"
    page = client.get(f"/c/{conv}/")
    assert f"/c/{conv}/continue/".encode() not in page.content
    # The form without JavaScript says why, on the page it comes back to.
    followed = client.post(f"/c/{conv}/continue/", follow=True)
    assert b"Only the last reply" in followed.content
    assert Run.objects.filter(conversation_id=conv).count() == 1


def test_api_regenerates_the_last_reply_in_its_place_and_in_the_memory(client, backend_url):
    conv = say(client, "one", memory=True)["conversation"]
    old = say(client, "two", memory=True, conversation=conv)["reply"]

    response = post(client, f"/api/conversations/{conv}/regenerate/")
    assert response.status_code == 200, response.content
    again = response.json()
    assert again["conversation"] == conv and again["mode"] == "thread"
    assert again["replaces"] == [old["id"]] and again["reply"]["id"] != old["id"]
    assert seen_count(again["reply"]["text"]) == 2
    detail = client.get(f"/api/conversations/{conv}/").json()
    assert [m["id"] for m in detail["messages"]][-1] == again["reply"]["id"]
    assert len(detail["messages"]) == 4
    # Searching finds what the transcript shows, not the reply it replaced.
    Message.objects.filter(pk=again["reply"]["id"]).update(text="fresh words")
    assert client.get("/api/conversations/?q=fresh").json()["conversations"]
    Message.objects.filter(pk=old["id"]).update(text="stale words")
    assert client.get("/api/conversations/?q=stale").json()["conversations"] == []


def test_api_edits_the_last_message_and_the_form_does_without_javascript(client, backend_url):
    conv = say(client, "one", memory=False)["conversation"]
    typo = say(client, "twoo", memory=False, conversation=conv)
    edited = post(client, f"/api/conversations/{conv}/regenerate/", {"text": "two"}).json()
    assert len(edited["replaces"]) == 2 and typo["reply"]["id"] in edited["replaces"]
    assert edited["reply"]["text"] == "You said: two (I can see 1 of your messages)"
    for body, code in [({"text": " "}, "empty_text"), ({"title": "x"}, "invalid_frame")]:
        refused = post(client, f"/api/conversations/{conv}/regenerate/", body)
        assert refused.status_code == 400 and refused.json()["error"]["code"] == code

    # Without JavaScript: a page with the message to edit; a refused text comes back with why.
    page = client.get(f"/c/{conv}/edit/")
    assert page.status_code == 200 and b">two</textarea>" in page.content
    refused = client.post(f"/c/{conv}/edit/", {"text": "   "})
    assert refused.status_code == 400 and b"Type a message" in refused.content
    done = client.post(f"/c/{conv}/edit/", {"text": "three"})
    assert done.status_code == 302 and done["Location"] == f"/c/{conv}/"
    texts = [m["text"] for m in client.get(f"/api/conversations/{conv}/").json()["messages"]]
    assert texts == [
        "one",
        "You said: one (I can see 1 of your messages)",
        "three",
        "You said: three (I can see 1 of your messages)",
    ]
    assert Client().get(f"/c/{conv}/edit/").status_code == 404, "a stranger's"


def test_api_edits_an_earlier_message_and_so_does_the_form_without_javascript(client, backend_url):
    conv = say(client, "one", memory=True)["conversation"]
    say(client, "two", memory=True, conversation=conv)
    say(client, "three", memory=True, conversation=conv)
    ids = [m["id"] for m in client.get(f"/api/conversations/{conv}/").json()["messages"]]

    edited = post(
        client, f"/api/conversations/{conv}/regenerate/", {"message": ids[2], "text": "2"}
    )
    assert edited.status_code == 200, edited.content
    assert edited.json()["replaces"] == ids[2:]
    assert edited.json()["reply"]["text"] == "You said: 2 (I can see 2 of your messages)"
    for message in ["nope", ids[1], ids[2], 7]:
        refused = post(client, f"/api/conversations/{conv}/regenerate/", {"message": message})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_frame"

    # Without JavaScript: each of the user's messages has its Edit link, which says what goes.
    messages = client.get(f"/api/conversations/{conv}/").json()["messages"]
    page = client.get(f"/c/{conv}/").content.decode()
    for message in messages[::2]:
        assert f'href="/c/{conv}/edit/?message={message["id"]}"' in page
    form = client.get(f"/c/{conv}/edit/?message={messages[0]['id']}").content.decode()
    assert ">one</textarea>" in form and "the place of the 3 messages after it" in form
    done = client.post(f"/c/{conv}/edit/", {"message": messages[0]["id"], "text": "1"})
    assert done.status_code == 302 and done["Location"] == f"/c/{conv}/"
    texts = [m["text"] for m in client.get(f"/api/conversations/{conv}/").json()["messages"]]
    assert texts == ["1", "You said: 1 (I can see 1 of your messages)"]
    gone = client.get(f"/c/{conv}/edit/?message={messages[0]['id']}", follow=True)
    assert "There is no such message of yours to edit." in gone.content.decode()


def test_api_regenerate_errors(client, backend_url):
    missing = post(client, f"/api/conversations/{uuid.uuid4()}/regenerate/")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "not_found"
    assert client.get(f"/api/conversations/{uuid.uuid4()}/regenerate/").status_code == 405
    conv = say(client, "mine", memory=False)["conversation"]
    stranger = post(Client(), f"/api/conversations/{conv}/regenerate/")
    assert stranger.status_code == 404
    empty = Conversation.objects.create(session_key=client.session[services.VISITOR_SESSION_KEY])
    nothing = post(client, f"/api/conversations/{empty.pk}/regenerate/")
    assert nothing.status_code == 409 and nothing.json()["error"] == {
        "code": "no_reply",
        "message": "Nothing to regenerate or edit yet: the last message has no reply.",
    }


def test_api_memory_on_remembers_forget_and_delete(client, backend_url):
    one = say(client, "one", memory=True)
    conv = one["conversation"]
    assert one["mode"] == "thread" and one["reply"]["remembered"] is True
    assert seen_count(say(client, "two", memory=True, conversation=conv)["reply"]["text"]) == 2

    # Off leaves the thread alone; on again resumes it.
    flipped = post(client, f"/api/conversations/{conv}/memory/", {"enabled": False}).json()
    assert flipped["memory"] is False and flipped["has_thread"] is True
    assert seen_count(say(client, "aside", memory=False, conversation=conv)["reply"]["text"]) == 1
    assert seen_count(say(client, "three", memory=True, conversation=conv)["reply"]["text"]) == 3

    detail = client.get(f"/api/conversations/{conv}/").json()
    assert [m["text"] for m in detail["messages"] if m["role"] == "user"] == [
        "one",
        "two",
        "aside",
        "three",
    ]
    assert [m["remembered"] for m in detail["messages"] if m["role"] == "user"] == [
        True,
        True,
        False,
        True,
    ]
    listing = client.get("/api/conversations/").json()
    assert [c["id"] for c in listing["conversations"]] == [conv]

    thread_id = Conversation.objects.get(pk=conv).thread_id
    forgotten = post(client, f"/api/conversations/{conv}/forget/").json()
    assert forgotten["has_thread"] is False
    assert thread_is_gone(thread_id)
    assert seen_count(say(client, "four", memory=True, conversation=conv)["reply"]["text"]) == 1

    new_thread = Conversation.objects.get(pk=conv).thread_id
    deleted = client.delete(f"/api/conversations/{conv}/")
    assert deleted.status_code == 200
    assert not Conversation.objects.filter(pk=conv).exists()
    assert thread_is_gone(new_thread)
    assert client.get(f"/api/conversations/{conv}/").status_code == 404


# Every error status.


def error_of(response, status: int, code: str) -> str:
    assert response.status_code == status, response.content
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    return body["error"]["message"]


def test_invalid_requests_are_400(client, backend_url):
    error_of(
        client.post("/api/chat/", "{nope", content_type="application/json"), 400, "invalid_json"
    )
    error_of(post(client, "/api/chat/", {"text": "hi"}), 400, "invalid_frame")
    error_of(post(client, "/api/chat/", {"memory": True}), 400, "invalid_frame")
    error_of(
        post(client, "/api/chat/", {"text": "hi", "memory": True, "conversation": "x"}),
        400,
        "invalid_frame",
    )
    error_of(post(client, "/api/chat/", {"text": " \n ", "memory": True}), 400, "empty_text")
    error_of(
        client.post("/api/chat/", "[1]", content_type="application/json"), 400, "invalid_frame"
    )
    assert not Message.objects.exists()


def test_unknown_conversations_and_endpoints_are_404(client, backend_url):
    missing = uuid.uuid4()
    error_of(client.get(f"/api/conversations/{missing}/"), 404, "not_found")
    error_of(post(client, f"/api/conversations/{missing}/forget/"), 404, "not_found")
    error_of(
        post(client, "/api/chat/", {"text": "hi", "memory": True, "conversation": str(missing)}),
        404,
        "not_found",
    )
    error_of(client.get("/api/nothing-here/"), 404, "not_found")


def test_a_second_message_while_one_runs_is_409(client, backend_url):
    done = say(client, "first", memory=True)
    conversation = Conversation.objects.get(pk=done["conversation"])
    running = Run.objects.create(
        conversation=conversation, mode=Run.Mode.THREAD, status=Run.Status.STREAMING
    )
    Conversation.objects.filter(pk=conversation.pk).update(active_run=running)
    error_of(
        post(
            client,
            "/api/chat/",
            {"text": "again", "memory": True, "conversation": str(conversation.pk)},
        ),
        409,
        "busy",
    )
    error_of(post(client, f"/api/conversations/{conversation.pk}/forget/"), 409, "busy")
    deleting = error_of(client.delete(f"/api/conversations/{conversation.pk}/"), 409, "busy")
    assert "before deleting" in deleting
    assert not Message.objects.filter(text="again").exists()
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_too_long_is_413_and_names_the_limit(client, settings, backend_url):
    settings.CHAT_MAX_MESSAGE_CHARS = 100
    message = error_of(
        post(client, "/api/chat/", {"text": "y" * 101, "memory": False}), 413, "text_too_long"
    )
    assert "100" in message


def test_rate_limit_is_429(client, settings, backend_url):
    settings.CHAT_RATE_LIMIT = 2
    say(client, "a", memory=False)
    say(client, "b", memory=False)
    error_of(post(client, "/api/chat/", {"text": "c", "memory": False}), 429, "rate_limited")
    # Another visitor has a budget of their own.
    assert (
        Client()
        .post("/api/chat/", {"text": "d", "memory": False}, content_type="application/json")
        .status_code
        == 200
    )


def test_backend_error_is_502_and_the_users_message_is_kept(client, fake_backend):
    fake_backend("status", status=500)
    error_of(post(client, "/api/chat/", {"text": "kept?", "memory": False}), 502, "backend_error")
    message = Message.objects.get(text="kept?")
    assert message.role == "user"
    assert message.run.status == Run.Status.FAILED and message.run.error_code == "backend_error"


def test_backend_down_is_503(client, closed_port_url):
    error_of(
        post(client, "/api/chat/", {"text": "hello?", "memory": True}), 503, "backend_unavailable"
    )
    assert Message.objects.filter(text="hello?").exists()


def test_backend_hanging_is_504(client, settings, fake_backend):
    fake_backend("hang")
    settings.LANGGRAPH_WAIT_TIMEOUT = 0.5
    error_of(post(client, "/api/chat/", {"text": "slow?", "memory": False}), 504, "backend_timeout")


# The form without JavaScript.


def test_form_chats_without_javascript(client, backend_url):
    page = client.get("/")
    assert b'action="/send/"' in page.content
    response = client.post("/send/", {"text": "no js here", "memory": "on"})
    assert response.status_code == 302
    conversation = Conversation.objects.get()
    assert response["Location"] == f"/c/{conversation.pk}/"
    page = client.get(response["Location"]).content.decode()
    assert "no js here" in page
    assert "I can see 1 of your messages" in page

    client.post("/send/", {"text": "second", "memory": "on", "conversation": str(conversation.pk)})
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "I can see 2 of your messages" in page
    # Memory off: the checkbox left unticked.
    client.post("/send/", {"text": "third", "conversation": str(conversation.pk)})
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert "You said: third (I can see 1 of your messages)" in page
    assert "not remembered" in page


def test_forget_works_without_javascript(client, backend_url):
    client.post("/send/", {"text": "one", "memory": "on"})
    conversation = Conversation.objects.get()
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert f'href="/c/{conversation.pk}/forget/"' in page
    confirm = client.get(f"/c/{conversation.pk}/forget/")
    assert b"Forget this conversation?" in confirm.content
    thread_id = conversation.thread_id
    done = client.post(f"/c/{conversation.pk}/forget/", follow=True)
    assert "Forgotten" in done.content.decode()
    assert thread_is_gone(thread_id)
    client.post("/send/", {"text": "two", "memory": "on", "conversation": str(conversation.pk)})
    assert (
        "You said: two (I can see 1 of your messages)"
        in client.get(f"/c/{conversation.pk}/").content.decode()
    )
    assert Client().get(f"/c/{conversation.pk}/forget/").status_code == 404


def test_delete_works_without_javascript_and_asks_first(client, backend_url):
    client.post("/send/", {"text": "one", "memory": "on"})
    conversation = Conversation.objects.get()
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert f'href="/c/{conversation.pk}/delete/"' in page
    assert Client().get(f"/c/{conversation.pk}/delete/").status_code == 404, "not a stranger's"
    assert Client().post(f"/c/{conversation.pk}/delete/").status_code == 404

    confirm = client.get(f"/c/{conversation.pk}/delete/")
    assert b"Delete this conversation?" in confirm.content
    assert Conversation.objects.filter(pk=conversation.pk).exists(), "asking deletes nothing"

    done = client.post(f"/c/{conversation.pk}/delete/", follow=True)
    assert done.redirect_chain[-1][0] == "/"
    page = done.content.decode()
    assert "Deleted “one”." in page
    assert f"/c/{conversation.pk}/" not in page, "gone from the list"
    assert not Conversation.objects.filter(pk=conversation.pk).exists()
    assert not Message.objects.filter(conversation_id=conversation.pk).exists()
    assert thread_is_gone(conversation.thread_id)
    assert client.get(f"/c/{conversation.pk}/").status_code == 404


def test_api_renames_a_conversation_and_refuses_what_it_cannot(client, backend_url):
    conv = say(client, "first words", memory=False)["conversation"]
    path = f"/api/conversations/{conv}/"

    def patch(body, on=client):
        return on.patch(path, body, content_type="application/json")

    renamed = patch({"title": "  Holiday plans "})
    assert renamed.status_code == 200, renamed.content
    assert renamed.json()["title"] == "Holiday plans"
    assert client.get(path).json()["title"] == "Holiday plans"
    for body, message in [
        ({"title": ""}, "A title cannot be blank."),
        ({"title": "x" * 201}, "A title can be at most 200 characters; this one has 201."),
        ({"title": "ok", "memory": False}, "Only `title` can be changed."),
        ({}, "`title` is required and must be a string."),
    ]:
        refused = patch(body)
        assert refused.status_code == 400
        assert refused.json()["error"] == {"code": "invalid_frame", "message": message}
    assert patch({"title": "mine now"}, on=Client()).status_code == 404, "not a stranger's"
    assert Conversation.objects.get(pk=conv).title == "Holiday plans"


def test_rename_works_without_javascript_and_keeps_what_was_typed(client, backend_url):
    client.post("/send/", {"text": "one", "memory": "on"})
    conversation = Conversation.objects.get()
    page = client.get(f"/c/{conversation.pk}/").content.decode()
    assert f'href="/c/{conversation.pk}/rename/"' in page
    assert Client().get(f"/c/{conversation.pk}/rename/").status_code == 404, "not a stranger's"

    form = client.get(f"/c/{conversation.pk}/rename/").content.decode()
    assert 'value="one"' in form
    refused = client.post(f"/c/{conversation.pk}/rename/", {"title": "y" * 201})
    assert refused.status_code == 400
    assert "at most 200 characters; this one has 201" in refused.content.decode()
    assert f'value="{"y" * 201}"' in refused.content.decode(), "what was typed is kept"
    assert Conversation.objects.get().title == "one"

    done = client.post(f"/c/{conversation.pk}/rename/", {"title": "Numbers"}, follow=True)
    assert done.redirect_chain[-1][0] == f"/c/{conversation.pk}/"
    page = done.content.decode()
    assert "Renamed to “Numbers”." in page
    assert "<title>Numbers · Chat</title>" in page


def test_api_lists_conversations_a_page_at_a_time_and_finds_them_by_title_or_message(client):
    user = User.objects.create_user("hana", password="pw-hana-12345")
    client.force_login(user)
    made = conversations_for(user, 55)
    Message.objects.create(conversation=made[53], role="user", text="Plans for the Lisbon trip")
    Conversation.objects.create(owner=User.objects.create_user("ivo"), title="Ivo's Lisbon")

    def titles(response) -> list[str]:
        assert response.status_code == 200, response.content
        return [row["title"] for row in response.json()["conversations"]]

    first = client.get("/api/conversations/")
    assert titles(first) == [f"Chat {index:02}" for index in range(50)]
    assert first.json()["next_offset"] == 50
    rest = client.get("/api/conversations/", {"offset": 50})
    assert titles(rest) == [f"Chat {index:02}" for index in range(50, 55)]
    assert rest.json()["next_offset"] is None

    # By a word in a message, in any case and spacing; by title; never another's.
    assert titles(client.get("/api/conversations/", {"q": "  LISBON\n"})) == ["Chat 53"]
    assert titles(client.get("/api/conversations/", {"q": "chat 0"})) == [
        f"Chat {index:02}" for index in range(10)
    ]
    nothing = client.get("/api/conversations/", {"q": "nowhere"})
    assert nothing.json() == {"conversations": [], "next_offset": None}

    for query, says in [
        ({"offset": "-1"}, "`offset` must be a whole number from 0"),
        ({"offset": "ten"}, "`offset` must be a whole number from 0"),
        ({"q": "x" * 201}, "A search can be at most 200 characters; this one has 201."),
        ({"q": "a\x00b"}, "must not contain NUL"),
    ]:
        refused = client.get("/api/conversations/", query)
        assert refused.status_code == 400, query
        assert refused.json()["error"]["code"] == "invalid_frame"
        assert says in refused.json()["error"]["message"]


def test_the_list_pages_and_searches_without_javascript(client):
    user = User.objects.create_user("jo", password="pw-jo-12345")
    client.force_login(user)
    made = conversations_for(user, 52)
    Message.objects.create(conversation=made[51], role="user", text="the Lisbon trip")

    newest = client.get("/").content.decode()
    assert newest.count('<li data-updated="') == 50
    assert 'href="?offset=50">Show older</a>' in newest
    older = client.get("/", {"offset": 50}).content.decode()
    assert [f"Chat {index}" in older for index in (49, 50, 51)] == [False, True, True]
    assert ">Newest</a>" in older

    found = client.get(f"/c/{made[0].pk}/", {"q": "lisbon"})
    assert found.status_code == 200
    page = found.content.decode()
    assert page.count('<li data-updated="') == 1 and ">Chat 51</a>" in page
    assert "Matching “lisbon”" in page and ">Clear search</a>" in page
    assert 'value="lisbon"' in page
    assert "Chat 00" in page  # the conversation shown stays shown, beside the results

    refused = client.get("/", {"q": "x" * 201})
    assert refused.status_code == 400
    assert "A search can be at most 200 characters" in refused.content.decode()


def test_search_folds_the_case_of_every_letter_not_only_ascii(client):
    user = User.objects.create_user("zoe", password="pw-zoe-12345")
    client.force_login(user)
    made = conversations_for(user, 3)
    Message.objects.create(conversation=made[0], role="user", text="Über die Brücke")
    made[1].title = "ΣΟΦΊΑ's notes"
    made[1].save()
    Message.objects.create(conversation=made[2], role="user", text="100% sure_ly")

    def found(query: str) -> list[str]:
        listing = client.get("/api/conversations/", {"q": query}).json()["conversations"]
        return [c["title"] for c in listing]

    assert found("über") == found("ÜBER") == found("brücke") == [made[0].title]
    assert found("σοφία") == ["ΣΟΦΊΑ's notes"]
    assert found("0% s") == [made[2].title] and found("e_l") == [made[2].title]
    assert found("%") == [made[2].title] and found("_") == [made[2].title], "wildcards are text"
    assert found("bridge") == []


def test_delete_while_a_reply_streams_is_refused_and_keeps_everything(client, backend_url):
    client.post("/send/", {"text": "one", "memory": "on"})
    conversation = Conversation.objects.get()
    running = Run.objects.create(
        conversation=conversation, mode=Run.Mode.THREAD, status=Run.Status.STREAMING
    )
    Conversation.objects.filter(pk=conversation.pk).update(active_run=running)

    refused = client.post(f"/c/{conversation.pk}/delete/", follow=True)
    assert refused.redirect_chain[-1][0] == f"/c/{conversation.pk}/"
    assert "before deleting" in refused.content.decode()
    assert Message.objects.filter(conversation=conversation).count() == 2
    assert not thread_is_gone(conversation.thread_id)


def test_form_shows_errors_inline(client, closed_port_url):
    response = client.post("/send/", {"text": "anyone?", "memory": "on"}, follow=True)
    page = response.content.decode()
    assert "unavailable" in page
    assert "anyone?" in page, "the message is kept"
    response = client.post("/send/", {"text": "   ", "memory": "on"}, follow=True)
    assert "Type a message first." in response.content.decode()


# Ownership: nobody reads or touches another's conversation by any path.


@pytest.fixture
def people(db):
    alice = User.objects.create_user("alice", password="pw-alice-123")
    staff = User.objects.create_user("staffer", password="pw-staff-123", is_staff=True)
    anonymous_a, anonymous_b, signed_in, staff_client = Client(), Client(), Client(), Client()
    signed_in.force_login(alice)
    staff_client.force_login(staff)
    return {
        "anonymous_a": anonymous_a,
        "anonymous_b": anonymous_b,
        "alice": signed_in,
        "staff": staff_client,
    }


def cookie_of(client: Client) -> str:
    client.get("/")
    return f"sessionid={client.cookies['sessionid'].value}"


@pytest.mark.parametrize("owner_name", ["anonymous_a", "alice"])
def test_ownership_matrix(people, backend_url, owner_name):
    owner = people[owner_name]
    done = say(owner, "mine", memory=True)
    conv = done["conversation"]
    assert owner.get(f"/c/{conv}/").status_code == 200

    for name, other in people.items():
        if name == owner_name:
            continue
        assert other.get(f"/c/{conv}/").status_code == 404, name
        assert other.get(f"/api/conversations/{conv}/").status_code == 404, name
        assert conv not in other.get("/api/conversations/").content.decode(), name
        for path, body in (
            (f"/api/conversations/{conv}/memory/", {"enabled": False}),
            (f"/api/conversations/{conv}/forget/", {}),
            ("/api/chat/", {"text": "intrude", "memory": True, "conversation": conv}),
        ):
            assert post(other, path, body).status_code == 404, (name, path)
        assert other.delete(f"/api/conversations/{conv}/").status_code == 404, name
        renamed = other.patch(
            f"/api/conversations/{conv}/", {"title": "intruded"}, content_type="application/json"
        )
        assert renamed.status_code == 404, name
        response = other.post("/send/", {"text": "intrude", "memory": "on", "conversation": conv})
        assert response.status_code == 404, name

        async def over_websocket(cookie: str) -> list[str]:
            socket = await Socket(cookie=cookie).connect()
            codes = []
            for frame in (
                {"type": "conversation.watch", "conversation": conv},
                {"type": "conversation.forget", "conversation": conv},
                {"type": "conversation.rename", "conversation": conv, "title": "intruded"},
                {"type": "chat.cancel", "run": done["run"]},
                {"type": "chat.send", "text": "x", "memory": True, "conversation": conv},
            ):
                await socket.send(frame)
                codes.append((await socket.receive())["code"])
            await socket.close()
            return codes

        assert async_to_sync(over_websocket)(cookie_of(other)) == ["not_found"] * 5, name

    saved = Conversation.objects.get(pk=conv)
    assert saved.memory is True and saved.thread_id
    assert saved.title == "mine"
    assert not Message.objects.filter(text="intrude").exists()


def test_anonymous_conversations_are_adopted_at_sign_in(client, backend_url):
    User.objects.create_user("bob", password="pw-bob-12345")
    done = say(client, "before signing in", memory=False)
    response = client.post("/accounts/login/", {"username": "bob", "password": "pw-bob-12345"})
    assert response.status_code == 302
    listing = client.get("/api/conversations/").json()["conversations"]
    assert [c["id"] for c in listing] == [done["conversation"]]
    assert Conversation.objects.get(pk=done["conversation"]).owner.username == "bob"
    # Signed out, the visitor starts afresh and sees nothing of bob's.
    client.post("/accounts/logout/")
    assert client.get("/api/conversations/").json() == {"conversations": [], "next_offset": None}


def test_require_login_everywhere(client, settings, backend_url):
    settings.CHAT_REQUIRE_LOGIN = True
    assert client.get("/").status_code == 302
    error_of(post(client, "/api/chat/", {"text": "hi", "memory": True}), 401, "login_required")
    assert client.post("/send/", {"text": "hi"}).status_code == 302

    async def refused() -> bool:
        connected, _ = await Socket().communicator.connect(timeout=5)
        return connected

    assert async_to_sync(refused)() is False
    User.objects.create_user("carol", password="pw-carol-123")
    client.login(username="carol", password="pw-carol-123")
    assert client.get("/").status_code == 200
    assert seen_count(say(client, "in", memory=False)["reply"]["text"]) == 1


# CSRF: every unsafe request made with a session.


def test_csrf_is_enforced_on_every_unsafe_session_request(backend_url):
    client = Client(enforce_csrf_checks=True)
    listing = client.get("/api/conversations/")
    token = listing.cookies["csrftoken"].value
    refused = post(client, "/api/chat/", {"text": "hi", "memory": False})
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "csrf_failed"
    assert client.post("/send/", {"text": "hi", "memory": "on"}).status_code == 403
    assert not Message.objects.exists()

    done = post(client, "/api/chat/", {"text": "hi", "memory": True}, HTTP_X_CSRFTOKEN=token)
    assert done.status_code == 200
    conv = done.json()["conversation"]
    for method, path in (
        ("post", f"/api/conversations/{conv}/memory/"),
        ("post", f"/api/conversations/{conv}/forget/"),
        ("delete", f"/api/conversations/{conv}/"),
    ):
        response = getattr(client, method)(
            path, {"enabled": False}, content_type="application/json"
        )
        assert response.status_code == 403, path
    assert Conversation.objects.filter(pk=conv, memory=True).exists()
    ok = client.delete(f"/api/conversations/{conv}/", HTTP_X_CSRFTOKEN=token)
    assert ok.status_code == 200


def test_api_shares_a_conversation_and_stops(client, backend_url):
    conv = say(client, "share me", memory=False)["conversation"]
    assert client.get(f"/api/conversations/{conv}/").json()["share"] is None
    shared = post(client, f"/api/conversations/{conv}/share/")
    assert shared.status_code == 200
    share = shared.json()["share"]
    assert share["url"].startswith("http://testserver/s/") and share["shared_at"]
    assert client.get(f"/api/conversations/{conv}/").json()["share"] == share
    page = Client().get(share["url"].removeprefix("http://testserver"))
    assert page.status_code == 200 and "You said: share me" in page.content.decode()
    assert post(Client(), f"/api/conversations/{conv}/share/").status_code == 404

    stopped = client.delete(f"/api/conversations/{conv}/share/")
    assert stopped.status_code == 200 and stopped.json() == {"share": None}
    assert Client().get(share["url"].removeprefix("http://testserver")).status_code == 404

    again = post(client, f"/api/conversations/{conv}/share/").json()["share"]
    assert again["url"] != share["url"], "a stopped link never comes back"
    assert client.delete(f"/api/conversations/{conv}/").status_code == 200
    assert Client().get(again["url"].removeprefix("http://testserver")).status_code == 404


def test_api_rates_a_reply_and_takes_the_rating_back(client, backend_url):
    done = say(client, "rate this", memory=False)
    conv, reply = done["conversation"], done["reply"]
    assert reply["feedback"] is None
    path = f"/api/conversations/{conv}/messages/{reply['id']}/feedback/"
    rated = post(client, path, {"feedback": "good"})
    assert rated.status_code == 200
    assert rated.json() == {"conversation": conv, "message": reply["id"], "feedback": "good"}
    shown = client.get(f"/api/conversations/{conv}/").json()["messages"]
    assert [m.get("feedback") for m in shown] == [None, "good"]
    assert "feedback" not in shown[0], "the user's own messages are not rated"

    refused = post(client, path, {"feedback": "great"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "invalid_frame"
    question = f"/api/conversations/{conv}/messages/{shown[0]['id']}/feedback/"
    assert post(client, question, {"feedback": "bad"}).status_code == 400
    assert post(Client(), path, {"feedback": "bad"}).status_code == 404
    assert post(client, path, {"feedback": None}).json()["feedback"] is None
    assert Message.objects.get(pk=reply["id"]).feedback == ""
