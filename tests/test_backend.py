"""runs/backend.py against a real `langgraph dev` (echo model), and its errors at the edge."""

from __future__ import annotations

import ssl
from contextlib import aclosing

import httpx
import pytest
from langgraph_sdk import get_client

from runs.backend import (
    BackendConfig,
    BackendMessage,
    ForkPoint,
    ReplyCut,
    RunBackend,
    RunStarted,
    TextDelta,
    get_backend,
)
from runs.exceptions import (
    BackendError,
    BackendHTTPError,
    BackendTimeout,
    BackendUnavailable,
    MalformedStream,
    RunConflict,
    RunFailed,
    ThreadNotFound,
)
from tests.conftest import seen_count


async def collect(backend: RunBackend, **kwargs) -> tuple[RunStarted, str]:
    started = None
    text = ""
    async with aclosing(backend.run_stream(**kwargs)) as events:
        async for event in events:
            if isinstance(event, RunStarted):
                started = event
            elif isinstance(event, TextDelta):
                text += event.text
    assert started is not None
    return started, text


async def events_of(backend: RunBackend, **kwargs) -> list:
    async with aclosing(backend.run_stream(**kwargs)) as events:
        return [event async for event in events]


async def test_stateless_stream_sees_one_message(backend_url):
    backend = get_backend()
    started, text = await collect(backend, text="first")
    _, again = await collect(backend, text="second")
    assert started.run_id
    assert text == "You said: first (I can see 1 of your messages)"
    assert seen_count(again) == 1


async def test_stream_yields_one_delta_per_token(backend_url):
    events = await events_of(get_backend(), text="one two")
    assert ReplyCut() not in events  # the reply ended by itself
    deltas = [event.text for event in events if isinstance(event, TextDelta)]
    assert deltas == [
        "You ",
        "said: ",
        "one ",
        "two ",
        "(I ",
        "can ",
        "see ",
        "1 ",
        "of ",
        "your ",
        "messages)",
    ]


async def test_stateless_wait_sees_one_message(backend_url):
    result = await get_backend().run_wait(text="hello")
    assert result.reply == "You said: hello (I can see 1 of your messages)"
    assert result.cut is False
    assert seen_count((await get_backend().run_wait(text="again")).reply) == 1


async def test_thread_remembers_and_its_state_is_readable(backend_url):
    backend = get_backend()
    thread = await backend.thread_create(metadata={"conversation_id": "c-1"})
    assert thread.metadata == {"conversation_id": "c-1"}
    started, first = await collect(backend, text="one", thread_id=thread.thread_id)
    assert started.thread_id == thread.thread_id
    assert seen_count(first) == 1
    _, second = await collect(backend, text="two", thread_id=thread.thread_id)
    assert seen_count(second) == 2
    waited = await backend.run_wait(text="three", thread_id=thread.thread_id)
    assert seen_count(waited.reply) == 3
    assert waited.run_id and waited.thread_id == thread.thread_id

    state = await backend.thread_state(thread_id=thread.thread_id)
    assert [(m.role, m.text) for m in state.messages if m.role == "user"] == [
        ("user", "one"),
        ("user", "two"),
        ("user", "three"),
    ]
    assert state.messages[-1].role == "assistant"


