"""The embedded assistant's graph, in process."""

from __future__ import annotations

import copy
import http.client
import pickle
import re
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from uuid import uuid4

import httpx
import pytest
from langchain_core.messages import AIMessageChunk
from langgraph.checkpoint.memory import PersistentDict

from agent.graph import build_graph
from agent.models import EchoChatModel, LocalChatModel, chat_model_from_env
from agent.server import (
    YOUNG_COLLECTION_ALLOCATIONS,
    EmbeddedBackend,
    finished_runs_forget,
    stores_write_forked,
)
from bench.walks import runtime_both
from tests.conftest import LOG_DIR, backend_start, seen_count


def stream_tokens(graph, text: str) -> list[str]:
    tokens = []
    for chunk, _metadata in graph.stream(
        {"messages": [{"role": "user", "content": text}]}, stream_mode="messages"
    ):
        if isinstance(chunk, AIMessageChunk) and chunk.content:
            tokens.append(chunk.content)
    return tokens


def test_echo_counts_user_messages_and_streams_word_by_word():
    graph = build_graph(EchoChatModel())
    result = graph.invoke(
        {"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b c"}]}
    )
    assert result["messages"][-1].content == "You said: b c (I can see 2 of your messages)"
    tokens = stream_tokens(graph, "hello")
    assert tokens[:3] == ["You ", "said: ", "hello "]


def test_echo_options_pad_and_stamp(monkeypatch):
    monkeypatch.setenv("AGENT_MODEL", "echo")
    monkeypatch.setenv("AGENT_ECHO_EXTRA_TOKENS", "5")
    monkeypatch.setenv("AGENT_ECHO_STAMP", "1")
    model = chat_model_from_env()
    tokens = stream_tokens(build_graph(model), "hi")
    assert len(tokens) == 10 + 5
    assert all("@" in token for token in tokens)


def test_echo_stops_at_its_length_limit_and_says_so_streamed_or_not(monkeypatch):
    monkeypatch.setenv("AGENT_MODEL", "echo")
    monkeypatch.setenv("AGENT_ECHO_MAX_TOKENS", "3")
    graph = build_graph(chat_model_from_env())
    chunks = [
        chunk
        for chunk, _metadata in graph.stream(
            {"messages": [{"role": "user", "content": "hello there"}]}, stream_mode="messages"
        )
        if isinstance(chunk, AIMessageChunk)
    ]
    assert "".join(chunk.content for chunk in chunks) == "You said: hello "
    reasons = [chunk.response_metadata.get("finish_reason") for chunk in chunks]
    # Said once, after the last token (LangChain may add an empty closing chunk of its own).
    assert [reason for reason in reasons if reason] == ["length"]
    assert not "".join(chunk.content for chunk in chunks[reasons.index("length") :])
    reply = graph.invoke({"messages": [{"role": "user", "content": "hello there"}]})
    assert reply["messages"][-1].content == "You said: hello "
    assert reply["messages"][-1].response_metadata.get("finish_reason") == "length"
    whole = build_graph(EchoChatModel()).invoke({"messages": [{"role": "user", "content": "hi"}]})
    assert not whole["messages"][-1].response_metadata.get("finish_reason")


def test_unknown_model_is_refused(monkeypatch):
    monkeypatch.setenv("AGENT_MODEL", "gpt-99")
    with pytest.raises(ValueError, match="AGENT_MODEL"):
        chat_model_from_env()


@pytest.mark.model
def test_real_smollm2_streams_tokens_through_the_graph():
    graph = build_graph(LocalChatModel(max_tokens=12, temperature=0.0))
    tokens = stream_tokens(graph, "Say hello.")
    assert len(tokens) >= 2, tokens
    assert "".join(tokens).strip()


@pytest.mark.model
def test_real_smollm2_lists_the_week_once_instead_of_looping_to_its_token_limit(monkeypatch):
    """Greedy, so the same every time; llama.cpp's own repeat penalty (1.0) made this reply
    "Monday, ..., Sunday, Monday, ..." until the limit cut it."""
    monkeypatch.setenv("AGENT_MODEL", "local")
    monkeypatch.delenv("AGENT_LOCAL_REPEAT_PENALTY", raising=False)
    monkeypatch.setenv("AGENT_LOCAL_TEMPERATURE", "0")
    model = chat_model_from_env()
    assert (model.temperature, model.repeat_penalty) == (0.0, 1.2)
    chunks = [
        chunk
        for chunk, _metadata in build_graph(model).stream(
            {"messages": [{"role": "user", "content": "List the days of the week."}]},
            stream_mode="messages",
        )
        if isinstance(chunk, AIMessageChunk)
    ]
    reply = "".join(chunk.content for chunk in chunks)
    assert reply.count("Monday") == 1 and "Sunday" in reply, reply
    assert not any(chunk.response_metadata.get("finish_reason") for chunk in chunks), reply


