"""The benchmark's own parts that the product's figures depend on."""

from __future__ import annotations

import pytest
from channels.db import database_sync_to_async
from django.contrib.auth.models import User

from bench.accounts import accounts_sign_in
from runs.models import Conversation

pytestmark = pytest.mark.django_db(transaction=True)


async def test_the_signed_in_benchmark_users_chat_as_their_own_accounts(
    backend_url, socket_factory
):
    """`bench.relay --signed-in` measures signed-in users only if the sessions it makes sign
    them in: a session Django refused would leave the socket an anonymous visitor's."""
    signed_in = await database_sync_to_async(accounts_sign_in)(2)
    owners = []
    for key in signed_in["sessions"]:
        socket = await socket_factory(f"{signed_in['cookie']}={key}")
        done = await socket.chat("hello", memory=False)
        assert done["type"] == "run.completed"
        owners.append((await Conversation.objects.aget(pk=done["conversation"])).owner_id)
    accounts = [user async for user in User.objects.filter(pk__in=owners)]
    assert len(accounts) == 2, owners  # two accounts, neither of them anonymous
    assert not any(account.has_usable_password() for account in accounts)


def test_the_walks_benchmark_starts_and_finds_a_burst_with_either_code(capsys):
    """`python -m bench.walks` times the runtime's own run queue against the patched one: each
    must start all of a burst's runs and find each of them, or its figures mean nothing."""
    from bench.walks import BURST, main

    rows = main(["--stored", "300"])
    assert [row["code"] for row in rows] == ["runtime", "patched"]
    assert all(row["one_look_ms"] > 0 and row["lookups_ms"] > 0 for row in rows)
    assert f"a burst of {BURST} runs" in capsys.readouterr().out


def test_the_transcript_benchmark_opens_every_message_of_its_conversations(capsys):
    """`python -m bench.transcript` times a long conversation's page and snapshot: both must
    carry the whole conversation, or its figures mean nothing."""
    from bench.transcript import main, reply_text

    rows = main(["--exchanges", "3", "7", "--tries", "1"])
    assert [(row["exchanges"], row["messages"]) for row in rows] == [(3, 6), (7, 14)]
    assert all(row["page_cold_ms"] > 0 and row["snapshot_ms"] > 0 for row in rows)
    assert rows[1]["page_kb"] > rows[0]["page_kb"] > len(reply_text(0)) * 3 / 1000
    assert "page cold" in capsys.readouterr().out
