"""What opening a long conversation costs the site, timed in process.

Opening a conversation serves its page, with every message in it rendered from markdown, and
then its socket's snapshot (`conversation.watch`), every message again; every other tab that
opens it does the same. `python -m bench.transcript` fills a scratch SQLite database with
conversations of 50, 200 and 500 exchanges (a question, and a reply of about 150 words with a
list, inline code, a link and a code block, each one different) and prints, for each, the
server's time for the page and for the snapshot's messages, the median of a few tries: first
with no rendered HTML kept (a process that never rendered these messages), then as the site
runs (`runs.rendering` keeps the HTML of the texts it rendered last: the relay renders each
reply as it is saved, and the page renders what the snapshot sends next).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from typing import Any

EXCHANGES = (50, 200, 500)


def reply_text(number: int) -> str:
    words = " ".join(f"word{number}x{index}" for index in range(110))
    return (
        f"Answer {number}: here is **what you asked**.\n\n"
        f"- the first point, with `code_{number}`\n"
        f"- the second, see https://example.com/page/{number}\n\n"
        f"```python\ndef answer_{number}():\n    return {number}\n```\n\n{words}."
    )


def conversation_fill(*, owner: Any, exchanges: int) -> Any:
    from runs.models import Conversation, Message

    conversation = Conversation.objects.create(owner=owner, title=f"{exchanges} exchanges")
    Message.objects.bulk_create(
        message
        for number in range(exchanges)
        for message in (
            Message(
                conversation=conversation, role=Message.Role.USER, remembered=True,
                text=f"Question {number}: what about this?",
            ),
            Message(
                conversation=conversation, role=Message.Role.ASSISTANT, remembered=True,
                text=reply_text(number),
            ),
        )
    )  # fmt: skip
    return conversation


def median_ms(action: Callable[[], Any], *, tries: int, before: Callable[[], None]) -> float:
    times = []
    for _ in range(tries):
        before()
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    """The figures, printed and returned; Django must be set up, on a database it may write."""
    parser = argparse.ArgumentParser(prog="python -m bench.transcript", description=__doc__)
    parser.add_argument("--exchanges", type=int, nargs="+", default=list(EXCHANGES))
    parser.add_argument("--tries", type=int, default=3)
    args = parser.parse_args(argv)

    import orjson
    from django.contrib.auth.models import User
    from django.test import Client

    from runs.rendering import _markdown_to_safe_html_kept
    from runs.selectors import transcript_rows

    user = User.objects.create_user(f"bench-transcript-{time.time_ns()}")
    client = Client(HTTP_HOST="127.0.0.1")
    client.force_login(user)
    forget_kept = _markdown_to_safe_html_kept.cache_clear

    def nothing() -> None:
        pass

    rows = []
    for exchanges in args.exchanges:
        conversation = conversation_fill(owner=user, exchanges=exchanges)
        url = f"/c/{conversation.pk}/"

        def page(url: str = url) -> bytes:
            response = client.get(url)
            assert response.status_code == 200, response.status_code
            return response.content

        def snapshot(conversation: Any = conversation) -> list[dict[str, Any]]:
            return transcript_rows(conversation=conversation)

        messages = snapshot()
        rows.append(
            {
                "exchanges": exchanges,
                "messages": len(messages),
                "page_kb": len(page()) / 1000,
                "snapshot_kb": len(orjson.dumps(messages)) / 1000,
                "page_cold_ms": median_ms(page, tries=args.tries, before=forget_kept),
                "snapshot_cold_ms": median_ms(snapshot, tries=args.tries, before=forget_kept),
                "page_ms": median_ms(page, tries=args.tries, before=nothing),
                "snapshot_ms": median_ms(snapshot, tries=args.tries, before=nothing),
            }
        )

    print(
        "opening a conversation: the server's time for its page and its socket's snapshot, "
        f"ms (median of {args.tries}); cold = no rendered HTML kept, kept = as the site runs"
    )
    print(
        f"{'exchanges':>9}  {'page KB':>8}  {'snapshot KB':>11}  {'page cold':>9}  "
        f"{'page kept':>9}  {'snapshot cold':>13}  {'snapshot kept':>13}"
    )
    for row in rows:
        print(
            f"{row['exchanges']:>9}  {row['page_kb']:>8.0f}  {row['snapshot_kb']:>11.0f}  "
            f"{row['page_cold_ms']:>9.0f}  {row['page_ms']:>9.0f}  "
            f"{row['snapshot_cold_ms']:>13.0f}  {row['snapshot_ms']:>13.0f}"
        )
    return rows


if __name__ == "__main__":
    with tempfile.TemporaryDirectory(prefix="bench-transcript-") as scratch:
        os.environ["DATABASE_URL"] = f"sqlite:///{scratch}/bench.sqlite3"
        os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatsite.settings")
        import django
        from django.core.management import call_command

        django.setup()
        call_command("migrate", verbosity=0)
        main(sys.argv[1:])
