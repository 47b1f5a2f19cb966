"""The one module that speaks HTTP to the run backend (the LangGraph Agent Server API).

Long-lived `httpx.AsyncClient`s, explicit timeouts, typed results and typed errors
(`runs.exceptions`). Streams are spread over several clients because a connection pool's
bookkeeping grows with the square of its connections: one pool became the bottleneck past about
100 concurrent streams. Their sockets are plain asyncio (`runs.network`).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx
import orjson
from django.conf import settings
from httpx_sse import SSEError, aconnect_sse

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
from runs.network import asyncio_transport

OnDisconnect = Literal["cancel", "continue"]
MultitaskStrategy = Literal["reject", "interrupt", "rollback", "enqueue"]

# The reply's tokens are all the relay reads; "updates" (each step's output, the whole reply
# again) would only cost the backend and this process the work of sending and skipping it.
STREAM_MODES = ["messages-tuple"]
_AI_CHUNK_TYPES = frozenset({"AIMessageChunk", "ai"})
_JSON = {"Content-Type": "application/json"}
# How chat models say, in a message's `response_metadata`, that they stopped at their length
# limit: `finish_reason` "length" (OpenAI, llama.cpp) or "MAX_TOKENS" (Google), `stop_reason`
# "max_tokens" (Anthropic).
_LENGTH_LIMITS = frozenset({"length", "max_tokens", "MAX_TOKENS"})

# Checkpoints of one run read back to find where it began: a run of agent/'s graph writes three
# (its input, then one a step), so ten leave room for a graph with a few more.
FORK_HISTORY_LIMIT = 10


# Typed results.


@dataclass(frozen=True, slots=True)
class RunStarted:
    """The stream's `metadata` event: the backend accepted the run."""

    run_id: str
    thread_id: str | None


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of the assistant's reply, from a `messages-tuple` chunk of an AI message."""

    text: str


@dataclass(frozen=True, slots=True)
class ReplyCut:
    """The model stopped at its length limit: the reply ends there, unfinished."""


StreamEvent = RunStarted | TextDelta | ReplyCut


@dataclass(frozen=True, slots=True)
class ChatTurn:
    """A message sent before the user's new one: `role` "user" or "assistant"."""

    role: str
    text: str


@dataclass(frozen=True, slots=True)
class Thread:
    thread_id: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class BackendMessage:
    role: str  # "user", "assistant", "system" or "tool"
    text: str
    cut: bool = False  # the model stopped it at its length limit
    id: str = ""


@dataclass(frozen=True, slots=True)
class ThreadState:
    thread_id: str
    messages: list[BackendMessage]


@dataclass(frozen=True, slots=True)
class ForkPoint:
    """Where a thread stood before one of its runs: rewound to `checkpoint_id`, the thread
    remembers nothing of that run or of what came after. None when the run was the thread's
    first."""

    checkpoint_id: str | None


@dataclass(frozen=True, slots=True)
class WaitResult:
    run_id: str | None
    thread_id: str | None
    reply: str
    messages: list[BackendMessage]
    cut: bool = False  # the reply stopped at the model's length limit


@dataclass(frozen=True, slots=True)
class BackendConfig:
    url: str
    api_key: str
    assistant_id: str
    connect_timeout: float
    read_timeout: float
    write_timeout: float
    pool_timeout: float
    wait_timeout: float
    stream_clients: int
    max_connections: int
    keepalive_expiry: float

    @classmethod
    def from_settings(cls) -> BackendConfig:
        return cls(
            url=settings.LANGGRAPH_URL,
            api_key=settings.LANGGRAPH_API_KEY,
            assistant_id=settings.LANGGRAPH_ASSISTANT_ID,
            connect_timeout=settings.LANGGRAPH_CONNECT_TIMEOUT,
            read_timeout=settings.LANGGRAPH_READ_TIMEOUT,
            write_timeout=settings.LANGGRAPH_WRITE_TIMEOUT,
            pool_timeout=settings.LANGGRAPH_POOL_TIMEOUT,
            wait_timeout=settings.LANGGRAPH_WAIT_TIMEOUT,
            stream_clients=max(1, settings.LANGGRAPH_STREAM_CLIENTS),
            max_connections=settings.LANGGRAPH_MAX_CONNECTIONS,
            keepalive_expiry=settings.LANGGRAPH_KEEPALIVE_EXPIRY,
        )


