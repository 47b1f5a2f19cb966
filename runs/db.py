"""Database calls of the chat flow, from async code, on one dedicated thread.

`channels.db.database_sync_to_async` closes and reopens the connection around every call
(CONN_MAX_AGE is 0 on SQLite), which cost a fifth of daphne's CPU on the relay's hot path. The
chat flow's calls instead run on one thread whose connection stays open; an error that may
mean a broken connection (a database restart) closes it, and the next call reconnects.

The writes every message makes (its start, its reply's start and its finish) go through
`db_batched`: when a burst of senders arrives, each call waits in line behind the others, so
whatever is waiting when the thread gets to it runs in one transaction, one commit for all,
and their callers are woken together. A hundred simultaneous messages are saved in a fraction
of the time a hundred transactions took, so the last of them reaches the backend sooner.
"""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection, transaction

P = ParamSpec("P")
R = TypeVar("R")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-db")
# At most this many batched calls a transaction: the first senders of a burst are not held
# until the last is saved, so their backend requests leave while the rest are being saved.
BATCH_MAX = 16


def _closing_a_broken_connection(func: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    try:
        return func(*args, **kwargs)
    except (InterfaceError, OperationalError):
        connection.close()
        raise


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` made awaitable, run on the chat flow's database thread."""

    @functools.wraps(func)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        return _closing_a_broken_connection(func, *args, **kwargs)

    return sync_to_async(guarded, thread_sensitive=False, executor=_executor)


@dataclass(slots=True)
class _Call:
    func: Callable[..., Any]
    kwargs: dict[str, Any]
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    outcome: Any = None
    failed: bool = False


class _Line:
    """The batched calls waiting for the database thread, and whether it has been asked to
    take them."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.waiting: list[_Call] = []
        self.asked = False

    def join(self, call: _Call) -> None:
        with self.lock:
            self.waiting.append(call)
            if self.asked:
                return
            self.asked = True
        _executor.submit(self.serve)

    def serve(self) -> None:
        """On the database thread: runs every call waiting, then wakes their callers."""
        with self.lock:
            calls, self.waiting = self.waiting[:BATCH_MAX], self.waiting[BATCH_MAX:]
            if self.waiting:
                _executor.submit(self.serve)
            else:
                self.asked = False
        if len(calls) == 1:
            _run_alone(calls[0])
        else:
            _run_together(calls)
        by_loop: dict[asyncio.AbstractEventLoop, list[_Call]] = {}
        for call in calls:
            by_loop.setdefault(call.loop, []).append(call)
        for loop, answered in by_loop.items():
            try:
                loop.call_soon_threadsafe(_wake, answered)
            except RuntimeError:
                pass  # that loop has closed: nobody is waiting any more


_line = _Line()


def _run_alone(call: _Call) -> None:
    try:
        with transaction.atomic():
            call.outcome = _closing_a_broken_connection(call.func, **call.kwargs)
    except Exception as exc:
        call.outcome, call.failed = exc, True


def _run_together(calls: list[_Call]) -> None:
    """All in one transaction. Should one of them fail (a Busy for one sender, or a deadlock
    with another process), the transaction is rolled back and each runs again in a transaction
    of its own, so each caller gets what it would have got alone. Should the commit itself
    fail, whether it reached the database is unknown: nothing runs again, and every caller gets
    the error."""
    ran = False
    try:
        with transaction.atomic():
            for call in calls:
                call.outcome = call.func(**call.kwargs)
            ran = True
        return
    except Exception as exc:
        if isinstance(exc, (InterfaceError, OperationalError)):
            connection.close()
        if ran:
            for call in calls:
                call.outcome, call.failed = exc, True
            return
    for call in calls:
        _run_alone(call)


def _wake(calls: list[_Call]) -> None:
    for call in calls:
        if call.future.cancelled():
            continue
        if call.failed:
            call.future.set_exception(call.outcome)
        else:
            call.future.set_result(call.outcome)


def db_batched(func: Callable[..., R]) -> Callable[..., Awaitable[R]]:
    """`func` (keyword arguments only) made awaitable, run on the database thread inside a
    transaction it may share with other batched calls that are waiting at the same time.

    `func` must do nothing but database work, since it may run twice (see `_run_together`),
    and its own `transaction.atomic()` blocks should pass `savepoint=False`: inside the shared
    transaction they need no savepoint of their own. Batched calls run in the order they were
    made; a `db_call` made while some wait may run before or after them."""

    @functools.wraps(func)
    async def batched(**kwargs: Any) -> R:
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        _line.join(_Call(func=func, kwargs=kwargs, loop=loop, future=future))
        return await future

    return batched


def db_close() -> None:
    """Closes the database thread's connection (before a test database is dropped, say)."""
    # `connection` is per thread: look it up on the database thread, not here.
    _executor.submit(lambda: connection.close()).result()