@pytest.mark.model
def test_real_smollm2_says_when_it_stops_at_its_token_limit():
    graph = build_graph(LocalChatModel(max_tokens=4, temperature=0.0))
    chunks = [
        chunk
        for chunk, _metadata in graph.stream(
            {"messages": [{"role": "user", "content": "Tell me a long story about a ship."}]},
            stream_mode="messages",
        )
        if isinstance(chunk, AIMessageChunk)
    ]
    assert "".join(chunk.content for chunk in chunks).strip()
    reasons = [chunk.response_metadata.get("finish_reason") for chunk in chunks]
    assert [reason for reason in reasons if reason] == ["length"]


@pytest.mark.model
def test_the_embedded_backend_loads_the_bundled_model_as_it_starts(tmp_path):
    """`make run`'s backend loads SmolLM2 while it starts, not in the first run: the first reply
    after a start no longer waits for it."""
    log = tmp_path / "backend.log"
    with EmbeddedBackend(model="local", log_path=log):
        deadline = time.monotonic() + 60
        while "the bundled model is loaded" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.2)


def test_the_embedded_backend_runs_with_the_queue_wakeup_patch(langgraph):
    """`make run`'s backend starts new runs at once; the patch is pinned to the runtime version
    it was tested with, and this fails if an upgrade leaves it unapplied."""
    from importlib import metadata

    from agent.server import PATCHED_RUNTIME_VERSIONS

    assert metadata.version("langgraph-runtime-inmem") in PATCHED_RUNTIME_VERSIONS
    assert "queue wake-up patch applied" in langgraph.log_path.read_text()
    assert "bundled model" not in langgraph.log_path.read_text()  # the echo model's has none


@pytest.fixture
def runtime() -> Iterator[SimpleNamespace]:
    """`langgraph dev`'s in-memory runtime in this process, patched as `agent.server` patches
    it (undone after the test), with the runtime's own `Runs.next` and `Runs.get` beside the
    patched ones (`bench.walks.runtime_both`), and a store to `load`: finished, running and
    pending runs on a dozen threads, some not due yet, one pending run whose thread is gone, in
    no particular order."""
    now = datetime.now(UTC)
    threads = [{"thread_id": uuid4()} for _ in range(12)]
    by_thread = [["pending"], ["running", "pending"], ["success", "pending"], ["pending"] * 2]
    runs = [
        {
            "run_id": uuid4(),
            "thread_id": thread["thread_id"],
            "status": status,
            "created_at": now
            - timedelta(seconds=100 - index * 3 - order)
            + timedelta(hours=1 if index == 5 else 0),
        }
        for index, thread in enumerate(threads)
        for order, status in enumerate(by_thread[index % 4])
    ]
    runs.append({"run_id": uuid4(), "thread_id": uuid4(), "status": "pending",
                 "created_at": now - timedelta(seconds=50)})  # fmt: skip
    runs.reverse()

    with runtime_both() as runtime:

        def load() -> None:
            runtime.store["runs"] = copy.deepcopy(runs)
            runtime.store["threads"] = copy.deepcopy(threads)
            runtime.counter._counters.clear()

        runtime.runs, runtime.load = runs, load
        yield runtime


@pytest.mark.parametrize("limit", [1, 2, 5, 64])
async def test_the_patched_queue_starts_the_runs_the_runtime_would(runtime, limit):
    """The patch walks the stored runs once a look instead of once and twice more a run found;
    it must start the same runs: due, oldest first, one at a time on a thread, none whose
    thread is gone, at most `limit`."""

    async def started(next_run) -> tuple[list, list]:
        runtime.load()
        picked = [
            (run["run_id"], attempt) async for run, attempt in next_run(wait=False, limit=limit)
        ]
        return picked, [(run["run_id"], run["status"]) for run in runtime.store["runs"]]

    expected = await started(runtime.own["next"])
    assert expected[0], "the store holds runs due to start"
    assert await started(runtime.patched["next"]) == expected