async def test_a_thread_rewound_to_before_a_run_forgets_it_and_all_after(backend_url):
    backend = get_backend()
    thread_id = (await backend.thread_create()).thread_id
    first, _ = await collect(backend, text="one", thread_id=thread_id)
    second, _ = await collect(backend, text="two", thread_id=thread_id)
    for text in ("three", "four", "five"):  # the run asked about is far back in the history
        await collect(backend, text=text, thread_id=thread_id)

    assert await backend.thread_fork_point(thread_id=thread_id, run_id=first.run_id) == ForkPoint(
        checkpoint_id=None
    ), "the thread's first run: nothing came before it"
    assert await backend.thread_fork_point(thread_id=thread_id, run_id="not-a-run") is None
    fork = await backend.thread_fork_point(thread_id=thread_id, run_id=second.run_id)
    assert fork is not None and fork.checkpoint_id

    await backend.thread_rewind(thread_id=thread_id, checkpoint_id=fork.checkpoint_id)
    state = await backend.thread_state(thread_id=thread_id)
    assert [m.text for m in state.messages if m.role == "user"] == ["one"]
    _, again = await collect(backend, text="two, again", thread_id=thread_id)
    assert seen_count(again) == 2
    waited = await backend.run_wait(text="three, again", thread_id=thread_id)
    assert seen_count(waited.reply) == 3
    state = await backend.thread_state(thread_id=thread_id)
    assert [m.text for m in state.messages if m.role == "user"] == [
        "one",
        "two, again",
        "three, again",
    ]

    await backend.thread_delete(thread_id=thread_id)
    with pytest.raises(ThreadNotFound):
        await backend.thread_fork_point(thread_id=thread_id, run_id=second.run_id)
    with pytest.raises(ThreadNotFound):
        await backend.thread_rewind(thread_id=thread_id, checkpoint_id=fork.checkpoint_id)


async def test_a_threads_messages_are_removed_and_rewritten_in_place(backend_url):
    backend = get_backend()
    thread_id = (await backend.thread_create()).thread_id
    for text in ("one", "two", "three"):
        await collect(backend, text=text, thread_id=thread_id)
    messages = (await backend.thread_state(thread_id=thread_id)).messages
    assert len(messages) == 6 and all(message.id for message in messages)

    rewritten = BackendMessage(
        role="assistant", text="first, rewritten", cut=True, id=messages[1].id
    )
    await backend.thread_messages_edit(
        thread_id=thread_id, remove=[messages[2].id, messages[3].id], rewrite=[rewritten]
    )
    state = await backend.thread_state(thread_id=thread_id)
    assert [(m.role, m.text) for m in state.messages] == [
        ("user", "one"),
        ("assistant", "first, rewritten"),
        ("user", "three"),
        ("assistant", messages[5].text),
    ]
    assert state.messages[1] == rewritten, "in its place, with its id, cut at the limit"
    _, reply = await collect(backend, text="four", thread_id=thread_id)
    assert seen_count(reply) == 3, "the next run goes on from the edited memory"

    await backend.thread_delete(thread_id=thread_id)
    with pytest.raises(ThreadNotFound):
        await backend.thread_messages_edit(thread_id=thread_id, remove=[messages[0].id])


async def test_a_reply_that_reaches_the_length_limit_says_so(short_backend_url):
    backend = get_backend()
    events = await events_of(backend, text="one two three")
    assert isinstance(events[0], RunStarted)
    assert [e.text for e in events if isinstance(e, TextDelta)] == [
        "You ",
        "said: ",
        "one ",
        "two ",
    ]
    assert events[-1] == ReplyCut() and events.count(ReplyCut()) == 1
    result = await backend.run_wait(text="one two three")
    assert result.reply == "You said: one two " and result.cut is True


async def test_deleted_thread_is_not_found(backend_url):
    backend = get_backend()
    thread = await backend.thread_create(metadata={"conversation_id": "c-2"})
    await backend.thread_delete(thread_id=thread.thread_id)
    with pytest.raises(ThreadNotFound):
        await backend.thread_state(thread_id=thread.thread_id)
    with pytest.raises(ThreadNotFound):
        await collect(backend, text="hi", thread_id=thread.thread_id)
    with pytest.raises(ThreadNotFound):
        await backend.thread_delete(thread_id=thread.thread_id)


