"""Database calls of the chat flow, from async code, on one dedicated thread.

`channels.db.database_sync_to_async` closes and reopens the connection around every call
(CONN_MAX_AGE is 0 on SQLite), which cost a fifth of daphne's CPU on the relay's hot path. The
chat flow's calls instead run on one thread whose connection stays open; an error that may
mean a broken connection (a database restart) closes it, and the next call reconnects.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from asgiref.sync import sync_to_async
from django.db import InterfaceError, OperationalError, connection

P = ParamSpec("P")
R = TypeVar("R")

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="chat-db")


def db_call(func: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """`func` made awaitable, run on the chat flow's database thread."""

    @functools.wraps(func)
    def guarded(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return func(*args, **kwargs)
        except (InterfaceError, OperationalError):
            connection.close()
            raise

    return sync_to_async(guarded, thread_sensitive=False, executor=_executor)


def db_close() -> None:
    """Closes the database thread's connection (before a test database is dropped, say)."""
    # `connection` is per thread: look it up on the database thread, not here.
    _executor.submit(lambda: connection.close()).result()
