"""Protocol v1 through the full ASGI stack, against a real `langgraph dev` (echo model)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth.models import User
from django.contrib.sessions.models import Session

from runs import services
from runs.backend import get_backend
from runs.exceptions import ThreadNotFound
from runs.models import Conversation, Message, Run
from runs.selectors import Owner
from tests.conftest import seen_count, session_cookie_for

pytestmark = pytest.mark.django_db(transaction=True)


async def conversation(conversation_id: str) -> Conversation:
    return await Conversation.objects.aget(pk=conversation_id)


async def test_memory_off_every_reply_sees_one_message_and_no_thread_exists(
    backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("hello", memory=False)
    assert first["type"] == "run.completed"
    assert first["mode"] == "stateless"
    assert seen_count(first["message"]["text"]) == 1
    second = await socket.chat("again", memory=False, conversation=first["conversation"])
    assert seen_count(second["message"]["text"]) == 1
    assert second["message"]["remembered"] is False

    saved = await conversation(first["conversation"])
    assert saved.thread_id == "" and saved.memory is False
    texts = [
        m
        async for m in Message.objects.filter(conversation=saved).values_list("text", "remembered")
    ]
    assert texts[0] == ("hello", False) and texts[2] == ("again", False)
    assert len(texts) == 4


async def test_memory_on_the_count_grows_off_then_on_resumes_forget_starts_anew(
    backend_url, socket_factory
):
    socket = await socket_factory()
    one = await socket.chat("one", memory=True)
    conv = one["conversation"]
    assert one["mode"] == "thread" and one["message"]["remembered"] is True
    assert seen_count(one["message"]["text"]) == 1
    two = await socket.chat("two", memory=True, conversation=conv)
    assert seen_count(two["message"]["text"]) == 2
    thread_id = (await conversation(conv)).thread_id
    assert thread_id

    # Off: a stateless run that the thread never sees, and the thread is kept.
    off = await socket.chat("aside", memory=False, conversation=conv)
    assert seen_count(off["message"]["text"]) == 1
    assert (await conversation(conv)).thread_id == thread_id

    # On again: the same thread, which saw "one" and "two" but not "aside".
    three = await socket.chat("three", memory=True, conversation=conv)
    assert seen_count(three["message"]["text"]) == 3
    assert (await conversation(conv)).thread_id == thread_id
    thread = await get_backend().thread_state(thread_id=thread_id)
    assert [m.text for m in thread.messages if m.role == "user"] == ["one", "two", "three"]

    # Forget: the thread is deleted on the backend; the next remembered message starts afresh.
    await socket.send({"type": "conversation.forget", "conversation": conv})
    snapshot, _ = await socket.until("conversation.snapshot")
    assert snapshot["conversation"]["has_thread"] is False
    assert len(snapshot["messages"]) == 8, "the transcript stays"
    with pytest.raises(ThreadNotFound):
        await get_backend().thread_state(thread_id=thread_id)
    fresh = await socket.chat("four", memory=True, conversation=conv)
    assert seen_count(fresh["message"]["text"]) == 1
    new_thread = (await conversation(conv)).thread_id
    assert new_thread and new_thread != thread_id


async def test_thread_carries_the_conversation_id_as_metadata(backend_url, socket_factory):
    socket = await socket_factory()
    done = await socket.chat("hi", memory=True)
    thread_id = (await conversation(done["conversation"])).thread_id
    from langgraph_sdk import get_client

    thread = await get_client(url=backend_url, api_key=None).threads.get(thread_id)
    assert thread["metadata"]["conversation_id"] == done["conversation"]


async def test_memory_switch_frame_flips_without_sending(backend_url, socket_factory):
    socket = await socket_factory()
    done = await socket.chat("hi", memory=True)
    await socket.send(
        {"type": "conversation.memory", "conversation": done["conversation"], "enabled": False}
    )
    snapshot, _ = await socket.until("conversation.snapshot")
    assert snapshot["conversation"]["memory"] is False
    assert snapshot["conversation"]["has_thread"] is True
    assert (await conversation(done["conversation"])).memory is False


@pytest.mark.parametrize("memory", [True, False], ids=["thread", "stateless"])
async def test_cancel_mid_stream_keeps_the_partial_reply(slow_backend_url, socket_factory, memory):
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "long one", "memory": memory})
    started, _ = await socket.until("run.started")
    await socket.until("run.delta")
    await socket.until("run.delta")
    # A second send meanwhile is refused, and nothing is lost.
    await socket.send(
        {
            "type": "chat.send",
            "text": "meanwhile",
            "memory": memory,
            "conversation": started["conversation"],
            "client_id": "second",
        }
    )
    busy, _ = await socket.until("error")
    assert busy["code"] == "busy" and busy["client_id"] == "second"

    await socket.send({"type": "chat.cancel", "run": started["run"]})
    final, _ = await socket.until_run_end()
    assert final["type"] == "run.cancelled"
    partial = final["message"]["text"]
    assert partial.startswith("You said: ")
    assert "w59" not in partial, "the reply was cut short"
    assert final["message"]["status"] == "cancelled"

    run = await Run.objects.aget(pk=started["run"])
    assert run.status == Run.Status.CANCELLED and run.reply_chars == len(partial)
    reply = await Message.objects.aget(run=run, role="assistant")
    assert reply.text == partial
    assert not await Message.objects.filter(text="meanwhile").aexists()
    # The conversation is free again.
    after = await socket.chat("next", memory=memory, conversation=started["conversation"])
    assert after["type"] == "run.completed"


async def test_two_sockets_watching_one_conversation_both_get_every_delta(
    slow_backend_url, socket_factory
):
    cookie = await database_sync_to_async(session_cookie_for)()
    first = await socket_factory(cookie)
    second = await socket_factory(cookie)
    await first.send({"type": "chat.send", "text": "shared", "memory": True})
    started, _ = await first.until("run.started")
    await first.until("run.delta")
    await first.until("run.delta")

    # The second tab joins mid-run: the snapshot carries the text so far.
    await second.send({"type": "conversation.watch", "conversation": started["conversation"]})
    snapshot, _ = await second.until("conversation.snapshot")
    active = snapshot["active_run"]
    assert active["run"] == started["run"] and active["seq"] >= 2
    assert active["text"].startswith("You said: ")

    final_one, frames_one = await first.until_run_end()
    final_two, frames_two = await second.until_run_end()
    deltas_one = [f for f in frames_one if f["type"] == "run.delta"]
    deltas_two = [f for f in frames_two if f["type"] == "run.delta"]

    # The first socket saw every delta exactly once; the second, its snapshot plus the rest.
    text_one = "You said: " + "".join(f["text"] for f in deltas_one)
    assert final_one["message"]["text"] == text_one
    seqs = [f["seq"] for f in deltas_two]
    assert seqs == sorted(set(seqs))
    rebuilt = active["text"] + "".join(f["text"] for f in deltas_two if f["seq"] > active["seq"])
    assert rebuilt == final_two["message"]["text"] == final_one["message"]["text"]


async def test_run_finishes_and_is_saved_after_the_last_socket_closes(
    slow_backend_url, socket_factory
):
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "bye", "memory": False})
    started, _ = await socket.until("run.started")
    await socket.until("run.delta")
    await socket.close()

    # The relay runs on in this process: wait for its task, not for a guessed time.
    live = services.LIVE_RUNS.get(uuid.UUID(started["run"]))
    assert live is not None, "the relay stopped with its last socket"
    await asyncio.wait_for(asyncio.shield(live.task), timeout=120)
    run = await Run.objects.aget(pk=started["run"])
    assert run.status == Run.Status.COMPLETED
    reply = await Message.objects.aget(run=run, role="assistant")
    assert reply.text.endswith("w59")

    # Reopening shows it.
    again = await socket_factory()
    # A new socket without the cookie is another visitor; the owner's view is via the session.
    await again.send({"type": "conversation.watch", "conversation": started["conversation"]})
    refused, _ = await again.until("error")
    assert refused["code"] == "not_found"


async def test_the_sender_hears_its_run_start_once_even_if_the_group_copy_is_lost(
    backend_url, socket_factory, channel_layer, monkeypatch
):
    """On Redis a socket's new subscription can miss a publish made right after it: the
    sender's own `run.started` must not depend on it, nor be sent to it twice."""
    cookie = await database_sync_to_async(session_cookie_for)()
    sender = await socket_factory(cookie)
    first = await sender.chat("one", memory=True)
    other_tab = await socket_factory(cookie)
    await other_tab.send({"type": "conversation.watch", "conversation": first["conversation"]})
    await other_tab.until("conversation.snapshot")

    await sender.send(
        {"type": "chat.send", "text": "two", "memory": True, "conversation": first["conversation"]}
    )
    _, frames = await sender.until_run_end()
    _, watched = await other_tab.until_run_end()
    for seen in (frames, watched):
        assert [frame["type"] for frame in seen].count("run.started") == 1

    group_send = channel_layer.group_send

    async def losing_run_starts(group, message):
        if '"type":"run.started"' not in message.get("text", ""):
            await group_send(group, message)

    monkeypatch.setattr(channel_layer, "group_send", losing_run_starts)
    await sender.send({"type": "chat.send", "text": "three", "memory": False, "client_id": "c3"})
    started, _ = await sender.until("run.started")
    assert started["client_id"] == "c3"
    final, _ = await sender.until_run_end()
    assert final["type"] == "run.completed" and final["run"] == started["run"]


