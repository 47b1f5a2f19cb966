"""The relay against going direct: what daphne and the chat flow add to a streamed reply.

`python -m bench.relay` (`make bench`; `make bench-short` for CI) starts the embedded backend
(`langgraph dev` with the echo model: a fixed reply length, a per-token delay, and every token
stamped with the time it was emitted) and daphne on a fresh SQLite database, exactly as
`make run` starts it. For each concurrency it measures, in the same run, rounds of

- **direct**: N simulated users, each with its own `httpx.AsyncClient`, streaming the reply
  straight from the backend with httpx-sse (`POST /runs/stream` with memory off,
  `POST /threads/{id}/runs/stream` on a thread of their own with memory on);
- **relay**: N websocket clients speaking protocol v1 to daphne (`chat.send`, then
  `run.started`, `run.delta`..., `run.completed`): sessions, database writes, channel layer.

With `--bare`, a third mode sits between them:

- **bare**: the same websocket clients against a bare relay (`bench/bare.py`): the same daphne,
  served the same way, and the site's own backend client, but none of the product (no Django,
  database, channel layer or batching; a frame a token). It is the floor: what daphne and the
  backend client cost on this machine, so that relay/bare is the product's own share.

The modes alternate round by round (direct, relay, relay, direct, ...; with bare: direct, bare,
relay, relay, bare, direct, ...) so that drift cancels. Each cell (a concurrency and a memory
setting) opens its users, warms them up with one unmeasured reply each (which also creates the
conversations and threads), then runs the rounds; in every round each user sends
`max(1, ceil(min_replies / N))` messages one after another.

Figures, per mode: time to first token (send to the first token's arrival) p50/p95/p99,
whole reply (send to `run.completed` / the SSE `end`) p50/p95, tokens per second (tokens
received in all rounds / the rounds' wall time), per-token delivery latency (arrival minus the
token's stamp) p50/p95, errors, and for the relay daphne's CPU seconds per relayed token
(utime+stime from /proc/<pid>/stat across the relay rounds) and its peak RSS (VmHWM, reset at
the start of each cell where the kernel allows it), and in both modes the simulated users' own
CPU per token (going direct, that is what reading the backend's stream costs a plain client).
Tokens are counted by their stamps, so the figures stay right if the relay coalesces deltas.
Before the cells, the header gives what one wakeup of an idle event loop costs on the machine:
at low concurrency every token is one, in daphne, in the clients and in the backend alike.

Then the scale-out rows (issue 8; `--scale on|off|only`): the same alternation with three
modes, on a fresh PostgreSQL database (created here, dropped at the end) and Redis as the channel
layer (both on 127.0.0.1), at `--scale-concurrency` (100 and 200; 10 in the short mode) with
memory off unless `--scale-memory` says otherwise:

- **direct**, as above;
- **relay-1p**: one daphne;
- **relay-2p-lb**: two daphne processes behind a local HAProxy (Debian's `haproxy`, started
  here on a generated configuration, `balance leastconn`) on one port.

Their daphne CPU per token sums the relay's processes, and peak RSS is given for the largest
process and as the sum of the processes' peaks; the balancer's own CPU has a column of its own.
Ratios: each relay mode against direct in the same cell, and two processes against one. Without
PostgreSQL or Redis these rows are skipped, without haproxy the relay-2p-lb row, with a message
saying so; neither is a failure.

All traffic goes to 127.0.0.1; every loop is bounded in count and every wait in time; the run
stops by itself (`--max-minutes`). The exit status is 0 when every mode of every cell completed
at least one reply, 1 when one did not (the harness or the product is broken), 2 when the
servers could not be started. The figures themselves are reported, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import platform
import re
import resource
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
from httpx_sse import aconnect_sse
from websockets.asyncio.client import ClientConnection
from websockets.asyncio.client import connect as ws_connect

from agent.server import (
    EmbeddedBackend,
    client_keepalive_expiry,
    free_port,
    process_group_stop,
)
from chatsite.devserver import SITE_APPLICATION, daphne_command

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "bench" / "results"
HOST = "127.0.0.1"
PROMPT = "bench"
# The echo model answers "You said: <prompt> (I can see <n> of your messages)", a token a word.
BASE_TOKENS = len(f"You said: {PROMPT} (I can see 1 of your messages)".split(" "))
STAMP = re.compile(r"@(\d+\.\d+)")
AI_CHUNK_TYPES = frozenset({"AIMessageChunk", "ai"})
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
MODES = ("direct", "bare", "relay")  # bare: only with --bare
BARE_APP = "bench.bare:application"


class HarnessError(RuntimeError):
    """The servers could not be started or the harness cannot go on."""


# Processes, measured through /proc.


def proc_cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process (all its threads, living and ended)."""
    with open(f"/proc/{pid}/stat", "rb") as stat:
        data = stat.read()
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def proc_tree_pids(root: int) -> list[int]:
    """`root` and its descendants."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as stat:
                data = stat.read()
        except OSError:
            continue
        ppid = int(data[data.rindex(b")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    pids, todo = [], [root]
    while todo and len(pids) < 1000:
        pid = todo.pop()
        pids.append(pid)
        todo.extend(children.get(pid, ()))
    return pids


def tree_cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        with contextlib.suppress(OSError):
            total += proc_cpu_seconds(pid)
    return total


def proc_status_kib(pid: int, key: str) -> int | None:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return None


def reset_peak_rss(pid: int) -> bool:
    """Resets VmHWM (Linux >= 4.0, `echo 5 > /proc/<pid>/clear_refs`)."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def self_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# Statistics.


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return None
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# One reply, as a client saw it.


@dataclass(slots=True)
class Reply:
    ok: bool = False
    error: str = ""
    ttft: float | None = None  # seconds from send to the first token
    total: float | None = None  # seconds from send to the end of the reply
    tokens: int = 0
    frames: int = 0  # SSE events or websocket frames that carried tokens
    stage: str = "nothing back yet"  # how far it got, for a reply that times out
    latencies: list[float] = field(default_factory=list)  # arrival minus stamp, per token

    def take(self, text: str, *, arrived: float, elapsed: float) -> None:
        stamps = STAMP.findall(text)
        if not stamps:
            return
        if self.ttft is None:
            self.ttft = elapsed
        self.frames += 1
        self.tokens += len(stamps)
        self.latencies.extend(arrived - float(stamp) for stamp in stamps)

    def finish(self, *, elapsed: float, expected_tokens: int) -> Reply:
        self.total = elapsed
        if self.tokens != expected_tokens:
            self.error = f"incomplete: {self.tokens} of {expected_tokens} tokens"
        else:
            self.ok = True
        return self


# Direct: straight from the backend, one httpx client per simulated user.


