"""How long the embedded backend holds its clients while it writes its store.

`langgraph dev` writes its whole store (every thread's checkpoints, each holding the conversation
so far) to `.langgraph_api/` every 10 s, changed or not. `python -m bench.pauses` fills an
embedded backend's store with remembered conversations (`--threads` of `--exchanges` each, the
echo model padding every reply to about `--reply-words` words), then restarts the backend on that
store, once with the runtime's own writes (pickled in the server, `AGENT_FORKED_STORE_WRITES=0`)
and once with `agent.server`'s forked ones, and each time asks its health check every 5 ms for
`--seconds` while it is otherwise idle (a thread's metadata changes once a second, so that there
is something to write): every answer that took long is the server held. It prints the
store's size on disk, the answers' times (p50, p99, the longest, and how many took over 50 ms),
the server's memory, and the most memory a forked copy made its own while it wrote (the pages it
touched, copied from the server's).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from agent.server import STORE_WRITE_SECONDS, EmbeddedBackend
from bench.relay import percentile, proc_status_kib

SLOW_MS = 50.0
PROBE_EVERY_S = 0.005


async def store_fill(url: str, *, threads: int, exchanges: int) -> None:
    """`threads` conversations at once, each of `exchanges` remembered replies in turn."""
    limits = httpx.Limits(max_connections=threads)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:

        async def conversation(index: int) -> None:
            response = await client.post("/threads", json={"metadata": {"bench": "pauses"}})
            response.raise_for_status()
            thread_id = response.json()["thread_id"]
            for turn in range(exchanges):
                message = {"role": "user", "content": f"conversation {index}, message {turn}"}
                run = {"assistant_id": "agent", "input": {"messages": [message]}}
                answer = await client.post(f"/threads/{thread_id}/runs/wait", json=run)
                answer.raise_for_status()

        await asyncio.gather(*(conversation(index) for index in range(threads)))


def store_size_mb(data_dir: Path) -> float:
    return sum(p.stat().st_size for p in (data_dir / ".langgraph_api").glob("*.pckl")) / 1e6


def copies_private_mib(pid: int) -> float:
    """The memory that the children of `pid` (a forked copy writing the store) have made their
    own so far: the pages they wrote to, copied from the server's."""
    total_kib = 0
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            children = (task / "children").read_text().split()
        except OSError:
            continue
        for child in children:
            try:
                rollup = Path(f"/proc/{child}/smaps_rollup").read_text()
            except OSError:
                continue
            for line in rollup.splitlines():
                if line.startswith(("Private_Dirty:", "Private_Clean:")):
                    total_kib += int(line.split()[1])
    return total_kib / 1024


def probe(url: str, *, pid: int, seconds: float, store: Path) -> tuple[list[float], int, float]:
    """The health check's answer times, in ms, asked every PROBE_EVERY_S for `seconds`; how many
    times `store` was written meanwhile; and the most memory a copy writing it took (MiB).

    Once a second a thread's metadata changes (not timed): a store unchanged since its last
    write is not written again from a forked copy, and the runs of a chat would hold the server
    themselves."""
    times, writes, copy_mib = [], set(), 0.0
    with httpx.Client(base_url=url, timeout=30) as client:
        thread = client.post("/threads", json={"metadata": {"bench": "pauses"}})
        thread_path = f"/threads/{thread.raise_for_status().json()['thread_id']}"
        first = store.stat().st_mtime_ns
        end = time.monotonic() + seconds
        changed_at = 0.0
        while time.monotonic() < end:
            if time.monotonic() - changed_at >= 1:
                changed_at = time.monotonic()
                patch = {"metadata": {"probe": changed_at}}
                client.patch(thread_path, json=patch).raise_for_status()
            started = time.perf_counter()
            client.get("/ok").raise_for_status()
            times.append((time.perf_counter() - started) * 1000)
            writes.add(store.stat().st_mtime_ns)
            copy_mib = max(copy_mib, copies_private_mib(pid))
            time.sleep(PROBE_EVERY_S)
    return times, len(writes - {first}), copy_mib


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.pauses", description=__doc__)
    parser.add_argument("--threads", type=int, default=20)
    parser.add_argument("--exchanges", type=int, default=50)
    parser.add_argument("--reply-words", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=3 * STORE_WRITE_SECONDS + 1)
    args = parser.parse_args(argv)
    env = {"AGENT_ECHO_EXTRA_TOKENS": str(args.reply_words)}
    with tempfile.TemporaryDirectory(prefix="bench-pauses-") as scratch:
        data_dir = Path(scratch)
        ops_store = data_dir / ".langgraph_api" / ".langgraph_ops.pckl"
        with EmbeddedBackend(env=env, data_dir=data_dir, log_path=data_dir / "fill.log") as b:
            started = time.monotonic()
            asyncio.run(store_fill(b.url, threads=args.threads, exchanges=args.exchanges))
            filled_in = time.monotonic() - started
        print(
            f"{args.threads} conversations of {args.exchanges} exchanges, replies of about "
            f"{args.reply_words} words, made in {filled_in:.0f} s: a store of "
            f"{store_size_mb(data_dir):.1f} MB on disk; the health check asked every "
            f"{PROBE_EVERY_S * 1000:.0f} ms for {args.seconds:.0f} s, the store written every "
            f"{STORE_WRITE_SECONDS:.0f} s"
        )
        print(f"{'store written':>14} {'writes':>7} {'answers':>8} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'max ms':>8} {'>' + str(int(SLOW_MS)) + ' ms':>8} {'server MiB':>10} "
              f"{'copy MiB':>9}")  # fmt: skip
        for name, forked in (("in the server", "0"), ("forked", "1")):
            log_path = data_dir / f"probe-{forked}.log"
            backend_env = {**env, "AGENT_FORKED_STORE_WRITES": forked}
            with EmbeddedBackend(env=backend_env, data_dir=data_dir, log_path=log_path) as b:
                time.sleep(2)  # past the start's own work
                pid = b.process.pid
                times, writes, copy_mib = probe(
                    b.url, pid=pid, seconds=args.seconds, store=ops_store
                )
                server_mib = proc_status_kib(pid, "VmRSS") / 1024
            slow = sum(t > SLOW_MS for t in times)
            print(
                f"{name:>14} {writes:>7} {len(times):>8} {percentile(times, 50):>8.1f} "
                f"{percentile(times, 99):>8.1f} {max(times):>8.1f} {slow:>8} "
                f"{server_mib:>10.0f} {copy_mib:>9.0f}"
            )


if __name__ == "__main__":
    main()
