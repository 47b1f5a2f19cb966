"""The admin console: staff review conversations beside what the assistant remembers of them.

Against a real `langgraph dev` (echo model): the echo answers
`You said: <text> (I can see N of your messages)`.
"""

from __future__ import annotations

import re
import uuid
from datetime import timedelta
from urllib.parse import urlencode

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from agent.server import free_port
from runs import services
from runs.backend import get_backend
from runs.exceptions import ThreadNotFound
from runs.models import Conversation, Message, Run
from runs.selectors import Owner

pytestmark = pytest.mark.django_db(transaction=True)

CHANGELIST = "/admin/runs/conversation/"
RUNS = "/admin/runs/run/"


def chat(text: str, *, memory: bool, conversation=None, owner: Owner | None = None) -> Conversation:
    """One message through the real chat flow (run, thread, both messages); its conversation.
    Without `owner`, a new anonymous visitor (or the conversation's own owner)."""
    if owner is None and conversation is not None:
        owner = Owner(user_id=conversation.owner_id, session_key=conversation.session_key)
    owner = owner or Owner(user_id=None, session_key=uuid.uuid4().hex)
    outcome = async_to_sync(services.chat_wait)(
        owner=owner,
        conversation_id=conversation.pk if conversation else None,
        text=text,
        memory=memory,
    )
    return Conversation.objects.get(pk=outcome.started.conversation.pk)


def thread_state(thread_id: str):
    async def read():
        return await get_backend().thread_state(thread_id=thread_id)

    return async_to_sync(read)()


def thread_delete(thread_id: str) -> None:
    async def delete():
        await get_backend().thread_delete(thread_id=thread_id)

    async_to_sync(delete)()


def change_url(conversation: Conversation) -> str:
    return reverse("admin:runs_conversation_change", args=[conversation.pk])


def section(page: str, section_id: str) -> str:
    """The HTML of `<section id=...>` on the conversation page."""
    start = page.index(f'id="{section_id}"')
    return page[start : page.index("</section>", start)]


def transcript_of(page: str) -> str:
    start = page.index('id="transcript-heading"')
    return page[start : page.index("</section>", start)]


def rows(response) -> list:
    return list(response.context["cl"].result_list)


# Lists.


def test_conversation_list_shows_owner_title_memory_messages_and_thread(
    admin_client, backend_url, django_user_model
):
    alice = django_user_model.objects.create_user("alice", password="pw-alice-1")
    remembered = chat("plan my garden", memory=True, owner=Owner(user_id=alice.pk, session_key=""))
    chat("and the fence", memory=True, conversation=remembered)
    stateless = chat("what is a haiku", memory=False)

    response = admin_client.get(CHANGELIST)

    assert response.status_code == 200
    page = response.content.decode()
    assert "plan my garden" in page and "what is a haiku" in page
    assert "alice" in page and "anonymous session" in page
    by_id = {row.pk: row for row in rows(response)}
    assert by_id[remembered.pk].message_count == 4
    assert by_id[stateless.pk].message_count == 2
    assert by_id[remembered.pk].has_thread and not by_id[stateless.pk].has_thread
    assert not by_id[stateless.pk].memory
    # The session key of an anonymous visitor is a credential: never shown.
    assert stateless.session_key not in page


def test_conversation_filters_memory_thread_run_status_and_date(
    admin_client, backend_url, settings
):
    remembered = chat("remember me", memory=True)
    stateless = chat("forget me", memory=False)
    settings.LANGGRAPH_URL = f"http://127.0.0.1:{free_port()}"  # the backend goes down
    failed = chat("nobody answers", memory=False)

    def listed(query: str) -> set:
        response = admin_client.get(CHANGELIST + query)
        assert response.status_code == 200
        return {row.pk for row in rows(response)}

    assert listed("?memory__exact=1") == {remembered.pk}
    assert listed("?memory__exact=0") == {stateless.pk, failed.pk}
    assert listed("?has_thread=yes") == {remembered.pk}
    assert listed("?has_thread=no") == {stateless.pk, failed.pk}
    assert listed("?run_status=failed") == {failed.pk}
    assert listed("?run_status=completed") == {remembered.pk, stateless.pk}
    # The "Last activity" date filter, with the parameters its "Today" link sends.
    today = timezone.localtime().replace(hour=0, minute=0, second=0, microsecond=0)
    tomorrow = today + timedelta(days=1)
    everything = {remembered.pk, stateless.pk, failed.pk}
    assert listed("?" + urlencode({"updated_at__gte": today, "updated_at__lt": tomorrow})) == (
        everything
    )
    assert listed("?" + urlencode({"updated_at__gte": tomorrow})) == set()


