"""What the embedded backend's patched run queue saves, timed in process.

`langgraph dev`'s in-memory runtime keeps every run of every thread in one list, and compares
run and thread ids (`uuid.UUID`, whose `==` is Python code) along it: its look for pending runs
walks the list once and twice more for each run it finds, and a stream looks its run up from the
oldest stored run. `agent.server.patch_queue_wakeup` replaces those two with one walk a look and
a lookup from the newest run. `python -m bench.walks` fills a store with finished runs, adds a
burst of 100 pending runs on threads of their own, and prints the backend CPU (this thread's
clock) that the runtime's own code and the patched code take to start the burst, found in one
look or one run a look, and to look each of its runs up once. The rest of the runtime's walks
(creating a run, finishing one) are not patched and not timed here.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import os
import tempfile
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from types import ModuleType
from typing import Any
from uuid import uuid4

BURST = 100

# What `langgraph dev` sets before the API's configuration is read (at import); file
# persistence off, so that nothing here ever writes a store.
RUNTIME_ENV = {
    "LANGGRAPH_DISABLE_FILE_PERSISTENCE": "true",
    "REDIS_URI": "fake",
    "DATABASE_URI": ":memory:",
    "MIGRATIONS_PATH": "__inmem",
    "LANGGRAPH_RUNTIME_EDITION": "inmem",
}


def runtime_import() -> tuple[ModuleType, ModuleType]:
    """`langgraph_runtime_inmem`'s `ops` and `database`, imported in this process as `langgraph
    dev` would: in a scratch working directory (importing it makes `.langgraph_api/` there),
    with `langgraph dev`'s environment set only meanwhile, so that no program this process starts
    later inherits it (an embedded backend with its file persistence off keeps no memory)."""
    here, before = os.getcwd(), {name: os.environ.get(name) for name in RUNTIME_ENV}
    os.environ.update(RUNTIME_ENV)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-walks-") as scratch:
            os.chdir(scratch)
            from langgraph_api.auth import custom  # noqa: F401  (what the runtime reads later)
            from langgraph_runtime_inmem import _persistence, database, ops
    finally:
        os.chdir(here)
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
    if not _persistence.DISABLE_FILE_PERSISTENCE:
        raise RuntimeError("the runtime was imported with its file persistence on")
    return ops, database


def store_fill(database: ModuleType, *, stored: int) -> tuple[list[dict], list[dict]]:
    """`stored` finished runs, ten to a thread, and a burst of pending runs a thread each."""
    created = datetime.now(UTC) - timedelta(seconds=10)
    threads = [{"thread_id": uuid4()} for _ in range(max(stored // 10, 1) + BURST)]
    runs = [
        {
            "run_id": uuid4(),
            "thread_id": threads[index % (len(threads) - BURST)]["thread_id"],
            "status": "success",
            "created_at": created,
        }
        for index in range(stored)
    ]
    runs += [
        {"run_id": uuid4(), "thread_id": thread["thread_id"], "status": "pending",
         "created_at": created}
        for thread in threads[-BURST:]
    ]  # fmt: skip
    database.GLOBAL_STORE["threads"] = threads
    database.GLOBAL_RETRY_COUNTER._counters = Counter()
    return runs, threads


async def burst_start_ms(
    database: ModuleType, next_run: Any, runs: list, *, per_look: int
) -> float:
    database.GLOBAL_STORE["runs"] = copy.deepcopy(runs)
    started = time.thread_time()
    found = 0
    for _ in range(BURST // per_look):
        found += len([run async for run, _attempt in next_run(wait=False, limit=per_look)])
    spent = (time.thread_time() - started) * 1000
    if found != BURST:
        raise RuntimeError(f"{found} of {BURST} runs started")
    return spent


async def burst_lookups_ms(ops: ModuleType, database: ModuleType, get: Any, runs: list) -> float:
    database.GLOBAL_STORE["runs"] = runs
    connection = ops.InMemConnectionProto()
    started = time.thread_time()
    for run in runs[-BURST:]:
        found = [
            run async for run in await get(connection, run["run_id"], thread_id=run["thread_id"])
        ]
        if len(found) != 1:
            raise RuntimeError(f"run {run['run_id']} not found")
    return (time.thread_time() - started) * 1000


async def measure(stored_counts: list[int]) -> list[dict[str, Any]]:
    from agent.server import patch_queue_wakeup

    ops, database = runtime_import()
    if getattr(ops.Runs, "_chatsite_wakeup", False):
        raise RuntimeError("measure before the runtime is patched in this process")
    versions = {"runtime": {"next": ops.Runs.next, "get": ops.Runs.get}}
    saved = {name: ops.Runs.__dict__[name] for name in ("put", "next", "get")}
    saved_store = {key: database.GLOBAL_STORE.get(key) for key in ("runs", "threads")}
    saved_counters = database.GLOBAL_RETRY_COUNTER._counters
    if not patch_queue_wakeup():
        raise RuntimeError("langgraph-runtime-inmem is not a version the patch was tested with")
    versions["patched"] = {"next": ops.Runs.next, "get": ops.Runs.get}
    rows = []
    try:
        for stored in stored_counts:
            runs, _threads = store_fill(database, stored=stored)
            for name, code in versions.items():
                start, lookup = code["next"], code["get"]
                rows.append(
                    {
                        "stored": stored,
                        "code": name,
                        "one_look_ms": await burst_start_ms(database, start, runs, per_look=BURST),
                        "look_a_run_ms": await burst_start_ms(database, start, runs, per_look=1),
                        "lookups_ms": await burst_lookups_ms(ops, database, lookup, runs),
                    }
                )
    finally:
        for name, value in saved.items():
            setattr(ops.Runs, name, value)
        ops.Runs._chatsite_wakeup = False
        database.GLOBAL_STORE.update(saved_store)
        database.GLOBAL_RETRY_COUNTER._counters = saved_counters
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    lines = [
        f"backend CPU in ms for a burst of {BURST} runs, by how many finished runs the store holds",
        f"{'stored':>7}  {'code':>8}  {'start, one look':>15}  {'start, a look a run':>19}  "
        f"{'look each up once':>17}",
    ]
    for row in rows:
        lines.append(
            f"{row['stored']:>7}  {row['code']:>8}  {row['one_look_ms']:>15.1f}  "
            f"{row['look_a_run_ms']:>19.1f}  {row['lookups_ms']:>17.1f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stored", type=int, nargs="+", default=[1000, 3000, 10000])
    args = parser.parse_args(argv)
    rows = asyncio.run(measure(args.stored))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