class DirectUser:
    def __init__(self, *, url: str, memory: bool, timeout: float) -> None:
        self.memory = memory
        self.thread_id: str | None = None
        self.client = httpx.AsyncClient(
            base_url=url,
            timeout=httpx.Timeout(connect=10.0, read=timeout, write=10.0, pool=10.0),
            # As long as the site and the bare relay keep their backend connections.
            limits=httpx.Limits(
                max_connections=4,
                max_keepalive_connections=4,
                keepalive_expiry=client_keepalive_expiry(),
            ),
        )

    async def open(self) -> None:
        if self.memory:
            response = await self.client.post(
                "/threads", json={"metadata": {"bench": "relay", "user": uuid.uuid4().hex}}
            )
            response.raise_for_status()
            self.thread_id = str(response.json()["thread_id"])

    async def close(self) -> None:
        await self.client.aclose()

    def body(self) -> dict[str, Any]:
        # As runs.backend.RunBackend._run_body builds it.
        body: dict[str, Any] = {
            "assistant_id": "agent",
            "input": {"messages": [{"role": "user", "content": PROMPT}]},
            "on_disconnect": "cancel",
            "stream_mode": ["messages-tuple"],
        }
        if self.thread_id is None:
            body["on_completion"] = "delete"
        else:
            body["multitask_strategy"] = "reject"
        return body

    async def send(self, *, expected_tokens: int, reply: Reply) -> Reply:
        path = (
            "/runs/stream" if self.thread_id is None else f"/threads/{self.thread_id}/runs/stream"
        )
        started = time.perf_counter()
        async with aconnect_sse(self.client, "POST", path, json=self.body()) as source:
            if not source.response.is_success:
                await source.response.aread()
                reply.error = f"http {source.response.status_code}"
                return reply
            reply.stage = "streaming"
            async for sse in source.aiter_sse():
                event = sse.event
                if event == "messages":
                    arrived, elapsed = time.time(), time.perf_counter() - started
                    payload = orjson.loads(sse.data)
                    chunk = payload[0] if isinstance(payload, list) and payload else None
                    if isinstance(chunk, dict) and chunk.get("type") in AI_CHUNK_TYPES:
                        content = chunk.get("content")
                        if isinstance(content, str) and content:
                            reply.take(content, arrived=arrived, elapsed=elapsed)
                elif event == "error":
                    reply.error = f"backend error: {sse.data[:120]}"
                    return reply
                elif event == "end":
                    break
        return reply.finish(elapsed=time.perf_counter() - started, expected_tokens=expected_tokens)


# Relay: protocol v1 through daphne, one websocket (and so one session) per simulated user.


class RelayUser:
    def __init__(self, *, url: str, origin: str, memory: bool, cookie: str | None = None) -> None:
        self.url = url
        self.origin = origin
        self.memory = memory
        self.cookie = cookie  # a signed-in account's session (`--signed-in`)
        self.conversation: str | None = None
        self.ws: ClientConnection | None = None

    async def open(self) -> None:
        self.ws = await ws_connect(
            self.url,
            origin=self.origin,
            compression=None,
            ping_interval=None,
            open_timeout=30,
            close_timeout=2,
            max_size=2**20,
            additional_headers={"Cookie": self.cookie} if self.cookie else None,
        )

    async def close(self) -> None:
        if self.ws is not None:
            with contextlib.suppress(Exception):
                await self.ws.close()

    async def send(self, *, expected_tokens: int, reply: Reply) -> Reply:
        assert self.ws is not None
        client_id = uuid.uuid4().hex[:16]
        frame = {
            "type": "chat.send",
            "text": PROMPT,
            "memory": self.memory,
            "conversation": self.conversation,
            "client_id": client_id,
        }
        run = None
        seq = 0
        started = time.perf_counter()
        await self.ws.send(orjson.dumps(frame).decode())
        while True:
            raw = await self.ws.recv(decode=False)
            arrived, elapsed = time.time(), time.perf_counter() - started
            message = orjson.loads(raw)
            kind = message.get("type")
            if kind == "run.delta":
                if message.get("run") != run:
                    continue
                seq += 1
                if message.get("seq") != seq:
                    reply.error = f"delta seq {message.get('seq')} where {seq} was due"
                    seq = message.get("seq") or seq
                reply.take(message.get("text") or "", arrived=arrived, elapsed=elapsed)
            elif kind == "run.started":
                if message.get("client_id") == client_id:
                    reply.stage = "after run.started"
                    run = message.get("run")
                    self.conversation = message.get("conversation")
            elif kind == "run.completed":
                if message.get("run") == run:
                    if reply.error:  # a sequence gap: finished, but not whole
                        return reply
                    return reply.finish(elapsed=elapsed, expected_tokens=expected_tokens)
            elif kind in ("run.failed", "run.cancelled"):
                if message.get("run") == run:
                    code = (message.get("error") or {}).get("code", "")
                    reply.error = f"{kind} {code}".strip()
                    return reply
            elif kind == "error":
                if message.get("client_id") in (client_id, None):
                    reply.error = f"error {message.get('code')}"
                    return reply


# The servers.


@dataclass
class Daphne:
    name: str
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def ws_url(self) -> str:
        return f"ws://{HOST}:{self.port}/ws/chat/"

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"


@dataclass(frozen=True)
class Target:
    """A mode of a cell: where its users go, and whose CPU and memory are its cost."""

    mode: str
    relay: bool
    ws_url: str = ""
    origin: str = ""
    # The relay's daphne processes (for direct: those of the cell, idle, as a baseline).
    daphne_pids: tuple[int, ...] = ()
    balancer_pids: tuple[int, ...] = ()
    # Session cookies of signed-in accounts, one a user (`--signed-in`); none: anonymous visitors.
    cookies: tuple[str, ...] = ()


def wait_port(port: int, *, process: subprocess.Popen, timeout: float, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise HarnessError(f"daphne exited with {process.returncode}; see {log}")
        with contextlib.suppress(OSError), socket.create_connection((HOST, port), timeout=1):
            return
        time.sleep(0.1)
    raise HarnessError(f"daphne did not listen on {port} within {timeout:.0f} s; see {log}")


def backend_start(args: argparse.Namespace, workdir: Path) -> EmbeddedBackend:
    backend_env = {
        "AGENT_ECHO_DELAY_MS": str(args.delay_ms),
        "AGENT_ECHO_EXTRA_TOKENS": str(args.reply_tokens - BASE_TOKENS),
        "AGENT_ECHO_STAMP": "1",
    }
    backend = EmbeddedBackend(
        model="echo",
        env=backend_env,
        jobs=args.jobs,
        log_path=workdir / "langgraph.log",
        data_dir=workdir,
    )
    try:
        backend.start(timeout=120)
    except RuntimeError as exc:
        raise HarnessError(str(exc)) from exc
    assert backend.process is not None
    return backend


def site_env(
    args: argparse.Namespace, *, database_url: str, backend_url: str, **extra: str
) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "DJANGO_SETTINGS_MODULE": "chatsite.settings",
        "DATABASE_URL": database_url,
        "LANGGRAPH_URL": backend_url,
        "LANGGRAPH_KEEPALIVE_EXPIRY": str(client_keepalive_expiry()),
        # Production settings, with a throwaway key that lives as long as this run.
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": args.secret_key,
        "DJANGO_ALLOWED_HOSTS": f"{HOST},localhost",
        "DJANGO_SECURE_SSL_REDIRECT": "false",
        # One simulated user sends far more than a person would: the limit is still checked.
        "CHAT_RATE_LIMIT": str(args.rate_limit),
        "PYTHONUNBUFFERED": "1",
    })  # fmt: skip
    env.update(extra)
    return env