async def test_under_load_each_frame_carries_several_tokens_and_the_first_goes_at_once(
    slow_backend_url, socket_factory, settings
):
    """Batching deltas saves a busy process a send per token, and loses nothing."""
    settings.CHAT_BATCH_DELTAS_FROM = 2
    settings.CHAT_BATCH_DELTAS_MS = 300

    async def reply(socket, text: str) -> tuple[list[dict], dict]:
        await socket.send({"type": "chat.send", "text": text, "memory": False})
        final, frames = await socket.until_run_end()
        return [frame for frame in frames if frame["type"] == "run.delta"], final

    alone = await socket_factory()
    deltas, final = await reply(alone, "alone")
    # One reply is not load: a frame per token, as it comes.
    tokens = final["message"]["text"].split()
    assert len(deltas) == len(tokens)

    first, second = await socket_factory(), await socket_factory()
    for deltas, final in await asyncio.gather(reply(first, "one"), reply(second, "two")):
        assert final["type"] == "run.completed"
        assert "".join(delta["text"] for delta in deltas) == final["message"]["text"]
        assert [delta["seq"] for delta in deltas] == list(range(1, len(deltas) + 1))
        assert len(deltas[0]["text"].split()) == 1
        assert len(deltas) < len(tokens) / 3, [delta["text"] for delta in deltas]


async def test_a_stranger_cannot_watch_cancel_or_send_into_a_conversation(
    backend_url, socket_factory
):
    owner = await socket_factory(await database_sync_to_async(session_cookie_for)())
    stranger = await socket_factory(await database_sync_to_async(session_cookie_for)())
    done = await owner.chat("private", memory=True)
    conv = done["conversation"]
    for frame in (
        {"type": "conversation.watch", "conversation": conv},
        {"type": "conversation.memory", "conversation": conv, "enabled": False},
        {"type": "conversation.forget", "conversation": conv},
        {"type": "conversation.rename", "conversation": conv, "title": "mine"},
        {"type": "chat.send", "text": "hi", "memory": True, "conversation": conv},
        {"type": "chat.cancel", "run": done["run"]},
        {"type": "conversation.watch", "conversation": str(uuid.uuid4())},
    ):
        await stranger.send(frame)
        error, _ = await stranger.until("error")
        assert error["code"] == "not_found", frame
    assert (await conversation(conv)).memory is True


@pytest.mark.parametrize("memory", [False, True], ids=["memory-off", "memory-on"])
async def test_a_reply_cut_at_the_length_limit_is_saved_and_says_so(
    short_backend_url, socket_factory, memory
):
    socket = await socket_factory()
    done = await socket.chat("tell me everything", memory=memory)
    assert done["type"] == "run.completed" and done["message"]["status"] == "completed"
    assert done["message"]["text"] == "You said: tell me "
    assert done["message"]["notice"] == services.REPLY_CUT_NOTICE
    await socket.send({"type": "conversation.watch", "conversation": done["conversation"]})
    snapshot, _ = await socket.until("conversation.snapshot")
    assert snapshot["messages"][-1]["notice"] == services.REPLY_CUT_NOTICE
    run = await Run.objects.aget(pk=done["run"])
    assert run.status == Run.Status.COMPLETED and run.notice == services.REPLY_CUT_NOTICE


async def cut_at_the_length_limit(run_id: str) -> None:
    """Marks a real run's reply as the model would have cut it: Continue is then offered."""
    await Run.objects.filter(pk=run_id).aupdate(notice=services.REPLY_CUT_NOTICE)


