"""Real daphne processes serving the site, as `make run` starts them, for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from agent.server import ROOT, free_port, process_group_stop
from chatsite.devserver import daphne_command

RESULTS = ROOT / "test-results"


REDIS = "redis://127.0.0.1:6379"


def redis_unreachable() -> str:
    """Why the machine's Redis cannot be used ("" when it can)."""
    import redis

    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        return f"Redis at 127.0.0.1:6379 is not reachable ({exc.__class__.__name__})"
    return ""


def site_env(*, database_url: str, backend_url: str, **extra: str) -> dict[str, str]:
    """The environment of a site process: this one's, less any chat settings, plus these."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(
            ("DJANGO_", "CHAT_", "LANGGRAPH_", "REDIS_URL", "DATABASE_URL", "EMAIL_URL")
        )
    }
    env.update(
        DJANGO_SETTINGS_MODULE="chatsite.settings",
        DATABASE_URL=database_url,
        LANGGRAPH_URL=backend_url,
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def manage(*args: str, env: dict[str, str]) -> None:
    subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True
    )


class LiveSite:
    """One daphne process with the websocket limits of `make run`."""

    def __init__(self, name: str, *, env: dict[str, str], port: int | None = None) -> None:
        self.name = name
        self.env = env
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws/chat/"
        RESULTS.mkdir(exist_ok=True)
        self.log_path = RESULTS / f"daphne-{name}.log"
        self.process: subprocess.Popen | None = None

    def start(self, *, timeout: float = 60.0) -> LiveSite:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                daphne_command(host="127.0.0.1", port=self.port),
                cwd=ROOT,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"daphne exited with {self.process.returncode}; see {self.log_path}"
                )
            with contextlib.suppress(httpx.HTTPError):
                httpx.get(f"{self.url}/healthz", timeout=2.0)
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"daphne did not answer within {timeout:.0f} s; see {self.log_path}")

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        if self.process is not None:
            process_group_stop(self.process)

    def kill(self) -> None:
        """Stops the process at once, as a crash would."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def __enter__(self) -> LiveSite:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def sqlite_url(directory: Path, name: str) -> str:
    return f"sqlite:///{directory / f'{name}.sqlite3'}"