async def test_the_patched_lookup_finds_the_run_the_runtime_would(runtime):
    """The patch looks a run up from the newest stored run instead of the oldest."""
    runtime.load()
    connection = runtime.ops.InMemConnectionProto()
    stored = [(run["run_id"], run["thread_id"]) for run in runtime.runs]
    absent = [(runtime.runs[0]["run_id"], runtime.runs[1]["thread_id"]), (uuid4(), uuid4())]
    for run_id, thread_id in stored + absent:
        found = [
            [run async for run in await get(connection, str(run_id), thread_id=thread_id)]
            for get in (runtime.own["get"], runtime.patched["get"])
        ]
        assert found[0] == found[1]
        assert [run["run_id"] for run in found[1]] == (
            [run_id] if (run_id, thread_id) in stored else []
        )


def test_the_embedded_backend_freezes_what_it_made_to_start(langgraph):
    """Out of the collector's full passes, which otherwise walked them all and stalled every
    streaming run for 70 to 80 ms (the benchmark's first tokens showed it); and the passes
    over what it stores since come rarely."""
    frozen = r"(\d+) startup objects frozen, a young collection every (\d+) allocations"
    deadline = time.monotonic() + 30
    while not (found := re.search(frozen, langgraph.log_path.read_text())):
        assert time.monotonic() < deadline, "the backend never froze its startup objects"
        time.sleep(0.2)
    assert int(found[1]) > 50_000, "the modules and the graph, not a handful"
    assert int(found[2]) == YOUNG_COLLECTION_ALLOCATIONS, "Python's default is 700"


def test_the_embedded_backend_keeps_an_idle_connection_open_past_uvicorns_five_seconds(langgraph):
    """So that the site can keep its backend connections between bursts of messages: opened
    anew, they cost the backend more CPU and the first tokens came later."""
    url = httpx.URL(langgraph.url)
    connection = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        connection.request("GET", "/ok")
        answer = connection.getresponse()
        answer.read()
        assert answer.status == 200
        opened = connection.sock
        time.sleep(6)
        try:
            connection.request("GET", "/ok")
            answer = connection.getresponse()
            answer.read()
        except (ConnectionError, http.client.RemoteDisconnected):
            pytest.fail("the server closed it")
        assert answer.status == 200
        assert connection.sock is opened, "the server closed it"
    finally:
        connection.close()


def test_only_the_records_of_runs_that_ended_a_while_ago_are_forgotten():
    """A run pending, running or cancelled (its worker may still be stopping) is kept however
    old; one that ended is kept until `before`."""
    now = datetime.now(UTC)
    old, recent = now - timedelta(minutes=5), now - timedelta(seconds=5)
    ages = {"old": old, "recent": recent}
    stored = [
        (status, age)
        for status in ("pending", "running", "interrupted", "success", "error", "timeout")
        for age in ages
    ]
    store = {"runs": [{"run_id": uuid4(), "status": s, "updated_at": ages[a]} for s, a in stored]}
    assert finished_runs_forget(store, before=now - timedelta(minutes=1)) == 3
    assert [(run["status"], run["updated_at"]) for run in store["runs"]] == [
        (status, ages[age])
        for status, age in stored
        if age == "recent" or status in ("pending", "running", "interrupted")
    ]


def test_the_embedded_backend_forgets_ended_runs_and_the_assistant_still_remembers():
    """Each remembered reply is a run whose record the runtime kept for good and walked every
    time a run started or ended, so `make run` slowed with use. The embedded backend forgets a
    run's record a while after it ended (here a second); the thread keeps every message."""
    backend = backend_start("forget", AGENT_FINISHED_RUN_SECONDS="1")
    try:
        thread_id = _thread_new(backend)

        def runs_kept() -> list[dict]:
            response = httpx.get(f"{backend.url}/threads/{thread_id}/runs", timeout=10)
            response.raise_for_status()
            return response.json()

        for text in ("one", "two", "three"):
            _say(backend, thread_id, text)
        assert runs_kept(), "a run that just ended is still there"
        deadline = time.monotonic() + 15
        while runs_kept():
            assert time.monotonic() < deadline, "the runs that ended were never forgotten"
            time.sleep(0.2)
        assert seen_count(_say(backend, thread_id, "four")) == 4
        assert _remembered(backend, thread_id) == ["one", "two", "three", "four"]
    finally:
        backend.stop()


def _thread_new(backend: EmbeddedBackend) -> str:
    response = httpx.post(f"{backend.url}/threads", json={}, timeout=10)
    response.raise_for_status()
    return response.json()["thread_id"]