@pytest.mark.parametrize("memory", [False, True], ids=["memory-off", "memory-on"])
async def test_continue_goes_on_with_a_cut_reply_in_the_same_message(
    short_backend_url, socket_factory, memory
):
    socket = await socket_factory()
    done = await socket.chat("tell me everything", memory=memory)
    reply = done["message"]
    assert reply["cut"] is True

    await socket.send(
        {"type": "chat.continue", "conversation": done["conversation"], "client_id": "c1"}
    )
    started, _ = await socket.until("run.started")
    assert started["continues"] == reply["id"] and started["client_id"] == "c1"
    assert started["user_message"]["id"] == done["user_message"]["id"]
    assert started["replaces"] == [] and started["mode"] == done["mode"]
    final, frames = await socket.until_run_end()
    streamed = "".join(f["text"] for f in frames if f["type"] == "run.delta")
    # The model was asked to go on (the echo repeats the request), and was cut again.
    assert streamed == "You said: Continue your "
    assert final["type"] == "run.completed" and final["run"] == started["run"]
    assert final["message"]["id"] == reply["id"]
    assert final["message"]["text"] == "You said: tell me You said: Continue your "
    assert final["message"]["cut"] is True
    assert final["message"]["notice"] == services.REPLY_CUT_NOTICE

    messages = [m async for m in Message.objects.filter(conversation_id=done["conversation"])]
    assert [m.role for m in messages] == ["user", "assistant"]
    assert str(messages[1].run_id) == started["run"]
    run = await Run.objects.aget(pk=started["run"])
    assert str(run.continues_id) == reply["id"] and run.status == Run.Status.COMPLETED
    if memory:
        # Remembered as the transcript shows it: one reply, cut, and no request to go on.
        state = await get_backend().thread_state(thread_id=run.thread_id)
        assert [(m.role, m.text, m.cut) for m in state.messages] == [
            ("user", "tell me everything", False),
            ("assistant", "You said: tell me You said: Continue your ", True),
        ]


async def test_a_remembered_continuation_stopped_is_remembered_as_far_as_it_got(
    slow_backend_url, socket_factory
):
    socket = await socket_factory()
    done = await socket.chat("a long story", memory=True)
    await cut_at_the_length_limit(done["run"])
    await socket.send({"type": "chat.continue", "conversation": done["conversation"]})
    started, _ = await socket.until("run.started")
    await socket.until("run.delta")
    await socket.send({"type": "chat.cancel", "run": started["run"]})
    final, _ = await socket.until_run_end()
    assert final["type"] == "run.cancelled"
    reply = final["message"]["text"]
    assert reply.startswith(done["message"]["text"] + " You")
    run = await Run.objects.aget(pk=started["run"])
    state = await get_backend().thread_state(thread_id=run.thread_id)
    assert [(m.role, m.text) for m in state.messages] == [
        ("user", "a long story"),
        ("assistant", reply),
    ]
    after = await socket.chat("and then", memory=True, conversation=done["conversation"])
    assert seen_count(after["message"]["text"]) == 2


@pytest.mark.parametrize("memory", [False, True], ids=["memory-off", "memory-on"])
async def test_a_continuation_is_told_the_exchange_it_goes_on_with(
    backend_url, socket_factory, memory
):
    socket = await socket_factory()
    done = await socket.chat("what is a river", memory=memory)
    await cut_at_the_length_limit(done["run"])
    await socket.send({"type": "chat.continue", "conversation": done["conversation"]})
    final, _ = await socket.until_run_end()
    # The question and the request to go on: a stateless run is told the exchange again.
    before, more = done["message"]["text"], final["message"]["text"]
    assert more.startswith(before + " You said: Continue your last reply")
    assert seen_count(more[len(before) :]) == 2
    assert final["message"]["cut"] is False and "notice" not in final["message"]
    await socket.send({"type": "chat.continue", "conversation": done["conversation"]})
    error, _ = await socket.until("error")
    assert error["code"] == "not_continuable"