def test_conversation_search_covers_title_message_text_and_owner(
    admin_client, backend_url, django_user_model
):
    bob = django_user_model.objects.create_user("bobthebuilder", password="pw-bob-1")
    first = chat("gardening tips", memory=False, owner=Owner(bob.pk, ""))
    chat("tell me about xylophones", memory=False, conversation=first)
    other = chat("cooking rice", memory=False)

    def found(term: str) -> set:
        response = admin_client.get(CHANGELIST, {"q": term})
        assert response.status_code == 200
        return {row.pk for row in rows(response)}

    assert found("cooking") == {other.pk}  # the title
    assert found("xylophones") == {first.pk}  # text of a later message, not in the title
    assert found("bobthebuilder") == {first.pk}  # the owner
    assert found("You said") == {first.pk, other.pk}  # the assistant's replies, once each
    chat("Über die Brücke", memory=False, conversation=other)
    assert found("über") == found("BRÜCKE") == {other.pk}, "every letter's case is folded"
    assert found("BOBTHE") == {first.pk}


def test_runs_list_finds_failed_runs_by_status_and_mode(admin_client, backend_url, settings):
    ok = chat("all good", memory=True)
    settings.LANGGRAPH_URL = f"http://127.0.0.1:{free_port()}"
    broken = chat("backend is down", memory=False)
    failed_run = Run.objects.get(conversation=broken)

    response = admin_client.get(RUNS)
    assert response.status_code == 200
    assert {run.pk for run in rows(response)} == set(Run.objects.values_list("pk", flat=True))

    # Two clicks from the admin index: "Runs", then the "failed" filter.
    assert 'href="/admin/runs/run/"' in admin_client.get("/admin/").content.decode()
    page = admin_client.get(RUNS).content.decode()
    assert "?status__exact=failed" in page
    response = admin_client.get(RUNS + "?status__exact=failed")
    assert [run.pk for run in rows(response)] == [failed_run.pk]
    page = response.content.decode()
    assert "backend_unavailable" in page
    assert change_url(broken) in page  # the conversation is one click away

    # From the conversation list: its failed-runs count links to exactly those runs.
    listed = admin_client.get(CHANGELIST).content.decode()
    failed_link = f"{RUNS}?conversation__id__exact={broken.pk}&amp;status__exact=failed"
    assert failed_link in listed
    response = admin_client.get(failed_link.replace("&amp;", "&"))
    assert [run.pk for run in rows(response)] == [failed_run.pk]
    # From a conversation's page: its runs.
    runs_link = f"{RUNS}?conversation__id__exact={ok.pk}"
    assert runs_link in admin_client.get(change_url(ok)).content.decode()
    assert [run.conversation_id for run in rows(admin_client.get(runs_link))] == [ok.pk]

    response = admin_client.get(RUNS + "?mode__exact=thread")
    assert [run.conversation_id for run in rows(response)] == [ok.pk]
    response = admin_client.get(RUNS + "?mode__exact=stateless")
    assert [run.conversation_id for run in rows(response)] == [broken.pk]


def test_run_page_shows_timings_error_and_its_messages(admin_client, backend_url):
    conversation = chat("time me", memory=True)
    run = Run.objects.get(conversation=conversation)

    response = admin_client.get(reverse("admin:runs_run_change", args=[run.pk]))

    assert response.status_code == 200
    page = response.content.decode()
    assert "completed" in page and "time to first token" in page.lower()
    assert "You said: time me" in page
    assert change_url(conversation) in page


# The conversation page.


