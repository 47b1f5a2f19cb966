"""The websocket side of the chat: protocol v1 (docs/protocol.md), parsed here, done in services."""

from __future__ import annotations

import asyncio
import functools
import logging
import uuid
from collections import Counter
from typing import Any

import orjson
from asgiref.typing import ASGIReceiveCallable as Receive
from asgiref.typing import ASGISendCallable as Send
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer
from channels.layers import get_channel_layer
from django.conf import settings

from runs import services
from runs.db import db_call
from runs.exceptions import ChatError, InvalidRequest, RateLimited, SignedOut, UnknownType
from runs.selectors import conversation_get, session_signs_in
from runs.wire import json_object_parse

logger = logging.getLogger(__name__)

CLIENT_ID_MAX_CHARS = 64
# Open sockets per user or visitor, in this process (their total is capped too).
_open_sockets: Counter[str] = Counter()


def _uuid_field(frame: dict[str, Any], name: str, *, required: bool = True) -> uuid.UUID | None:
    value = frame.get(name)
    if value is None:
        if required:
            raise InvalidRequest(f"`{name}` is required.")
        return None
    if not isinstance(value, str):
        raise InvalidRequest(f"`{name}` must be a uuid string.")
    try:
        return uuid.UUID(value)
    except ValueError as exc:
        raise InvalidRequest(f"`{name}` is not a valid uuid.") from exc


def _bool_field(frame: dict[str, Any], name: str) -> bool:
    value = frame.get(name)
    if not isinstance(value, bool):
        raise InvalidRequest(f"`{name}` is required and must be true or false.")
    return value


