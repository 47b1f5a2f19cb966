"""`make run`: the site on its embedded defaults, in one command.

Migrates the database, starts the embedded run backend (`langgraph dev` serving agent/ with
the model `AGENT_MODEL`, default the bundled SmolLM2) on a free port unless `LANGGRAPH_URL`
is set, then daphne on `--port`; prints the URL and stops both on Ctrl-C.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from chatsite import env_file_read

if TYPE_CHECKING:
    from agent.server import EmbeddedBackend

ROOT = Path(__file__).resolve().parent.parent
# Frames above this close the socket with 1009; every smaller frame gets an answer.
WEBSOCKET_MAX_BYTES = 256 * 1024
SITE_APPLICATION = "chatsite.asgi:application"


def daphne_command(*, host: str, port: int, application: str = SITE_APPLICATION) -> list[str]:
    return [
        sys.executable, "-m", "chatsite.serve",
        "-b", host, "-p", str(port),
        "--websocket-max-message-size", str(WEBSOCKET_MAX_BYTES),
        "--websocket-max-frame-size", str(WEBSOCKET_MAX_BYTES),
        application,
    ]  # fmt: skip


def run_backend_ensure(*, data_dir: Path, log_path: Path) -> EmbeddedBackend | None:
    """Starts the embedded run backend (the model `AGENT_MODEL`, default the bundled SmolLM2;
    its store in `data_dir`) and points the site at it, unless LANGGRAPH_URL names a backend:
    then None."""
    if os.environ.get("LANGGRAPH_URL"):
        print(f"Using the run backend at {os.environ['LANGGRAPH_URL']}", flush=True)
        return None
    from agent.server import EmbeddedBackend, client_keepalive_expiry

    model = os.environ.get("AGENT_MODEL", "local")
    log_path.parent.mkdir(exist_ok=True)
    print(f"Starting the embedded run backend (model: {model}; log: {log_path}) ...", flush=True)
    backend = EmbeddedBackend(model=model, log_path=log_path, data_dir=data_dir).start()
    os.environ["LANGGRAPH_URL"] = backend.url
    # It keeps idle connections longer than uvicorn's 5 s, which the setting's default allows
    # for: the site may keep them longer too.
    os.environ["LANGGRAPH_KEEPALIVE_EXPIRY"] = str(client_keepalive_expiry())
    print(f"Run backend ready at {backend.url}", flush=True)
    return backend


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PORT", "8000")))
    parser.add_argument("--host", default=os.environ.get("HOST", "127.0.0.1"))
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    env_file_read(ROOT)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")

    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput"], check=True)
    # Runs a previous server left streaming are marked interrupted, never stuck.
    subprocess.run([sys.executable, "manage.py", "recover_runs"], check=True)

    # Its store in the repository (.langgraph_api/): the assistant's memory outlives a restart.
    backend = run_backend_ensure(data_dir=ROOT, log_path=ROOT / "var" / "langgraph.log")
    daphne = subprocess.Popen(daphne_command(host=args.host, port=args.port))
    print(f"\n  Chat site: http://{args.host}:{args.port}/   (Ctrl-C stops)\n", flush=True)

    def stop(*_: object) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        return daphne.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        if daphne.poll() is None:
            daphne.terminate()
            try:
                daphne.wait(timeout=10)
            except subprocess.TimeoutExpired:
                daphne.kill()
        if backend is not None:
            backend.stop()


if __name__ == "__main__":
    raise SystemExit(main())
