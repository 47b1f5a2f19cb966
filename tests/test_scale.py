"""Past one machine: two daphne processes sharing PostgreSQL, Redis and one `langgraph dev`.

Each process is a real daphne, as the deployment docs run it; they share nothing in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections.abc import Iterator

import httpx
import psycopg
import pytest
import websockets

from tests.live import REDIS, LiveSite, manage, redis_unreachable, site_env

POSTGRES = "postgres://postgres@127.0.0.1:5432"


def _reachable() -> str | None:
    try:
        psycopg.connect(f"{POSTGRES}/postgres", connect_timeout=3).close()
    except psycopg.Error as exc:
        return f"PostgreSQL at 127.0.0.1:5432 is not reachable ({exc.__class__.__name__})"
    return redis_unreachable() or None


pytestmark = pytest.mark.skipif(bool(_reachable()), reason=_reachable() or "")


@pytest.fixture(scope="module")
def shared_database() -> Iterator[str]:
    name = f"chat_scale_{secrets.token_hex(4)}"
    with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield f"{POSTGRES}/{name}"
    finally:
        with psycopg.connect(f"{POSTGRES}/postgres", autocommit=True) as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module")
def sites(shared_database, langgraph_slow) -> Iterator[tuple[LiveSite, LiveSite]]:
    env = site_env(
        database_url=shared_database,
        backend_url=langgraph_slow.url,
        REDIS_URL=REDIS,
        CHAT_RELAY_HEARTBEAT_SECONDS="0.5",
    )
    manage("migrate", "--noinput", env=env)
    a = LiveSite("scale-a", env=env).start()
    b = LiveSite("scale-b", env=env).start()
    try:
        yield a, b
    finally:
        for site in (a, b):
            site.stop()


@pytest.fixture
def cookie(sites) -> str:
    """One visitor, signed in by the same session cookie on both processes."""
    response = httpx.get(sites[0].url + "/")
    return f"sessionid={response.cookies['sessionid']}"


@contextlib.asynccontextmanager
async def socket(site: LiveSite, cookie: str):
    async with websockets.connect(
        site.ws_url, origin=site.url, additional_headers={"Cookie": cookie}
    ) as ws:
        yield ws


async def send(ws, frame: dict) -> None:
    await ws.send(json.dumps(frame))


async def until(ws, *kinds: str, timeout: float = 20) -> tuple[dict, list[dict]]:
    frames = []
    async with asyncio.timeout(timeout):
        while True:
            frame = json.loads(await ws.recv())
            frames.append(frame)
            if frame["type"] in kinds:
                return frame, frames


END = ("run.completed", "run.cancelled", "run.failed")


async def a_conversation(site: LiveSite, cookie: str) -> str:
    async with socket(site, cookie) as ws:
        await send(ws, {"type": "chat.send", "text": "first", "memory": True})
        started, _ = await until(ws, "run.started")
        await until(ws, *END)
        return started["conversation"]


async def test_a_watcher_on_one_process_gets_every_delta_of_a_run_on_the_other(sites, cookie):
    a, b = sites
    conversation = await a_conversation(b, cookie)
    async with socket(a, cookie) as watcher, socket(b, cookie) as sender:
        await send(watcher, {"type": "conversation.watch", "conversation": conversation})
        await until(watcher, "conversation.snapshot")
        await send(
            sender,
            {"type": "chat.send", "text": "second", "memory": True, "conversation": conversation},
        )
        started, _ = await until(watcher, "run.started")
        assert started["conversation"] == conversation and started["mode"] == "thread"

        # A second watcher on A joins mid-run: its snapshot comes from the relaying process B.
        async with socket(a, cookie) as late:
            await until(watcher, "run.delta")
            await until(watcher, "run.delta")
            await send(late, {"type": "conversation.watch", "conversation": conversation})
            snapshot, _ = await until(late, "conversation.snapshot")
            active = snapshot["active_run"]
            assert active["run"] == started["run"] and active["seq"] >= 2
            late_final, late_frames = await until(late, *END)

        final, frames = await until(watcher, *END)
        sender_final, _ = await until(sender, *END)

    deltas = [f for f in frames if f["type"] == "run.delta"]
    assert [f["seq"] for f in deltas] == list(range(3, len(deltas) + 3))
    assert final["type"] == "run.completed"
    assert final["message"]["text"] == sender_final["message"]["text"]
    assert final["message"]["text"].startswith("You said: second (I can see 2 of your messages)")
    rebuilt = active["text"] + "".join(
        f["text"] for f in late_frames if f["type"] == "run.delta" and f["seq"] > active["seq"]
    )
    assert rebuilt == late_final["message"]["text"] == final["message"]["text"]


async def test_cancel_sent_to_one_process_stops_a_run_the_other_relays(sites, cookie):
    a, b = sites
    async with socket(b, cookie) as sender, socket(a, cookie) as canceller:
        await send(sender, {"type": "chat.send", "text": "stop me", "memory": True})
        started, _ = await until(sender, "run.started")
        await until(sender, "run.delta")
        await send(
            canceller, {"type": "conversation.watch", "conversation": started["conversation"]}
        )
        await until(canceller, "conversation.snapshot")
        await send(canceller, {"type": "chat.cancel", "run": started["run"]})
        cancelled, _ = await until(canceller, *END)
        sender_final, _ = await until(sender, *END)
    assert cancelled["type"] == sender_final["type"] == "run.cancelled"
    assert "w59" not in cancelled["message"]["text"], "stopped before the end"
    assert cancelled["message"]["status"] == "cancelled"


async def test_a_process_killed_mid_run_its_run_fails_and_the_other_tells_the_watcher(
    shared_database, langgraph_slow, sites, cookie
):
    a, _ = sites
    # A third process, to be killed, sharing the same database and channel layer.
    doomed = LiveSite("scale-doomed", env=a.env).start()
    try:
        async with socket(doomed, cookie) as sender, socket(a, cookie) as watcher:
            await send(sender, {"type": "chat.send", "text": "doomed", "memory": False})
            started, _ = await until(sender, "run.started")
            await send(
                watcher, {"type": "conversation.watch", "conversation": started["conversation"]}
            )
            await until(watcher, "conversation.snapshot")
            await until(watcher, "run.delta")
            await asyncio.to_thread(doomed.kill)
            told, _ = await until(watcher, *END, timeout=15)
    finally:
        doomed.stop()
    assert told["type"] == "run.failed"
    assert told["error"]["code"] == "interrupted"
    assert told["message"]["status"] == "failed"

    # Not stuck: the conversation takes the next message.
    async with socket(a, cookie) as ws:
        await send(
            ws,
            {
                "type": "chat.send",
                "text": "after",
                "memory": False,
                "conversation": started["conversation"],
            },
        )
        final, _ = await until(ws, *END)
    assert final["type"] == "run.completed"