def test_conversation_page_shows_transcript_beside_what_the_thread_remembers(
    admin_client, backend_url
):
    conversation = chat("my name is Ada", memory=True)
    chat("what is my name", memory=True, conversation=conversation)
    chat("a secret said off the record", memory=False, conversation=conversation)
    conversation.refresh_from_db()

    response = admin_client.get(change_url(conversation))

    assert response.status_code == 200
    page = response.content.decode()
    transcript = transcript_of(page)
    assert transcript.count("<li class=") == 6
    assert transcript.count(">remembered</span>") == 4
    assert transcript.count(">stateless</span>") == 2
    assert transcript.count("run completed") == 6
    assert "first token" in transcript and "duration" in transcript
    assert "a secret said off the record" in transcript

    remembers = section(page, "remembers")
    assert conversation.thread_id in remembers
    assert "You said: my name is Ada (I can see 1 of your messages)" in remembers
    assert "You said: what is my name (I can see 2 of your messages)" in remembers
    assert "off the record" not in remembers  # the stateless message never reached the thread
    assert remembers.count("<li class=") == len(thread_state(conversation.thread_id).messages)


def test_a_regenerated_reply_stays_in_the_console_marked_replaced(admin_client, backend_url):
    conversation = chat("first try", memory=True)
    owner = Owner(user_id=None, session_key=conversation.session_key)
    async_to_sync(services.chat_regenerate_wait)(owner=owner, conversation_id=conversation.pk)

    transcript = transcript_of(admin_client.get(change_url(conversation)).content.decode())
    assert transcript.count("<li class=") == 3
    assert transcript.count(">replaced</span>") == 1
    assert transcript.index(">replaced</span>") < transcript.rindex("You said: first try")
    run = Message.objects.get(replaced_at__isnull=False).run
    run_page = admin_client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode()
    assert "remembered, replaced (the user regenerated or edited it)" in run_page
    exported = admin_client.post(
        reverse("admin:runs_conversation_changelist"),
        {"action": "export_jsonl", "_selected_action": [str(conversation.pk)]},
    )
    line = orjson.loads(exported.content.splitlines()[0])
    assert [m["replaced_at"] is not None for m in line["messages"]] == [False, True, False]


def test_conversation_page_shows_a_reply_that_is_still_streaming(admin_client):
    conversation = Conversation.objects.create(title="in flight", thread_id="")
    run = Run.objects.create(
        conversation=conversation,
        mode=Run.Mode.STATELESS,
        status=Run.Status.STREAMING,
        partial_text="half of the <script>x()</script> answer",
    )
    Message.objects.create(conversation=conversation, role="user", text="go", run=run)
    Conversation.objects.filter(pk=conversation.pk).update(active_run=run)

    page = admin_client.get(change_url(conversation)).content.decode()

    transcript = transcript_of(page)
    assert "run streaming" in transcript
    assert "A reply is streaming right now" in transcript
    assert "half of the &lt;script&gt;x()&lt;/script&gt; answer" in transcript


def test_conversation_page_is_read_only(admin_client, backend_url):
    conversation = chat("history stays", memory=True)
    url = change_url(conversation)

    page = admin_client.get(url).content.decode()
    assert 'name="_save"' not in page
    assert "<textarea" not in page

    response = admin_client.post(url, {"title": "rewritten", "memory": ""})
    assert response.status_code == 403
    conversation.refresh_from_db()
    assert conversation.title == "history stays" and conversation.memory
    assert admin_client.get(CHANGELIST + "add/").status_code == 403
    delete = reverse("admin:runs_conversation_delete", args=[conversation.pk])
    assert admin_client.post(delete, {"post": "yes"}).status_code == 403
    assert Conversation.objects.filter(pk=conversation.pk).exists()


def test_remembers_panel_says_when_the_backend_is_unreachable(admin_client, backend_url, settings):
    conversation = chat("are you there", memory=True)
    settings.LANGGRAPH_URL = f"http://127.0.0.1:{free_port()}"

    response = admin_client.get(change_url(conversation))

    assert response.status_code == 200
    page = response.content.decode()
    assert "notice-unavailable" in section(page, "remembers")
    assert "unreachable" in section(page, "remembers")
    assert "are you there" in transcript_of(page)  # the transcript still shows