def migrate(env: dict[str, str]) -> None:
    result = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if result.returncode != 0:
        raise HarnessError(f"migrate failed:\n{result.stdout}{result.stderr}")


def signed_in_cookies(env: dict[str, str], *, count: int) -> tuple[str, ...]:
    """`count` accounts, each signed in on a session of its own: their `Cookie` headers."""
    result = subprocess.run(
        [sys.executable, "-m", "bench.accounts", str(count)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    if result.returncode != 0:
        raise HarnessError(f"signing accounts in failed:\n{result.stdout}{result.stderr}")
    signed_in = orjson.loads(result.stdout)
    return tuple(f"{signed_in['cookie']}={key}" for key in signed_in["sessions"])


def daphne_spawn(
    env: dict[str, str], *, name: str, workdir: Path, application: str = SITE_APPLICATION
) -> Daphne:
    port = free_port()
    log_path = workdir / f"{name}.log"
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            daphne_command(host=HOST, port=port, application=application),
            cwd=ROOT, env=env, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    return Daphne(name=name, process=process, port=port, log_path=log_path)


def daphne_wait(daphne: Daphne, *, timeout: float = 60) -> None:
    wait_port(daphne.port, process=daphne.process, timeout=timeout, log=daphne.log_path)


def daphne_stop(daphne: Daphne) -> None:
    process_group_stop(daphne.process)


def healthy(origin: str, *, timeout: float = 20.0) -> None:
    """GET /healthz answers 200 (through the load balancer, say) within `timeout`."""
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            response = httpx.get(f"{origin}/healthz", timeout=5.0)
        except httpx.HTTPError as exc:
            last = f"{type(exc).__name__}: {exc}"
        else:
            if response.status_code == 200:
                return
            last = f"http {response.status_code}"
        time.sleep(0.2)
    raise HarnessError(f"{origin}/healthz did not answer 200 within {timeout:.0f} s ({last})")


# Rounds.


@dataclass
class ModeResult:
    replies: list[Reply] = field(default_factory=list)
    rounds: list[dict[str, Any]] = field(default_factory=list)


async def bounded(user: DirectUser | RelayUser, *, expected_tokens: int, timeout: float) -> Reply:
    progress = Reply()
    try:
        async with asyncio.timeout(timeout):
            return await user.send(expected_tokens=expected_tokens, reply=progress)
    except TimeoutError:
        # Counted as nothing received, as before; the error says how far it got.
        return Reply(error=f"timeout ({progress.stage}, {progress.tokens} tokens)")
    except Exception as exc:  # one user's failure is a figure, not the end of the run
        return Reply(error=f"{type(exc).__name__}: {str(exc)[:120]}")


async def user_round(user: DirectUser | RelayUser, *, count: int, args: argparse.Namespace):
    replies = []
    for _ in range(count):
        replies.append(
            await bounded(user, expected_tokens=args.reply_tokens, timeout=args.reply_timeout)
        )
    return replies


async def run_round(
    users: list[Any],
    *,
    per_user: int,
    target: Target,
    backend_pids: list[int],
    args: argparse.Namespace,
) -> tuple[list[Reply], dict[str, Any]]:
    daphne_pids = list(target.daphne_pids)
    balancer_pids = list(target.balancer_pids)
    before = (
        tree_cpu_seconds(daphne_pids),
        tree_cpu_seconds(backend_pids),
        self_cpu_seconds(),
        tree_cpu_seconds(balancer_pids),
    )
    started = time.perf_counter()
    results = await asyncio.gather(*(user_round(u, count=per_user, args=args) for u in users))
    wall = time.perf_counter() - started
    after = (
        tree_cpu_seconds(daphne_pids),
        tree_cpu_seconds(backend_pids),
        self_cpu_seconds(),
        tree_cpu_seconds(balancer_pids),
    )
    replies = [reply for user_replies in results for reply in user_replies]
    tokens = sum(reply.tokens for reply in replies)
    record = {
        "wall_s": round(wall, 4),
        "replies": len(replies),
        "errors": sum(not reply.ok for reply in replies),
        "tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "ttft_p50_ms": _ms(percentile([r.ttft for r in replies if r.ttft is not None], 50)),
        "daphne_cpu_s": round(after[0] - before[0], 3),
        "backend_cpu_s": round(after[1] - before[1], 3),
        "client_cpu_s": round(after[2] - before[2], 3),
    }
    if balancer_pids:
        record["balancer_cpu_s"] = round(after[3] - before[3], 3)
    return replies, record


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


def summarize(result: ModeResult) -> dict[str, Any]:
    replies = result.replies
    ok = [r for r in replies if r.ok]
    ttft = [r.ttft for r in replies if r.ttft is not None]
    total = [r.total for r in ok if r.total is not None]
    latencies = [lat for r in replies for lat in r.latencies]
    tokens = sum(r.tokens for r in replies)
    frames = sum(r.frames for r in replies)
    wall = sum(round_["wall_s"] for round_ in result.rounds)
    daphne_cpu = sum(round_["daphne_cpu_s"] for round_ in result.rounds)
    backend_cpu = sum(round_["backend_cpu_s"] for round_ in result.rounds)
    client_cpu = sum(round_["client_cpu_s"] for round_ in result.rounds)
    errors: dict[str, int] = {}
    for reply in replies:
        if not reply.ok:
            errors[reply.error] = errors.get(reply.error, 0) + 1

    summary = {
        "replies": len(replies),
        "completed": len(ok),
        "errors": len(replies) - len(ok),
        "error_kinds": errors,
        "tokens": tokens,
        "tokens_per_frame": round(tokens / frames, 2) if frames else None,
        "wall_s": round(wall, 3),
        "ttft_ms": {f"p{q}": _ms(percentile(ttft, q)) for q in (50, 95, 99)},
        "reply_ms": {f"p{q}": _ms(percentile(total, q)) for q in (50, 95, 99)},
        "tokens_per_s": round(tokens / wall, 1) if wall > 0 else None,
        "token_latency_ms": {f"p{q}": _ms(percentile(latencies, q)) for q in (50, 95, 99)},
        "daphne_cpu_s": round(daphne_cpu, 3),
        "daphne_cpu_ms_per_token": round(daphne_cpu * 1000 / tokens, 4) if tokens else None,
        "backend_cpu_ms_per_token": round(backend_cpu * 1000 / tokens, 4) if tokens else None,
        "client_cpu_ms_per_token": round(client_cpu * 1000 / tokens, 4) if tokens else None,
        "rounds": result.rounds,
    }
    if any("balancer_cpu_s" in round_ for round_ in result.rounds):
        balancer_cpu = sum(round_.get("balancer_cpu_s", 0.0) for round_ in result.rounds)
        summary["balancer_cpu_s"] = round(balancer_cpu, 3)
        summary["balancer_cpu_ms_per_token"] = (
            round(balancer_cpu * 1000 / tokens, 4) if tokens else None
        )
    return summary


def ratio(relay: float | None, direct: float | None) -> float | None:
    if relay is None or direct is None or direct == 0:
        return None
    return round(relay / direct, 3)


def ratios(direct: dict[str, Any], relay: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("ttft_ms", "reply_ms", "token_latency_ms"):
        for q in ("p50", "p95", "p99"):
            out[f"{key}_{q}"] = ratio(relay[key][q], direct[key][q])
    out["tokens_per_s"] = ratio(relay["tokens_per_s"], direct["tokens_per_s"])
    for q in ("p50", "p95"):
        r, d = relay["token_latency_ms"][q], direct["token_latency_ms"][q]
        out[f"token_latency_added_ms_{q}"] = None if r is None or d is None else round(r - d, 3)
    return out


async def open_users(users: list[Any], *, timeout: float, batch: int = 50) -> None:
    """Opens the users a batch at a time (a burst of handshakes is not what is measured)."""
    for start in range(0, len(users), batch):
        async with asyncio.timeout(timeout):
            await asyncio.gather(*(user.open() for user in users[start : start + batch]))


def round_order(modes: list[str], passes: int) -> list[str]:
    """Each pass runs every mode once, forward then backward (A B C, C B A, A B ...).

    With two modes this is direct, relay, relay, direct, ...: linear drift cancels.
    """
    order: list[str] = []
    for index in range(passes):
        order.extend(modes if index % 2 == 0 else reversed(modes))
    return order


async def run_cell(
    *,
    concurrency: int,
    memory: bool,
    targets: list[Target],
    backend: EmbeddedBackend,
    backend_pids: list[int],
    args: argparse.Namespace,
    deadline: float,
    label: str = "",
) -> dict[str, Any]:
    label = f"{label}c={concurrency} memory={'on' if memory else 'off'}"
    per_user = max(1, math.ceil(args.min_replies / concurrency))
    modes = [target.mode for target in targets]
    users: dict[str, list[Any]] = {
        target.mode: [
            RelayUser(
                url=target.ws_url,
                origin=target.origin,
                memory=memory,
                cookie=target.cookies[index] if target.cookies else None,
            )
            if target.relay
            else DirectUser(url=backend.url, memory=memory, timeout=args.reply_timeout)
            for index in range(concurrency)
        ]
        for target in targets
    }
    results = {mode: ModeResult() for mode in modes}
    all_daphnes = sorted({pid for target in targets for pid in target.daphne_pids})
    all_balancers = sorted({pid for target in targets for pid in target.balancer_pids})
    peak_reset = all([reset_peak_rss(pid) for pid in all_daphnes + all_balancers])
    rss_before = {pid: proc_status_kib(pid, "VmRSS") or 0 for pid in all_daphnes}
    order = round_order(modes, args.rounds)
    notes: list[str] = []
    aborted = ""
    try:
        for target in targets:
            await open_users(users[target.mode], timeout=args.reply_timeout)
        # Warm-up: one unmeasured reply per user (connections, conversations, threads).
        for target in targets:
            mode = target.mode
            warm, record = await run_round(
                users[mode], per_user=1, target=target, backend_pids=backend_pids, args=args
            )
            failed = [reply.error for reply in warm if not reply.ok]
            log(f"{label} warm-up {mode}: {record['replies'] - len(failed)} ok, "
                f"{len(failed)} failed {sorted(set(failed))[:3]}")  # fmt: skip
            if len(failed) == len(warm):
                if not target.relay:  # no baseline to compare with: the backend is broken
                    raise HarnessError(f"{label}: every {mode} warm-up reply failed: {failed[0]}")
                # The product failed this load: say so in the table, measure the other modes.
                kinds = sorted(set(failed))
                notes.append(
                    f"{label} {mode}: every warm-up reply failed ({len(failed)} x, e.g. "
                    f"{kinds[0]!r}); its row shows that warm-up round, no measured rounds"
                )
                log(f"{label} {mode}: every warm-up reply failed; its rounds are skipped")
                record["index"] = -1
                record["warm_up"] = True
                results[mode].replies.extend(warm)
                results[mode].rounds.append(record)
                order = [other for other in order if other != mode]
        by_mode = {target.mode: target for target in targets}
        for index, mode in enumerate(order):
            if time.monotonic() > deadline:
                aborted = "the run's time limit was reached"
                break
            await asyncio.sleep(args.pause)
            replies, record = await run_round(
                users[mode],
                per_user=per_user,
                target=by_mode[mode],
                backend_pids=backend_pids,
                args=args,
            )
            record["index"] = index
            results[mode].replies.extend(replies)
            results[mode].rounds.append(record)
            balancer = (
                f", balancer {record['balancer_cpu_s']} s" if "balancer_cpu_s" in record else ""
            )
            log(
                f"{label} round {index + 1}/{len(order)} {mode:6}: "
                f"{record['replies']} replies, {record['errors']} errors, "
                f"{record['tokens_per_s']} tok/s, first token p50 {record['ttft_p50_ms']} ms, "
                f"daphne {record['daphne_cpu_s']} s CPU{balancer}"
            )
    finally:
        await asyncio.gather(*(u.close() for mode in modes for u in users[mode]))
    summary = {mode: summarize(results[mode]) for mode in modes}
    for target in targets:
        if not target.relay:
            continue
        s = summary[target.mode]
        peaks = [(proc_status_kib(pid, "VmHWM") or 0) / 1024 for pid in target.daphne_pids]
        s["daphne_processes"] = len(target.daphne_pids)
        s["daphne_peak_rss_mib"] = round(max(peaks, default=0), 1)
        s["daphne_peak_rss_sum_mib"] = round(sum(peaks), 1)
        s["daphne_peak_rss_is_lifetime"] = not peak_reset
        s["daphne_rss_before_mib"] = round(
            sum(rss_before.get(pid, 0) for pid in target.daphne_pids) / 1024, 1
        )
        if target.balancer_pids:
            s["balancer_peak_rss_mib"] = round(
                sum((proc_status_kib(pid, "VmHWM") or 0) for pid in target.balancer_pids) / 1024,
                1,
            )
    cell: dict[str, Any] = {
        "concurrency": concurrency,
        "memory": memory,
        "messages_per_user_per_round": per_user,
        "modes": modes,
        **summary,
        "aborted": aborted,
        "notes": notes,
    }
    return cell


# Output.


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


COLUMNS = [
    ("conc", 5), ("memory", 6), ("mode", 10), ("replies", 7),
    ("ttft p50", 9), ("p95", 8), ("p99", 8), ("reply p50", 9), ("p95", 8),
    ("tok/s", 8), ("tok-lat p50", 11), ("p95", 8), ("errors", 6),
    ("daphne ms CPU/tok", 17), ("daphne peak RSS MiB", 19), ("clients ms CPU/tok", 18),
]  # fmt: skip

# The scale-out rows: CPU is the sum over the relay's daphne processes, RSS their largest
# peak and the sum of their peaks; lb = the load balancer's own CPU.
SCALE_COLUMNS = [
    ("conc", 5), ("memory", 6), ("mode", 12), ("replies", 7),
    ("ttft p50", 9), ("p95", 8), ("p99", 8), ("reply p50", 9), ("p95", 8),
    ("tok/s", 8), ("tok-lat p50", 11), ("p95", 8), ("errors", 6),
    ("daphne ms CPU/tok", 17), ("peak RSS MiB max", 16), ("sum", 6), ("lb ms CPU/tok", 13),
]  # fmt: skip
SCALE_MODES = ("direct", "relay-1p", "relay-2p-lb")
SCALE_SHORT = {"direct": "direct", "relay-1p": "1p", "relay-2p-lb": "2p-lb"}


def render(columns: list[tuple[str, int]], rows: list[list[str]]) -> list[str]:
    def row(values: list[str]) -> str:
        return "  ".join(v.rjust(width) for v, (_, width) in zip(values, columns, strict=True))

    lines = [row([name for name, _ in columns])]
    lines.append("-" * len(lines[0]))
    lines.extend(row(values) for values in rows)
    return lines


def figures(s: dict[str, Any]) -> list[str]:
    """The columns from "replies" to "errors" of one mode."""
    return [
        str(s["replies"]),
        fmt(s["ttft_ms"]["p50"]), fmt(s["ttft_ms"]["p95"]), fmt(s["ttft_ms"]["p99"]),
        fmt(s["reply_ms"]["p50"]), fmt(s["reply_ms"]["p95"]),
        fmt(s["tokens_per_s"], 0),
        fmt(s["token_latency_ms"]["p50"], 2), fmt(s["token_latency_ms"]["p95"], 2),
        str(s["errors"]),
    ]  # fmt: skip


def ratio_figures(r: dict[str, Any]) -> list[str]:
    return [
        "",
        fmt(r["ttft_ms_p50"], 2), fmt(r["ttft_ms_p95"], 2), fmt(r["ttft_ms_p99"], 2),
        fmt(r["reply_ms_p50"], 2), fmt(r["reply_ms_p95"], 2),
        fmt(r["tokens_per_s"], 2),
        fmt(r["token_latency_ms_p50"], 2), fmt(r["token_latency_ms_p95"], 2),
        "",
    ]  # fmt: skip


def added_figures(r: dict[str, Any]) -> list[str]:
    return [
        "", "", "", "", "", "", "",
        fmt(r["token_latency_added_ms_p50"], 2), fmt(r["token_latency_added_ms_p95"], 2), "",
    ]  # fmt: skip


def table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for cell in cells:
        head = [str(cell["concurrency"]), "on" if cell["memory"] else "off"]
        for mode in (mode for mode in MODES if mode in cell):
            s = cell[mode]
            relay = mode != "direct"
            rows.append([
                *head, mode, *figures(s),
                fmt(s["daphne_cpu_ms_per_token"], 3) if relay else "",
                fmt(s["daphne_peak_rss_mib"]) if relay else "",
                fmt(s["client_cpu_ms_per_token"], 3),
            ])  # fmt: skip
        if "bare_ratio" in cell:
            bare, product = cell["bare_ratio"], cell["relay_bare_ratio"]
            rows.append([*head, "bare/dir", *ratio_figures(bare), "", "", ""])
            rows.append([*head, "bare +ms", *added_figures(bare), "", "", ""])
            rows.append([*head, "relay/bare", *ratio_figures(product),
                         fmt(product["daphne_cpu_ms_per_token"], 2), "", ""])  # fmt: skip
        rows.append([*head, "ratio", *ratio_figures(cell["ratio"]), "", "", ""])
        rows.append([*head, "+ms", *added_figures(cell["ratio"]), "", "", ""])
    return "\n".join(render(COLUMNS, rows) + cell_notes(cells))


def cell_notes(cells: list[dict[str, Any]]) -> list[str]:
    notes = [f"NOTE {note}" for cell in cells for note in cell.get("notes", ())]
    notes += [
        f"NOTE c={cell['concurrency']} memory={'on' if cell['memory'] else 'off'}: "
        f"{cell['aborted']}; fewer rounds than asked"
        for cell in cells
        if cell.get("aborted")
    ]
    return notes


def scale_ratios(cell: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each relay mode against direct in the same cell, and two processes against one."""
    out = {}
    relays = [mode for mode in cell["modes"] if mode != "direct"]
    for mode in relays:
        out[f"{mode}/direct"] = ratios(cell["direct"], cell[mode])
    if "relay-1p" in relays and "relay-2p-lb" in relays:
        one, two = cell["relay-1p"], cell["relay-2p-lb"]
        r = ratios(one, two)
        r["daphne_cpu_ms_per_token"] = ratio(
            two["daphne_cpu_ms_per_token"], one["daphne_cpu_ms_per_token"]
        )
        out["relay-2p-lb/relay-1p"] = r
    return out


def scale_table(cells: list[dict[str, Any]]) -> str:
    rows = []
    for cell in cells:
        head = [str(cell["concurrency"]), "on" if cell["memory"] else "off"]
        for mode in cell["modes"]:
            s = cell[mode]
            relay = mode != "direct"
            rows.append([
                *head, mode, *figures(s),
                fmt(s["daphne_cpu_ms_per_token"], 3) if relay else "",
                fmt(s["daphne_peak_rss_mib"]) if relay else "",
                fmt(s["daphne_peak_rss_sum_mib"]) if relay else "",
                fmt(s.get("balancer_cpu_ms_per_token"), 3) if "balancer_cpu_s" in s else "",
            ])  # fmt: skip
        for name, r in cell["ratios"].items():
            mode, _, base = name.partition("/")
            label = f"{SCALE_SHORT[mode]}/{SCALE_SHORT[base]}"
            cpu = fmt(r.get("daphne_cpu_ms_per_token"), 2) if "daphne_cpu_ms_per_token" in r else ""
            rows.append([*head, label, *ratio_figures(r), cpu, "", "", ""])
        for name, r in cell["ratios"].items():
            mode, _, base = name.partition("/")
            if base == "direct":
                rows.append([*head, f"{SCALE_SHORT[mode]} +ms", *added_figures(r), "", "", "", ""])
    return "\n".join(render(SCALE_COLUMNS, rows) + cell_notes(cells))


def wakeup_cpu_us(*, pause_s: float, wakeups: int = 100) -> dict[str, float]:
    """The CPU an event loop (uvloop, as daphne's) spends a wakeup on this machine when it sleeps
    `pause_s` between wakeups (one token at a time at low concurrency), and back to back: what
    every process pays per token before doing any work."""

    async def wake(pause: float) -> None:
        for _ in range(wakeups):
            await asyncio.sleep(pause)

    costs = {}
    for name, pause in (("sleeping", pause_s), ("back_to_back", 0.0)):
        before = time.process_time()
        event_loop_runner()(wake(pause))
        costs[name] = round((time.process_time() - before) * 1e6 / wakeups, 1)
    return costs


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
            timeout=10,
        )  # fmt: skip
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
            capture_output=True, text=True, timeout=10,
        )  # fmt: skip
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


# Main.


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.relay", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "--short",
        action="store_true",
        help="CI mode: concurrency 10, 2 round pairs, results in short.json "
        "(the scale-out rows too, at concurrency 10)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50, 100, 200])
    parser.add_argument("--memory", choices=["off", "on", "both"], default="both")
    parser.add_argument(
        "--rounds",
        type=int,
        # At 100 and more chats the ratios moved by a third between runs of three pairs.
        default=5,
        help="round pairs (one direct and one relay round each) per cell; in the scale-out "
        "cells, passes of one round per mode",
    )
    parser.add_argument(
        "--min-replies",
        type=int,
        default=10,
        help="at low concurrency each user sends several messages per round "
        "so that a round has at least this many replies",
    )
    parser.add_argument(
        "--reply-tokens", type=int, default=40, help=f"tokens per reply (at least {BASE_TOKENS})"
    )
    parser.add_argument(
        "--delay-ms", type=float, default=20.0, help="the echo model's delay before each token"
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=256,
        help="the backend's concurrent runs (at least the top concurrency)",
    )
    parser.add_argument(
        "--rate-limit",
        type=int,
        default=1_000_000,
        help="CHAT_RATE_LIMIT for the benchmark's daphne (still checked)",
    )
    parser.add_argument(
        "--bare",
        action="store_true",
        help="a third mode in the main cells: a bare relay (bench/bare.py: the same daphne and "
        "backend client, none of the product), the floor under the relay's figures",
    )
    parser.add_argument(
        "--signed-in",
        action="store_true",
        help="the relay's users in the main cells are signed-in accounts, each on a session of "
        "its own (default: anonymous visitors)",
    )
    parser.add_argument("--pause", type=float, default=0.5, help="seconds between rounds")
    parser.add_argument("--reply-timeout", type=float, default=60.0)
    parser.add_argument(
        "--max-minutes", type=float, default=45.0, help="stop starting rounds after this long"
    )
    scale = parser.add_argument_group(
        "scale-out rows (issue 8)",
        "direct, relay-1p (one daphne) and relay-2p-lb (two daphne processes behind a local "
        "HAProxy on one port), all on a fresh PostgreSQL database and Redis channel layer on "
        "127.0.0.1; skipped with a message when PostgreSQL, Redis or haproxy is missing",
    )
    scale.add_argument(
        "--scale",
        choices=["on", "off", "only"],
        default="on",
        help="run the scale-out rows after the others (on), not at all, or only them",
    )
    scale.add_argument("--scale-concurrency", type=int, nargs="+", default=[100, 200])
    scale.add_argument(
        "--scale-memory",
        choices=["off", "on", "both"],
        default="off",
        help="memory settings of the scale-out cells (default off, to keep the run short)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help="results JSON (default bench/results/latest.json, short.json)",
    )
    parser.add_argument(
        "--keep-workdir",
        action="store_true",
        help="keep the temporary directory with the database and server logs",
    )
    args = parser.parse_args(argv)  # fmt: skip
    if args.short:
        args.concurrency = [10]
        args.scale_concurrency = [10]
        args.rounds = min(args.rounds, 2)
    if args.reply_tokens < BASE_TOKENS:
        parser.error(f"--reply-tokens must be at least {BASE_TOKENS}")
    if min(args.concurrency + args.scale_concurrency) < 1 or args.rounds < 1:
        parser.error("concurrency and rounds must be at least 1")
    if args.min_replies < 1:
        parser.error("min-replies must be at least 1")
    top = max(args.scale_concurrency if args.scale == "only" else args.concurrency)
    if args.scale == "on":
        top = max(top, *args.scale_concurrency)
    if args.jobs < top:
        parser.error("--jobs must be at least the top concurrency")
    if args.out is None:
        args.out = RESULTS_DIR / ("short.json" if args.short else "latest.json")
    args.secret_key = secrets.token_urlsafe(50)
    return args


MEMORIES = {"off": [False], "on": [True], "both": [False, True]}


async def run_cells(
    *,
    concurrencies: list[int],
    memories: list[bool],
    targets: list[Target],
    backend: EmbeddedBackend,
    backend_pids: list[int],
    args: argparse.Namespace,
    deadline: float,
    label: str = "",
) -> list[dict[str, Any]]:
    cells = []
    for concurrency in concurrencies:
        for memory in memories:
            if time.monotonic() > deadline:
                log(f"time limit reached: {label}c={concurrency} memory={memory} not run")
                continue
            cells.append(
                await run_cell(
                    concurrency=concurrency,
                    memory=memory,
                    targets=targets,
                    backend=backend,
                    backend_pids=backend_pids,
                    args=args,
                    deadline=deadline,
                    label=label,
                )
            )
    return cells


def event_loop_runner() -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_main_rows(
    args: argparse.Namespace,
    *,
    backend: EmbeddedBackend,
    backend_pids: list[int],
    workdir: Path,
    deadline: float,
    cleanup: contextlib.ExitStack,
) -> list[dict[str, Any]]:
    """direct against relay, one daphne on a fresh SQLite file and the in-memory layer."""
    env = site_env(
        args, database_url=f"sqlite:///{workdir / 'bench.sqlite3'}", backend_url=backend.url
    )
    migrate(env)
    daphne = daphne_spawn(env, name="daphne", workdir=workdir)
    cleanup.callback(daphne_stop, daphne)
    daphne_wait(daphne)
    log(f"daphne {daphne.origin} (pid {daphne.pid})")
    pids = (daphne.pid,)
    cookies = signed_in_cookies(env, count=max(args.concurrency)) if args.signed_in else ()
    targets = [
        Target("direct", relay=False, daphne_pids=pids),
        Target("relay", relay=True, ws_url=daphne.ws_url, origin=daphne.origin, daphne_pids=pids,
               cookies=cookies),
    ]  # fmt: skip
    if args.bare:
        bare = daphne_spawn(env, name="daphne-bare", workdir=workdir, application=BARE_APP)
        cleanup.callback(daphne_stop, bare)
        daphne_wait(bare)
        log(f"bare relay {bare.origin} (pid {bare.pid})")
        targets.insert(
            1,
            Target("bare", relay=True, ws_url=bare.ws_url, origin=bare.origin,
                   daphne_pids=(bare.pid,)),
        )  # fmt: skip
    try:
        cells = event_loop_runner()(
            run_cells(
                concurrencies=args.concurrency,
                memories=MEMORIES[args.memory],
                targets=targets,
                backend=backend,
                backend_pids=backend_pids,
                args=args,
                deadline=deadline,
            )
        )
    finally:
        daphne_stop(daphne)  # not beside the scale-out rows' processes
    for cell in cells:
        cell["ratio"] = ratios(cell["direct"], cell["relay"])
        if "bare" in cell:
            bare, relay = cell["bare"], cell["relay"]
            cell["bare_ratio"] = ratios(cell["direct"], bare)
            # The product's own share, daphne's CPU a token among it.
            cell["relay_bare_ratio"] = ratios(bare, relay)
            cell["relay_bare_ratio"]["daphne_cpu_ms_per_token"] = ratio(
                relay["daphne_cpu_ms_per_token"], bare["daphne_cpu_ms_per_token"]
            )
        del cell["modes"]
    return cells


def run_scale_rows(
    args: argparse.Namespace,
    *,
    backend: EmbeddedBackend,
    backend_pids: list[int],
    workdir: Path,
    deadline: float,
    cleanup: contextlib.ExitStack,
    scale: dict[str, Any],
) -> list[dict[str, Any]]:
    """direct, one daphne, and two daphne processes behind HAProxy: PostgreSQL and Redis."""
    from bench import scale as engines

    why = engines.engines_unavailable()
    if why:
        scale["skipped"] = f"{why}: the scale-out rows need PostgreSQL and Redis"
        log(f"SKIPPED the scale-out rows: {scale['skipped']}")
        return []
    database = engines.Database().create()
    cleanup.callback(quietly, database.drop)
    redis_url = engines.REDIS
    scale["database"] = f"postgresql (fresh database {database.name})"
    scale["channel_layer"] = f"redis ({redis_url})"
    log(f"scale-out rows: PostgreSQL database {database.name}, REDIS_URL {redis_url}")
    env = site_env(args, database_url=database.url, backend_url=backend.url, REDIS_URL=redis_url)
    migrate(env)
    balanced = engines.haproxy_binary() is not None
    names = ["daphne-1p", "daphne-2p-a", "daphne-2p-b"] if balanced else ["daphne-1p"]
    daphnes = []
    for name in names:
        daphne = daphne_spawn(env, name=name, workdir=workdir)
        cleanup.callback(daphne_stop, daphne)
        daphnes.append(daphne)
    for daphne in daphnes:
        daphne_wait(daphne)
    single = daphnes[0]
    targets = [
        Target("direct", relay=False, daphne_pids=tuple(d.pid for d in daphnes)),
        Target(
            "relay-1p", relay=True, ws_url=single.ws_url, origin=single.origin,
            daphne_pids=(single.pid,),
        ),
    ]  # fmt: skip
    if balanced:
        pair = daphnes[1:]
        haproxy = engines.HAProxy(port=free_port(), servers=[d.port for d in pair], workdir=workdir)
        cleanup.callback(haproxy.stop)
        try:
            haproxy.start()
        except RuntimeError as exc:
            raise HarnessError(str(exc)) from exc
        origin = f"http://{HOST}:{haproxy.port}"
        healthy(origin)
        assert haproxy.pid is not None
        targets.append(
            Target(
                "relay-2p-lb", relay=True, ws_url=f"ws://{HOST}:{haproxy.port}/ws/chat/",
                origin=origin, daphne_pids=tuple(d.pid for d in pair),
                balancer_pids=(haproxy.pid,),
            )
        )  # fmt: skip
        scale["balancer"] = f"haproxy ({haproxy.binary}), balance leastconn, nbthread 1"
        log(f"relay-1p: daphne {single.origin} (pid {single.pid}); relay-2p-lb: haproxy "
            f"{origin} (pid {haproxy.pid}) over {', '.join(d.origin for d in pair)} "
            f"(pids {', '.join(str(d.pid) for d in pair)})")  # fmt: skip
    else:
        reason = f"haproxy is not installed (Debian: `{engines.HAPROXY_INSTALL}`)"
        scale["skipped_rows"] = {"relay-2p-lb": reason}
        log(f"SKIPPED the relay-2p-lb row: {reason}")
    cells = event_loop_runner()(
        run_cells(
            concurrencies=args.scale_concurrency,
            memories=MEMORIES[args.scale_memory],
            targets=targets,
            backend=backend,
            backend_pids=backend_pids,
            args=args,
            deadline=deadline,
            label="scale-out ",
        )
    )
    for cell in cells:
        cell["ratios"] = scale_ratios(cell)
    return cells


SERVER_ERROR = re.compile(
    r"ERROR \S+ (Exception inside application: .{0,160}|Task exception was never retrieved)"
    r"|(channels over capacity)"
)


def server_errors(workdir: Path, *, top: int = 3) -> list[str]:
    """The commonest errors in the servers' logs, to say why a mode failed."""
    hints = []
    for path in sorted(workdir.glob("*.log")):
        counts: dict[str, int] = {}
        with contextlib.suppress(OSError), open(path, errors="replace") as lines:
            for line in lines:
                found = SERVER_ERROR.search(line)
                if found:
                    message = found.group(1) or f"channel layer: {found.group(2)}"
                    counts[message] = counts.get(message, 0) + 1
        for message, count in sorted(counts.items(), key=lambda item: -item[1])[:top]:
            hints.append(f"{path.name}: {count} x {message}")
    return hints


def quietly(action: Any) -> None:
    try:
        action()
    except Exception as exc:  # cleanup goes on; say what was left behind
        log(f"cleanup: {getattr(action, '__qualname__', action)} failed: {exc}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    command = "python -m bench.relay " + " ".join(sys.argv[1:] if argv is None else argv)
    workdir = Path(tempfile.mkdtemp(prefix="chatsite-bench-"))
    started_at = datetime.now(UTC)
    deadline = time.monotonic() + args.max_minutes * 60
    # Other work on the machine skews both modes; the alternation cancels drift, not noise.
    load_start = [round(x, 2) for x in os.getloadavg()]
    wakeup = wakeup_cpu_us(pause_s=args.delay_ms / 1000)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    cells: list[dict[str, Any]] = []
    scale_cells: list[dict[str, Any]] = []
    scale: dict[str, Any] = {
        "concurrency": args.scale_concurrency,
        "memory": args.scale_memory,
        "modes": list(SCALE_MODES),
    }
    failure = ""
    log(f"starting the backend (work directory {workdir})")
    try:
        with contextlib.ExitStack() as cleanup:
            try:
                backend = backend_start(args, workdir)
            except HarnessError as exc:
                log(f"could not start the backend: {exc}")
                shutil.rmtree(workdir, ignore_errors=True)
                return 2
            cleanup.callback(backend.stop)
            assert backend.process is not None
            backend_pids = proc_tree_pids(backend.process.pid)
            log(f"backend {backend.url} (pid {backend.process.pid})")
            common = {
                "backend": backend, "backend_pids": backend_pids, "workdir": workdir,
                "deadline": deadline, "cleanup": cleanup,
            }  # fmt: skip
            try:
                if args.scale != "only":
                    cells = run_main_rows(args, **common)
                if args.scale != "off":
                    if time.monotonic() > deadline:
                        scale["skipped"] = "the run's time limit was reached"
                    else:
                        scale_cells = run_scale_rows(args, scale=scale, **common)
            except HarnessError as exc:
                failure = str(exc)
    except KeyboardInterrupt:
        failure = "interrupted"
    if args.scale == "off":
        scale["skipped"] = "--scale off"
    scale["cells"] = scale_cells
    summaries = [
        (f"{label}c={cell['concurrency']} memory={cell['memory']} {mode}", cell[mode])
        for label, group, modes in (("", cells, MODES), ("scale-out ", scale_cells, None))
        for cell in group
        for mode in modes or cell["modes"]
        if mode in cell
    ]
    broken = [name for name, summary in summaries if summary["completed"] == 0]
    # Why replies failed, from the servers' own logs.
    hints = []
    if failure or any(summary["errors"] for _, summary in summaries):
        hints = server_errors(workdir)
        for hint in hints:
            log(f"server log: {hint}")
    if failure or broken or args.keep_workdir:
        log(f"server logs kept in {workdir}")
    else:
        shutil.rmtree(workdir, ignore_errors=True)
    meta = {
        "command": command,
        "load_average_start": load_start,
        "load_average_end": [round(x, 2) for x in os.getloadavg()],
        "started_at": started_at.isoformat(timespec="seconds"),
        "duration_s": round((datetime.now(UTC) - started_at).total_seconds(), 1),
        "revision": git_revision(),
        "machine": {
            "cpus": os.cpu_count(),
            "wakeup_cpu_us": wakeup,
            "python": platform.python_version(),
            "platform": platform.platform(),
        },
        "settings": {
            "reply_tokens": args.reply_tokens,
            "delay_ms": args.delay_ms,
            "rounds": args.rounds,
            "min_replies": args.min_replies,
            "backend_jobs": args.jobs,
            "rate_limit": args.rate_limit,
            "channel_layer": "redis" if os.environ.get("REDIS_URL") else "in-memory",
            "database": "sqlite (fresh file)",
            "django_debug": False,
            "relay_users": "signed-in accounts" if args.signed_in else "anonymous visitors",
        },
        "failure": failure,
        "broken": broken,
        "server_errors": hints,
    }
    header = (
        f"{command}\n{meta['started_at']}  revision {meta['revision']}  "
        f"{args.reply_tokens} tokens a reply, {args.delay_ms:g} ms a token, "
        f"{args.rounds} round pairs a cell, {os.cpu_count()} CPUs, "
        f"load average {load_start[0]:.2f} before and {meta['load_average_end'][0]:.2f} after\n"
        f"an event loop woken every {args.delay_ms:g} ms costs {wakeup['sleeping']:g} µs CPU a "
        f"wakeup here ({wakeup['back_to_back']:g} µs back to back), before any work\n"
        "times in ms; tok-lat = token arrival minus its emission stamp; ratio = relay/direct; "
        "+ms = relay minus direct; clients = the simulated users' own CPU (direct: their SSE "
        "reading)"
    )
    if args.bare:
        header += (
            "\nbare = a bare relay (bench/bare.py: the same daphne and backend client, none of the "
            "product); bare/dir and relay/bare are ratios as ratio is; relay/bare's CPU column "
            "is the ratio of daphne's CPU a token"
        )
    if args.signed_in:
        header += "\nthe relay's users are signed-in accounts, each on a session of its own"
    parts = [header]
    if args.scale != "only":
        parts.append(table(cells) if cells else "(no cell completed)")
    parts.append(scale_text(args, scale))
    text = "\n".join(parts)
    print(text, flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_bytes(
        orjson.dumps(
            {"meta": meta, "cells": cells, "scale": scale}, option=orjson.OPT_INDENT_2
        ) + b"\n"
    )  # fmt: skip
    args.out.with_suffix(".txt").write_text(f"{text}\n")
    log(f"results written to {args.out} and {args.out.with_suffix('.txt')}")
    if failure:
        log(f"FAILED: {failure}")
        return 1
    if broken:
        log(f"FAILED: no reply completed in {', '.join(broken)}")
        return 1
    return 0


def scale_text(args: argparse.Namespace, scale: dict[str, Any]) -> str:
    if args.scale == "off":
        return "\nScale-out rows not run (--scale off)."
    memory = {"off": "memory off only", "on": "memory on only", "both": "memory off and on"}
    lines = [
        "",
        "Scale-out (issue 8): the same direct rounds against relay-1p = one daphne, and "
        "relay-2p-lb = two daphne processes behind a local HAProxy on one port, all three on one "
        f"fresh PostgreSQL database and one Redis channel layer; {memory[args.scale_memory]}, "
        f"{args.rounds} passes (one round per mode each, order alternating) a cell.",
        "daphne CPU/tok sums the relay's processes; peak RSS: the largest process's and the "
        "sum of the processes' peaks; lb = HAProxy's own CPU; 2p-lb/1p = two processes "
        "against one (CPU column: the ratio of CPU per token).",
    ]
    if scale.get("skipped"):
        lines.append(f"SKIPPED: {scale['skipped']}")
    for mode, reason in scale.get("skipped_rows", {}).items():
        lines.append(f"SKIPPED the {mode} row: {reason}")
    if scale.get("cells"):
        lines.append(scale_table(scale["cells"]))
    elif not scale.get("skipped"):
        lines.append("(no scale-out cell completed)")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
