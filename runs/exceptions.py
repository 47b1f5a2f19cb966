"""Typed errors of the chat: what went wrong with the run backend, and refused requests.

Each error carries the protocol v1 error `code` that clients see (see docs/protocol.md).
Messages are written for users and never include secrets or backend URLs with credentials.
"""

from __future__ import annotations


class ChatError(Exception):
    """A request the chat refuses or cannot complete; `code` is the protocol v1 error code."""

    code = "backend_error"
    default_message = "Something went wrong."

    def __init__(self, message: str | None = None, *, code: str | None = None) -> None:
        self.message = message or self.default_message
        if code is not None:
            self.code = code
        super().__init__(self.message)


# Errors of the run backend.


class BackendError(ChatError):
    """The run backend failed to do what was asked."""

    code = "backend_error"
    default_message = "The assistant's backend returned an error."


class BackendUnavailable(BackendError):
    """Connection refused, DNS failure, connect timeout, or the connection was lost."""

    code = "backend_unavailable"
    default_message = "The assistant is unavailable right now. Please try again shortly."


class BackendTimeout(BackendError):
    """The backend accepted the request but stopped answering (read, write or pool timeout)."""

    code = "backend_timeout"
    default_message = "The assistant took too long to answer."


class BackendHTTPError(BackendError):
    """The backend answered with an error status."""

    def __init__(self, message: str | None = None, *, status: int, detail: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(message or f"The assistant's backend answered HTTP {status}.")


class ThreadNotFound(BackendHTTPError):
    """The thread does not exist on the backend (never made, deleted, or the backend restarted)."""

    default_message = "The assistant's memory of this conversation no longer exists."


class RunConflict(BackendHTTPError):
    """409: the thread is already running something and the multitask strategy rejects more."""

    code = "busy"


class RunFailed(BackendError):
    """The run itself failed: an SSE `error` event, or `__error__` in a wait run's state."""

    def __init__(self, message: str | None = None, *, error: str = "") -> None:
        self.error = error
        super().__init__(message or "The assistant failed while answering.")


class MalformedStream(BackendError):
    """The backend's answer was not the Server-Sent Events or JSON that the API promises."""

    default_message = "The assistant's backend sent an answer that could not be read."


# Refused requests.


class InvalidRequest(ChatError):
    """A missing or mistyped field, a malformed uuid, a binary frame: `invalid_frame`."""

    code = "invalid_frame"
    default_message = "The request is not valid."


class InvalidJSON(ChatError):
    code = "invalid_json"
    default_message = "The frame is not valid JSON."


class UnknownType(ChatError):
    code = "unknown_type"


class EmptyText(ChatError):
    code = "empty_text"
    default_message = "Type a message first."


class TextTooLong(ChatError):
    code = "text_too_long"


class NotFound(ChatError):
    code = "not_found"
    default_message = "No such conversation."


class Busy(ChatError):
    code = "busy"
    default_message = "The assistant is still answering in this conversation."


class NoReply(ChatError):
    code = "no_reply"
    default_message = "Nothing to regenerate or edit yet: the last message has no reply."


class NotContinuable(ChatError):
    code = "not_continuable"
    default_message = (
        "Only the last reply, when the assistant's length limit cut it, can be continued."
    )


class SignedOut(ChatError):
    """The session a socket was opened with no longer signs its user in."""

    code = "signed_out"
    default_message = "You were signed out. Sign in again to go on."


class RateLimited(ChatError):
    code = "rate_limited"
    default_message = "Too many messages. Wait a moment and try again."