def test_remembers_panel_says_when_the_backend_does_not_answer_in_time(
    admin_client, fake_backend, monkeypatch
):
    from runs import admin as runs_admin

    monkeypatch.setattr(runs_admin, "REMEMBERS_TIMEOUT", 0.3)
    fake_backend("hang")
    conversation = Conversation.objects.create(title="slow backend", thread_id="some-thread")

    response = admin_client.get(change_url(conversation))

    assert response.status_code == 200
    remembers = section(response.content.decode(), "remembers")
    assert "notice-unavailable" in remembers
    assert "did not answer in time" in remembers


def test_remembers_panel_says_when_the_backend_answers_an_error(admin_client, fake_backend):
    fake_backend("status", status=500)
    conversation = Conversation.objects.create(title="broken backend", thread_id="some-thread")

    remembers = section(admin_client.get(change_url(conversation)).content.decode(), "remembers")

    assert "notice-error" in remembers
    assert "HTTP 500" in remembers
    assert "the fake backend failed" not in remembers  # backend details stay in the backend


def test_remembers_panel_says_when_the_thread_is_gone(admin_client, backend_url):
    conversation = chat("soon forgotten", memory=True)
    thread_delete(conversation.thread_id)

    page = admin_client.get(change_url(conversation)).content.decode()

    remembers = section(page, "remembers")
    assert "notice-gone" in remembers
    assert "no longer has" in remembers
    assert "You said" not in remembers


def test_remembers_panel_says_when_there_is_no_thread(admin_client, backend_url):
    conversation = chat("stateless only", memory=False)

    page = admin_client.get(change_url(conversation)).content.decode()

    assert "notice-no_thread" in section(page, "remembers")
    assert "has no backend thread" in section(page, "remembers")


def test_message_text_renders_inert_in_the_console(admin_client, backend_url):
    attack = "<script>alert(1)</script> <img src=x onerror=alert(2)> **bold**"
    conversation = chat(attack, memory=True)
    run = Run.objects.get(conversation=conversation)

    pages = [
        admin_client.get(change_url(conversation)).content.decode(),
        admin_client.get(CHANGELIST).content.decode(),
        admin_client.get(reverse("admin:runs_run_change", args=[run.pk])).content.decode(),
        admin_client.get(RUNS).content.decode(),
    ]

    for page in pages:
        assert "<script>alert" not in page
        assert not re.search(r"<img[^>]*onerror", page)
    page = pages[0]
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in transcript_of(page)
    assert "<strong>bold</strong>" in transcript_of(page)  # markdown still renders
    # The echo repeats it into the thread: the remembers panel is sanitized too.
    assert "&lt;script&gt;" in section(page, "remembers")


# Actions.


def test_forget_action_deletes_the_backend_threads_and_keeps_the_transcripts(
    admin_client, backend_url
):
    first = chat("first memory", memory=True)
    second = chat("second memory", memory=True)
    untouched = chat("keep my memory", memory=True)
    stateless = chat("nothing to forget", memory=False)
    threads = {first.pk: first.thread_id, second.pk: second.thread_id}

    response = admin_client.post(
        CHANGELIST,
        {
            "action": "forget_threads",
            "_selected_action": [str(first.pk), str(second.pk), str(stateless.pk)],
        },
        follow=True,
    )

    assert response.status_code == 200
    page = response.content.decode()
    assert "Forgot the backend thread of 2 conversations" in page
    assert "1 conversation had no backend thread" in page
    for conversation_id, thread_id in threads.items():
        with pytest.raises(ThreadNotFound):
            thread_state(thread_id)
        conversation = Conversation.objects.get(pk=conversation_id)
        assert conversation.thread_id == ""
        assert conversation.messages.count() == 2  # the transcript stays
    assert thread_state(untouched.thread_id).messages  # only the selected ones
    untouched.refresh_from_db()
    assert untouched.has_thread

    # The next remembered message starts a new memory.
    again = chat("hello again", memory=True, conversation=first)
    assert again.thread_id and again.thread_id != threads[first.pk]
    assert "I can see 1 of your messages" in thread_state(again.thread_id).messages[-1].text


