"""Bad days: faults, bad input and hostile clients lose nothing and get nowhere.

Each test backs a row of docs/reliability.md. Faults are injected against the real stack: the
`langgraph dev` process is stopped or killed, daphne is killed, or a small local server
misbehaves (refuses, hangs, drops a stream).
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from html.parser import HTMLParser

import httpx
import pytest
import websockets
from asgiref.sync import async_to_sync
from channels.db import database_sync_to_async
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st

from agent.server import ROOT, EmbeddedBackend, free_port
from runs.backend import get_backend
from runs.models import Conversation, Message, Run
from tests.conftest import LOG_DIR, Socket, seen_count, session_cookie_for
from tests.live import LiveSite, manage, site_env, sqlite_url

pytestmark = pytest.mark.django_db(transaction=True)


# Faults.


async def test_backend_down_then_back_retry_works(settings, socket_factory):
    backend = EmbeddedBackend(model="echo", log_path=LOG_DIR / "langgraph-restart.log")
    await asyncio.to_thread(backend.start)
    settings.LANGGRAPH_URL = backend.url
    settings.LANGGRAPH_CONNECT_TIMEOUT = 1.0
    try:
        await asyncio.to_thread(backend.stop)
        socket = await socket_factory()
        started_at = time.monotonic()
        await socket.send({"type": "chat.send", "text": "are you there?", "memory": True})
        started, _ = await socket.until("run.started")
        failed, _ = await socket.until_run_end()
        assert time.monotonic() - started_at < 10
        assert failed["type"] == "run.failed"
        assert failed["error"]["code"] == "backend_unavailable"
        assert "unavailable" in failed["error"]["message"]
        assert await Message.objects.filter(text="are you there?", role="user").aexists()

        await asyncio.to_thread(backend.start)  # back, on the same port
        # The page's Retry: asked again in place, the message is not sent twice.
        await socket.send({"type": "chat.regenerate", "conversation": started["conversation"]})
        again, _ = await socket.until("run.started")
        assert again["replaces"] == [failed["message"]["id"]]
        retried, _ = await socket.until_run_end()
        assert retried["type"] == "run.completed"
        assert seen_count(retried["message"]["text"]) == 1
        users = Message.objects.filter(conversation_id=started["conversation"], role="user")
        assert await users.acount() == 1
    finally:
        await asyncio.to_thread(backend.stop)


async def test_an_edit_cut_off_from_the_backend_still_clears_the_memory_when_retried(
    settings, backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("a", memory=True)
    conv = first["conversation"]
    aside = await socket.chat("b", memory=False, conversation=conv)
    await socket.chat("c", memory=True, conversation=conv)
    thread_id = (await Conversation.objects.aget(pk=conv)).thread_id

    # The backend cannot be reached: the edit is saved, and its run fails before it could take
    # "c" out of the memory.
    settings.LANGGRAPH_URL = f"http://127.0.0.1:{free_port()}"
    edit = {"message": aside["user_message"]["id"], "text": "B"}
    await socket.send({"type": "chat.regenerate", "conversation": conv, **edit})
    started, _ = await socket.until("run.started")
    failed, _ = await socket.until_run_end()
    assert failed["type"] == "run.failed" and len(started["replaces"]) == 4
    assert failed["error"]["code"] == "backend_unavailable"

    # Back: Retry asks again in place, and the memory loses "c" as the transcript did.
    settings.LANGGRAPH_URL = backend_url
    await socket.send({"type": "chat.regenerate", "conversation": conv})
    again, _ = await socket.until("run.started")
    assert again["replaces"] == [failed["message"]["id"]]
    retried, _ = await socket.until_run_end()
    assert retried["message"]["text"] == "You said: B (I can see 1 of your messages)"
    thread = await get_backend().thread_state(thread_id=thread_id)
    assert [m.text for m in thread.messages if m.role == "user"] == ["a"]
    d = await socket.chat("d", memory=True, conversation=conv)
    assert seen_count(d["message"]["text"]) == 2


async def test_backend_killed_mid_stream_saves_the_partial_reply_as_failed(
    settings, socket_factory
):
    backend = EmbeddedBackend(
        model="echo",
        env={"AGENT_ECHO_DELAY_MS": "50", "AGENT_ECHO_EXTRA_TOKENS": "100"},
        log_path=LOG_DIR / "langgraph-killed.log",
    )
    await asyncio.to_thread(backend.start)
    settings.LANGGRAPH_URL = backend.url
    try:
        socket = await socket_factory()
        await socket.send({"type": "chat.send", "text": "doomed", "memory": True})
        started, _ = await socket.until("run.started")
        for _ in range(4):
            await socket.until("run.delta")
        backend.kill()
        failed, frames = await socket.until_run_end()
    finally:
        backend.stop()
    assert failed["type"] == "run.failed"
    assert failed["error"]["code"] in {"backend_unavailable", "backend_error"}
    streamed = "".join(f["text"] for f in frames if f["type"] == "run.delta")
    partial = failed["message"]["text"]
    assert partial.startswith("You said: doomed") and partial.endswith(streamed)
    run = await Run.objects.aget(pk=started["run"])
    assert run.status == Run.Status.FAILED
    assert (await Message.objects.aget(run=run, role="assistant")).text == partial


async def test_a_stream_cut_short_keeps_what_arrived(fake_backend, socket_factory):
    fake_backend("cut", tokens=3)
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "cut me", "memory": False})
    failed, _ = await socket.until_run_end()
    assert failed["type"] == "run.failed"
    assert failed["message"]["text"] == "part0 part1 part2 "
    assert failed["message"]["status"] == "failed"


async def test_a_hanging_backend_times_out(settings, fake_backend, socket_factory):
    fake_backend("hang")
    settings.LANGGRAPH_READ_TIMEOUT = 0.5
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "hello?", "memory": False})
    failed, _ = await socket.until_run_end(timeout=10)
    assert failed["type"] == "run.failed"
    assert failed["error"]["code"] == "backend_timeout"
    assert await Message.objects.filter(text="hello?").aexists()


async def test_a_thread_deleted_behind_the_sites_back_starts_a_new_memory_and_says_so(
    backend_url, socket_factory
):
    socket = await socket_factory()
    first = await socket.chat("one", memory=True)
    await socket.chat("two", memory=True, conversation=first["conversation"])
    old_thread = (await Conversation.objects.aget(pk=first["conversation"])).thread_id
    await get_backend().thread_delete(thread_id=old_thread)

    after = await socket.chat("three", memory=True, conversation=first["conversation"])
    assert after["type"] == "run.completed"
    assert seen_count(after["message"]["text"]) == 1
    assert "memory" in after["message"]["notice"] and "gone" in after["message"]["notice"]
    conversation = await Conversation.objects.aget(pk=first["conversation"])
    assert conversation.thread_id and conversation.thread_id != old_thread
    assert conversation.memory_lost_at is not None
    # The next one continues the new memory.
    again = await socket.chat("four", memory=True, conversation=first["conversation"])
    assert seen_count(again["message"]["text"]) == 2
    assert "notice" not in again["message"]


async def test_a_run_conflict_on_the_thread_is_busy_and_loses_nothing(fake_backend, socket_factory):
    fake_backend("status", status=409)
    socket = await socket_factory()
    await socket.send({"type": "chat.send", "text": "conflicted", "memory": True})
    started, _ = await socket.until("run.started")
    failed, _ = await socket.until_run_end()
    assert failed["type"] == "run.failed"
    assert failed["error"]["code"] == "busy"
    assert await Message.objects.filter(text="conflicted", role="user").aexists()
    run = await Run.objects.aget(pk=started["run"])
    assert run.status == Run.Status.FAILED and run.error_code == "busy"


def test_daphne_killed_mid_run_the_run_is_marked_interrupted_at_restart(langgraph_slow, tmp_path):
    env = site_env(
        database_url=sqlite_url(tmp_path, "restart"),
        backend_url=langgraph_slow.url,
        CHAT_RELAY_HEARTBEAT_SECONDS="0.3",
    )
    manage("migrate", "--noinput", env=env)
    site = LiveSite("restart", env=env).start()
    cookie = _visitor_cookie(site)

    async def start_read_some_then_crash() -> tuple[str, str]:
        async with websockets.connect(
            site.ws_url, origin=site.url, additional_headers={"Cookie": cookie}
        ) as ws:
            await ws.send(json.dumps({"type": "chat.send", "text": "crash", "memory": True}))
            started = json.loads(await ws.recv())
            text = ""
            while len(text) < 40:
                frame = json.loads(await ws.recv())
                text += frame.get("text", "")
            await asyncio.sleep(1.0)  # a few heartbeats record the progress
            # Killed with the socket still open, mid-reply: not after a closing handshake
            # whose wait could outlast the reply.
            site.kill()
            return started["run"], started["conversation"]

    try:
        run_id, conversation_id = asyncio.run(start_read_some_then_crash())
        stuck = _run_row(env, run_id)
        assert stuck["status"] == "streaming" and stuck["partial_text"].startswith(
            "You said: crash"
        )

        # What `make run` does at startup, then daphne again.
        manage("recover_runs", env=env)
        site = LiveSite("restart", env=env, port=site.port).start()
        recovered = _run_row(env, run_id)
        assert recovered["status"] == "failed" and recovered["error_code"] == "interrupted"

        async def watch() -> dict:
            async with websockets.connect(
                site.ws_url, origin=site.url, additional_headers={"Cookie": cookie}
            ) as ws:
                await ws.send(
                    json.dumps({"type": "conversation.watch", "conversation": conversation_id})
                )
                return json.loads(await ws.recv())

        snapshot = asyncio.run(watch())
        assert snapshot["active_run"] is None
        reply = snapshot["messages"][-1]
        assert reply["status"] == "failed" and reply["error"]["code"] == "interrupted"
        assert reply["text"] == stuck["partial_text"], "the reply is kept as far as it was saved"
    finally:
        site.stop()


def _visitor_cookie(site: LiveSite) -> str:
    response = httpx.get(site.url + "/")
    return f"sessionid={response.cookies['sessionid']}"


def _run_row(env: dict[str, str], run_id: str) -> dict:
    script = (
        "import django, json; django.setup(); from runs.models import Run; "
        f"print(json.dumps(Run.objects.filter(pk='{run_id}').values("
        "'status', 'partial_text', 'error_code').get()))"
    )
    output = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


# Bad input.


def expected_code(raw: str) -> str | None:
    """The protocol v1 answer to a raw frame, or None when it is a valid chat.send."""

    def not_json(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    try:
        frame = json.loads(raw, parse_constant=not_json)
    except ValueError:
        return "invalid_json"
    except RecursionError:
        return "invalid_frame"
    if not isinstance(frame, dict):
        return "invalid_frame"
    client_id = frame.get("client_id")
    if client_id is not None and (not isinstance(client_id, str) or len(client_id) > 64):
        return "invalid_frame"
    kind = frame.get("type")
    if not isinstance(kind, str):
        return "invalid_frame"
    if kind != "chat.send":
        return "unknown_type" if kind not in {
            "chat.cancel", "conversation.watch", "conversation.memory", "conversation.forget",
            "conversation.rename",
        } else "skip"  # fmt: skip
    conversation = frame.get("conversation")
    if conversation is not None:
        return "invalid_frame" if not isinstance(conversation, str) else "skip"
    if not isinstance(frame.get("memory"), bool) or not isinstance(frame.get("text"), str):
        return "invalid_frame"
    text = frame["text"].strip()
    if not text:
        return "empty_text"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "invalid_frame"
    if "\x00" in text:
        return "invalid_frame"
    if len(text) > 8000:
        return "text_too_long"
    return None


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
unicode_edge_cases = st.sampled_from(
    [
        "\u202eRTL override\u202c", "\u200b", "\u200bzero\u200dwidth", "emoji 🫠👩🏽‍💻",
        "\ud800", "a\udfffb", "\x00nul", " \t\n ", "x" * 8001, "y" * 8000, "עברית مرحبا",
    ]
)  # fmt: skip
frames = st.one_of(
    json_values.map(json.dumps),
    st.text(min_size=1, max_size=40),  # (the test communicator cannot send an empty frame)
    st.fixed_dictionaries(
        {"type": st.just("chat.send")},
        optional={
            "text": st.one_of(st.text(max_size=30), unicode_edge_cases, json_values),
            "memory": st.one_of(st.booleans(), json_values),
            "client_id": st.one_of(st.text(max_size=70), st.integers()),
        },
    ).map(lambda frame: json.dumps(frame, ensure_ascii=True)),
    st.builds(
        lambda n: f'{{"type": "chat.send", "text": "hi", "memory": true, "client_id": {n}}}',
        st.integers(min_value=2**64, max_value=2**80),
    ),
    st.builds(lambda depth: "[" * depth + "]" * depth, st.integers(min_value=900, max_value=5000)),
    st.builds(
        lambda n: f'{{"type": "chat.send", "text": "hi", "memory": 1e{n}}}',
        st.integers(min_value=300, max_value=400),
    ),
)


@hypothesis_settings(
    max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None
)
@given(batch=st.lists(frames, min_size=1, max_size=6))
def test_fuzzed_frames_get_the_designed_error_and_the_socket_stays_usable(
    batch, backend_url, settings
):
    settings.CHAT_RATE_LIMIT = 0

    async def exercise() -> None:
        socket = await Socket().connect()
        try:
            for raw in batch:
                expected = expected_code(raw)
                await socket.send_text(raw)
                if expected is None:
                    final, _ = await socket.until_run_end()
                    assert final["type"] == "run.completed", (raw, final)
                    continue
                answer = await socket.receive()
                assert answer["type"] in {"error", "run.started", "conversation.snapshot"}, raw
                if answer["type"] == "run.started":
                    await socket.until_run_end()
                if expected != "skip":
                    assert answer["type"] == "error" and answer["code"] == expected, (raw, answer)
                    assert "Traceback" not in answer["message"]
            # Still usable.
            done = await socket.chat("still fine?", memory=False)
            assert done["type"] == "run.completed"
        finally:
            await socket.close()

    async_to_sync(exercise)()


@pytest.fixture(scope="module")
def live_site(langgraph, tmp_path_factory):
    directory = tmp_path_factory.mktemp("live")
    env = site_env(database_url=sqlite_url(directory, "live"), backend_url=langgraph.url)
    manage("migrate", "--noinput", env=env)
    with LiveSite("limits", env=env) as site:
        yield site


def test_a_frame_over_256_kib_closes_with_1009_and_the_server_stays_healthy(live_site):
    async def oversized() -> int:
        async with websockets.connect(live_site.ws_url, origin=live_site.url, max_size=None) as ws:
            await ws.send(
                json.dumps({"type": "chat.send", "text": "x" * (1024 * 1024), "memory": False})
            )
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(ws.recv(), 10)
            return closed.value.rcvd.code

    async def just_under_the_limit_is_answered() -> dict:
        async with websockets.connect(live_site.ws_url, origin=live_site.url) as ws:
            await ws.send(
                json.dumps({"type": "chat.send", "text": "x" * (250 * 1024), "memory": False})
            )
            return json.loads(await asyncio.wait_for(ws.recv(), 10))

    async def next_connection_chats() -> str:
        async with websockets.connect(live_site.ws_url, origin=live_site.url) as ws:
            await ws.send(json.dumps({"type": "chat.send", "text": "after", "memory": False}))
            while True:
                frame = json.loads(await asyncio.wait_for(ws.recv(), 10))
                if frame["type"] == "run.completed":
                    return frame["message"]["text"]

    assert asyncio.run(oversized()) == 1009
    assert live_site.alive
    assert asyncio.run(just_under_the_limit_is_answered())["code"] == "text_too_long"
    assert httpx.get(live_site.url + "/healthz").status_code == 200
    assert asyncio.run(next_connection_chats()) == "You said: after (I can see 1 of your messages)"
    assert "Traceback" not in live_site.log()


def test_a_reader_too_slow_for_its_frames_gets_every_byte_in_order(live_site):
    """daphne writes a frame on the spot when nothing waits ahead of it (chatsite/serve.py).
    A client that stops reading fills the socket: the rest must queue behind, not overtake."""
    sentences = [f"Line {n} of a long message that fills the socket. " for n in range(150)]
    long_text = "".join(sentences)[:8000].strip()

    async def exercise() -> list[dict]:
        # max_queue=1: the client stops reading from its socket while frames go unread.
        async with websockets.connect(
            live_site.ws_url, origin=live_site.url, max_size=None, max_queue=1
        ) as ws:
            conversation = None
            for _ in range(4):
                await ws.send(
                    json.dumps(
                        {
                            "type": "chat.send",
                            "text": long_text,
                            "memory": False,
                            "conversation": conversation,
                        }
                    )
                )
                while True:
                    frame = json.loads(await asyncio.wait_for(ws.recv(), 20))
                    if frame["type"] == "run.started":
                        conversation = frame["conversation"]
                    if frame["type"] == "run.completed":
                        break
            for index in range(60):
                watch = {"type": "conversation.watch", "conversation": conversation}
                await ws.send(json.dumps({**watch, "client_id": str(index)}))
            await asyncio.sleep(2)  # the server writes on into a socket nobody reads
            return [json.loads(await asyncio.wait_for(ws.recv(), 20)) for _ in range(60)]

    snapshots = asyncio.run(exercise())
    assert all(s["type"] == "conversation.snapshot" for s in snapshots)
    # Each about 70 KB: together many times what the sockets' buffers hold.
    assert sum(len(json.dumps(s)) for s in snapshots) > 4_000_000
    assert all(len(s["messages"]) == 8 for s in snapshots)
    assert all(m["text"] == long_text for s in snapshots for m in s["messages"][::2])
    assert live_site.alive and "Traceback" not in live_site.log()


async def test_rate_limit_per_visitor_over_the_websocket(settings, backend_url, socket_factory):
    settings.CHAT_RATE_LIMIT = 2
    socket = await socket_factory()
    first = await socket.chat("a", memory=False)
    await socket.chat("b", memory=False, conversation=first["conversation"])
    await socket.send({"type": "chat.send", "text": "c", "memory": False, "client_id": "third"})
    error = await socket.receive()
    assert error["code"] == "rate_limited" and error["client_id"] == "third"
    assert "2 messages a minute" in error["message"]
    assert not await Message.objects.filter(text="c").aexists()


async def test_open_sockets_per_session_are_capped(settings, socket_factory):
    settings.CHAT_MAX_SOCKETS_PER_SESSION = 2
    cookie = await database_sync_to_async(session_cookie_for)()
    await socket_factory(cookie)
    await socket_factory(cookie)
    third = Socket(cookie=cookie)
    connected, _ = await third.communicator.connect(timeout=5)
    assert connected
    error = await third.receive()
    assert error["code"] == "rate_limited" and "at most 2" in error["message"]
    closed = await third.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4429}
    # Another visitor is not affected.
    await socket_factory(await database_sync_to_async(session_cookie_for)())


async def test_open_sockets_per_process_are_capped(settings, socket_factory):
    from django.contrib.sessions.models import Session

    from runs.consumers import _open_sockets

    settings.CHAT_MAX_SOCKETS = _open_sockets.total() + 2
    first = await Socket().connect()
    await socket_factory(await database_sync_to_async(session_cookie_for)())
    sessions = await Session.objects.acount()
    refused = Socket()  # a newcomer without a cookie
    connected, _ = await refused.communicator.connect(timeout=5)
    assert connected
    error = await refused.receive()
    assert error["code"] == "rate_limited" and "too many open connections" in error["message"]
    assert await refused.communicator.receive_output(timeout=5) == {
        "type": "websocket.close",
        "code": 1013,
    }
    assert await Session.objects.acount() == sessions, "no session saved for a refused socket"
    # A place frees up when a socket closes.
    await first.close()
    latecomer = await socket_factory()
    assert await latecomer.communicator.receive_nothing(timeout=0.3), "not refused"


# Security.


@pytest.mark.parametrize("origin", ["http://evil.example", None], ids=["foreign", "missing"])
async def test_cross_site_websocket_hijacking_is_refused(origin, channel_layer):
    cookie = await database_sync_to_async(session_cookie_for)()
    connected, _ = await Socket(cookie=cookie, origin=origin).communicator.connect(timeout=5)
    assert connected is False


XSS = (
    "<script>alert('x')</script> <img src=x onerror=alert(1)> [click](javascript:alert(1)) "
    '<a href="javascript:alert(2)">a</a> ![p](javascript:alert(3)) <svg onload=alert(4)>'
)


class LiveMarkup(HTMLParser):
    """Collects what a browser would act on: tags that run or load things, event handlers,
    and javascript: links."""

    def __init__(self) -> None:
        super().__init__()
        self.dangers: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in {"script", "img", "svg", "iframe", "object", "embed", "style"}:
            self.dangers.append(f"<{tag}>")
        for name, value in attrs:
            if name.startswith("on"):
                self.dangers.append(f"{tag} {name}=")
            if name in {"href", "src"} and (value or "").strip().lower().startswith("javascript:"):
                self.dangers.append(f"{tag} {name}=javascript:")


def assert_inert(html: str) -> None:
    parser = LiveMarkup()
    parser.feed(html)
    assert parser.dangers == [], parser.dangers


def test_model_output_with_markup_renders_inert_in_the_api_and_the_page(client, backend_url):
    response = client.post(
        "/api/chat/", {"text": XSS, "memory": False}, content_type="application/json"
    )
    reply = response.json()["reply"]
    assert reply["text"].startswith("You said: <script>")  # the text itself is kept verbatim
    assert_inert(reply["html"])
    assert "&lt;script&gt;" in reply["html"]
    page = client.get(f"/c/{response.json()['conversation']}/").content.decode()
    transcript = page[page.index('id="transcript"') : page.index('id="composer"')]
    assert_inert(transcript)
    assert "&lt;script&gt;alert" in transcript


def test_check_deploy_is_clean_with_production_settings():
    env = site_env(
        database_url="sqlite:////tmp/deploy-check.sqlite3",
        backend_url="https://example.invalid",
        DJANGO_DEBUG="false",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="chat.example.com",
    )
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_static_files_collect_with_production_storage(tmp_path, settings):
    """A deployment runs collectstatic with WhiteNoise's manifest storage, which refuses a file
    that names one missing (a vendored script's source map, say)."""
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
    }
    call_command("collectstatic", interactive=False, verbosity=0)
    collected = json.loads((tmp_path / "staticfiles.json").read_text())["paths"]
    vendored = {"markdown-it.min.js", "purify.min.js", "highlight.min.js"}
    assert {"runs/chat.js", *(f"runs/vendor/{name}" for name in vendored)} <= set(collected)