async def test_regenerating_a_continued_reply_takes_all_of_it_out_of_the_memory(
    short_backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("first", memory=True)
    done = await socket.chat("tell me everything", memory=True, conversation=first["conversation"])
    await socket.send({"type": "chat.continue", "conversation": done["conversation"]})
    await socket.until_run_end()
    await socket.send({"type": "chat.regenerate", "conversation": done["conversation"]})
    started, _ = await socket.until("run.started")
    assert started["replaces"] == [done["message"]["id"]]
    final, _ = await socket.until_run_end()
    assert final["message"]["text"] == "You said: tell me "
    # Back to where the thread stood before the reply, then the new one: neither the request
    # to go on nor what it added is remembered.
    run = await Run.objects.aget(pk=final["run"])
    state = await get_backend().thread_state(thread_id=run.thread_id)
    assert [m.text for m in state.messages] == [
        "first",
        first["message"]["text"],
        "tell me everything",
        "You said: tell me ",
    ]


async def test_only_a_last_reply_cut_at_the_length_limit_can_be_continued(
    backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("one", memory=False)
    await cut_at_the_length_limit(first["run"])
    second = await socket.chat("two", memory=False, conversation=first["conversation"])
    assert second["message"]["cut"] is False
    for conversation_id in (first["conversation"], str(uuid.uuid4())):
        await socket.send({"type": "chat.continue", "conversation": conversation_id})
        error, _ = await socket.until("error")
        assert error["code"] == (
            "not_continuable" if conversation_id == first["conversation"] else "not_found"
        )
    assert await Run.objects.filter(conversation_id=first["conversation"]).acount() == 2


async def test_a_remembered_reply_whose_memory_was_forgotten_cannot_be_continued(
    backend_url, socket_factory
):
    socket = await socket_factory()
    done = await socket.chat("remember this", memory=True)
    await cut_at_the_length_limit(done["run"])
    await socket.send({"type": "conversation.forget", "conversation": done["conversation"]})
    await socket.until("conversation.snapshot")
    await socket.send({"type": "chat.continue", "conversation": done["conversation"]})
    error, _ = await socket.until("error")
    assert error["code"] == "not_continuable" and "no longer remembers" in error["message"]


async def test_a_continuation_that_fails_leaves_the_reply_as_it_was(
    backend_url, socket_factory, fake_backend
):
    socket = await socket_factory()
    done = await socket.chat("tell me", memory=False)
    await cut_at_the_length_limit(done["run"])
    fake_backend("status", status=500)
    await socket.send({"type": "chat.continue", "conversation": done["conversation"]})
    final, _ = await socket.until_run_end()
    assert final["type"] == "run.failed" and final["error"]["code"] == "backend_error"
    # The reply as it was, still cut, so Continue can ask again.
    assert final["message"]["id"] == done["message"]["id"]
    assert final["message"]["text"] == done["message"]["text"]
    assert final["message"]["cut"] is True and final["message"]["status"] == "completed"
    reply = await Message.objects.aget(pk=done["message"]["id"])
    assert str(reply.run_id) == done["run"]


async def test_a_continuation_watched_and_stopped_keeps_the_reply_and_what_came(
    slow_backend_url, socket_factory
):
    cookie = await database_sync_to_async(session_cookie_for)()
    socket = await socket_factory(cookie)
    # A conversation of this visitor's, to learn the key they own conversations by.
    await socket.send({"type": "chat.send", "text": "hi", "memory": False})
    first, _ = await socket.until("run.started")
    await socket.send({"type": "chat.cancel", "run": first["run"]})
    await socket.until_run_end()
    visitor = (await conversation(first["conversation"])).session_key
    conversation_row = await Conversation.objects.acreate(session_key=visitor)
    run = await Run.objects.acreate(
        conversation=conversation_row,
        mode=Run.Mode.STATELESS,
        status=Run.Status.COMPLETED,
        notice=services.REPLY_CUT_NOTICE,
    )
    await Message.objects.acreate(
        conversation=conversation_row, role=Message.Role.USER, text="a long story", run=run
    )
    reply = await Message.objects.acreate(
        conversation=conversation_row, role=Message.Role.ASSISTANT, text="Once upon", run=run
    )
    conversation_id = str(conversation_row.pk)
    await socket.send({"type": "chat.continue", "conversation": conversation_id})
    started, _ = await socket.until("run.started")
    await socket.until("run.delta")

    other = await socket_factory(cookie)
    await other.send({"type": "conversation.watch", "conversation": conversation_id})
    snapshot, _ = await other.until("conversation.snapshot")
    assert snapshot["active_run"]["run"] == started["run"]
    assert snapshot["active_run"]["continues"] == str(reply.pk)
    so_far, echo = snapshot["active_run"]["text"], f"You said: {services.CONTINUE_PROMPT}"
    assert so_far and (echo.startswith(so_far) or so_far.startswith(echo))

    await socket.send({"type": "chat.cancel", "run": started["run"]})
    final, _ = await socket.until_run_end()
    assert final["type"] == "run.cancelled" and final["message"]["id"] == str(reply.pk)
    assert final["message"]["status"] == "cancelled" and final["message"]["cut"] is False
    # The reply, then what came of its continuation (what the watcher saw and more).
    saved = await Message.objects.aget(pk=reply.pk)
    assert saved.text == final["message"]["text"]
    assert saved.text.startswith("Once upon " + so_far)
    assert str(saved.run_id) == started["run"]


async def test_snapshot_lists_the_transcript_oldest_first(backend_url, socket_factory):
    cookie = await database_sync_to_async(session_cookie_for)()
    socket = await socket_factory(cookie)
    done = await socket.chat("first", memory=True)
    await socket.chat("second", memory=False, conversation=done["conversation"])
    other = await socket_factory(cookie)
    await other.send({"type": "conversation.watch", "conversation": done["conversation"]})
    snapshot, _ = await other.until("conversation.snapshot")
    assert [(m["role"], m["remembered"]) for m in snapshot["messages"]] == [
        ("user", True),
        ("assistant", True),
        ("user", False),
        ("assistant", False),
    ]
    assert snapshot["messages"][0]["text"] == "first"
    assert snapshot["conversation"]["title"] == "first"
    assert snapshot["active_run"] is None


# Every error code of the protocol.


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        ("not json", "invalid_json"),
        ("[1, 2]", "invalid_frame"),
        ('{"text": "no type"}', "invalid_frame"),
        ('{"type": 7}', "invalid_frame"),
        ('{"type": "chat.dance"}', "unknown_type"),
        ('{"type": "chat.send", "memory": true}', "invalid_frame"),
        ('{"type": "chat.send", "text": "hi"}', "invalid_frame"),
        ('{"type": "chat.send", "text": 5, "memory": true}', "invalid_frame"),
        ('{"type": "chat.send", "text": "hi", "memory": "yes"}', "invalid_frame"),
        (
            '{"type": "chat.send", "text": "hi", "memory": true, "conversation": "nope"}',
            "invalid_frame",
        ),
        ('{"type": "chat.send", "text": "   ", "memory": true}', "empty_text"),
        ('{"type": "chat.cancel"}', "invalid_frame"),
        ('{"type": "conversation.watch", "conversation": 12}', "invalid_frame"),
        (f'{{"type": "conversation.memory", "conversation": "{uuid.uuid4()}"}}', "invalid_frame"),
        (f'{{"type": "conversation.watch", "conversation": "{uuid.uuid4()}"}}', "not_found"),
        (f'{{"type": "chat.cancel", "run": "{uuid.uuid4()}"}}', "not_found"),
        ('{"type": "chat.send", "text": "hi", "memory": true, "client_id": 5}', "invalid_frame"),
    ],
)
async def test_bad_frames_get_an_error_and_the_socket_stays_usable(
    backend_url, socket_factory, raw, code
):
    socket = await socket_factory()
    await socket.send_text(raw)
    error = await socket.receive()
    assert error["type"] == "error" and error["code"] == code, error
    assert error["message"]
    done = await socket.chat("still here", memory=False)
    assert done["type"] == "run.completed"


async def test_binary_frames_are_invalid(socket_factory, backend_url):
    socket = await socket_factory()
    await socket.communicator.send_to(bytes_data=b"\x00\x01")
    error = await socket.receive()
    assert error["code"] == "invalid_frame"


async def test_text_one_over_the_limit_is_too_long_and_names_the_limit(
    settings, backend_url, socket_factory
):
    settings.CHAT_MAX_MESSAGE_CHARS = 50
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "x" * 51, "memory": False, "client_id": "c1"})
    error = await socket.receive()
    assert error == {
        "type": "error",
        "code": "text_too_long",
        "message": error["message"],
        "client_id": "c1",
    }
    assert "50" in error["message"]
    done = await socket.chat("x" * 50, memory=False)
    assert done["type"] == "run.completed"


async def test_backend_down_fails_the_run_and_keeps_the_users_message(
    closed_port_url, socket_factory
):
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "anyone there?", "memory": True})
    started, _ = await socket.until("run.started")
    final, _ = await socket.until_run_end()
    assert final["type"] == "run.failed"
    assert final["error"]["code"] == "backend_unavailable"
    assert await Message.objects.filter(text="anyone there?", role="user").aexists()
    run = await Run.objects.aget(pk=started["run"])
    assert run.status == Run.Status.FAILED and run.error_code == "backend_unavailable"


async def test_run_started_carries_the_senders_client_id(backend_url, socket_factory):
    socket = await socket_factory()
    await socket.send(
        {"type": "chat.send", "text": "hi", "memory": False, "client_id": "tab-1-msg-7"}
    )
    started, _ = await socket.until("run.started")
    assert started["client_id"] == "tab-1-msg-7"
    assert started["user_message"]["text"] == "hi"
    await socket.until_run_end()


async def two_tabs_in_one_conversation(socket_factory, text: str):
    """Two sockets of one visitor: the first chats (memory on), the second watches."""
    cookie = await database_sync_to_async(session_cookie_for)()
    first = await socket_factory(cookie)
    second = await socket_factory(cookie)
    done = await first.chat(text, memory=True)
    conv = done["conversation"]
    await second.send({"type": "conversation.watch", "conversation": conv})
    await second.until("conversation.snapshot")
    return cookie, first, second, conv


def api_client_for(cookie: str):
    """The JSON API as the visitor that `cookie` belongs to."""
    from django.test import AsyncClient

    api = AsyncClient()
    name, _, value = cookie.partition("=")
    api.cookies[name] = value
    return api