def test_staff_find_shared_conversations_and_stop_sharing_them(admin_client, backend_url):
    shared = chat("shared with the world", memory=False)
    kept = chat("also shared", memory=False)
    private = chat("private", memory=False)
    for conversation in (shared, kept):
        services.conversation_share(
            owner=Owner(user_id=None, session_key=conversation.session_key),
            conversation_id=conversation.pk,
        )
    link = f"/s/{Conversation.objects.get(pk=shared.pk).share_token}/"
    assert {c.pk for c in rows(admin_client.get(CHANGELIST, {"shared": "yes"}))} == {
        shared.pk,
        kept.pk,
    }
    assert [c.pk for c in rows(admin_client.get(CHANGELIST, {"shared": "no"}))] == [private.pk]
    assert f'href="{link}"' in admin_client.get(change_url(shared)).content.decode()
    assert "not shared" in admin_client.get(change_url(private)).content.decode()

    response = admin_client.post(
        CHANGELIST,
        {"action": "stop_sharing", "_selected_action": [str(shared.pk), str(private.pk)]},
        follow=True,
    )
    assert "Stopped sharing 1 conversation: their links no longer work." in (
        response.content.decode()
    )
    assert Client().get(link).status_code == 404
    assert Conversation.objects.get(pk=kept.pk).is_shared, "only the selected ones"


def test_staff_find_the_conversations_whose_replies_were_rated(admin_client, backend_url):
    disliked = chat("a bad answer", memory=False)
    liked = chat("a good answer", memory=False)
    chat("not rated", memory=False)
    for conversation, rating in ((disliked, "bad"), (liked, "good")):
        reply = conversation.messages.get(role="assistant")
        async_to_sync(services.message_feedback_set)(
            owner=Owner(user_id=None, session_key=conversation.session_key),
            conversation_id=conversation.pk,
            message_id=reply.pk,
            feedback=rating,
        )
    assert [c.pk for c in rows(admin_client.get(CHANGELIST, {"feedback": "bad"}))] == [disliked.pk]
    assert [c.pk for c in rows(admin_client.get(CHANGELIST, {"feedback": "good"}))] == [liked.pk]
    page = admin_client.get(change_url(disliked)).content.decode()
    assert "rated bad" in transcript_of(page)


def test_forget_button_on_the_conversation_page(admin_client, backend_url):
    conversation = chat("forget this one", memory=True)
    thread_id = conversation.thread_id
    page = admin_client.get(change_url(conversation)).content.decode()
    forget_url = reverse("admin:runs_conversation_forget", args=[conversation.pk])
    assert f'action="{forget_url}"' in page

    assert admin_client.get(forget_url).status_code == 405  # a GET never forgets
    response = admin_client.post(forget_url, follow=True)

    assert response.status_code == 200
    with pytest.raises(ThreadNotFound):
        thread_state(thread_id)
    page = response.content.decode()
    assert "Forgot the backend thread of 1 conversation" in page
    assert "notice-no_thread" in section(page, "remembers")


def test_forget_action_reports_a_backend_that_is_down(admin_client, backend_url, settings):
    conversation = chat("still here", memory=True)
    settings.LANGGRAPH_URL = f"http://127.0.0.1:{free_port()}"

    response = admin_client.post(
        CHANGELIST,
        {"action": "forget_threads", "_selected_action": [str(conversation.pk)]},
        follow=True,
    )

    assert "Could not forget the thread" in response.content.decode()
    conversation.refresh_from_db()
    assert conversation.has_thread  # nothing claims it was forgotten