def _role(message_type: str) -> str:
    return {"human": "user", "ai": "assistant"}.get(message_type, message_type)


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") if isinstance(part, dict) else str(part) for part in content
        )
    return ""


def _cut_at_length_limit(message: dict[str, Any]) -> bool:
    metadata = message.get("response_metadata")
    return isinstance(metadata, dict) and (
        metadata.get("finish_reason") in _LENGTH_LIMITS
        or metadata.get("stop_reason") in _LENGTH_LIMITS
    )


def _messages_of(values: Any) -> list[BackendMessage]:
    if not isinstance(values, dict):
        return []
    messages = []
    for raw in values.get("messages") or []:
        if isinstance(raw, dict):
            messages.append(
                BackendMessage(
                    role=_role(str(raw.get("type", ""))),
                    text=_content_text(raw.get("content")),
                    cut=_cut_at_length_limit(raw),
                    id=str(raw.get("id") or ""),
                )
            )
    return messages


def _message_body(message: BackendMessage) -> dict[str, Any]:
    """`message` as the backend takes it: `_messages_of` read backwards."""
    body: dict[str, Any] = {
        "type": {"user": "human", "assistant": "ai"}.get(message.role, message.role),
        "id": message.id,
        "content": message.text,
    }
    if message.cut:
        body["response_metadata"] = {"finish_reason": "length"}
    return body


def _loads(data: str | bytes) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise MalformedStream() from exc


def _error_detail(response: httpx.Response) -> str:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return response.text[:500]
    if isinstance(body, dict):
        return str(body.get("detail") or body.get("message") or body)[:500]
    return str(body)[:500]


def _raise_for_status(response: httpx.Response, *, thread_id: str | None = None) -> None:
    if response.is_success:
        return
    status = response.status_code
    detail = _error_detail(response)
    if status == 404 and thread_id is not None:
        raise ThreadNotFound(status=status, detail=detail)
    if status == 409:
        raise RunConflict(
            "The assistant is still answering in this conversation.", status=status, detail=detail
        )
    raise BackendHTTPError(status=status, detail=detail)


@asynccontextmanager
async def _translated_errors() -> AsyncIterator[None]:
    """Turns httpx's transport errors into the chat's typed backend errors."""
    try:
        yield
    except BackendError:
        raise
    except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
        raise BackendUnavailable() from exc
    except (httpx.ReadTimeout, httpx.WriteTimeout, httpx.PoolTimeout) as exc:
        raise BackendTimeout() from exc
    except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
        raise BackendUnavailable("The connection to the assistant was lost.") from exc
    except SSEError as exc:
        raise MalformedStream() from exc
    except httpx.HTTPError as exc:
        raise BackendError() from exc


def _sent_trace(on_sent: Callable[[], None]) -> Callable[[str, dict[str, Any]], Awaitable[None]]:
    """httpcore's `trace` request extension, calling `on_sent` when the request is written."""

    async def trace(event: str, info: dict[str, Any]) -> None:
        if event.endswith(".send_request_body.complete"):
            on_sent()

    return trace


