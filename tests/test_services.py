"""The chat flow in runs/services.py, below the protocol."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from datetime import timedelta

import orjson
import pytest
from django.db import connection
from django.utils import timezone

from runs import db, services
from runs.db import db_call
from runs.exceptions import (
    Busy,
    EmptyText,
    InvalidRequest,
    NoReply,
    NotFound,
    RateLimited,
    TextTooLong,
)
from runs.models import Conversation, Message, Run
from runs.selectors import Owner
from tests.live import REDIS, redis_unreachable

pytestmark = pytest.mark.django_db(transaction=True)

VISITOR = Owner(user_id=None, session_key="visitor-one")


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("", EmptyText),
        ("  \n\t", EmptyText),
        ("a\x00b", InvalidRequest),
        ("\ud800", InvalidRequest),
    ],
)
def test_bad_text_is_refused(text, error):
    with pytest.raises(error):
        services.message_text_clean(text=text)


def test_text_is_trimmed_and_limited(settings):
    settings.CHAT_MAX_MESSAGE_CHARS = 5
    assert services.message_text_clean(text="  hello \n") == "hello"
    with pytest.raises(TextTooLong, match="at most 5 characters; this one has 6"):
        services.message_text_clean(text="hello!")


def test_titles_are_put_on_one_line_and_checked():
    assert services.conversation_title_clean(title="  Trip\n\n plans \t") == "Trip plans"
    assert services.conversation_title_clean(title="é" * 200) == "é" * 200
    for title, reason in [
        (None, "`title` is required"),
        (7, "`title` is required"),
        (" \n ", "cannot be blank"),
        ("a\x00b", "NUL"),
        ("\ud800", "lone surrogate"),
        ("x" * 201, "at most 200 characters; this one has 201"),
    ]:
        with pytest.raises(InvalidRequest, match=reason):
            services.conversation_title_clean(title=title)


async def test_the_users_message_is_saved_before_the_backend_is_called(closed_port_url):
    started = await services.chat_start(
        owner=VISITOR, conversation_id=None, text="  first words  ", memory=True
    )
    # Nothing has gone to the backend yet, and the message is already kept.
    message = await Message.objects.aget(pk=started.user_message.pk)
    assert message.text == "first words" and message.remembered is True
    conversation = await Conversation.objects.aget(pk=started.conversation.pk)
    assert conversation.title == "first words"
    assert conversation.active_run_id == started.run.id
    assert started.run.status == Run.Status.PENDING and started.run.mode == Run.Mode.THREAD


def test_a_message_in_a_conversation_is_saved_whole_as_staff_see_it(closed_port_url):
    """The chat flow writes its rows as plain SQL (runs/sql.py): read back through the ORM,
    every field is as `save()` would have left it."""

    def start(conversation_id, text, memory):
        return services._chat_start(
            owner=VISITOR, conversation_id=conversation_id, text=text, memory=memory,
            client_id=None, relay_channel="relay-channel",
        )  # fmt: skip

    before = timezone.now()
    first = start(None, "first words", False)
    services._run_finish(
        run_id=first.run.id, conversation_id=first.conversation.id, mode=first.run.mode,
        status=Run.Status.COMPLETED, text="the reply", first_token_at=None,
    )  # fmt: skip
    second = start(first.conversation.id, "second words", True)

    conversation = Conversation.objects.get(pk=first.conversation.pk)
    assert (conversation.title, conversation.memory, conversation.session_key) == (
        "first words", True, VISITOR.session_key,
    )  # fmt: skip
    assert conversation.owner_id is None and conversation.active_run_id == second.run.id
    assert before <= conversation.created_at <= conversation.updated_at
    # What the start returns reads like the row, its other fields loaded on first use.
    assert second.conversation.created_at == conversation.created_at
    assert second.conversation.session_key == VISITOR.session_key

    run = Run.objects.get(pk=second.run.pk)
    assert (run.conversation_id, run.mode, run.status, run.relay_channel, run.reply_chars) == (
        conversation.id, Run.Mode.THREAD, Run.Status.PENDING, "relay-channel", 0,
    )  # fmt: skip
    assert run.started_at >= before and run.heartbeat_at >= before and run.finished_at is None
    assert run.started_at == second.run.started_at

    messages = list(conversation.messages.order_by("created_at"))
    assert [(m.role, m.text, m.remembered, m.run_id) for m in messages] == [
        (Message.Role.USER, "first words", False, first.run.id),
        (Message.Role.ASSISTANT, "the reply", False, first.run.id),
        (Message.Role.USER, "second words", True, second.run.id),
    ]
    assert messages[2].created_at == second.user_message.created_at


async def test_one_active_run_per_conversation(closed_port_url):
    started = await services.chat_start(owner=VISITOR, conversation_id=None, text="a", memory=False)
    with pytest.raises(Busy):
        await services.chat_start(
            owner=VISITOR, conversation_id=started.conversation.id, text="b", memory=False
        )
    assert not await Message.objects.filter(text="b").aexists()


async def test_messages_sent_at_once_are_saved_together_and_a_refusal_undoes_only_its_own(
    closed_port_url, monkeypatch
):
    """A burst of senders is saved in one transaction; should one of them be refused (here:
    its conversation is busy), the others are saved all the same and the refused one leaves
    nothing behind."""
    busy = await services.chat_start(owner=VISITOR, conversation_id=None, text="busy", memory=False)
    batches: list[int] = []
    together = db._run_together
    monkeypatch.setattr(
        db, "_run_together", lambda calls: batches.append(len(calls)) or together(calls)
    )
    # Holds the database thread, so that the four senders wait in line together.
    gate = threading.Event()
    held = asyncio.ensure_future(db_call(gate.wait)(10))
    senders = [
        asyncio.ensure_future(
            services.chat_start(owner=VISITOR, conversation_id=None, text=f"new {n}", memory=False)
        )
        for n in range(3)
    ]
    senders.append(
        asyncio.ensure_future(
            services.chat_start(
                owner=VISITOR, conversation_id=busy.conversation.id, text="again", memory=False
            )
        )
    )
    await asyncio.sleep(0.1)
    gate.set()
    await held
    outcomes = await asyncio.gather(*senders, return_exceptions=True)
    assert batches == [4]
    assert [type(outcome) for outcome in outcomes] == [services.StartedRun] * 3 + [Busy]
    assert [started.user_message.text for started in outcomes[:3]] == ["new 0", "new 1", "new 2"]
    saved = [message.text async for message in Message.objects.order_by("created_at")]
    assert saved == ["busy", "new 0", "new 1", "new 2"]
    assert await Run.objects.acount() == 4  # no run left behind by the refused message
    assert (await Conversation.objects.aget(pk=busy.conversation.id)).active_run_id == busy.run.id


async def test_nothing_of_a_run_is_published_before_its_run_started(channel_layer):
    conversation_id = uuid.uuid4()
    watcher = await channel_layer.new_channel()
    await channel_layer.group_add(services.conversation_group(conversation_id), watcher)
    live = services.LiveRun(
        run_id=uuid.uuid4(), conversation_id=conversation_id, mode="stateless", text_in="hi"
    )
    live.delta_add("Hel")
    live.delta_add("lo")
    await asyncio.sleep(0.05)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(channel_layer.receive(watcher), timeout=0.1)
    live.announce()
    frame = orjson.loads((await asyncio.wait_for(channel_layer.receive(watcher), 5))["text"])
    assert (frame["type"], frame["seq"], frame["text"]) == ("run.delta", 1, "Hello")


@pytest.mark.skipif(
    connection.vendor == "sqlite",
    reason="SQLite's writers take turns (BEGIN IMMEDIATE): the race needs PostgreSQL",
)
def test_two_processes_sending_to_one_idle_conversation_at_once_start_one_run(closed_port_url):
    """The claim holds across processes (here two threads with a database connection each),
    even when the second reads the conversation while the first is about to commit."""
    conversation = services._chat_start(
        owner=VISITOR, conversation_id=None, text="hello", memory=False, client_id=None,
        relay_channel="",
    ).conversation  # fmt: skip
    Conversation.objects.filter(pk=conversation.pk).update(active_run=None)  # idle again
    first_claimed = threading.Event()
    outcomes: dict[str, str] = {}

    def hold_after_the_claim(execute, sql, params, many, context):
        result = execute(sql, params, many, context)
        if sql.startswith("UPDATE") and "active_run_id" in sql and not first_claimed.is_set():
            first_claimed.set()
            time.sleep(1.0)  # the second sender reads and claims meanwhile
        return result

    def send(name: str) -> None:
        try:
            if name == "second":
                first_claimed.wait(10)
            with connection.execute_wrapper(hold_after_the_claim):
                services._chat_start(
                    owner=VISITOR, conversation_id=conversation.pk, text=name, memory=False,
                    client_id=None, relay_channel="",
                )  # fmt: skip
            outcomes[name] = "started"
        except Busy:
            outcomes[name] = "busy"
        finally:
            connection.close()

    senders = [threading.Thread(target=send, args=(name,)) for name in ("first", "second")]
    for sender in senders:
        sender.start()
    for sender in senders:
        sender.join(30)
    assert outcomes == {"first": "started", "second": "busy"}
    assert not Message.objects.filter(text="second").exists()


async def test_the_rate_limit_counts_only_the_owners_messages_of_the_last_minute(
    settings, closed_port_url, django_user_model
):
    settings.CHAT_RATE_LIMIT = 2
    user = await django_user_model.objects.acreate(username="ann")
    for owner in (VISITOR, Owner(user_id=user.pk, session_key="")):
        # Two messages in two conversations use up the minute's allowance.
        for text in ("one", "two"):
            await services.chat_start(owner=owner, conversation_id=None, text=text, memory=False)
        with pytest.raises(RateLimited):
            await services.chat_start(owner=owner, conversation_id=None, text="3", memory=False)
    # Somebody else's messages don't count against a visitor.
    other = Owner(user_id=None, session_key="visitor-two")
    await services.chat_start(owner=other, conversation_id=None, text="mine", memory=False)
    # Nor do the visitor's own from over a minute ago.
    await Run.objects.filter(conversation__session_key=VISITOR.session_key).aupdate(
        started_at=timezone.now() - timedelta(minutes=2)
    )
    await services.chat_start(owner=VISITOR, conversation_id=None, text="again", memory=False)


async def test_a_reply_regenerated_counts_against_the_rate_limit_like_a_message(
    settings, backend_url
):
    settings.CHAT_RATE_LIMIT = 2
    done = await services.chat_wait(owner=VISITOR, conversation_id=None, text="a", memory=False)
    conversation_id = done.started.conversation.id
    await services.chat_regenerate_wait(owner=VISITOR, conversation_id=conversation_id)
    with pytest.raises(RateLimited):
        await services.chat_regenerate(owner=VISITOR, conversation_id=conversation_id)
    with pytest.raises(RateLimited):
        await services.chat_start(owner=VISITOR, conversation_id=None, text="b", memory=False)
    replies = Message.objects.filter(role=Message.Role.ASSISTANT)
    assert await replies.filter(replaced_at__isnull=True).acount() == 1
    assert await replies.acount() == 2


async def test_a_conversation_whose_last_message_has_no_reply_has_nothing_to_regenerate(
    closed_port_url,
):
    conversation = await Conversation.objects.acreate(session_key=VISITOR.session_key)
    with pytest.raises(NoReply):
        await services.chat_regenerate(owner=VISITOR, conversation_id=conversation.pk)
    # A message saved before the backend was called has no reply while its run is pending.
    started = await services.chat_start(
        owner=VISITOR, conversation_id=conversation.pk, text="hi", memory=False
    )
    await Run.objects.filter(pk=started.run.pk).aupdate(status=Run.Status.FAILED)
    await Conversation.objects.filter(pk=conversation.pk).aupdate(active_run=None)
    with pytest.raises(NoReply) as refused:
        await services.chat_regenerate(owner=VISITOR, conversation_id=conversation.pk)
    assert refused.value.code == "no_reply"
    assert "the last message has no reply" in refused.value.message


@pytest.mark.parametrize(
    ("text", "more", "joined"),
    [
        ("The river", "flows on.", "The river flows on."),
        ("The river ", "flows on.", "The river flows on."),
        ("The river", " flows on.", "The river flows on."),
        ("The river", "\n\nThen", "The river\n\nThen"),
        ("The river", ", which flows", "The river, which flows"),
        ("The river", "", "The river"),
    ],
)
def test_a_continuation_joins_its_reply_with_a_space_only_between_words(text, more, joined):
    assert services.reply_continued(text, more) == joined


def test_a_continuation_whose_server_stopped_keeps_the_reply_and_what_came():
    conversation = Conversation.objects.create(session_key=VISITOR.session_key)
    cut = Run.objects.create(
        conversation=conversation,
        mode=Run.Mode.STATELESS,
        status=Run.Status.COMPLETED,
        notice=services.REPLY_CUT_NOTICE,
    )
    Message.objects.create(conversation=conversation, role="user", text="a story", run=cut)
    reply = Message.objects.create(
        conversation=conversation, role="assistant", text="Once upon", run=cut
    )
    going_on = Run.objects.create(
        conversation=conversation,
        mode=Run.Mode.STATELESS,
        status=Run.Status.STREAMING,
        partial_text="a time",
        continues=reply,
    )
    conversation.active_run = going_on
    conversation.save()

    [(conversation_id, frame)] = services.runs_interrupt(stale_after=None)
    assert conversation_id == conversation.pk and frame["type"] == "run.failed"
    assert frame["message"]["id"] == str(reply.pk) and frame["error"]["code"] == "interrupted"
    reply.refresh_from_db()
    assert reply.text == "Once upon a time" and reply.run_id == going_on.pk
    assert Message.objects.filter(conversation=conversation).count() == 2


async def test_a_strangers_conversation_is_not_found(closed_port_url):
    started = await services.chat_start(owner=VISITOR, conversation_id=None, text="a", memory=False)
    stranger = Owner(user_id=None, session_key="visitor-two")
    for conversation_id in (started.conversation.id, "not-a-uuid", uuid.uuid4()):
        with pytest.raises(NotFound):
            await services.chat_start(
                owner=stranger, conversation_id=conversation_id, text="b", memory=False
            )
    assert not await Message.objects.filter(text="b").aexists()


async def test_sharing_waits_for_the_reply_and_keeps_one_link_until_it_stops(closed_port_url):
    started = await services.chat_start(owner=VISITOR, conversation_id=None, text="a", memory=False)
    conversation_id = started.conversation.id
    share = db_call(services.conversation_share)
    with pytest.raises(Busy, match="before sharing it"):
        await share(owner=VISITOR, conversation_id=conversation_id)
    await Run.objects.filter(pk=started.run.pk).aupdate(status=Run.Status.COMPLETED)
    stranger = Owner(user_id=None, session_key="visitor-two")
    with pytest.raises(NotFound):
        await share(owner=stranger, conversation_id=conversation_id)

    first = await share(owner=VISITOR, conversation_id=conversation_id)
    again = await share(owner=VISITOR, conversation_id=conversation_id)
    assert first.share_token and again.share_token == first.share_token, "the same link"
    assert again.shared_at > first.shared_at, "shows the conversation as it is now"
    row = await Conversation.objects.aget(pk=conversation_id)
    assert row.updated_at == started.conversation.updated_at, "the list keeps its order"

    await db_call(services.conversation_unshare)(owner=VISITOR, conversation_id=conversation_id)
    assert not await Conversation.objects.filter(share_token=first.share_token).aexists()
    renewed = await share(owner=VISITOR, conversation_id=conversation_id)
    assert renewed.share_token != first.share_token, "a link stopped never works again"


async def test_database_writes_per_streamed_reply_are_constant_not_per_token(
    settings, backend_url, slow_backend_url, socket_factory
):
    """A short reply and one with 60 more tokens write the same number of rows."""
    settings.CHAT_RELAY_HEARTBEAT_SECONDS = 600  # no heartbeat inside the measured replies
    statements: list[str] = []

    def record(execute, sql, params, many, context):
        statements.append(sql)
        return execute(sql, params, many, context)

    # Every chat-flow query runs on the one database thread: watch its connection.
    await db_call(lambda: connection.execute_wrappers.append(record))()
    try:
        writes = {}
        for name, url in (("short", backend_url), ("long", slow_backend_url)):
            settings.LANGGRAPH_URL = url
            socket = await socket_factory()
            statements.clear()
            done = await socket.chat(f"count my writes ({name})", memory=False)
            await asyncio.sleep(0.1)
            tokens = len(done["message"]["text"].split())
            writes[name] = (
                sum(
                    sql.lstrip().upper().startswith(("INSERT", "UPDATE", "DELETE"))
                    for sql in statements
                ),
                tokens,
            )
    finally:
        await db_call(lambda: connection.execute_wrappers.remove(record))()
    (short_writes, short_tokens), (long_writes, long_tokens) = writes["short"], writes["long"]
    assert long_tokens >= short_tokens + 60
    assert 5 <= short_writes == long_writes <= 8, writes


@pytest.mark.skipif(bool(redis_unreachable()), reason=redis_unreachable())
async def test_on_redis_tokens_that_arrive_during_a_publish_go_out_together_in_order(
    monkeypatch,
):
    """A Redis send takes a round trip: tokens that arrive meanwhile make one frame, not a queue."""
    from runs.layers import PipelinedRedisPubSubChannelLayer

    layer = PipelinedRedisPubSubChannelLayer(hosts=[REDIS], prefix=f"test-{uuid.uuid4().hex}")
    monkeypatch.setattr(services, "get_channel_layer", lambda: layer)
    live = services.LiveRun(
        run_id=uuid.uuid4(),
        conversation_id=uuid.uuid4(),
        mode="stateless",
        text_in="hi",
        announced=True,  # its run.started is not what this is about
    )
    watcher = await layer.new_channel()
    await layer.group_add(services.conversation_group(live.conversation_id), watcher)
    tokens = [f"token{index} " for index in range(50)]
    try:
        for token in tokens:
            live.delta_add(token)
            await asyncio.sleep(0)  # one turn of the loop, as between two network reads
        await live.drained()
        frames = []
        while sum(len(frame["text"]) for frame in frames) < len("".join(tokens)):
            message = await asyncio.wait_for(layer.receive(watcher), timeout=5)
            frames.append(orjson.loads(message["text"]))
    finally:
        await layer.flush()
    assert "".join(frame["text"] for frame in frames) == "".join(tokens)
    assert [frame["seq"] for frame in frames] == list(range(1, len(frames) + 1))
    assert len(frames) < len(tokens) / 2, [frame["text"] for frame in frames]