async def test_a_rename_reaches_every_tab_of_the_owner_and_keeps_the_list_order(
    backend_url, socket_factory
):
    cookie, first, second, conv = await two_tabs_in_one_conversation(socket_factory, "older")
    elsewhere = await socket_factory(cookie)  # another tab, showing no conversation
    stranger = await socket_factory(await database_sync_to_async(session_cookie_for)())
    newer = await first.chat("newer", memory=False)
    before = await conversation(conv)

    await first.send(
        {"type": "conversation.rename", "conversation": conv, "title": " Trip\nplans "}
    )
    for socket in (first, second, elsewhere):
        told, _ = await socket.until("conversation.renamed")
        assert told == {"type": "conversation.renamed", "conversation": conv, "title": "Trip plans"}
    assert await stranger.communicator.receive_nothing(timeout=0.3)
    after = await conversation(conv)
    assert after.title == "Trip plans"
    assert after.updated_at == before.updated_at, "a new name does not move it up the list"
    listing = await api_client_for(cookie).get("/api/conversations/")
    assert [row["id"] for row in listing.json()["conversations"]] == [newer["conversation"], conv]

    # Refusals are answered, and change nothing.
    await first.send({"type": "conversation.rename", "conversation": conv, "title": "   "})
    blank, _ = await first.until("error")
    assert (blank["code"], blank["message"]) == ("invalid_frame", "A title cannot be blank.")
    await stranger.send({"type": "conversation.rename", "conversation": conv, "title": "mine"})
    refused, _ = await stranger.until("error")
    assert refused["code"] == "not_found"
    assert (await conversation(conv)).title == "Trip plans"


async def test_a_rating_of_a_reply_reaches_every_tab_and_stays_with_the_reply(
    backend_url, socket_factory
):
    _, first, second, conv = await two_tabs_in_one_conversation(socket_factory, "rate me")
    stranger = await socket_factory(await database_sync_to_async(session_cookie_for)())
    reply = (await conversation_snapshot_of(first, conv))["messages"][-1]
    assert reply["role"] == "assistant" and reply["feedback"] is None

    rate = {"type": "message.feedback", "conversation": conv, "message": reply["id"]}
    await first.send({**rate, "feedback": "bad"})
    for socket in (first, second):
        told, _ = await socket.until("message.feedback")
        assert told == {**rate, "feedback": "bad"}
    assert (await conversation_snapshot_of(second, conv))["messages"][-1]["feedback"] == "bad"
    await second.send({**rate, "feedback": None})
    taken_back, _ = await first.until("message.feedback")
    assert taken_back["feedback"] is None
    assert (await conversation_snapshot_of(first, conv))["messages"][-1]["feedback"] is None

    # Refusals are answered, and change nothing.
    question = (await conversation_snapshot_of(first, conv))["messages"][0]
    for refused_frame, code in (
        ({**rate, "feedback": "meh"}, "invalid_frame"),
        ({**rate}, "invalid_frame"),
        ({**rate, "message": question["id"], "feedback": "good"}, "invalid_frame"),
    ):
        await first.send(refused_frame)
        refused, _ = await first.until("error")
        assert refused["code"] == code, refused
    await stranger.send({**rate, "feedback": "good"})
    assert (await stranger.until("error"))[0]["code"] == "not_found"
    assert (await conversation_snapshot_of(first, conv))["messages"][-1]["feedback"] is None


async def conversation_snapshot_of(socket, conv: str) -> dict:
    await socket.send({"type": "conversation.watch", "conversation": conv})
    snapshot, _ = await socket.until("conversation.snapshot")
    return snapshot


async def test_other_tabs_are_told_when_the_switch_flips_or_the_memory_is_forgotten(
    backend_url, socket_factory
):
    _, first, second, conv = await two_tabs_in_one_conversation(socket_factory, "remember me")

    await first.send({"type": "conversation.memory", "conversation": conv, "enabled": False})
    answer, _ = await first.until("conversation.snapshot")
    pushed, _ = await second.until("conversation.snapshot")
    assert answer["conversation"]["memory"] is False
    assert pushed["conversation"]["memory"] is False

    await first.send({"type": "conversation.forget", "conversation": conv})
    answer, _ = await first.until("conversation.snapshot")
    pushed, _ = await second.until("conversation.snapshot")
    assert answer["conversation"]["has_thread"] is False
    assert pushed["conversation"]["has_thread"] is False
    assert len(pushed["messages"]) == 2, "the transcript stays"
    # The socket that asked gets its answer once, not a second copy from the group.
    assert await first.communicator.receive_nothing(timeout=0.3)


async def test_a_tab_is_told_when_the_api_or_a_reviewer_changes_its_conversation(
    backend_url, socket_factory
):
    from runs import services

    cookie = await database_sync_to_async(session_cookie_for)()
    socket = await socket_factory(cookie)
    done = await socket.chat("remember me", memory=True)
    conv = done["conversation"]

    response = await api_client_for(cookie).post(
        f"/api/conversations/{conv}/memory/", {"enabled": False}, content_type="application/json"
    )
    assert response.status_code == 200, response.content
    pushed, _ = await socket.until("conversation.snapshot")
    assert pushed["conversation"]["memory"] is False

    outcome = await services.conversation_forget_by_staff(conversation_ids=[conv])
    assert outcome.forgotten == [uuid.UUID(conv)]
    pushed, _ = await socket.until("conversation.snapshot")
    assert pushed["conversation"]["has_thread"] is False


async def test_every_tab_of_the_owner_hears_of_new_and_deleted_conversations(
    backend_url, socket_factory
):
    cookie = await database_sync_to_async(session_cookie_for)()
    first = await socket_factory(cookie)
    elsewhere = await socket_factory(cookie)  # another tab, on another page
    stranger = await socket_factory(await database_sync_to_async(session_cookie_for)())
    done = await first.chat("list me", memory=True)
    conv = done["conversation"]
    listed, _ = await elsewhere.until("conversation.active")
    assert listed == {"type": "conversation.active", "conversation": conv, "title": "list me"}
    watcher = await socket_factory(cookie)
    await watcher.send({"type": "conversation.watch", "conversation": conv})
    await watcher.until("conversation.snapshot")

    await first.chat("again", memory=True, conversation=conv)
    again, _ = await elsewhere.until("conversation.active")
    assert again["conversation"] == conv
    response = await api_client_for(cookie).delete(f"/api/conversations/{conv}/")
    assert response.status_code == 200, response.content
    for socket in (first, elsewhere, watcher):
        told, seen = await socket.until("conversation.deleted")
        assert told == {"type": "conversation.deleted", "conversation": conv}
        # Watching sockets had `run.started`; they are not told twice.
        assert all(frame["type"] != "conversation.active" for frame in seen)
    assert await stranger.communicator.receive_nothing(timeout=0.3)

    # A tab that did not hear of it and sends there anyway is told plainly.
    await watcher.send(
        {"type": "chat.send", "text": "still here?", "memory": True, "conversation": conv}
    )
    refused, _ = await watcher.until("error")
    assert refused["code"] == "not_found"
    assert not await Conversation.objects.filter(pk=conv).aexists()