class RunBackend:
    """A client of one LangGraph Agent Server. Create one per event loop and reuse it."""

    def __init__(
        self, config: BackendConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        headers = {"x-api-key": config.api_key} if config.api_key else {}
        timeout = httpx.Timeout(
            connect=config.connect_timeout,
            read=config.read_timeout,
            write=config.write_timeout,
            pool=config.pool_timeout,
        )
        per_client = max(1, config.max_connections // config.stream_clients)
        limits = httpx.Limits(
            max_connections=per_client,
            max_keepalive_connections=per_client,
            keepalive_expiry=config.keepalive_expiry,
        )

        def make_client() -> httpx.AsyncClient:
            return httpx.AsyncClient(
                base_url=config.url,
                headers=headers,
                timeout=timeout,
                limits=limits,
                transport=transport or asyncio_transport(limits=limits),
            )

        self._control = make_client()
        self._streams = [make_client() for _ in range(config.stream_clients)]
        self._next_stream = itertools.cycle(self._streams)
        # Runs are started with whole URLs and bodies already encoded: merging a path into the
        # base URL and encoding the body with the standard json module took two thirds of
        # httpx's work to build a request (60 µs a message, against 20).
        self._base_url = str(self._control.base_url).rstrip("/") + "/"

    def _url(self, path: str) -> httpx.URL:
        return httpx.URL(self._base_url + path.lstrip("/"))

    async def aclose(self) -> None:
        await asyncio.gather(
            self._control.aclose(), *(c.aclose() for c in self._streams), return_exceptions=True
        )

    # Threads.

    async def health(self) -> bool:
        try:
            response = await self._control.get("/ok", timeout=self.config.connect_timeout)
        except httpx.HTTPError:
            return False
        return response.is_success

    async def thread_create(self, *, metadata: dict[str, Any] | None = None) -> Thread:
        async with _translated_errors():
            response = await self._control.post("/threads", json={"metadata": metadata or {}})
            _raise_for_status(response)
            body = _loads(response.content)
        return Thread(thread_id=str(body["thread_id"]), metadata=body.get("metadata") or {})

    async def thread_delete(self, *, thread_id: str) -> None:
        async with _translated_errors():
            response = await self._control.delete(f"/threads/{thread_id}")
            _raise_for_status(response, thread_id=thread_id)

    async def thread_state(self, *, thread_id: str) -> ThreadState:
        async with _translated_errors():
            response = await self._control.get(f"/threads/{thread_id}/state")
            _raise_for_status(response, thread_id=thread_id)
            body = _loads(response.content)
        return ThreadState(thread_id=thread_id, messages=_messages_of(body.get("values")))

    async def thread_fork_point(self, *, thread_id: str, run_id: str) -> ForkPoint | None:
        """Where the thread stood before run `run_id` wrote to it; None when the thread holds
        nothing of that run (it failed before its input was saved, say). Reads that run's
        checkpoints only, however far back it was."""
        async with _translated_errors():
            response = await self._control.post(
                f"/threads/{thread_id}/history",
                json={"limit": FORK_HISTORY_LIMIT, "metadata": {"run_id": run_id}},
            )
            _raise_for_status(response, thread_id=thread_id)
            states = _loads(response.content)
        if not isinstance(states, list):
            raise MalformedStream()
        oldest_of_run = None  # newest first: the run's first checkpoint comes last
        for state in states:
            metadata = state.get("metadata") if isinstance(state, dict) else None
            if isinstance(metadata, dict) and metadata.get("run_id") == run_id:
                oldest_of_run = state
        if oldest_of_run is None:
            return None
        if oldest_of_run["metadata"].get("source") != "input":
            # The run took more steps than the page read: forking from its middle would keep
            # half of it in the memory.
            raise BackendError("The assistant's memory of that reply could not be found.")
        parent = oldest_of_run.get("parent_checkpoint")
        checkpoint_id = parent.get("checkpoint_id") if isinstance(parent, dict) else None
        return ForkPoint(checkpoint_id=str(checkpoint_id) if checkpoint_id else None)

    async def thread_rewind(self, *, thread_id: str, checkpoint_id: str) -> None:
        """Makes the thread's memory what it was at `checkpoint_id`: its next run goes on from
        there, and what came after is no longer remembered (it stays in the history)."""
        async with _translated_errors():
            response = await self._control.post(
                f"/threads/{thread_id}/state",
                json={"values": None, "checkpoint_id": checkpoint_id},
            )
            _raise_for_status(response, thread_id=thread_id)

    async def thread_messages_edit(
        self,
        *,
        thread_id: str,
        remove: Sequence[str] = (),
        rewrite: Sequence[BackendMessage] = (),
    ) -> None:
        """Changes what the thread remembers, as a new state of it: the messages whose ids are
        in `remove` leave it, and each message of `rewrite` takes the place of the one with its
        id. Its next run goes on from there."""
        # The server turns every dict into a message and asks each for a content, even one
        # that only says which message to remove.
        messages = [{"type": "remove", "id": message_id, "content": ""} for message_id in remove]
        messages += [_message_body(message) for message in rewrite]
        async with _translated_errors():
            response = await self._control.post(
                f"/threads/{thread_id}/state", json={"values": {"messages": messages}}
            )
            _raise_for_status(response, thread_id=thread_id)

    # Runs.

    def _run_body(
        self,
        *,
        text: str,
        history: Sequence[ChatTurn],
        thread_id: str | None,
        on_disconnect: OnDisconnect,
        multitask_strategy: MultitaskStrategy,
        stream: bool,
    ) -> dict[str, Any]:
        messages = [{"role": turn.role, "content": turn.text} for turn in history]
        messages.append({"role": "user", "content": text})
        body: dict[str, Any] = {
            "assistant_id": self.config.assistant_id,
            "input": {"messages": messages},
            # Sent explicitly: the server's default is "continue".
            "on_disconnect": on_disconnect,
        }
        if stream:
            body["stream_mode"] = STREAM_MODES
        if thread_id is None:
            body["on_completion"] = "delete"
        else:
            body["multitask_strategy"] = multitask_strategy
        return body

    async def run_stream(
        self,
        *,
        text: str,
        history: Sequence[ChatTurn] = (),
        thread_id: str | None = None,
        on_disconnect: OnDisconnect = "cancel",
        multitask_strategy: MultitaskStrategy = "reject",
        on_sent: Callable[[], None] | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Starts a run (stateless without `thread_id`) on the user's `text`, after the turns
        of `history` (what a stateless run must be told again), and yields its events.

        The first event is always `RunStarted`. Close the generator (`contextlib.aclosing`)
        to drop the stream; with `on_disconnect="cancel"` that cancels the run. `on_sent` is
        called once the request has been written to the connection, before the backend has
        answered (HTTP/1.1 through httpcore; a transport without its trace never calls it).
        """
        path = "/runs/stream" if thread_id is None else f"/threads/{thread_id}/runs/stream"
        url = self._url(path)
        body = self._run_body(
            text=text,
            history=history,
            thread_id=thread_id,
            on_disconnect=on_disconnect,
            multitask_strategy=multitask_strategy,
            stream=True,
        )
        client = next(self._next_stream)
        started = False
        async with (
            _translated_errors(),
            aconnect_sse(
                client,
                "POST",
                url,
                content=orjson.dumps(body),
                headers=_JSON,
                extensions={"trace": _sent_trace(on_sent)} if on_sent else None,
            ) as source,
        ):
            response = source.response
            if not response.is_success:
                await response.aread()
                _raise_for_status(response, thread_id=thread_id)
            async for sse in source.aiter_sse():
                event = sse.event
                if event == "messages":
                    if not started:
                        raise MalformedStream()
                    payload = _loads(sse.data)
                    if not isinstance(payload, list) or not payload:
                        raise MalformedStream()
                    chunk = payload[0]
                    if isinstance(chunk, dict) and chunk.get("type") in _AI_CHUNK_TYPES:
                        delta = _content_text(chunk.get("content"))
                        if delta:
                            yield TextDelta(delta)
                        if chunk.get("response_metadata") and _cut_at_length_limit(chunk):
                            yield ReplyCut()
                elif event == "metadata":
                    payload = _loads(sse.data)
                    if not isinstance(payload, dict) or "run_id" not in payload:
                        raise MalformedStream()
                    if not started:
                        started = True
                        yield RunStarted(
                            run_id=str(payload["run_id"]),
                            thread_id=thread_id or payload.get("thread_id"),
                        )
                elif event == "error":
                    payload = _loads(sse.data) if sse.data else {}
                    error = payload.get("error", "") if isinstance(payload, dict) else ""
                    message = payload.get("message", "") if isinstance(payload, dict) else ""
                    reason = message or error or "unknown error"
                    raise RunFailed(
                        f"The assistant failed while answering: {reason}", error=str(error)
                    )
                elif event == "end":
                    return
            if not started:
                raise MalformedStream()

    async def run_wait(
        self,
        *,
        text: str,
        history: Sequence[ChatTurn] = (),
        thread_id: str | None = None,
        multitask_strategy: MultitaskStrategy = "reject",
    ) -> WaitResult:
        """Runs to the end (stateless without `thread_id`) and returns the final state."""
        url = self._url("/runs/wait" if thread_id is None else f"/threads/{thread_id}/runs/wait")
        body = self._run_body(
            text=text,
            history=history,
            thread_id=thread_id,
            on_disconnect="cancel",
            multitask_strategy=multitask_strategy,
            stream=False,
        )
        timeout = httpx.Timeout(
            connect=self.config.connect_timeout,
            read=self.config.wait_timeout,
            write=self.config.write_timeout,
            pool=self.config.pool_timeout,
        )
        async with _translated_errors():
            response = await next(self._next_stream).post(
                url, content=orjson.dumps(body), headers=_JSON, timeout=timeout
            )
            _raise_for_status(response, thread_id=thread_id)
            values = _loads(response.content)
        if isinstance(values, dict) and "__error__" in values:
            # A failed run still answers 200; the error travels inside the body.
            error = values["__error__"] or {}
            message = error.get("message", "") if isinstance(error, dict) else str(error)
            kind = error.get("error", "") if isinstance(error, dict) else ""
            raise RunFailed(
                f"The assistant failed while answering: {message or kind or 'unknown error'}",
                error=str(kind),
            )
        if not isinstance(values, dict):
            raise MalformedStream()
        messages = _messages_of(values)
        replies = [m for m in messages if m.role == "assistant"]
        run_id = thread = None
        # The server names the run it made in Content-Location: /threads/{t}/runs/{r}.
        location = response.headers.get("content-location", "")
        parts = location.strip("/").split("/")
        if len(parts) >= 4 and parts[0] == "threads" and parts[2] == "runs":
            thread, run_id = parts[1], parts[3]
        return WaitResult(
            run_id=run_id,
            thread_id=thread_id or thread,
            reply=replies[-1].text if replies else "",
            messages=messages,
            cut=replies[-1].cut if replies else False,
        )

    async def run_cancel(self, *, thread_id: str, run_id: str, wait: bool = False) -> None:
        async with _translated_errors():
            response = await self._control.post(
                f"/threads/{thread_id}/runs/{run_id}/cancel",
                params={"wait": "true" if wait else "false", "action": "interrupt"},
            )
            _raise_for_status(response, thread_id=thread_id)


# One RunBackend per event loop: httpx connections belong to the loop that opened them.
_backends: dict[tuple[asyncio.AbstractEventLoop, BackendConfig], RunBackend] = {}


def get_backend() -> RunBackend:
    """The long-lived backend client of the running event loop, for the current settings."""
    loop = asyncio.get_running_loop()
    config = BackendConfig.from_settings()
    backend = _backends.get((loop, config))
    if backend is None:
        for key in [key for key in _backends if key[0].is_closed()]:
            del _backends[key]
        backend = _backends[(loop, config)] = RunBackend(config)
    return backend
