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
import contextlib
import copy
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import ModuleType, SimpleNamespace
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


def store_fill(store: dict, *, stored: int) -> list[dict]:
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
    store["threads"] = threads
    return runs


async def burst_start_ms(store: dict, next_run: Any, runs: list, *, per_look: int) -> float:
    store["runs"] = copy.deepcopy(runs)
    started = time.thread_time()
    found = 0
    for _ in range(BURST // per_look):
        found += len([run async for run, _attempt in next_run(wait=False, limit=per_look)])
    spent = (time.thread_time() - started) * 1000
    if found != BURST:
        raise RuntimeError(f"{found} of {BURST} runs started")
    return spent


async def burst_lookups_ms(ops: ModuleType, store: dict, get: Any, runs: list) -> float:
    store["runs"] = runs
    connection = ops.InMemConnectionProto()
    started = time.thread_time()
    for run in runs[-BURST:]:
        found = [
            run async for run in await get(connection, run["run_id"], thread_id=run["thread_id"])
        ]
        if len(found) != 1:
            raise RuntimeError(f"run {run['run_id']} not found")
    return (time.thread_time() - started) * 1000


@contextlib.contextmanager
def runtime_both() -> Iterator[SimpleNamespace]:
    """The runtime in this process (`runtime_import`) patched as `agent.server` patches it, with
    its own `Runs.next` and `Runs.get` (`own`) beside the patched ones (`patched`), on an empty
    store and retry counter of its own; on exit the runtime's functions, store and counter are
    put back as they were."""
    from agent.server import patch_queue_wakeup

    ops, database = runtime_import()
    if getattr(ops.Runs, "_chatsite_wakeup", False):
        raise RuntimeError("the runtime is already patched in this process")
    store, counter = database.GLOBAL_STORE, database.GLOBAL_RETRY_COUNTER
    saved_functions = {name: ops.Runs.__dict__[name] for name in ("put", "next", "get")}
    saved_store = {key: store.get(key) for key in ("runs", "threads")}
    saved_counters = counter._counters
    own = {"next": ops.Runs.next, "get": ops.Runs.get}
    try:
        if not patch_queue_wakeup():
            raise RuntimeError("langgraph-runtime-inmem is not a version the patch was tested with")
        store.update(runs=[], threads=[])
        counter._counters = Counter()
        yield SimpleNamespace(
            ops=ops, store=store, counter=counter, own=own,
            patched={"next": ops.Runs.next, "get": ops.Runs.get},
        )  # fmt: skip
    finally:
        for name, value in saved_functions.items():
            setattr(ops.Runs, name, value)
        ops.Runs._chatsite_wakeup = False
        store.update(saved_store)
        counter._counters = saved_counters


async def measure(stored_counts: list[int]) -> list[dict[str, Any]]:
    rows = []
    with runtime_both() as runtime:
        ops, store = runtime.ops, runtime.store
        for stored in stored_counts:
            runs = store_fill(store, stored=stored)
            for name, code in (("runtime", runtime.own), ("patched", runtime.patched)):
                start, lookup = code["next"], code["get"]
                rows.append(
                    {
                        "stored": stored,
                        "code": name,
                        "one_look_ms": await burst_start_ms(store, start, runs, per_look=BURST),
                        "look_a_run_ms": await burst_start_ms(store, start, runs, per_look=1),
                        "lookups_ms": await burst_lookups_ms(ops, store, lookup, runs),
                    }
                )
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