class ChatConsumer(AsyncWebsocketConsumer):
    """One browser tab or program. It may watch several conversations; each one's frames come
    through that conversation's channel-layer group, so every watcher sees the same stream."""

    async def connect(self) -> None:
        user = self.scope.get("user")
        if settings.CHAT_REQUIRE_LOGIN and not getattr(user, "is_authenticated", False):
            await self.close(code=4401)
            return
        if _open_sockets.total() >= settings.CHAT_MAX_SOCKETS:
            # Refused before the session is read or saved: a flood of sockets costs no queries.
            await self.accept()
            await self.send_error(
                RateLimited(
                    "The server has too many open connections right now. Try again in a moment."
                ),
                client_id=None,
            )
            await self.close(code=1013)  # Try Again Later
            return
        # A program without a cookie gets a session of its own to own conversations.
        self.owner = await db_call(services.owner_for_session)(
            user=user, session=self.scope["session"]
        )
        self.groups_watched: set[str] = set()
        self.counted = False
        self.session_ended_reason = ""
        await self.accept()
        owner_key = self.owner.identity
        if _open_sockets[owner_key] >= settings.CHAT_MAX_SOCKETS_PER_SESSION:
            await self.send_error(
                RateLimited(
                    f"Too many open connections: at most {settings.CHAT_MAX_SOCKETS_PER_SESSION} "
                    "at once. Close another tab and try again."
                ),
                client_id=None,
            )
            await self.close(code=4429)
            return
        _open_sockets[owner_key] += 1
        self.counted = True
        await self.join(services.owner_group(self.owner))
        session_key = self.scope["session"].session_key
        if self.owner.user_id is not None and session_key:
            await self.join(services.session_group(session_key))
        await services.relays_ensure()

    async def disconnect(self, code: int) -> None:
        # The runs this socket started go on: their relays are not tied to it.
        for group in getattr(self, "groups_watched", ()):
            await self.channel_layer.group_discard(group, self.channel_name)
        if getattr(self, "counted", False):
            _open_sockets[self.owner.identity] -= 1
            if _open_sockets[self.owner.identity] <= 0:
                del _open_sockets[self.owner.identity]

    def _signed_in_session(self) -> str | None:
        """For a signed-in owner, the key of the session this socket was opened with, which must
        still sign them in for a frame to act; None for a visitor."""
        if self.owner.user_id is None:
            return None
        return self.scope["session"].session_key or ""

    def _still_signed_in(self) -> bool:
        return session_signs_in(
            session_key=self.scope["session"].session_key or "", user_id=self.owner.user_id
        )

    async def __call__(self, scope: dict[str, Any], receive: Receive, send: Send) -> None:
        """AsyncConsumer.__call__ with a leaner loop. Channels starts a task and an
        `asyncio.wait` for every message; a streamed reply sends one per token. Here one task
        per source (the socket, the channel layer) takes a message and dispatches it under a
        shared lock: still one message handled at a time, in the order taken, and
        StopConsumer (the socket closed) still ends the consumer."""
        self.scope = scope
        self.channel_layer = get_channel_layer(self.channel_layer_alias)
        self.channel_name = await self.channel_layer.new_channel()
        self.channel_receive = functools.partial(self.channel_layer.receive, self.channel_name)
        self.base_send = send
        turn = asyncio.Lock()

        async def pump(source: Receive) -> None:
            while True:
                message = await source()
                async with turn:
                    await self.dispatch(message)

        try:
            async with asyncio.TaskGroup() as tasks:
                tasks.create_task(pump(receive))
                tasks.create_task(pump(self.channel_receive))
        except* StopConsumer:
            pass

    async def dispatch(self, message: dict[str, Any]) -> None:
        # Channels closes stale DB connections in a thread before every message; this consumer
        # touches the DB only through database_sync_to_async, which does that already, so the
        # per-delta hot path skips a thread hop per frame.
        handler = getattr(self, message["type"].replace(".", "_"), None)
        if handler is None:
            raise ValueError(f"No handler for message type {message['type']}")
        await handler(message)

    # Inbound frames.

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        if self.session_ended_reason:
            return  # closing: a frame that came meanwhile must not act for the old session
        client_id = None
        try:
            if text_data is None:
                raise InvalidRequest("Frames must be JSON text, not binary.")
            frame = json_object_parse(text_data)
            client_id = frame.get("client_id")
            if client_id is not None and (
                not isinstance(client_id, str) or len(client_id) > CLIENT_ID_MAX_CHARS
            ):
                client_id = None
                raise InvalidRequest(
                    f"`client_id` must be a string of at most {CLIENT_ID_MAX_CHARS} characters."
                )
            kind = frame.get("type")
            if (
                self.owner.user_id is not None
                and kind not in self.STARTS_CHECKING_THE_SESSION
                and not await db_call(self._still_signed_in)()
            ):
                raise SignedOut()
            if not isinstance(kind, str):
                raise InvalidRequest("A frame must have a string `type`.")
            handler = self.FRAME_HANDLERS.get(kind)
            if handler is None:
                raise UnknownType(f"Unknown frame type {kind[:40]!r}.")
            await handler(self, frame, client_id)
        except SignedOut as exc:
            await self.send_error(exc, client_id=client_id)
            await self.close(code=4401)
        except ChatError as exc:
            await self.send_error(exc, client_id=client_id)
        except Exception:
            logger.exception("websocket frame failed")
            await self.send_error(
                ChatError("The server could not handle that frame."), client_id=client_id
            )

    async def send_json(self, frame: dict[str, Any]) -> None:
        await self.send(text_data=orjson.dumps(frame).decode())

    async def send_error(self, error: ChatError, *, client_id: str | None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": error.code, "message": error.message}
        if client_id is not None:
            frame["client_id"] = client_id
        await self.send_json(frame)

    async def join(self, group: str) -> None:
        if group not in self.groups_watched:
            await self.channel_layer.group_add(group, self.channel_name)
            self.groups_watched.add(group)

    async def watch(self, conversation_id: uuid.UUID | str) -> None:
        await self.join(services.conversation_group(conversation_id))

    async def on_chat_send(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation", required=False)
        memory = _bool_field(frame, "memory")
        if "text" not in frame:
            raise InvalidRequest("`text` is required.")
        if not isinstance(frame["text"], str):
            raise InvalidRequest("`text` must be a string.")
        started = await services.chat_start(
            owner=self.owner,
            conversation_id=conversation_id,
            text=frame["text"],
            memory=memory,
            client_id=client_id,
            signed_in_session=self._signed_in_session(),
        )
        await self.launch(started)

    async def on_chat_regenerate(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation")
        started = await services.chat_regenerate(
            owner=self.owner,
            conversation_id=conversation_id,
            message_id=_uuid_field(frame, "message", required=False),
            text=frame.get("text"),
            client_id=client_id,
            signed_in_session=self._signed_in_session(),
        )
        await self.launch(started)

    async def on_chat_continue(self, frame: dict[str, Any], client_id: str | None) -> None:
        started = await services.chat_continue(
            owner=self.owner,
            conversation_id=_uuid_field(frame, "conversation"),
            client_id=client_id,
            signed_in_session=self._signed_in_session(),
        )
        await self.launch(started)

    async def launch(self, started: services.StartedRun) -> None:
        # Subscribe before the run is announced, so this socket sees all of it.
        await self.watch(started.conversation.id)
        started_text = await services.run_launch(started, origin_channel=self.channel_name)
        # Sent before this handler returns, so before any delta of the run is dispatched here.
        if started_text:
            await self.send(text_data=started_text)

    async def on_chat_cancel(self, frame: dict[str, Any], client_id: str | None) -> None:
        run_id = _uuid_field(frame, "run")
        await services.run_cancel(owner=self.owner, run_id=run_id)

    async def on_conversation_watch(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation")
        # Ownership first: a stranger's conversation must not be subscribed to.
        await db_call(conversation_get)(owner=self.owner, conversation_id=conversation_id)
        # Subscribed before the snapshot is read, so no delta falls between the two.
        await self.watch(conversation_id)
        await self.send_json(
            await services.conversation_snapshot(owner=self.owner, conversation_id=conversation_id)
        )

    async def on_conversation_memory(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation")
        enabled = _bool_field(frame, "enabled")
        await services.conversation_set_memory(
            owner=self.owner,
            conversation_id=conversation_id,
            enabled=enabled,
            origin_channel=self.channel_name,
        )
        await self.watch(conversation_id)
        await self.send_json(
            await services.conversation_snapshot(owner=self.owner, conversation_id=conversation_id)
        )

    async def on_conversation_forget(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation")
        await services.conversation_forget(
            owner=self.owner, conversation_id=conversation_id, origin_channel=self.channel_name
        )
        await self.watch(conversation_id)
        await self.send_json(
            await services.conversation_snapshot(owner=self.owner, conversation_id=conversation_id)
        )

    async def on_conversation_rename(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation")
        # Answered through the owner's group: `conversation.renamed` reaches this socket too.
        await services.conversation_rename(
            owner=self.owner, conversation_id=conversation_id, title=frame.get("title")
        )

    async def on_message_feedback(self, frame: dict[str, Any], client_id: str | None) -> None:
        conversation_id = _uuid_field(frame, "conversation")
        message_id = _uuid_field(frame, "message")
        if "feedback" not in frame:
            raise InvalidRequest('`feedback` is required: "good", "bad" or null.')
        # Ownership first, then subscribed: the answer is the conversation's `message.feedback`.
        await db_call(conversation_get)(owner=self.owner, conversation_id=conversation_id)
        await self.watch(conversation_id)
        await services.message_feedback_set(
            owner=self.owner,
            conversation_id=conversation_id,
            message_id=message_id,
            feedback=frame["feedback"],
        )

    # These check the session in the call that saves their message (a trip to the database
    # thread fewer); every other frame of a signed-in socket checks it before it acts.
    STARTS_CHECKING_THE_SESSION = ("chat.send", "chat.regenerate", "chat.continue")

    FRAME_HANDLERS = {
        "chat.send": on_chat_send,
        "chat.regenerate": on_chat_regenerate,
        "chat.continue": on_chat_continue,
        "chat.cancel": on_chat_cancel,
        "conversation.watch": on_conversation_watch,
        "conversation.memory": on_conversation_memory,
        "conversation.forget": on_conversation_forget,
        "conversation.rename": on_conversation_rename,
        "message.feedback": on_message_feedback,
    }

    # Frames from the conversation groups.

    async def chat_frame(self, event: dict[str, Any]) -> None:
        await self.send(text_data=event["text"])

    async def run_started(self, event: dict[str, Any]) -> None:
        if event["origin"] != self.channel_name:  # the sender's socket has told its client
            await self.send(text_data=event["text"])

    async def conversation_active(self, event: dict[str, Any]) -> None:
        if event["group"] not in self.groups_watched:  # a watcher has `run.started` already
            await self.send(text_data=event["text"])

    async def session_ended(self, event: dict[str, Any]) -> None:
        """Signed out, or this visitor signed in, in another tab: the client comes back with the
        new cookie. Handled after any frame in hand, so a conversation that frame started before
        the sign-in's adoption is adopted here. A password change ends the account's sessions
        but the one it was made in, which is `renewed` under a new key: each socket checks its
        own."""
        if self.session_ended_reason:
            return  # on its way out already
        if event["reason"] == "password_changed":
            if await db_call(self._still_signed_in)():
                return
            event = {**event, "reason": "signed_out"}
        if event["reason"] == "signed_in" and self.owner.user_id is None:
            await db_call(services.conversations_adopt)(
                user_id=event["user_id"], visitor_key=self.owner.session_key
            )
        self.session_ended_reason = event["reason"]
        await self.send_json({"type": "session.ended", "reason": event["reason"]})
        await self.close(code=4401)

    async def conversation_changed(self, event: dict[str, Any]) -> None:
        if event["origin"] == self.channel_name:
            return  # this socket's own request, answered already
        try:
            snapshot = await services.conversation_snapshot(
                owner=self.owner, conversation_id=event["conversation"]
            )
        except ChatError:
            return  # deleted meanwhile, or no longer this owner's: nothing to show
        await self.send_json(snapshot)
