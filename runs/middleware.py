"""Tells a browser's other tabs that its session signed in or out, once the view is done.

The sign-in and sign-out signals fire inside the view, before the session is flushed or the
response carries the new cookie: a tab told then could come back with the old session, still
signed in after a sign-out. So the signals only note what to tell (`session_ended_notice`), and
this middleware tells it as the response leaves, after the session middleware has saved it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import async_to_sync, iscoroutinefunction
from django.http import HttpRequest, HttpResponse
from django.utils.decorators import sync_and_async_middleware

from runs import services

NOTICES = "_chat_session_ended_notices"


def session_ended_notice(request: HttpRequest, **notice: Any) -> None:
    """Notes that the sockets of `notice["group"]` are to hear `services.session_ended_publish`."""
    vars(request).setdefault(NOTICES, []).append(notice)


@sync_and_async_middleware
def session_ended_middleware(
    get_response: Callable[[HttpRequest], HttpResponse | Awaitable[HttpResponse]],
) -> Callable[[HttpRequest], Any]:
    if iscoroutinefunction(get_response):

        async def middleware(request: HttpRequest) -> HttpResponse:
            response = await get_response(request)
            for notice in getattr(request, NOTICES, ()):
                await services.session_ended_publish(**notice)
            return response

    else:

        def middleware(request: HttpRequest) -> HttpResponse:
            response = get_response(request)
            for notice in getattr(request, NOTICES, ()):
                async_to_sync(services.session_ended_publish)(**notice)
            return response

    return middleware