async def test_thread_run_can_be_cancelled(slow_backend_url):
    backend = get_backend()
    thread = await backend.thread_create(metadata={"conversation_id": "c-3"})
    deltas = 0
    async with aclosing(backend.run_stream(text="long", thread_id=thread.thread_id)) as events:
        async for event in events:
            if isinstance(event, RunStarted):
                run_id = event.run_id
            else:
                deltas += 1
                if deltas == 2:
                    await backend.run_cancel(thread_id=thread.thread_id, run_id=run_id)
    # The slow reply has 71 tokens; the stream ended soon after the cancel.
    assert 2 <= deltas < 20
    async with httpx.AsyncClient(base_url=slow_backend_url) as client:
        run = (await client.get(f"/threads/{thread.thread_id}/runs/{run_id}")).json()
    assert run["status"] in {"interrupted", "error"}


async def test_a_second_run_on_a_busy_thread_is_a_conflict(slow_backend_url):
    backend = get_backend()
    thread = await backend.thread_create()
    async with aclosing(backend.run_stream(text="long", thread_id=thread.thread_id)) as events:
        async for event in events:
            if isinstance(event, TextDelta):
                with pytest.raises(RunConflict):
                    await collect(backend, text="meanwhile", thread_id=thread.thread_id)
                break


async def test_official_sdk_reads_a_thread_this_client_made(backend_url):
    backend = get_backend()
    thread = await backend.thread_create(metadata={"conversation_id": "interop"})
    await collect(backend, text="remember me", thread_id=thread.thread_id)
    sdk = get_client(url=backend_url, api_key=None)
    fetched = await sdk.threads.get(thread.thread_id)
    assert fetched["metadata"]["conversation_id"] == "interop"
    state = await sdk.threads.get_state(thread.thread_id)
    assert state["values"]["messages"][0]["content"] == "remember me"


async def test_health(backend_url):
    assert await get_backend().health() is True


async def test_closed_port_is_unavailable(closed_port_url):
    backend = get_backend()
    assert await backend.health() is False
    with pytest.raises(BackendUnavailable):
        await collect(backend, text="hi")
    with pytest.raises(BackendUnavailable):
        await backend.thread_create()


async def test_api_key_is_sent_when_set(settings):
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("x-api-key"))
        return httpx.Response(200, json={"thread_id": "t", "metadata": {}})

    settings.LANGGRAPH_API_KEY = "test-key-not-a-secret"
    backend = RunBackend(BackendConfig.from_settings(), transport=httpx.MockTransport(handler))
    await backend.thread_create()
    assert seen == ["test-key-not-a-secret"]


# Broken backends, mocked at the HTTP edge.


def mocked(handler) -> RunBackend:
    from django.conf import settings

    config = BackendConfig.from_settings()
    assert settings.LANGGRAPH_API_KEY == ""
    return RunBackend(config, transport=httpx.MockTransport(handler))


def sse(*events: tuple[str, str]) -> httpx.Response:
    body = "".join(f"event: {name}\ndata: {data}\n\n" for name, data in events)
    return httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body.encode())


async def test_server_error_is_typed():
    backend = mocked(lambda request: httpx.Response(500, json={"detail": "boom"}))
    with pytest.raises(BackendHTTPError) as error:
        await collect(backend, text="hi")
    assert error.value.status == 500 and error.value.detail == "boom"
    assert error.value.code == "backend_error"


async def test_conflict_is_typed():
    backend = mocked(lambda request: httpx.Response(409, json={"detail": "busy"}))
    with pytest.raises(RunConflict) as error:
        await collect(backend, text="hi", thread_id="t-1")
    assert error.value.code == "busy"


async def test_sse_error_event_is_a_run_failure():
    backend = mocked(
        lambda request: sse(
            ("metadata", '{"run_id": "r-1"}'),
            ("messages", '[{"type": "AIMessageChunk", "content": "part"}, {}]'),
            ("error", '{"error": "ValueError", "message": "model exploded"}'),
        )
    )
    received = []
    with pytest.raises(RunFailed) as error:
        async with aclosing(backend.run_stream(text="hi")) as events:
            async for event in events:
                received.append(event)
    assert received == [RunStarted(run_id="r-1", thread_id=None), TextDelta("part")]
    assert "model exploded" in error.value.message