def test_secrets_never_reach_pages_errors_or_logs(tmp_path, settings, caplog, fake_backend):
    api_key = "lgk-" + secrets.token_hex(16)
    secret_key = secrets.token_urlsafe(50)
    smtp_password = "smtp-" + secrets.token_hex(16)
    settings.LANGGRAPH_API_KEY = api_key
    settings.SECRET_KEY = secret_key
    caplog.set_level("DEBUG")
    seen: list[str] = []
    client = Client()
    fake_backend("status", status=500)
    for response in (
        client.get("/"),
        client.post("/api/chat/", {"text": "hi", "memory": True}, content_type="application/json"),
        client.get("/healthz"),
        client.get("/api/conversations/"),
    ):
        seen.append(response.content.decode())
    seen.append(caplog.text)

    # A real daphne with the secrets in its environment, failing against a closed backend.
    env = site_env(
        database_url=sqlite_url(tmp_path, "secrets"),
        backend_url="http://127.0.0.1:9",
        LANGGRAPH_API_KEY=api_key,
        DJANGO_SECRET_KEY=secret_key,
        # A mail server that is not there: a reset mail fails, and says so in the log.
        EMAIL_URL=f"smtp://chat:{smtp_password}@127.0.0.1:9",
    )
    manage("migrate", "--noinput", env=env)
    with LiveSite("secrets", env=env) as site:
        jar = httpx.Client(base_url=site.url)
        jar.get("/")
        seen.append(
            jar.post(
                "/api/chat/",
                json={"text": "hi", "memory": True},
                headers={"X-CSRFToken": jar.cookies["csrftoken"]}
                if "csrftoken" in jar.cookies
                else {},
            ).text
        )
        seen.append(jar.get("/healthz").text)
        form = {"password1": "a-long-pw-for-eve", "password2": "a-long-pw-for-eve"}
        csrf = {"csrfmiddlewaretoken": jar.cookies["csrftoken"]}
        signed_up = jar.post(
            "/accounts/signup/", data={"username": "eve", "email": "eve@x.test", **form, **csrf}
        )
        seen.append(jar.get(signed_up.headers["location"]).text)
        assert "The link to eve@x.test could not be sent" in seen[-1]
        # The address as if confirmed, so that a reset mail is tried (and fails) too.
        manage(
            "shell", "-c", "from django.contrib.auth.models import User; "
            "User.objects.filter(username='eve').update(email='eve@x.test')",
            env=env,
        )  # fmt: skip
        jar.cookies.clear()
        jar.get("/accounts/password/reset/")
        csrf = {"csrfmiddlewaretoken": jar.cookies["csrftoken"]}
        asked = jar.post("/accounts/password/reset/", data={"email": "eve@x.test", **csrf})
        assert asked.status_code == 302, "the page does not tell that the mail failed"
        seen.append(asked.text)
    seen.append(site.log())
    everything = "\n".join(seen)
    assert "backend" in everything  # the errors were produced and read
    assert "Failed to send the link confirming an e-mail address" in everything
    assert "Failed to send password reset email" in everything
    assert api_key not in everything
    assert secret_key not in everything
    assert smtp_password not in everything


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "conversation.watch"},
        {"type": "chat.send", "text": "after signing out", "memory": False},
        {"type": "chat.regenerate"},
        {"type": "chat.regenerate", "text": "edited after signing out"},
    ],
    ids=["watch", "send", "regenerate", "edit"],
)
async def test_a_user_signed_out_elsewhere_is_refused_on_the_next_frame(
    backend_url, socket_factory, frame
):
    user = await User.objects.acreate_user("dana", password="pw-dana-12345")
    cookie = await database_sync_to_async(session_cookie_for)(user)
    socket = await socket_factory(cookie)
    done = await socket.chat("hello", memory=False)

    async def transcript() -> list[tuple[str, str]]:
        return [
            (message.role, message.text)
            async for message in Message.objects.filter(
                conversation_id=done["conversation"], replaced_at__isnull=True
            ).order_by("created_at")
        ]

    before = await transcript()
    assert len(before) == 2
    # Signed out in another tab: the session is flushed.
    from django.contrib.sessions.models import Session

    await Session.objects.filter(session_key=cookie.split("=", 1)[1]).adelete()
    await socket.send({**frame, "conversation": done["conversation"]})
    error = await socket.receive()
    assert error["code"] == "signed_out"
    closed = await socket.communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    # Nothing was done for the old session: the transcript is as it was, and no run began.
    assert await transcript() == before
    assert await Run.objects.filter(conversation_id=done["conversation"]).acount() == 1
