"""`make run` (chatsite/devserver.py): what a `.env` file says holds for what it starts."""

from __future__ import annotations

import os

import httpx
import pytest

from agent.server import CLIENT_KEEPALIVE_SECONDS
from chatsite import env_file_read
from chatsite.devserver import run_backend_ensure

SETTINGS = ("LANGGRAPH_URL", "AGENT_MODEL", "LANGGRAPH_KEEPALIVE_EXPIRY")


@pytest.fixture
def clean_environment(monkeypatch):
    """None of the settings in the environment, and whatever a test sets there undone after."""
    for name in SETTINGS:
        monkeypatch.setenv(name, "")  # recorded, so that teardown puts back what was there
        monkeypatch.delenv(name)


def test_make_run_uses_the_backend_its_env_file_names(tmp_path, clean_environment, capsys):
    (tmp_path / ".env").write_text("LANGGRAPH_URL=http://127.0.0.1:9\n")
    env_file_read(tmp_path)
    assert run_backend_ensure(data_dir=tmp_path, log_path=tmp_path / "langgraph.log") is None
    assert os.environ["LANGGRAPH_URL"] == "http://127.0.0.1:9"
    assert "Using the run backend at http://127.0.0.1:9" in capsys.readouterr().out
    # Connections to a backend it did not start are kept as the setting's default says.
    assert "LANGGRAPH_KEEPALIVE_EXPIRY" not in os.environ


def test_make_run_starts_the_model_its_env_file_names(tmp_path, clean_environment):
    (tmp_path / ".env").write_text("LANGGRAPH_URL=\nAGENT_MODEL=echo\n")
    env_file_read(tmp_path)
    backend = run_backend_ensure(data_dir=tmp_path, log_path=tmp_path / "var" / "langgraph.log")
    assert backend is not None
    try:
        assert os.environ["LANGGRAPH_URL"] == backend.url
        assert float(os.environ["LANGGRAPH_KEEPALIVE_EXPIRY"]) == CLIENT_KEEPALIVE_SECONDS
        answer = httpx.post(
            f"{backend.url}/runs/wait",
            json={
                "assistant_id": "agent",
                "input": {"messages": [{"role": "user", "content": "parrot this"}]},
            },
            timeout=60,
        )
        answer.raise_for_status()
        assert "parrot this" in answer.json()["messages"][-1]["content"], "the echo model"
    finally:
        backend.stop()


def test_what_the_environment_says_wins_over_the_env_file(tmp_path, clean_environment):
    (tmp_path / ".env").write_text("AGENT_MODEL=echo\nLANGGRAPH_KEEPALIVE_EXPIRY=4\n")
    os.environ["AGENT_MODEL"] = "local"
    env_file_read(tmp_path)
    assert os.environ["AGENT_MODEL"] == "local"
    assert os.environ["LANGGRAPH_KEEPALIVE_EXPIRY"] == "4"
