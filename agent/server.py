"""The embedded run backend: `langgraph dev` serving this repository's `langgraph.json`.

`python -m agent.server --port PORT` runs `langgraph dev` in this process (offline, in memory,
no reload) after one tested patch: the in-memory queue looks for new runs every 500 ms, a fixed
sleep that adds up to half a second to every first token. The patch wakes the queue as soon as
a run is created and keeps the 500 ms poll as the fallback; it also makes the queue's look for
pending runs, and a run's lookup by id, cost one walk over the stored runs or less, where the
runtime's own code walks them all several times (`bench.walks` times both); and the queue
forgets the record of a run 10 s after it ended, so that the walks the runtime still makes
(creating a run, finishing one) stay short however long the server is used. It is applied only
to the versions of `langgraph-runtime-inmem` it was tested with (`PATCHED_RUNTIME_VERSIONS`); on
any other version the server runs unpatched and says so. Once it serves, what it made to start
is frozen out of the garbage collector's full passes (`freeze_once_serving`), which stalled it
70 to 80 ms at a time.

It keeps idle connections open for two minutes instead of uvicorn's 5 s
(`keep_idle_connections`), so that its own clients can keep theirs between bursts. And it writes
its store every 10 s from a forked copy of itself (`patch_store_writes`), where the runtime
pickled the whole store in the server, holding every stream for longer as the store grew.

`EmbeddedBackend` starts that server as a child process on a free port; `make run`, the tests
and the benchmark all use it. The server keeps what it stores (threads, runs, checkpoints) in
`.langgraph_api/` in its working directory, its data directory: `make run`'s is the repository,
where the assistant's memory outlives a restart; any other backend's is by default a temporary
directory of its own (the benchmark's is its work directory), so tests and benchmarks never load
or overwrite `make run`'s store (two servers sharing one lose data: each writes its whole store
over the file, and the last to stop wins).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import pickle
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from importlib import metadata
from pathlib import Path

import httpx
import orjson

ROOT = Path(__file__).resolve().parent.parent
PATCHED_RUNTIME_VERSIONS = frozenset({"0.36.7"})
# Once the startup objects are frozen, a full collection walks what the server made since: its
# runs, threads and checkpoints, which grow with use. Python's default (a young collection every
# 700 allocations, a full one every hundred of those) ran 51 full passes of up to 105 ms in three
# busy benchmark cells, each stalling every streaming run; at 50,000, one.
YOUNG_COLLECTION_ALLOCATIONS = 50_000
# uvicorn closes a connection after 5 s idle, so its clients must let go of one sooner (the
# site's LANGGRAPH_KEEPALIVE_EXPIRY default is 4 s), and after any pause longer than that a
# burst of messages opens every backend connection anew. Such bursts cost this server 0.25 to
# 1.6 s more CPU in the benchmark's 100- and 200-chat rounds than the same requests on open
# connections, and their first tokens came up to 1.8 times as late. This server keeps idle
# connections IDLE_CONNECTION_SECONDS, and its own clients (`make run`'s site, the benchmark's)
# keep them CLIENT_KEEPALIVE_SECONDS, well under it.
IDLE_CONNECTION_SECONDS = 120
CLIENT_KEEPALIVE_SECONDS = 60.0
# The runtime keeps every run's record for good, and walks them all when it creates a run and
# when one ends: with memory on every reply adds one, so the server slowed as it was used (over
# a 200-chat benchmark cell its CPU a round grew from 2.3 to 4.2 s; forgetting, 2.2 to 2.8 s).
# The record of a run that ended is of no use to the site once its stream is over (the thread's
# checkpoints, the assistant's memory, are kept apart from it), so it is forgotten
# FINISHED_RUN_SECONDS after it ended (`AGENT_FINISHED_RUN_SECONDS`). Interrupted runs are kept:
# a cancelled run is marked so before its worker has stopped, and the worker still finds it.
FINISHED_RUN_SECONDS = float(os.environ.get("AGENT_FINISHED_RUN_SECONDS", "10"))
FORGOTTEN_RUN_STATUSES = frozenset({"success", "error", "timeout"})
# `langgraph dev` writes its whole store to `.langgraph_api/` every 10 s (the runtime's interval;
# `AGENT_STORE_WRITE_SECONDS`), changed or not, pickling it while holding the interpreter: every
# thread's checkpoints, each holding the conversation so far, so the server stalled for longer as
# its memory grew (`python -m bench.pauses`: 87 to 96 ms a write with 54 MB on disk, 236 to 250
# with 150). A forked copy of the server writes it instead, on Linux (`AGENT_FORKED_STORE_WRITES=0`
# keeps the runtime's own writes), and only the files whose store changed; the server is held
# only while it forks (6 to 17 ms), and the copy takes about as much memory again as the store
# while it writes.
STORE_WRITE_SECONDS = float(os.environ.get("AGENT_STORE_WRITE_SECONDS", "10"))
STORE_WRITE_TIMEOUT_SECONDS = 120.0
FORKED_STORE_WRITES = sys.platform == "linux" and os.environ.get(
    "AGENT_FORKED_STORE_WRITES", "1"
).strip().lower() not in {"0", "false", "no"}


def client_keepalive_expiry() -> float:
    """How long a client of this server (`make run`'s site, the benchmark's) keeps an idle
    connection: LANGGRAPH_KEEPALIVE_EXPIRY when the environment says, else
    CLIENT_KEEPALIVE_SECONDS."""
    return float(os.environ.get("LANGGRAPH_KEEPALIVE_EXPIRY", CLIENT_KEEPALIVE_SECONDS))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def process_group_stop(process: subprocess.Popen, *, grace: float = 10.0) -> None:
    """SIGTERM to the process group a `start_new_session` child leads; SIGKILL after `grace`."""
    if process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def runtime_is_patchable() -> bool:
    """Whether the installed `langgraph-runtime-inmem` is one this module's patches were tested
    with (`PATCHED_RUNTIME_VERSIONS`)."""
    try:
        return metadata.version("langgraph-runtime-inmem") in PATCHED_RUNTIME_VERSIONS
    except metadata.PackageNotFoundError:
        return False


def patch_queue_wakeup() -> bool:
    """Makes the in-memory queue start a new run at once instead of on its next 500 ms poll,
    and its look for pending runs, and a run's lookup by id, cheap however many runs it stores.

    The runtime keeps every run of every thread in one list (with memory on, every reply is one
    kept for good). Its look for pending runs walks that list once, then twice more for each run
    it finds (its thread, and whether that thread runs another), and a stream looks its run up by
    walking the list from the oldest run, when it starts and after every half second without an
    event: with 3,000 runs stored, starting a burst of 100 runs and looking each up once cost
    the backend 76 to 121 ms of CPU in those walks alone, 0.26 to 0.37 s with 10,000 (patched: 2
    to 34 ms, and 3 to 93; `python -m bench.walks`). Here the look walks the list once and the
    lookup starts from the newest run; what either returns is the same (tests/test_agent.py
    compares them). Every `FINISHED_RUN_SECONDS / 6`, the look first forgets the runs that ended
    more than FINISHED_RUN_SECONDS ago (`finished_runs_forget`)."""
    if not runtime_is_patchable():
        return False
    from langgraph_runtime_inmem import ops

    runs = ops.Runs
    if getattr(runs, "_chatsite_wakeup", False):
        return True
    original_put = runs.put
    # The queue loop and the API handlers may run on different event loops (threads).
    waiter: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Event]] = {}
    lock = threading.Lock()

    def wake() -> None:
        with lock:
            entry = waiter.get("queue")
        if entry is not None:
            loop, event = entry
            with contextlib.suppress(RuntimeError):  # the loop is closing
                loop.call_soon_threadsafe(event.set)

    async def put(*args, **kwargs):
        result = await original_put(*args, **kwargs)
        wake()
        return result

    async def next_run(wait: bool, limit: int = 1):
        if wait:
            loop = asyncio.get_running_loop()
            with lock:
                entry = waiter.get("queue")
                if entry is None or entry[0] is not loop:
                    entry = waiter["queue"] = (loop, asyncio.Event())
            event = entry[1]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 0.5)
            event.clear()
        else:
            await asyncio.sleep(0)
        async for item in pending_runs_start(limit=limit):
            yield item

    forget_at = [0.0]  # when next to forget the runs that ended, on the monotonic clock

    async def pending_runs_start(*, limit: int):
        """`Runs.next(wait=False)` of 0.36.7 in one walk of the runs and one of the threads;
        every so often, the records of runs that ended are forgotten first."""
        now = datetime.now(UTC)
        async with ops.connect() as conn, ops.RUN_LOCK:
            if time.monotonic() >= forget_at[0]:
                forget_at[0] = time.monotonic() + FINISHED_RUN_SECONDS / 6
                finished_runs_forget(
                    conn.store, before=now - timedelta(seconds=FINISHED_RUN_SECONDS)
                )
            pending = []
            busy_threads = set()  # threads with a running run: one run at a time on each
            for run in conn.store["runs"]:
                status = run["status"]
                if status == "pending":
                    if run.get("created_at", now) < now:
                        pending.append(run)
                elif status == "running":
                    busy_threads.add(run["thread_id"])
            if not pending:
                return
            pending.sort(key=lambda run: run.get("created_at", datetime.min))
            candidates = pending[:limit]
            wanted = {run["thread_id"] for run in candidates}
            known_threads = {
                thread["thread_id"]
                for thread in conn.store["threads"]
                if thread["thread_id"] in wanted
            }
            for run in candidates:
                if run["status"] != "pending":
                    continue
                thread_id = run["thread_id"]
                if thread_id not in known_threads:
                    await ops.logger.awarning(
                        "Unexpected missing thread in Runs.next", thread_id=thread_id
                    )
                    continue
                if thread_id in busy_threads:
                    continue
                attempt = await conn.retry_counter.increment(run["run_id"])
                run["status"] = "running"
                busy_threads.add(thread_id)
                yield run, attempt

    async def get(conn, run_id, *, thread_id, ctx=None):
        """`Runs.get` of 0.36.7, walking from the newest run: a run looked up is most often
        one just made."""
        run_id, thread_id = ops._ensure_uuid(run_id), ops._ensure_uuid(thread_id)
        filters = await runs.handle_event(
            ctx, "read", ops.Auth.types.ThreadsRead(thread_id=thread_id)
        )

        async def matching():
            for run in reversed(conn.store["runs"]):
                if run["run_id"] == run_id and run["thread_id"] == thread_id:
                    break
            else:
                return
            if filters and not await ops.Threads._get_with_filters(conn, run["thread_id"], filters):
                return
            yield run

        return matching()

    runs.put = staticmethod(put)
    runs.next = staticmethod(next_run)
    runs.get = staticmethod(get)
    runs._chatsite_wakeup = True
    return True


def finished_runs_forget(store: dict, *, before: datetime) -> int:
    """Drops from the runtime's `store` the records of the runs that ended
    (`FORGOTTEN_RUN_STATUSES`) before `before`, and returns how many. Their threads and
    checkpoints stay. The list is replaced, not edited, as the runtime's own thread deletion
    does."""
    stored = store["runs"]
    kept = [
        run
        for run in stored
        if run["status"] not in FORGOTTEN_RUN_STATUSES or run.get("updated_at", before) >= before
    ]
    if len(kept) < len(stored):
        store["runs"] = kept
    return len(stored) - len(kept)


def patch_store_writes() -> bool:
    """Makes the runtime write its stores every STORE_WRITE_SECONDS and, with
    FORKED_STORE_WRITES, from a forked copy of the server (`stores_write_forked`), where it
    pickled them in the server while holding the interpreter; should the copy fail, the server
    writes them itself, as the runtime did. The last write, when the server stops, stays the
    runtime's own. Applied to the runtime versions the queue patch is
    (`PATCHED_RUNTIME_VERSIONS`); returns whether the writes are forked."""
    if not runtime_is_patchable():
        return False
    from langgraph_runtime_inmem import _persistence

    _persistence._flush_interval = STORE_WRITE_SECONDS
    if not FORKED_STORE_WRITES:
        return False
    if getattr(_persistence, "_chatsite_forked", False):
        return True
    # Python 3.12 warns about any fork of a process with threads; the copy runs no thread's code.
    warnings.filterwarnings(
        "ignore", message=r".*use of fork\(\) may lead to deadlocks", category=DeprecationWarning
    )

    def write_loop(stop_event: threading.Event) -> None:
        """The runtime's `_flush_loop` of 0.36.7, writing from a forked copy."""
        while not stop_event.wait(timeout=_persistence._flush_interval):
            stores = []
            for key, ref in list(_persistence._stores.items()):
                if (store := ref()) is None:
                    _persistence._stores.pop(key, None)
                else:
                    stores.append(store)
            if stores and not stores_write_forked(stores):
                for store in stores:
                    store.sync()

    _persistence._flush_loop = write_loop
    _persistence._chatsite_forked = True
    if _persistence._flush_thread is not None:
        # Started at import, when the runtime made its store: stopped, and started again by the
        # runtime's own registration, which now runs the forked loop.
        _persistence.stop_flush_loop()
        for ref in list(_persistence._stores.values()):
            if (store := ref()) is not None:
                _persistence.register_persistent_dict(store)
    return True