async def a_visitor_who_has_an_account(socket_factory, name: str, said: str):
    """An account `name` (password `pw-<name>-12345`), and a visitor's tab, not yet signed in,
    that has said `said`: (the user, the visitor's cookie, the tab, the run's final frame)."""
    user = await User.objects.acreate_user(name, password=f"pw-{name}-12345")
    cookie = await database_sync_to_async(session_cookie_for)()
    tab = await socket_factory(cookie)
    return user, cookie, tab, await tab.chat(said, memory=False)


async def test_signing_in_or_out_in_another_tab_sends_that_browsers_sockets_away(
    backend_url, socket_factory
):
    user, cookie, tab, before = await a_visitor_who_has_an_account(
        socket_factory, "erin", "before signing in"
    )
    stranger = await socket_factory(await database_sync_to_async(session_cookie_for)())

    browser = api_client_for(cookie)  # the same browser, signing in on another tab
    signed_in = await browser.post(
        "/accounts/login/", {"username": "erin", "password": "pw-erin-12345"}
    )
    assert signed_in.status_code == 302
    assert await tab.receive() == {"type": "session.ended", "reason": "signed_in"}
    closed = await tab.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    assert (await conversation(before["conversation"])).owner_id == user.pk
    assert await stranger.communicator.receive_nothing(timeout=0.3)

    # The tab comes back with the browser's new cookie, as the account.
    name = next(iter(browser.cookies))
    account_cookie = f"{name}={browser.cookies[name].value}"
    account_tab = await socket_factory(account_cookie)
    again = await account_tab.chat("signed in", memory=False, conversation=before["conversation"])
    assert again["type"] == "run.completed"

    # Signing out ends this browser's sockets only: the account's phone stays signed in.
    phone = await socket_factory(await database_sync_to_async(session_cookie_for)(user))
    signed_out = await browser.post("/accounts/logout/")
    assert signed_out.status_code == 302
    assert await account_tab.receive() == {"type": "session.ended", "reason": "signed_out"}
    closed = await account_tab.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    from_phone = await phone.chat(
        "from my phone", memory=False, conversation=before["conversation"]
    )
    assert from_phone["type"] == "run.completed"


async def test_creating_an_account_in_another_tab_brings_the_open_tabs_along(
    backend_url, socket_factory
):
    cookie = await database_sync_to_async(session_cookie_for)()
    tab = await socket_factory(cookie)
    before = await tab.chat("before my account", memory=False)

    browser = api_client_for(cookie)
    password = "a-long-pw-for-olga"
    created = await browser.post(
        "/accounts/signup/", {"username": "olga", "password1": password, "password2": password}
    )
    assert created.status_code == 302
    assert await tab.receive() == {"type": "session.ended", "reason": "signed_in"}
    closed = await tab.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    olga = await User.objects.aget(username="olga")
    assert (await conversation(before["conversation"])).owner_id == olga.pk

    name = next(iter(browser.cookies))
    account_tab = await socket_factory(f"{name}={browser.cookies[name].value}")
    again = await account_tab.chat("as olga", memory=False, conversation=before["conversation"])
    assert again["type"] == "run.completed"


async def test_a_conversation_started_while_signing_in_goes_to_the_account_too(
    backend_url, socket_factory
):
    user, _, tab, started = await a_visitor_who_has_an_account(
        socket_factory, "finn", "just as I sign in"
    )
    # The sign-in's adoption ran before this conversation was saved; its word comes after.
    visitor = (await conversation(started["conversation"])).session_key
    await services.session_ended_publish(
        group=services.owner_group(Owner(user_id=None, session_key=visitor)),
        reason="signed_in",
        user_id=user.pk,
    )
    assert await tab.receive() == {"type": "session.ended", "reason": "signed_in"}
    assert (await conversation(started["conversation"])).owner_id == user.pk
    closed = await tab.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    # A frame that arrives while the socket closes does nothing for the old session.
    await tab.send({"type": "chat.send", "text": "too late", "memory": False})
    assert await tab.communicator.receive_nothing(timeout=1)
    assert not await Conversation.objects.filter(session_key=visitor).aexists()


async def regenerate(socket, conversation_id: str, **fields: str) -> tuple[dict, dict]:
    """Regenerates the conversation's last reply (or, with `message`, asks again from that
    message; with `text`, edited): (its `run.started`, its final frame)."""
    await socket.send({"type": "chat.regenerate", "conversation": conversation_id, **fields})
    started, _ = await socket.until("run.started")
    final, _ = await socket.until_run_end()
    assert final["run"] == started["run"]
    return started, final


async def test_regenerating_a_remembered_reply_replaces_it_in_the_transcript_and_the_memory(
    backend_url, socket_factory
):
    socket = await socket_factory()
    one = await socket.chat("one", memory=True)
    conv = one["conversation"]
    two = await socket.chat("two", memory=True, conversation=conv)
    thread_id = (await conversation(conv)).thread_id

    started, again = await regenerate(socket, conv)
    assert started["replaces"] == [two["message"]["id"]]
    assert started["user_message"]["text"] == "two" and started["mode"] == "thread"
    assert again["type"] == "run.completed"
    assert again["message"]["id"] != two["message"]["id"]
    # The assistant sees "one" and "two" once each: the old answer to "two" is not remembered.
    assert seen_count(again["message"]["text"]) == 2
    thread = await get_backend().thread_state(thread_id=thread_id)
    assert [(m.role, m.text) for m in thread.messages] == [
        ("user", "one"),
        ("assistant", one["message"]["text"]),
        ("user", "two"),
        ("assistant", again["message"]["text"]),
    ]
    # The next message goes on from the new answer, on the same thread.
    three = await socket.chat("three", memory=True, conversation=conv)
    assert seen_count(three["message"]["text"]) == 3
    assert (await conversation(conv)).thread_id == thread_id

    # The transcript shows the new reply in the old one's place; the old one is kept.
    await socket.send({"type": "conversation.watch", "conversation": conv})
    snapshot, _ = await socket.until("conversation.snapshot")
    assert [m["id"] for m in snapshot["messages"]][2:4] == [
        started["user_message"]["id"],
        again["message"]["id"],
    ]
    assert len(snapshot["messages"]) == 6
    old = await Message.objects.aget(pk=two["message"]["id"])
    assert old.replaced_at is not None and old.text == two["message"]["text"]