def test_a_continued_reply_names_its_continuation_in_the_console_and_the_export(
    admin_client, backend_url
):
    conversation = chat("go on", memory=False)
    cut = conversation.runs.get()
    Run.objects.filter(pk=cut.pk).update(notice=services.REPLY_CUT_NOTICE)
    owner = Owner(user_id=None, session_key=conversation.session_key)
    outcome = async_to_sync(services.chat_continue_wait)(
        owner=owner, conversation_id=conversation.pk
    )
    reply = Message.objects.get(conversation=conversation, role="assistant")
    assert reply.run_id == outcome.started.run.id and reply.text.startswith("You said: go on")

    page = admin_client.get(reverse("admin:runs_run_change", args=[reply.run_id])).content.decode()
    assert "Continues" in page and "assistant: You said: go on" in page
    exported = admin_client.post(
        CHANGELIST, {"action": "export_jsonl", "_selected_action": [str(conversation.pk)]}
    )
    [line] = [orjson.loads(line) for line in exported.content.splitlines()]
    assert line["messages"][1]["run"]["continues"] == str(reply.pk)
    assert line["messages"][1]["run"]["id"] == str(reply.run_id)
    assert line["messages"][0]["run"]["id"] == str(cut.pk)  # the run it came from, kept


def test_export_action_downloads_json_lines_with_the_messages(admin_client, backend_url):
    first = chat("export me", memory=True)
    chat("and me too", memory=False, conversation=first)
    second = chat("me as well", memory=False)
    chat("but not me", memory=False)

    response = admin_client.post(
        CHANGELIST,
        {"action": "export_jsonl", "_selected_action": [str(first.pk), str(second.pk)]},
    )

    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/x-ndjson")
    assert response["Content-Disposition"].startswith("attachment;")
    assert ".jsonl" in response["Content-Disposition"]
    body = response.content.decode()
    assert body.endswith("\n")
    lines = [orjson.loads(line) for line in body.splitlines()]
    by_id = {line["id"]: line for line in lines}
    assert set(by_id) == {str(first.pk), str(second.pk)}
    exported = by_id[str(first.pk)]
    assert exported["title"] == "export me"
    assert exported["owner"] == {"username": None, "anonymous": True}
    assert [(m["role"], m["remembered"]) for m in exported["messages"]] == [
        ("user", True),
        ("assistant", True),
        ("user", False),
        ("assistant", False),
    ]
    assert exported["messages"][0]["text"] == "export me"
    assert exported["messages"][1]["text"].startswith("You said: export me")
    assert exported["messages"][1]["run"]["status"] == "completed"
    assert exported["messages"][1]["run"]["mode"] == "thread"
    assert exported["messages"][3]["run"]["mode"] == "stateless"
    assert isinstance(exported["messages"][1]["run"]["duration_ms"], int)
    assert first.session_key not in body  # never exported


def test_export_link_on_the_conversation_page(admin_client, backend_url):
    conversation = chat("just this one", memory=True)
    export_url = reverse("admin:runs_conversation_export", args=[conversation.pk])
    assert export_url in admin_client.get(change_url(conversation)).content.decode()

    response = admin_client.get(export_url)

    assert response.status_code == 200
    assert response["Content-Disposition"].startswith("attachment;")
    (line,) = response.content.decode().splitlines()
    assert orjson.loads(line)["messages"][0]["text"] == "just this one"


# Staff only.


@pytest.mark.parametrize("who", ["anonymous", "signed-in user"])
def test_the_console_is_for_staff_only(client, backend_url, django_user_model, who):
    conversation = chat("private", memory=True)
    if who == "signed-in user":
        user = django_user_model.objects.create_user("carol", password="pw-carol-1")
        client.force_login(user)
    urls = [
        CHANGELIST,
        change_url(conversation),
        RUNS,
        reverse("admin:runs_conversation_export", args=[conversation.pk]),
    ]
    for url in urls:
        response = client.get(url)
        assert response.status_code == 302, url
        assert response["Location"].startswith("/admin/login/"), url

    forget = reverse("admin:runs_conversation_forget", args=[conversation.pk])
    assert client.post(forget).status_code == 302
    response = client.post(
        CHANGELIST, {"action": "forget_threads", "_selected_action": [str(conversation.pk)]}
    )
    assert response.status_code == 302
    assert thread_state(conversation.thread_id).messages  # still remembered


