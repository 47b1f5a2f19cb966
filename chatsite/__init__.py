"""The Django project: settings, ASGI application, and the processes that serve it."""

from __future__ import annotations

from pathlib import Path

import environ


def env_file_read(root: Path) -> None:
    """`root/.env` into this process's environment, what the environment says already winning.
    A local .env file is a convenience for development; real deployments set the environment.
    The settings read it so, and `make run` too, so that what it says about the backend
    (LANGGRAPH_URL, AGENT_MODEL) holds for what `make run` starts, not only for the site."""
    if (root / ".env").is_file():
        environ.Env.read_env(root / ".env", overwrite=False)