async def test_regenerating_the_first_remembered_reply_starts_a_new_memory_with_it(
    backend_url, socket_factory
):
    socket = await socket_factory()
    one = await socket.chat("one", memory=True)
    conv = one["conversation"]
    old_thread = (await conversation(conv)).thread_id

    _, again = await regenerate(socket, conv)
    assert seen_count(again["message"]["text"]) == 1
    new_thread = (await conversation(conv)).thread_id
    assert new_thread and new_thread != old_thread
    thread = await get_backend().thread_state(thread_id=new_thread)
    assert [m.text for m in thread.messages] == ["one", again["message"]["text"]]
    with pytest.raises(ThreadNotFound):
        await get_backend().thread_state(thread_id=old_thread)
    two = await socket.chat("two", memory=True, conversation=conv)
    assert seen_count(two["message"]["text"]) == 2


async def test_a_reply_is_regenerated_as_its_message_was_sent_whatever_the_switch_says(
    backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("remembered", memory=True, conversation=None)
    conv = first["conversation"]
    aside = await socket.chat("aside", memory=False, conversation=conv)
    await socket.send({"type": "conversation.memory", "conversation": conv, "enabled": True})
    await socket.until("conversation.snapshot")

    started, again = await regenerate(socket, conv)
    assert started["mode"] == "stateless" and started["replaces"] == [aside["message"]["id"]]
    assert seen_count(again["message"]["text"]) == 1
    assert again["message"]["remembered"] is False
    thread = await get_backend().thread_state(thread_id=(await conversation(conv)).thread_id)
    assert [m.text for m in thread.messages if m.role == "user"] == ["remembered"]


async def test_regenerate_refuses_with_a_clear_error_and_a_stranger_cannot(
    slow_backend_url, socket_factory
):
    socket = await socket_factory()
    await socket.send({"type": "chat.regenerate", "conversation": str(uuid.uuid4())})
    assert (await socket.receive())["code"] == "not_found"
    await socket.send({"type": "chat.regenerate"})
    assert (await socket.receive())["code"] == "invalid_frame"

    await socket.send({"type": "chat.send", "text": "slow one", "memory": False})
    started, _ = await socket.until("run.started")
    conv = started["conversation"]
    await socket.send({"type": "chat.regenerate", "conversation": conv, "client_id": "r1"})
    busy, _ = await socket.until("error")
    assert busy["code"] == "busy" and busy["client_id"] == "r1"

    stranger = await socket_factory()
    await stranger.send({"type": "chat.regenerate", "conversation": conv})
    assert (await stranger.receive())["code"] == "not_found"
    await socket.until_run_end()
    assert await Message.objects.filter(replaced_at__isnull=False).acount() == 0


async def test_editing_the_last_message_asks_again_with_the_new_text_in_its_place(
    backend_url, socket_factory
):
    cookie = await database_sync_to_async(session_cookie_for)()
    socket = await socket_factory(cookie)
    one = await socket.chat("one", memory=True)
    conv = one["conversation"]
    await socket.send({"type": "chat.send", "text": "twoo", "memory": True, "conversation": conv})
    typo, _ = await socket.until("run.started")
    old_reply, _ = await socket.until_run_end()
    watcher = await socket_factory(cookie)
    await watcher.send({"type": "conversation.watch", "conversation": conv})
    await watcher.until("conversation.snapshot")

    await socket.send({"type": "chat.regenerate", "conversation": conv, "text": "  two  "})
    started, _ = await socket.until("run.started")
    assert started["replaces"] == [typo["user_message"]["id"], old_reply["message"]["id"]]
    assert started["user_message"]["text"] == "two"
    assert started["user_message"]["id"] != typo["user_message"]["id"]
    final, _ = await socket.until_run_end()
    assert final["message"]["text"] == "You said: two (I can see 2 of your messages)"
    # Another tab is told what to take out, and what comes in its place.
    seen, _ = await watcher.until("run.started")
    assert seen["replaces"] == started["replaces"] and seen["user_message"]["text"] == "two"

    thread = await get_backend().thread_state(thread_id=(await conversation(conv)).thread_id)
    assert [m.text for m in thread.messages if m.role == "user"] == ["one", "two"]
    await socket.send({"type": "conversation.watch", "conversation": conv})
    snapshot, _ = await socket.until("conversation.snapshot")
    assert [m["text"] for m in snapshot["messages"] if m["role"] == "user"] == ["one", "two"]
    kept = await Message.objects.filter(replaced_at__isnull=False).acount()
    assert kept == 2, "the typo and its reply stay, for review"

    for bad, code in [("   ", "empty_text"), (7, "invalid_frame"), ("x" * 9000, "text_too_long")]:
        await socket.send({"type": "chat.regenerate", "conversation": conv, "text": bad})
        assert (await socket.receive())["code"] == code
    assert await Message.objects.filter(conversation_id=conv).acount() == 6


async def test_editing_an_earlier_message_replaces_all_after_it_in_the_transcript_and_memory(
    backend_url, socket_factory
):
    socket = await socket_factory()
    one = await socket.chat("one", memory=True)
    conv = one["conversation"]
    two = await socket.chat("two", memory=True, conversation=conv)
    three = await socket.chat("three", memory=True, conversation=conv)
    thread_id = (await conversation(conv)).thread_id

    started, again = await regenerate(socket, conv, message=two["user_message"]["id"], text="2")
    assert started["replaces"] == [
        two["user_message"]["id"],
        two["message"]["id"],
        three["user_message"]["id"],
        three["message"]["id"],
    ]
    assert started["user_message"]["text"] == "2" and started["mode"] == "thread"
    assert again["message"]["text"] == "You said: 2 (I can see 2 of your messages)"
    thread = await get_backend().thread_state(thread_id=thread_id)
    assert [m.text for m in thread.messages if m.role == "user"] == ["one", "2"]
    four = await socket.chat("four", memory=True, conversation=conv)
    assert seen_count(four["message"]["text"]) == 3

    # Without `text`, the message stays and what came after it is asked again.
    started, again = await regenerate(socket, conv, message=one["user_message"]["id"])
    assert started["user_message"]["id"] == one["user_message"]["id"]
    assert len(started["replaces"]) == 5 and one["user_message"]["id"] not in started["replaces"]
    assert seen_count(again["message"]["text"]) == 1
    await socket.send({"type": "conversation.watch", "conversation": conv})
    snapshot, _ = await socket.until("conversation.snapshot")
    assert [m["id"] for m in snapshot["messages"]] == [
        one["user_message"]["id"],
        again["message"]["id"],
    ]
    assert (await conversation(conv)).thread_id != thread_id, "its first run: a new memory"
    kept = Message.objects.filter(conversation_id=conv, replaced_at__isnull=False)
    assert await kept.acount() == 9, "everything replaced stays, for review"


async def test_an_edit_asked_without_memory_still_takes_what_it_replaces_out_of_the_memory(
    backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("a", memory=True)
    conv = first["conversation"]
    aside = await socket.chat("b", memory=False, conversation=conv)
    await socket.chat("c", memory=True, conversation=conv)
    thread_id = (await conversation(conv)).thread_id

    started, again = await regenerate(socket, conv, message=aside["user_message"]["id"], text="B")
    assert started["mode"] == "stateless" and len(started["replaces"]) == 4
    assert again["message"]["text"] == "You said: B (I can see 1 of your messages)"
    thread = await get_backend().thread_state(thread_id=thread_id)
    assert [m.text for m in thread.messages if m.role == "user"] == ["a"], "c is forgotten"
    d = await socket.chat("d", memory=True, conversation=conv)
    assert seen_count(d["message"]["text"]) == 2

    # When what it replaces began the memory, the memory goes with it.
    other = await socket.chat("x", memory=False)
    conv = other["conversation"]
    await socket.chat("y", memory=True, conversation=conv)
    thread_id = (await conversation(conv)).thread_id
    await regenerate(socket, conv, message=other["user_message"]["id"], text="X")
    assert (await conversation(conv)).thread_id == ""
    with pytest.raises(ThreadNotFound):
        await get_backend().thread_state(thread_id=thread_id)
    z = await socket.chat("z", memory=True, conversation=conv)
    assert seen_count(z["message"]["text"]) == 1


async def test_asking_again_from_a_message_that_is_not_one_of_yours_is_refused(
    backend_url, socket_factory
):
    socket = await socket_factory()
    one = await socket.chat("one", memory=False)
    conv = one["conversation"]
    elsewhere = await socket.chat("elsewhere", memory=False)
    await regenerate(socket, conv, message=one["user_message"]["id"], text="uno")
    for message in [
        one["message"]["id"],  # the assistant's
        one["user_message"]["id"],  # replaced by the edit
        elsewhere["user_message"]["id"],  # another conversation's
        str(uuid.uuid4()),
    ]:
        await socket.send({"type": "chat.regenerate", "conversation": conv, "message": message})
        refused = await socket.receive()
        assert refused["code"] == "invalid_frame", refused
        assert "one of your messages in this conversation" in refused["message"]
    await socket.send({"type": "chat.regenerate", "conversation": conv, "message": "one"})
    assert (await socket.receive())["code"] == "invalid_frame"
    assert await Message.objects.filter(conversation_id=conv).acount() == 4


async def test_a_deleted_account_sends_all_its_browsers_away(backend_url, socket_factory):
    user = await User.objects.acreate_user("hugo", password="pw-hugo-12345")
    laptop_cookie = await database_sync_to_async(session_cookie_for)(user)
    laptop_tab = await socket_factory(laptop_cookie)
    phone = await socket_factory(await database_sync_to_async(session_cookie_for)(user))
    await phone.chat("from my phone", memory=True)

    deleted = await api_client_for(laptop_cookie).post(
        "/accounts/delete/", {"password": "pw-hugo-12345"}
    )
    assert deleted.status_code == 302
    for tab in (laptop_tab, phone):
        told, _ = await tab.until("session.ended")
        assert told["reason"] == "signed_out"
    assert not await Conversation.objects.filter(owner_id=user.pk).aexists()


async def test_a_password_reset_by_email_sends_all_the_accounts_browsers_away(
    backend_url, socket_factory
):
    from django.core import mail
    from django.test import AsyncClient

    from tests.test_views import reset_link_in

    user = await User.objects.acreate_user("ines", email="ines@example.com", password="pw-ines-1")
    laptop = await socket_factory(await database_sync_to_async(session_cookie_for)(user))
    phone = await socket_factory(await database_sync_to_async(session_cookie_for)(user))
    await phone.chat("from my phone", memory=False)

    # Someone who has the mail, in a browser of their own.
    visitor = AsyncClient()
    await visitor.post("/accounts/password/reset/", {"email": "ines@example.com"})
    opened = await visitor.get(reset_link_in(mail.outbox[0]))
    new = {"new_password1": "ines-new-pw-2026", "new_password2": "ines-new-pw-2026"}
    done = await visitor.post(opened["Location"], new)
    assert done["Location"] == "/accounts/reset/done/"
    for tab in (laptop, phone):
        told, _ = await tab.until("session.ended")
        assert told["reason"] == "signed_out"
        closed = await tab.communicator.receive_output(timeout=5)
        assert closed == {"type": "websocket.close", "code": 4401}
    name = settings.SESSION_COOKIE_NAME
    signed_in = await socket_factory(f"{name}={visitor.cookies[name].value}")
    again = await signed_in.chat("after the reset", memory=False)
    assert again["type"] == "run.completed"
    assert await Conversation.objects.filter(owner_id=user.pk).acount() == 2


async def test_a_password_change_sends_the_accounts_other_browsers_away_and_keeps_this_one(
    backend_url, socket_factory
):
    user = await User.objects.acreate_user("gale", password="pw-gale-12345")
    laptop_cookie = await database_sync_to_async(session_cookie_for)(user)
    laptop_tab = await socket_factory(laptop_cookie)
    phone = await socket_factory(await database_sync_to_async(session_cookie_for)(user))
    done = await phone.chat("from my phone", memory=False)

    laptop = api_client_for(laptop_cookie)
    changed = await laptop.post(
        "/accounts/password/",
        {
            "old_password": "pw-gale-12345",
            "new_password1": "a-new-pw-for-gale-678",
            "new_password2": "a-new-pw-for-gale-678",
        },
    )
    assert changed.status_code == 302 and changed["Location"] == "/accounts/password/done/"
    assert await phone.receive() == {"type": "session.ended", "reason": "signed_out"}
    closed = await phone.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}

    # The browser that changed it goes on: its tabs come back with its renewed cookie.
    told, _ = await laptop_tab.until("session.ended")
    assert told == {"type": "session.ended", "reason": "renewed"}
    closed = await laptop_tab.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    assert await laptop_tab.communicator.receive_nothing(timeout=0.3), "told once"
    renewed = laptop.cookies[settings.SESSION_COOKIE_NAME].value
    assert f"{settings.SESSION_COOKIE_NAME}={renewed}" != laptop_cookie
    assert laptop.cookies[settings.CSRF_COOKIE_NAME].value, "the tabs' sign to reload"
    back = await socket_factory(f"{settings.SESSION_COOKIE_NAME}={renewed}")
    again = await back.chat("still here", memory=False, conversation=done["conversation"])
    assert again["type"] == "run.completed"
    # A socket of a session the next change ends, that did not hear of it, is refused at its
    # next frame.
    await user.arefresh_from_db()
    late_cookie = await database_sync_to_async(session_cookie_for)(user)
    late = await socket_factory(late_cookie)
    await database_sync_to_async(user.set_password)("another-pw-for-gale-9")
    await user.asave()
    await late.send({"type": "chat.send", "text": "late", "memory": False})
    refused, frames = await late.until("error")
    assert refused["code"] == "signed_out" and len(frames) == 1, frames
    closed = await late.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    assert not await Message.objects.filter(text="late").aexists(), "nothing saved"
    # The stale session is flushed, as Django does on a request of it.
    stale_key = late_cookie.split("=", 1)[1]
    assert not await Session.objects.filter(session_key=stale_key).aexists()