async def test_only_ai_chunks_become_deltas():
    backend = mocked(
        lambda request: sse(
            ("metadata", '{"run_id": "r-1"}'),
            ("messages", '[{"type": "human", "content": "echoed input"}, {}]'),
            (
                "messages",
                '[{"type": "AIMessageChunk", "content": [{"type": "text", "text": "hi"}]}, {}]',
            ),
            ("updates", '{"respond": {}}'),
        )
    )
    _, text = await collect(backend, text="x")
    assert text == "hi"


@pytest.mark.parametrize(
    "metadata",
    [
        pytest.param('{"finish_reason": "length"}', id="openai"),
        pytest.param('{"stop_reason": "max_tokens"}', id="anthropic"),
        pytest.param('{"finish_reason": "MAX_TOKENS"}', id="google"),
    ],
)
async def test_models_that_stop_at_their_length_limit_are_heard(metadata):
    def chunk(content: str, response_metadata: str) -> tuple[str, str]:
        message = f'[{{"type": "AIMessageChunk", "content": "{content}", '
        return "messages", message + f'"response_metadata": {response_metadata}}}, {{}}]'

    started = ("metadata", '{"run_id": "r-1"}')
    cut = mocked(lambda request: sse(started, chunk("so far", "{}"), chunk("", metadata)))
    events = await events_of(cut, text="x")
    assert events[1:] == [TextDelta("so far"), ReplyCut()]
    stopped = mocked(lambda request: sse(started, chunk("done", '{"finish_reason": "stop"}')))
    assert ReplyCut() not in await events_of(stopped, text="x")


@pytest.mark.parametrize(
    "response",
    [
        pytest.param(lambda: sse(("metadata", "{not json")), id="bad-json"),
        pytest.param(
            lambda: sse(("messages", '[{"type": "ai", "content": "x"}, {}]')), id="no-metadata"
        ),
        pytest.param(lambda: sse(), id="empty-stream"),
        pytest.param(
            lambda: httpx.Response(200, headers={"content-type": "text/html"}, content=b"<html>"),
            id="not-sse",
        ),
    ],
)
async def test_malformed_stream_is_typed(response):
    backend = mocked(lambda request: response())
    with pytest.raises(MalformedStream):
        await collect(backend, text="hi")


async def test_wait_error_inside_a_200_is_a_run_failure():
    backend = mocked(
        lambda request: httpx.Response(
            200, json={"__error__": {"error": "ValueError", "message": "bad things"}}
        )
    )
    with pytest.raises(RunFailed) as error:
        await backend.run_wait(text="hi")
    assert "bad things" in error.value.message


async def test_read_timeout_is_typed():
    def read_timeout(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("timed out", request=request)

    with pytest.raises(BackendTimeout):
        await collect(mocked(read_timeout), text="hi")


async def test_backends_read_the_ca_bundle_once_not_once_per_client(monkeypatch):
    """Each read is some 40 ms of the event loop; a backend has 17 clients, made when a process
    relays its first message, while every socket waits."""
    reads = []
    read = ssl.SSLContext.load_verify_locations

    def counted(context, *args, **kwargs):
        reads.append(args or kwargs)
        return read(context, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    config = BackendConfig.from_settings()
    backends = [RunBackend(config), RunBackend(config)]
    assert len(reads) <= 1  # none if this process has made its one context already
    for backend in backends:
        await backend.aclose()


async def test_a_run_that_began_before_the_history_read_has_no_fork_point_to_guess():
    # Only the run's later checkpoints fit in the page read (a graph of many steps): forking
    # from one of them would keep half the run in the memory.
    def handler(request: httpx.Request) -> httpx.Response:
        state = {
            "metadata": {"run_id": "r", "source": "loop", "step": 40},
            "parent_checkpoint": {"checkpoint_id": "mid-run"},
        }
        return httpx.Response(200, json=[state])

    with pytest.raises(BackendError) as refused:
        await mocked(handler).thread_fork_point(thread_id="t", run_id="r")
    assert refused.value.code == "backend_error"