def stores_write_forked(stores: list) -> bool:
    """Writes each of `stores` (the runtime's `PersistentDict`s) to its file as its `sync`
    would (pickled as its `dump` does, into a file beside it, then moved over it), from a forked
    copy of this process, and returns whether the copy wrote them all. This process is held only
    while it forks, and the copy sees every store as it was at that instant. A file that already
    holds what its store pickles to is not written again (an idle server rewrote its whole store
    every 10 s); should a store fail to pickle, every file is left as it was."""
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid == 0:  # the copy: no thread but this one, and nothing of the server's to touch
        status = 1
        try:
            gc.disable()
            # Its copies of the server's sockets would hold a closed connection open until it
            # exits; and a stop of the server's process group stops it at once.
            os.closerange(3, os.sysconf("SC_OPEN_MAX"))
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            changed = {}
            for store in stores:
                if store.flag != "r":
                    # As `PersistentDict.dump` writes it, into memory: the pickler holds the whole
                    # of it before writing anyway (protocol 2 has no frames).
                    pickled = pickle.dumps(dict(store), 2)
                    if not file_holds(store.filename, memoryview(pickled)):
                        changed[store.filename] = pickled
            for filename, pickled in changed.items():
                with open(_written_beside(filename, os.getpid()), "wb") as file:
                    file.write(pickled)
            for filename in changed:  # only once every store is written
                os.replace(_written_beside(filename, os.getpid()), filename)
            status = 0
        finally:
            os._exit(status)
    deadline = time.monotonic() + STORE_WRITE_TIMEOUT_SECONDS
    while (ended := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:  # stuck: the server writes them itself instead
            os.kill(pid, signal.SIGKILL)
            ended = os.waitpid(pid, 0)
            break
        time.sleep(0.05)
    if os.waitstatus_to_exitcode(ended[1]) == 0:
        return True
    for store in stores:
        with contextlib.suppress(OSError):
            os.remove(_written_beside(store.filename, pid))
    return False


def _written_beside(filename: str, pid: int) -> str:
    """The file beside `filename` that the copy `pid` writes before moving it over."""
    return f"{filename}.{pid}.tmp"


def file_holds(path: str, data: memoryview, *, chunk: int = 1 << 20) -> bool:
    """Whether the file at `path` holds exactly `data` (read a chunk at a time: the stores are
    large)."""
    try:
        with open(path, "rb") as file:
            if os.fstat(file.fileno()).st_size != len(data):
                return False
            for start in range(0, len(data), chunk):
                if file.read(chunk) != data[start : start + chunk]:
                    return False
            return True
    except OSError:
        return False


def keep_idle_connections() -> None:
    """Makes the server that `langgraph dev` starts keep an idle connection open for
    IDLE_CONNECTION_SECONDS instead of uvicorn's 5 s (`langgraph dev` has no option for it)."""
    import uvicorn

    if getattr(uvicorn.run, "_chatsite_keep_alive", False):
        return
    run = uvicorn.run

    def run_keeping_idle_connections(*args, **kwargs):
        kwargs.setdefault("timeout_keep_alive", IDLE_CONNECTION_SECONDS)
        return run(*args, **kwargs)

    run_keeping_idle_connections._chatsite_keep_alive = True
    uvicorn.run = run_keeping_idle_connections


def answers(url: str, *, timeout: float) -> bool:
    """Whether the server at `url` answers its health check."""
    with contextlib.suppress(httpx.HTTPError):
        return httpx.get(f"{url}/ok", timeout=timeout).is_success
    return False


def freeze_once_serving(url: str, *, timeout: float = 300.0) -> threading.Thread:
    """Once the server at `url` answers, moves what it made to start (its modules, the graph,
    about 150,000 objects) out of the garbage collector's reach, in a thread of its own.

    A full collection walks every object still tracked and holds the interpreter meanwhile: in
    this server that stalled every run streaming for 70 to 80 ms whenever one came. Frozen,
    the startup objects are never walked again, and a full collection takes a few milliseconds
    (it still walks what the server stores since, which grows with its threads, so full
    collections are made rarer too: `YOUNG_COLLECTION_ALLOCATIONS`). Garbage is collected first,
    so that none is kept for good."""

    def serving() -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if answers(url, timeout=2.0):
                return True
            time.sleep(0.2)
        return False

    def freeze() -> None:
        if serving():
            gc.collect()
            gc.freeze()
            gc.set_threshold(YOUNG_COLLECTION_ALLOCATIONS, *gc.get_threshold()[1:])
            print(
                f"agent.server: {gc.get_freeze_count()} startup objects frozen, a young "
                f"collection every {gc.get_threshold()[0]} allocations",
                flush=True,
            )

    thread = threading.Thread(target=freeze, name="freeze-once-serving", daemon=True)
    thread.start()
    return thread


def config_for(data_dir: Path) -> Path:
    """The `langgraph.json` to serve from `data_dir`: the repository's, or, elsewhere, a copy
    written there whose paths point back into the repository (`langgraph dev` resolves them
    against its working directory)."""
    if data_dir.resolve() == ROOT:
        return ROOT / "langgraph.json"
    config = orjson.loads((ROOT / "langgraph.json").read_bytes())
    config["dependencies"] = [str(ROOT / dep) for dep in config.get("dependencies", [])]
    for name, spec in config["graphs"].items():
        path, _, attribute = spec.rpartition(":")
        if path.endswith(".py"):  # a file, not a module name
            config["graphs"][name] = f"{ROOT / path}:{attribute}"
    if isinstance(config.get("env"), str):
        config["env"] = str(ROOT / config["env"])
    path = data_dir / "langgraph.json"
    path.write_bytes(orjson.dumps(config, option=orjson.OPT_INDENT_2))
    return path


@dataclass
class EmbeddedBackend:
    """A `langgraph dev` child process serving agent/ on 127.0.0.1.

    `data_dir` is where it keeps what it stores; by default a temporary directory of its own,
    kept across its restarts and removed when the program exits."""

    port: int = field(default_factory=free_port)
    model: str = "echo"
    env: dict[str, str] = field(default_factory=dict)
    jobs: int = 64
    log_path: Path | None = None
    data_dir: Path | None = None
    process: subprocess.Popen | None = None
    _own_dir: tempfile.TemporaryDirectory | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.data_dir is None:
            self._own_dir = tempfile.TemporaryDirectory(prefix="chatsite-backend-")
            self.data_dir = Path(self._own_dir.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *, timeout: float = 90.0) -> EmbeddedBackend:
        env = {**os.environ, "AGENT_MODEL": self.model, **self.env}
        # The backend's own telemetry would try to reach hosted services: this runs offline.
        env.setdefault("LANGSMITH_TRACING", "false")
        env.setdefault("LANGCHAIN_TRACING_V2", "false")
        env.setdefault("LANGGRAPH_CLI_NO_ANALYTICS", "1")
        env.setdefault("LANGGRAPH_NO_VERSION_CHECK", "true")  # else it asks pypi.org at start
        env.setdefault("PYTHONUNBUFFERED", "1")
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        command = [
            sys.executable, "-m", "agent.server",
            "--port", str(self.port), "--n-jobs-per-worker", str(self.jobs),
            "--data-dir", str(self.data_dir),
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        if log is not subprocess.DEVNULL:
            log.close()
        self.wait_ready(timeout=timeout)
        return self

    def wait_ready(self, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"the embedded backend exited with {self.process.returncode}"
                    + (f"; see {self.log_path}" if self.log_path else "")
                )
            if answers(self.url, timeout=1.0):
                return
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the embedded backend did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        if self.process is not None:
            process_group_stop(self.process)

    def kill(self) -> None:
        """Stops the backend abruptly, as a crash would."""
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def __enter__(self) -> EmbeddedBackend:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def local_model_load_soon() -> None:
    """With the bundled model (`AGENT_MODEL` local, the default), loads it in the background
    while the server starts, where the first run loaded it: the first reply after a start came
    half a second later than the next ones. Says so when it is loaded."""
    from agent.models import local_model_load, model_name_from_env

    if model_name_from_env() != "local":
        return

    def load() -> None:
        started = time.monotonic()
        try:
            local_model_load()
        except Exception as error:  # the first run loads it again, and fails as it would have
            print(f"agent.server: the bundled model did not load: {error!r}", flush=True)
            return
        print(
            f"agent.server: the bundled model is loaded ({time.monotonic() - started:.1f} s)",
            flush=True,
        )

    threading.Thread(target=load, name="local-model-load", daemon=True).start()


def main(argv: list[str] | None = None) -> None:
    """`langgraph dev` for this repository, offline, with the queue wake-up patch."""
    import argparse

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--port", type=int, default=2024)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--n-jobs-per-worker", type=int, default=64)
    parser.add_argument(
        "--data-dir", type=Path, default=ROOT, help="where the server keeps what it stores"
    )
    args = parser.parse_args(argv)
    config = config_for(args.data_dir)
    os.chdir(args.data_dir)
    if patch_queue_wakeup():
        print("agent.server: queue wake-up patch applied", flush=True)
    else:
        print(
            "agent.server: langgraph-runtime-inmem is not a version the queue patch was tested "
            "with; new runs start on the queue's next 500 ms poll",
            flush=True,
        )
    if patch_store_writes():
        print("agent.server: the store is written from a forked copy of the server", flush=True)
    keep_idle_connections()
    freeze_once_serving(f"http://{args.host}:{args.port}")
    local_model_load_soon()
    from langgraph_cli.cli import cli

    cli.main(
        args=[
            "dev", "--no-browser", "--no-reload",
            "--host", args.host, "--port", str(args.port),
            "--n-jobs-per-worker", str(args.n_jobs_per_worker),
            "--config", str(config),
        ],
        prog_name="langgraph",
        standalone_mode=True,
    )  # fmt: skip


if __name__ == "__main__":
    main()