def _say(backend: EmbeddedBackend, thread_id: str, text: str) -> str:
    """Sends `text` on the thread and returns the reply, once the run is over."""
    run = {"assistant_id": "agent", "input": {"messages": [{"role": "user", "content": text}]}}
    response = httpx.post(f"{backend.url}/threads/{thread_id}/runs/wait", json=run, timeout=30)
    response.raise_for_status()
    return response.json()["messages"][-1]["content"]


def _remembered(backend: EmbeddedBackend, thread_id: str) -> list[str]:
    response = httpx.get(f"{backend.url}/threads/{thread_id}/state", timeout=10)
    if response.status_code == 404:
        return []
    response.raise_for_status()
    return [m["content"] for m in response.json()["values"]["messages"] if m["type"] == "human"]


def test_each_embedded_backend_keeps_its_own_memory_across_its_restarts(tmp_path):
    """The assistant's memory of a conversation outlives a restart of `make run`'s backend, and
    another backend started meanwhile (a test run's, the benchmark's) neither sees it nor, by
    stopping last and writing its own store, wipes it out."""
    LOG_DIR.mkdir(exist_ok=True)
    mine = EmbeddedBackend(data_dir=tmp_path, log_path=LOG_DIR / "langgraph-store-mine.log")
    other = EmbeddedBackend(log_path=LOG_DIR / "langgraph-store-other.log")
    try:
        mine.start()
        other.start()
        thread_id = _thread_new(mine)
        _say(mine, thread_id, "hi")
        mine.stop()
        assert _remembered(other, thread_id) == []
        other.stop()
        mine.start()
        assert _remembered(mine, thread_id) == ["hi"]
    finally:
        mine.stop()
        other.stop()


def test_a_forked_copy_writes_the_stores_as_the_runtime_would_and_a_failed_one_leaves_them(
    tmp_path,
):
    """What the copy writes loads back as the store was when it forked, and a store unchanged
    since is not written again; a store it cannot write (here one holding a lock, which pickle
    refuses) leaves every file as it was, and no half-written file beside them."""
    runs = PersistentDict(list, filename=str(tmp_path / "ops.pckl"))
    checkpoints = PersistentDict(dict, filename=str(tmp_path / "checkpoints.pckl"))
    runs["runs"] = [{"run_id": uuid4(), "status": "success", "updated_at": datetime.now(UTC)}]
    checkpoints["thread"] = {"messages": ["one", "two"] * 1000}
    assert stores_write_forked([runs, checkpoints])
    for store in (runs, checkpoints):
        with open(store.filename, "rb") as file:
            assert pickle.load(file) == dict(store)

    def files() -> dict[str, int]:  # a file written anew is a new one, moved over the old
        return {p.name: p.stat().st_ino for p in tmp_path.iterdir()}

    first = files()
    runs["runs"].append({"run_id": uuid4(), "status": "pending", "updated_at": datetime.now(UTC)})
    assert stores_write_forked([runs, checkpoints])
    assert files()["checkpoints.pckl"] == first["checkpoints.pckl"], "unchanged, not rewritten"
    assert files()["ops.pckl"] != first["ops.pckl"]
    with open(runs.filename, "rb") as file:
        assert pickle.load(file) == dict(runs)

    written = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    checkpoints["thread"]["messages"].append("three")
    runs["lock"] = threading.Lock()
    assert not stores_write_forked([checkpoints, runs])
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == written


def test_the_embedded_backend_writes_its_store_while_it_runs_so_a_crash_keeps_the_memory():
    """The periodic write, from a forked copy of the server (here every second): killed
    without the write a stop makes, the backend still finds the conversation at its restart."""
    backend = backend_start("store-writes", AGENT_STORE_WRITE_SECONDS="1")
    try:
        assert "written from a forked copy" in backend.log_path.read_text()
        thread_id = _thread_new(backend)
        _say(backend, thread_id, "hi")

        def written() -> bool:  # the thread's checkpoints are keyed by its id, pickled as text
            stores = (backend.data_dir / ".langgraph_api").glob(".langgraph_checkpoint.*.pckl")
            return any(thread_id.encode() in p.read_bytes() for p in stores)

        deadline = time.monotonic() + 15
        while not written():
            assert time.monotonic() < deadline, "the store was not written while it ran"
            time.sleep(0.2)
        backend.kill()
        backend.start()
        assert _remembered(backend, thread_id) == ["hi"]
        assert not list((backend.data_dir / ".langgraph_api").glob("*.tmp"))
    finally:
        backend.stop()
