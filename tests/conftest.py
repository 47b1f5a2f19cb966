"""Fixtures: real `langgraph dev` servers (echo model), websocket clients, sessions."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvloop
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator

from agent.server import EmbeddedBackend, free_port

LOG_DIR = Path(__file__).resolve().parent.parent / "test-results"
SEES = re.compile(r"I can see (\d+) of your messages")


# Modules whose async tests also run on uvloop, daphne's event loop (chatsite/serve.py).
LOOPS_OF_DAPHNE = {"tests.test_network"}


def pytest_asyncio_loop_factories(config, item):
    if item.module.__name__ in LOOPS_OF_DAPHNE:
        return {"asyncio": asyncio.new_event_loop, "uvloop": uvloop.new_event_loop}
    return {"asyncio": asyncio.new_event_loop}


def seen_count(reply: str) -> int:
    """How many user messages the echo model says it could see."""
    match = SEES.search(reply)
    assert match, f"not an echo reply: {reply!r}"
    return int(match.group(1))


def backend_start(name: str, **env: str) -> EmbeddedBackend:
    """A real embedded backend, started, with the echo model and `env`; its log is
    test-results/langgraph-<name>.log."""
    LOG_DIR.mkdir(exist_ok=True)
    log_path = LOG_DIR / f"langgraph-{name}.log"
    # This session's lines only: the tests read the log for what the server said at start.
    log_path.unlink(missing_ok=True)
    return EmbeddedBackend(model="echo", env=env, log_path=log_path).start()


@pytest.fixture(scope="session")
def langgraph() -> Iterator[EmbeddedBackend]:
    """A real `langgraph dev` serving agent/ with the fast echo model."""
    backend = backend_start("fast")
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def langgraph_slow() -> Iterator[EmbeddedBackend]:
    """The echo model at 60 ms a token and 60 extra tokens: a reply takes about 4 s."""
    backend = backend_start("slow", AGENT_ECHO_DELAY_MS="60", AGENT_ECHO_EXTRA_TOKENS="60")
    yield backend
    backend.stop()


@pytest.fixture(scope="session")
def langgraph_short() -> Iterator[EmbeddedBackend]:
    """The echo model stopping at its length limit after four tokens, as a real model does."""
    backend = backend_start("short", AGENT_ECHO_MAX_TOKENS="4")
    yield backend
    backend.stop()


@pytest.fixture
def backend_url(settings, langgraph) -> str:
    settings.LANGGRAPH_URL = langgraph.url
    return langgraph.url


@pytest.fixture
def slow_backend_url(settings, langgraph_slow) -> str:
    settings.LANGGRAPH_URL = langgraph_slow.url
    return langgraph_slow.url


@pytest.fixture
def short_backend_url(settings, langgraph_short) -> str:
    settings.LANGGRAPH_URL = langgraph_short.url
    return langgraph_short.url


@pytest.fixture
def closed_port_url(settings) -> str:
    """A URL where nothing listens: connections are refused at once."""
    url = f"http://127.0.0.1:{free_port()}"
    settings.LANGGRAPH_URL = url
    return url


@pytest.fixture
async def channel_layer():
    layer = get_channel_layer()
    await layer.flush()
    yield layer
    await layer.flush()


def session_cookie_for(user=None) -> str:
    """A saved session (signed in as `user` by Django's own login, if given), as a Cookie header
    value."""
    from django.conf import settings
    from django.contrib.sessions.backends.db import SessionStore
    from django.test import Client

    name = settings.SESSION_COOKIE_NAME
    if user is not None:
        client = Client()
        client.force_login(user)
        return f"{name}={client.cookies[name].value}"
    session = SessionStore()
    session.save()
    return f"{name}={session.session_key}"


class Socket:
    """A protocol v1 client over the full ASGI stack (origin check, sessions, consumer)."""

    def __init__(self, cookie: str | None = None, origin: str | None = "http://localhost") -> None:
        from chatsite.asgi import application

        headers = [(b"host", b"localhost")]
        if origin is not None:
            headers.append((b"origin", origin.encode()))
        if cookie:
            headers.append((b"cookie", cookie.encode()))
        self.communicator = WebsocketCommunicator(application, "/ws/chat/", headers=headers)

    async def connect(self) -> Socket:
        connected, code = await self.communicator.connect(timeout=5)
        assert connected, f"refused with {code}"
        return self

    async def send(self, frame: dict) -> None:
        await self.communicator.send_json_to(frame)

    async def send_text(self, text: str) -> None:
        await self.communicator.send_to(text_data=text)

    async def receive(self, timeout: float = 10) -> dict:
        return await self.communicator.receive_json_from(timeout=timeout)

    async def until(self, kind: str, timeout: float = 15) -> tuple[dict, list[dict]]:
        """Frames up to and including the first of type `kind`: (that frame, all frames)."""
        frames = []
        while True:
            frame = await self.receive(timeout=timeout)
            frames.append(frame)
            if frame["type"] == kind:
                return frame, frames

    async def until_run_end(self, timeout: float = 20) -> tuple[dict, list[dict]]:
        frames = []
        while True:
            frame = await self.receive(timeout=timeout)
            frames.append(frame)
            if frame["type"] in {"run.completed", "run.cancelled", "run.failed"}:
                return frame, frames

    async def chat(self, text: str, *, memory: bool, conversation: str | None = None) -> dict:
        """Sends a message and returns its run's final frame (with `conversation`, `mode` and
        `user_message` from its `run.started`)."""
        await self.send(
            {"type": "chat.send", "text": text, "memory": memory, "conversation": conversation}
        )
        started, _ = await self.until("run.started")
        final, _ = await self.until_run_end()
        assert final["run"] == started["run"]
        return {
            **final,
            "conversation": started["conversation"],
            "mode": started["mode"],
            "user_message": started["user_message"],
        }

    async def close(self) -> None:
        await self.communicator.disconnect()


@pytest.fixture
async def socket_factory(channel_layer):
    sockets: list[Socket] = []

    async def make(cookie: str | None = None, origin: str | None = "http://localhost") -> Socket:
        socket = Socket(cookie=cookie, origin=origin)
        sockets.append(socket)
        return await socket.connect()

    yield make
    for socket in sockets:
        await socket.close()
    from runs.services import relays_stop

    await relays_stop()


class FakeBackend:
    """A small real HTTP server that misbehaves like a broken run backend.

    `behaviour`: "status" (answer `status` with a JSON detail), "hang" (accept, then never
    answer), "cut" (start a stream, send `tokens` deltas, then drop the connection).
    """

    def __init__(self, behaviour: str, *, status: int = 500, tokens: int = 3) -> None:
        import http.server
        import threading

        fake = self
        self.behaviour, self.status, self.tokens = behaviour, status, tokens
        self.release = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                if self.path == "/ok":
                    self._json(200, b'{"ok": true}')
                elif self.path == "/threads" and self.command == "POST":
                    self._json(200, b'{"thread_id": "fake-thread", "metadata": {}}')
                elif fake.behaviour == "status":
                    self._json(fake.status, b'{"detail": "the fake backend failed"}')
                elif fake.behaviour == "hang":
                    fake.release.wait(30)
                    self.close_connection = True
                elif fake.behaviour == "cut":
                    # Chunked, like uvicorn; the connection drops before the final chunk.
                    self.send_response(200)
                    self.send_header("content-type", "text/event-stream")
                    self.send_header("transfer-encoding", "chunked")
                    self.end_headers()
                    events = [b'event: metadata\ndata: {"run_id": "fake-run"}\n\n']
                    for index in range(fake.tokens):
                        chunk = f'[{{"type": "AIMessageChunk", "content": "part{index} "}}, {{}}]'
                        events.append(f"event: messages\ndata: {chunk}\n\n".encode())
                    for event in events:
                        self.wfile.write(b"%x\r\n%s\r\n" % (len(event), event))
                    self.wfile.flush()
                    self.close_connection = True

            def _json(self, status: int, body: bytes) -> None:
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_DELETE = _answer

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake_backend(settings):
    """Points the site at a misbehaving local server: `fake_backend("status", status=500)`."""
    servers: list[FakeBackend] = []

    def make(behaviour: str, **options) -> FakeBackend:
        server = FakeBackend(behaviour, **options)
        servers.append(server)
        settings.LANGGRAPH_URL = server.url
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture(autouse=True)
def _no_attempts_counted() -> None:
    """The limits on sign-in, sign-up and reset mails count in the cache, which would otherwise
    carry one test's attempts (all from 127.0.0.1) into the next."""
    from django.core.cache import cache

    cache.clear()


@pytest.fixture(scope="session", autouse=True)
def _chat_database_thread_closes(django_db_setup, django_db_blocker):
    """The chat flow's database thread keeps its connection open, and so does the thread where
    async tests' ORM calls (`aexists()`, ...) run: close both before pytest-django drops the
    test database (PostgreSQL refuses to drop a database in use). Depending on django_db_setup
    makes this teardown run before that one."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from runs.db import db_close

    db_close()
    SyncToAsync.single_thread_executor.submit(connections.close_all).result()


def conversations_for(user, count: int) -> list:
    """`count` conversations of `user` titled "Chat 00", "Chat 01", ..., newest first in that
    order, made without the backend (for lists and searches)."""
    from datetime import timedelta

    from django.utils import timezone

    from runs.models import Conversation

    now = timezone.now()
    made = []
    for index in range(count):
        conversation = Conversation.objects.create(owner=user, title=f"Chat {index:02}")
        # auto_now set it on save: place it in the list explicitly.
        Conversation.objects.filter(pk=conversation.pk).update(
            updated_at=now - timedelta(minutes=index)
        )
        made.append(conversation)
    return made
