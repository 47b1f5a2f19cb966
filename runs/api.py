"""The JSON API (docs/api.md): the chat flow on wait runs, in protocol v1's language.

Authenticated by the Django session like the page (CSRF applies to unsafe methods). Errors are
`{"error": {"code", "message"}}` with the codes of protocol v1.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import ensure_csrf_cookie
from django.views.decorators.http import require_http_methods

from runs import services
from runs.exceptions import ChatError, InvalidRequest, NotFound
from runs.models import Conversation
from runs.selectors import (
    Owner,
    conversation_get,
    conversation_list,
    conversation_to_dict,
    shared_path,
    transcript_rows,
)
from runs.wire import json_object_parse

STATUS_BY_CODE = {
    "invalid_json": 400,
    "invalid_frame": 400,
    "empty_text": 400,
    "login_required": 401,
    "not_found": 404,
    "busy": 409,
    "no_reply": 409,
    "not_continuable": 409,
    "text_too_long": 413,
    "rate_limited": 429,
    "backend_error": 502,
    "backend_unavailable": 503,
    "backend_timeout": 504,
}

View = Callable[..., Awaitable[JsonResponse]]


def error_response(code: str, message: str) -> JsonResponse:
    return JsonResponse(
        {"error": {"code": code, "message": message}}, status=STATUS_BY_CODE.get(code, 500)
    )


def api_view(view: View) -> View:
    """Resolves the owner, turns ChatErrors into JSON errors, and honours CHAT_REQUIRE_LOGIN."""

    @wraps(view)
    async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> JsonResponse:
        user = await request.auser()
        if settings.CHAT_REQUIRE_LOGIN and not user.is_authenticated:
            return error_response("login_required", "Sign in to use the chat.")
        owner = await sync_to_async(services.owner_for_session)(user=user, session=request.session)
        try:
            return await view(request, owner, *args, **kwargs)
        except ChatError as exc:
            return error_response(exc.code, exc.message)

    return wrapper


def json_body(request: HttpRequest) -> dict[str, Any]:
    return json_object_parse(request.body or b"", what="request body")


def bool_field(body: dict[str, Any], name: str) -> bool:
    value = body.get(name)
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` is required and must be true or false.")
    return value


def uuid_field(body: dict[str, Any], name: str) -> uuid.UUID | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` must be a uuid string or null.")
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest(f"`{name}` is not a valid uuid.") from None


@require_http_methods(["POST"])
@api_view
async def chat(request: HttpRequest, owner: Owner) -> JsonResponse:
    body = json_body(request)
    text = body.get("text")
    if not isinstance(text, str):
        raise InvalidRequest("`text` is required and must be a string.")
    outcome = await services.chat_wait(
        owner=owner,
        conversation_id=uuid_field(body, "conversation"),
        text=text,
        memory=bool_field(body, "memory"),
    )
    return reply_response(outcome)


@require_http_methods(["POST"])
@api_view
async def conversation_regenerate(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID
) -> JsonResponse:
    body = json_body(request) if request.body else {}
    if set(body) - {"message", "text"}:
        raise InvalidRequest(
            "Only `message` (which of your messages to ask again from) and `text` (it, edited) "
            "can be given."
        )
    outcome = await services.chat_regenerate_wait(
        owner=owner,
        conversation_id=conversation_id,
        message_id=uuid_field(body, "message"),
        text=body.get("text"),
    )
    return reply_response(outcome)


@require_http_methods(["POST"])
@api_view
async def conversation_continue(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID
) -> JsonResponse:
    if request.body and json_body(request):
        raise InvalidRequest("Nothing can be given: the last reply is continued.")
    outcome = await services.chat_continue_wait(owner=owner, conversation_id=conversation_id)
    return reply_response(outcome)


def reply_response(outcome: services.WaitOutcome) -> JsonResponse:
    if outcome.error is not None:
        # The user's message and the partial reply are saved; the error says what happened.
        return error_response(outcome.error.code, outcome.error.message)
    return JsonResponse(
        {
            "conversation": str(outcome.started.conversation.id),
            "run": str(outcome.started.run.id),
            "mode": outcome.started.run.mode,
            "reply": outcome.final_frame["message"],
            "replaces": [str(message.id) for message in outcome.started.replaces],
        }
    )


@require_http_methods(["GET"])
@ensure_csrf_cookie
@api_view
async def conversations(request: HttpRequest, owner: Owner) -> JsonResponse:
    query = services.conversation_search_clean(query=request.GET.get("q"))
    offset = services.list_offset_clean(offset=request.GET.get("offset"))
    page = await sync_to_async(conversation_list)(owner=owner, query=query, offset=offset)
    return JsonResponse(
        {
            "conversations": [conversation_to_dict(row) for row in page.conversations],
            "next_offset": page.next_offset,
        }
    )


def share_to_dict(request: HttpRequest, conversation: Conversation) -> dict[str, Any] | None:
    """Where and as of when the conversation is shared; None while it is not."""
    path = shared_path(conversation=conversation)
    if path is None:
        return None
    return {
        "url": request.build_absolute_uri(path),
        "shared_at": conversation.shared_at.isoformat(),
    }


def _conversation_detail(
    request: HttpRequest, *, owner: Owner, conversation_id: uuid.UUID
) -> dict[str, Any]:
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    return {
        **conversation_to_dict(conversation),
        "share": share_to_dict(request, conversation),
        "messages": transcript_rows(conversation=conversation),
    }


@require_http_methods(["GET", "PATCH", "DELETE"])
@ensure_csrf_cookie
@api_view
async def conversation(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID
) -> JsonResponse:
    if request.method == "PATCH":
        body = json_body(request)
        if set(body) - {"title"}:
            raise InvalidRequest("Only `title` can be changed.")
        renamed = await services.conversation_rename(
            owner=owner, conversation_id=conversation_id, title=body.get("title")
        )
        return JsonResponse(conversation_to_dict(renamed))
    if request.method == "DELETE":
        await services.conversation_delete(owner=owner, conversation_id=conversation_id)
        return JsonResponse({"deleted": str(conversation_id)})
    detail = await sync_to_async(_conversation_detail)(
        request, owner=owner, conversation_id=conversation_id
    )
    return JsonResponse(detail)


@require_http_methods(["POST"])
@api_view
async def conversation_memory(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID
) -> JsonResponse:
    enabled = bool_field(json_body(request), "enabled")
    updated = await services.conversation_set_memory(
        owner=owner, conversation_id=conversation_id, enabled=enabled
    )
    return JsonResponse(conversation_to_dict(updated))


@require_http_methods(["POST"])
@api_view
async def conversation_forget(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID
) -> JsonResponse:
    updated = await services.conversation_forget(owner=owner, conversation_id=conversation_id)
    return JsonResponse(conversation_to_dict(updated))


@require_http_methods(["POST"])
@api_view
async def message_feedback(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID, message_id: uuid.UUID
) -> JsonResponse:
    body = json_body(request)
    if set(body) != {"feedback"}:
        raise InvalidRequest('Give `feedback` alone: "good", "bad" or null.')
    frame = await services.message_feedback_set(
        owner=owner,
        conversation_id=conversation_id,
        message_id=message_id,
        feedback=body["feedback"],
    )
    return JsonResponse({key: value for key, value in frame.items() if key != "type"})


@require_http_methods(["POST", "DELETE"])
@api_view
async def conversation_share(
    request: HttpRequest, owner: Owner, conversation_id: uuid.UUID
) -> JsonResponse:
    if request.method == "DELETE":
        conversation = await sync_to_async(services.conversation_unshare)(
            owner=owner, conversation_id=conversation_id
        )
    else:
        conversation = await sync_to_async(services.conversation_share)(
            owner=owner, conversation_id=conversation_id
        )
    return JsonResponse({"share": share_to_dict(request, conversation)})


async def not_found(request: HttpRequest, rest: str = "") -> JsonResponse:
    return error_response(NotFound.code, "No such API endpoint or conversation.")


def csrf_failure(request: HttpRequest, reason: str = "") -> JsonResponse:
    """CSRF refusals: JSON for the API, Django's page elsewhere."""
    if request.path.startswith("/api/"):
        return JsonResponse(
            {
                "error": {
                    "code": "csrf_failed",
                    "message": "CSRF check failed: send the csrftoken cookie's value in an "
                    "X-CSRFToken header (see docs/api.md).",
                }
            },
            status=403,
        )
    from django.views.csrf import csrf_failure as django_csrf_failure

    return django_csrf_failure(request, reason=reason)
