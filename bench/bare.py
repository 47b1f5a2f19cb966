"""A bare relay, the benchmark's floor: the same daphne and backend client, none of the product.

`python -m bench.relay --bare` serves this ASGI app with `chatsite.serve`, exactly as the site
is served (uvloop, the same daphne settings), and measures it as a third mode beside direct and
the relay. It speaks just enough of protocol v1 for the benchmark's clients: `chat.send` starts
a stream from the backend with the site's own client (`runs.backend.get_backend()`, configured
from the site's settings: its HTTP clients, its sockets, httpx-sse), and every token goes out as
its own `run.delta` frame the moment it is read. Nothing else of the site: no Django app,
sessions, database, channel layer, batching or snapshots. With memory on, each socket keeps one
backend thread.

What it costs against going direct is what daphne and the backend client cost on the machine;
what the relay costs beyond it is the product's own share.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import orjson

from runs.backend import RunStarted, TextDelta, get_backend


async def _relay(send: Any, frame: dict[str, Any], *, threads: dict[str, str]) -> None:
    backend = get_backend()
    thread_id = None
    conversation = frame.get("conversation") or uuid.uuid4().hex
    if frame.get("memory"):
        thread_id = threads.get(conversation)
        if thread_id is None:
            thread_id = threads[conversation] = (await backend.thread_create()).thread_id
    run = uuid.uuid4().hex
    seq = 0
    outcome: dict[str, Any] = {"type": "run.completed", "run": run}
    events = backend.run_stream(text=frame.get("text") or "", thread_id=thread_id)
    try:
        async with contextlib.aclosing(events):
            async for event in events:
                if type(event) is TextDelta:
                    seq += 1
                    delta = {"type": "run.delta", "run": run, "seq": seq, "text": event.text}
                    await send({"type": "websocket.send", "text": orjson.dumps(delta).decode()})
                elif type(event) is RunStarted:
                    started = {
                        "type": "run.started",
                        "run": run,
                        "client_id": frame.get("client_id"),
                        "conversation": conversation,
                    }
                    await send({"type": "websocket.send", "text": orjson.dumps(started).decode()})
    except Exception as exc:
        outcome = {"type": "run.failed", "run": run, "error": {"code": type(exc).__name__}}
    await send({"type": "websocket.send", "text": orjson.dumps(outcome).decode()})


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "websocket":
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        return
    relays: set[asyncio.Task] = set()
    threads: dict[str, str] = {}
    try:
        while True:
            message = await receive()
            kind = message["type"]
            if kind == "websocket.connect":
                await send({"type": "websocket.accept"})
            elif kind == "websocket.disconnect":
                return
            elif kind == "websocket.receive":
                frame = orjson.loads(message.get("text") or "{}")
                if frame.get("type") == "chat.send":
                    task = asyncio.create_task(_relay(send, frame, threads=threads))
                    relays.add(task)
                    task.add_done_callback(relays.discard)
    finally:
        for task in relays:
            task.cancel()