def test_staff_without_change_permission_can_read_and_export_but_not_forget(
    client, backend_url, django_user_model
):
    from django.contrib.auth.models import Permission

    conversation = chat("look but do not touch", memory=True)
    reviewer = django_user_model.objects.create_user("dana", password="pw-dana-1", is_staff=True)
    reviewer.user_permissions.add(
        *Permission.objects.filter(codename__in=["view_conversation", "view_run"])
    )
    client.force_login(reviewer)

    page = client.get(change_url(conversation)).content.decode()
    assert "You said: look but do not touch" in section(page, "remembers")
    assert "Forget the backend thread" not in page
    changelist = client.get(CHANGELIST)
    assert "export_jsonl" in changelist.content.decode()
    assert "forget_threads" not in changelist.content.decode()
    assert "stop_sharing" not in changelist.content.decode()

    forget = reverse("admin:runs_conversation_forget", args=[conversation.pk])
    assert client.post(forget).status_code == 403
    assert thread_state(conversation.thread_id).messages


# Bounded queries.


def make_conversations(count: int, django_user_model) -> None:
    """`count` conversations, half signed-in and half anonymous, each with a completed and a
    failed run and their messages, written in bulk. The first matches every list filter."""
    user = django_user_model.objects.create_user(f"bulk{count}", password="pw-bulk-1")
    now = timezone.now()
    conversations = Conversation.objects.bulk_create(
        Conversation(
            owner=user if index % 2 else None,
            session_key="" if index % 2 else f"visitor-{index}",
            title=f"bulk conversation {index}",
            memory=bool(index % 3),
            thread_id=f"thread-{index}" if index % 3 else "",
        )
        for index in range(1, count + 1)
    )
    runs = Run.objects.bulk_create(
        Run(
            conversation=conversation,
            mode=mode,
            status=status,
            first_token_at=now + timedelta(milliseconds=300),
            finished_at=now + timedelta(seconds=2),
            error_code="backend_error" if status == Run.Status.FAILED else "",
            error_message="it broke" if status == Run.Status.FAILED else "",
        )
        for conversation in conversations
        for mode, status in [
            (Run.Mode.THREAD, Run.Status.COMPLETED),
            (Run.Mode.STATELESS, Run.Status.FAILED),
        ]
    )
    Message.objects.bulk_create(
        Message(
            conversation_id=run.conversation_id,
            role=role,
            text=f"{role} says something searchable",
            remembered=run.mode == Run.Mode.THREAD,
            run=run,
        )
        for run in runs
        for role in (Message.Role.USER, Message.Role.ASSISTANT)
    )


LIST_PAGES = [
    CHANGELIST,
    CHANGELIST + "?memory__exact=1&has_thread=yes",
    CHANGELIST + "?run_status=failed&owner_kind=user",
    CHANGELIST + "?q=searchable",
    CHANGELIST + "?o=4",  # sorted by message count
    RUNS,
    RUNS + "?status__exact=failed&mode__exact=stateless",
    RUNS + "?q=broke",
]


def queries_per_page(admin_client) -> dict[str, int]:
    counts = {}
    for url in LIST_PAGES:
        with CaptureQueriesContext(connection) as captured:
            response = admin_client.get(url)
        assert response.status_code == 200, url
        assert rows(response), url
        counts[url] = len(captured)
    return counts


def test_list_pages_cost_the_same_queries_for_1_and_200_conversations(
    admin_client, django_user_model
):
    make_conversations(1, django_user_model)
    # Warm up: the first request loads content types and permissions into caches.
    queries_per_page(admin_client)
    with_one = queries_per_page(admin_client)

    make_conversations(199, django_user_model)
    with_many = queries_per_page(admin_client)

    assert Conversation.objects.count() == 200
    assert with_many == with_one
    assert max(with_one.values()) <= 8, with_one


def test_the_console_names_the_sites_icon_and_keeps_its_own_header(admin_client):
    page = admin_client.get("/admin/").content.decode()
    assert re.search(r'<link rel="icon" href="/static/runs/icon\.[0-9a-f.]*svg"', page)
    assert "Chat review console" in page
