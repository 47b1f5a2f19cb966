"""The chat flow that the websocket consumer and the HTTP views share.

One message's life: the user's text is validated and saved with a new run (the conversation is
claimed, so only one run is active per conversation), then the run goes to the backend:
stateless when memory is off, on the conversation's thread (created lazily) when on. A stream
run is relayed by its own task, detached from any socket, so it finishes and is saved even when
every socket has gone; every frame goes through the conversation's channel-layer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import secrets
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import orjson
from channels.layers import get_channel_layer
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import signing
from django.core.mail import send_mail
from django.db import transaction
from django.db.models import Prefetch
from django.template.loader import render_to_string
from django.utils import timezone

from runs import sql
from runs.backend import BackendMessage, ChatTurn, ReplyCut, RunStarted, TextDelta, get_backend
from runs.db import db_batched, db_call
from runs.exceptions import (
    BackendTimeout,
    BackendUnavailable,
    Busy,
    ChatError,
    EmptyText,
    InvalidRequest,
    NoReply,
    NotContinuable,
    NotFound,
    RateLimited,
    RunConflict,
    SignedOut,
    TextTooLong,
    ThreadNotFound,
)
from runs.models import REPLY_CUT_NOTICE, Conversation, Message, Run
from runs.selectors import (
    Owner,
    conversation_get,
    conversation_queryset,
    conversation_to_dict,
    message_to_dict,
    reply_get,
    session_signs_in,
    transcript_from,
    transcript_rows,
)

logger = logging.getLogger(__name__)

TITLE_CHARS = 60
# The error code of a run whose relay stopped with its process (a restart, a crash).
INTERRUPTED = "interrupted"
MEMORY_LOST_NOTICE = (
    "The assistant's earlier memory of this conversation was gone from the backend, "
    "so it started a fresh memory with this message."
)
# What a continuation asks the model, in place of a message of the user's: never shown in the
# transcript, and once the run ends, no longer remembered either (_thread_join_continuation).
CONTINUE_PROMPT = (
    "Continue your last reply from exactly where it stopped, without repeating any of it."
)


# Frames and groups.


def conversation_group(conversation_id: uuid.UUID | str) -> str:
    return f"conversation.{uuid.UUID(str(conversation_id)).hex}"


def owner_group(owner: Owner) -> str:
    """The group of every socket one user or visitor has open: their conversation list. Hashed,
    since a visitor's key is a secret and group names are limited."""
    return f"owner.{hashlib.sha256(owner.identity.encode()).hexdigest()[:40]}"


def session_group(session_key: str) -> str:
    """The group of every socket opened with one signed-in session: told when it signs out.
    Hashed, since a session key is a secret."""
    return f"session.{hashlib.sha256(session_key.encode()).hexdigest()[:40]}"


async def session_ended_publish(*, group: str, reason: str, user_id: int | None = None) -> None:
    """Tells the sockets of a session that ended (`signed_out`) or of a visitor who signed in
    (`signed_in`, as `user_id`) to leave: each says so to its client and closes."""
    await get_channel_layer().group_send(
        group, {"type": "session.ended", "reason": reason, "user_id": user_id}
    )


async def conversation_active_publish(*, owner: Owner, conversation: Conversation) -> None:
    """Tells the owner's other sockets that something was just said in this conversation, so
    their lists show it at the top (a new one appears). Sockets watching it skip the frame:
    `run.started` told them already."""
    conversation_id = str(conversation.id)
    frame = {
        "type": "conversation.active",
        "conversation": conversation_id,
        "title": conversation.title,
    }
    await get_channel_layer().group_send(
        owner_group(owner),
        {
            "type": "conversation.active",
            "group": conversation_group(conversation_id),
            "text": orjson.dumps(frame).decode(),
        },
    )


def frame_message(frame: dict[str, Any]) -> dict[str, Any]:
    """The channel-layer message that carries one protocol frame to a group's sockets, encoded
    once for all of them (`ChatConsumer.chat_frame` sends it on as it is)."""
    return {"type": "chat.frame", "text": orjson.dumps(frame).decode()}


async def frame_publish(*, conversation_id: uuid.UUID | str, frame: dict[str, Any]) -> None:
    """Sends one protocol frame to every socket watching the conversation."""
    await get_channel_layer().group_send(conversation_group(conversation_id), frame_message(frame))


async def owner_frame_publish(*, owner: Owner, frame: dict[str, Any]) -> None:
    """Sends one protocol frame to every socket of the owner: news of their conversation list."""
    await get_channel_layer().group_send(owner_group(owner), frame_message(frame))


async def conversation_changed_publish(
    *, conversation_id: uuid.UUID | str, origin_channel: str = ""
) -> None:
    """Tells every socket watching the conversation that its switch or memory changed, so each
    sends its page a fresh snapshot (another tab, another device, a reviewer's forget). The
    socket that made the change (`origin_channel`) answers its own request already."""
    await get_channel_layer().group_send(
        conversation_group(conversation_id),
        {
            "type": "conversation.changed",
            "conversation": str(conversation_id),
            "origin": origin_channel,
        },
    )


# Owners.

VISITOR_SESSION_KEY = "chat_visitor"


def owner_for_session(*, user: Any, session: Any) -> Owner:
    """The owner behind a request or socket; an anonymous visitor gets a key of their own."""
    if user is not None and getattr(user, "is_authenticated", False):
        return Owner(user_id=user.pk, session_key="")
    visitor_key = session.get(VISITOR_SESSION_KEY)
    if not visitor_key:
        visitor_key = session[VISITOR_SESSION_KEY] = secrets.token_urlsafe(24)
        session.save()
    return Owner(user_id=None, session_key=visitor_key)


def conversations_adopt(*, user_id: int, visitor_key: str) -> int:
    """On sign-in, the visitor's anonymous conversations become the user's."""
    if not visitor_key:
        return 0
    return Conversation.objects.filter(owner__isnull=True, session_key=visitor_key).update(
        owner_id=user_id, session_key=""
    )


# Text.


def _one_line(text: str) -> str:
    """`text` with every run of whitespace, line breaks included, made one space, and trimmed."""
    return re.sub(r"\s+", " ", text).strip()


def _storable_check(value: str, *, name: str) -> None:
    """Refuses what no database column can keep: lone surrogates and NUL characters."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidRequest(f"`{name}` must be valid Unicode (it has a lone surrogate).") from None
    if "\x00" in value:
        raise InvalidRequest(f"`{name}` must not contain NUL characters.")


def message_text_clean(*, text: Any) -> str:
    if not isinstance(text, str):
        raise InvalidRequest("`text` must be a string.")
    cleaned = text.strip()
    if not cleaned:
        raise EmptyText()
    _storable_check(cleaned, name="text")
    limit = settings.CHAT_MAX_MESSAGE_CHARS
    if len(cleaned) > limit:
        raise TextTooLong(
            f"A message can be at most {limit:,} characters; this one has {len(cleaned):,}."
        )
    return cleaned


def conversation_title_clean(*, title: Any) -> str:
    """A title as the user typed it, on one line, or a clear refusal."""
    if not isinstance(title, str):
        raise InvalidRequest("`title` is required and must be a string.")
    cleaned = _one_line(title)
    if not cleaned:
        raise InvalidRequest("A title cannot be blank.")
    _storable_check(cleaned, name="title")
    limit = Conversation._meta.get_field("title").max_length
    if len(cleaned) > limit:
        raise InvalidRequest(
            f"A title can be at most {limit} characters; this one has {len(cleaned):,}."
        )
    return cleaned


SEARCH_CHARS = 200
# Past this many, "Show older" stops: a search finds the rest.
LIST_OFFSET_MAX = 10_000


def conversation_search_clean(*, query: Any) -> str:
    """A search of the conversation list as typed, on one line; "" is no search."""
    if query is None:
        return ""
    if not isinstance(query, str):
        raise InvalidRequest("`q` must be a string.")
    cleaned = _one_line(query)
    _storable_check(cleaned, name="q")
    if len(cleaned) > SEARCH_CHARS:
        raise InvalidRequest(
            f"A search can be at most {SEARCH_CHARS} characters; this one has {len(cleaned):,}."
        )
    return cleaned


def list_offset_clean(*, offset: Any) -> int:
    """Where a page of the conversation list starts: how many newer ones it skips."""
    if offset is None or offset == "":
        return 0
    try:
        value = int(offset)
    except (TypeError, ValueError):
        value = -1
    if not 0 <= value <= LIST_OFFSET_MAX or isinstance(offset, bool):
        raise InvalidRequest(f"`offset` must be a whole number from 0 to {LIST_OFFSET_MAX:,}.")
    return value


def _title_from(text: str) -> str:
    title = _one_line(text)
    return title if len(title) <= TITLE_CHARS else title[: TITLE_CHARS - 1].rstrip() + "…"


# Starting a run.


def _rate_limit_check(*, owner: Owner) -> None:
    """At most CHAT_RATE_LIMIT messages (or replies regenerated) a minute per user or visitor,
    counted in the database so that it holds across processes."""
    limit = settings.CHAT_RATE_LIMIT
    if limit <= 0:
        return
    sent = sql.owner_runs_count(
        user_id=owner.user_id,
        session_key=owner.session_key,
        since=timezone.now() - timedelta(minutes=1),
    )
    if sent >= limit:
        raise RateLimited(f"You can send {limit} messages a minute. Wait a moment and try again.")


@dataclass(frozen=True, slots=True)
class StartedRun:
    conversation: Conversation
    run: Run
    user_message: Message
    text: str
    client_id: str | None = None
    # What a regeneration takes the place of: the old reply and what came after it (edited,
    # the old message too). What of it the thread remembers is the run's `rewind_run_ids`.
    replaces: tuple[Message, ...] = ()
    # A continuation's: the cut reply it goes on with, and (stateless) the exchange it is told
    # again before CONTINUE_PROMPT.
    continues: Message | None = None
    history: tuple[ChatTurn, ...] = ()

    def started_frame(self) -> dict[str, Any]:
        return {
            "type": "run.started",
            "run": str(self.run.id),
            "conversation": str(self.conversation.id),
            "mode": self.run.mode,
            "user_message": message_to_dict(self.user_message),
            "client_id": self.client_id,
            "replaces": [str(message.id) for message in self.replaces],
            "continues": str(self.continues.id) if self.continues is not None else None,
        }


def _conversation_lock_at_rest(*, owner: Owner, conversation_id: Any) -> Conversation:
    """The owner's conversation, its row locked until the transaction ends, for a new run:
    NotFound for another's, Busy while a run of it is active."""
    conversation = sql.owner_conversation_lock(
        user_id=owner.user_id, session_key=owner.session_key, conversation_id=conversation_id
    )
    if conversation is None:
        raise NotFound()
    if conversation.active_run_status in Run.ACTIVE_STATUSES:
        raise Busy()
    return conversation


def _run_claim(
    *,
    conversation: Conversation,
    mode: str,
    relay_channel: str,
    changes: dict[str, Any],
    rewind_run_ids: tuple[str, ...] = (),
    continues: Message | None = None,
) -> Run:
    """Saves a pending run and claims the conversation for it, with `changes` to its row; Busy
    when a run of it is active. The claim: only the request that sets active_run from empty (or
    from a finished run) may start a run, whichever process it runs in."""
    run = sql.row_insert(
        Run(
            heartbeat_at=timezone.now(),
            relay_channel=relay_channel,
            conversation=conversation,
            mode=mode,
            thread_id=conversation.thread_id if mode == Run.Mode.THREAD else "",
            rewind_thread_id=conversation.thread_id if rewind_run_ids else "",
            rewind_run_ids=list(rewind_run_ids),
            continues=continues,
        )
    )
    claim = {"active_run": run, **changes, "updated_at": timezone.now()}
    if not sql.conversation_claim(
        conversation_id=conversation.pk,
        values={**claim, "active_run": run.pk},
        active_statuses=Run.ACTIVE_STATUSES,
    ):
        raise Busy()
    for name, value in claim.items():  # the row as the update left it, without a read
        setattr(conversation, name, value)
    return run


def _chat_start(
    *,
    owner: Owner,
    conversation_id: Any,
    text: str,
    memory: bool,
    client_id: str | None,
    relay_channel: str,
) -> StartedRun:
    _rate_limit_check(owner=owner)
    with transaction.atomic(savepoint=False):
        if conversation_id is None:
            conversation = sql.row_insert(
                Conversation(title=_title_from(text), memory=memory, **owner.conversation_fields())
            )
        else:
            conversation = _conversation_lock_at_rest(owner=owner, conversation_id=conversation_id)
        run = _run_claim(
            conversation=conversation,
            mode=Run.Mode.THREAD if memory else Run.Mode.STATELESS,
            relay_channel=relay_channel,
            changes={"memory": memory, "title": conversation.title or _title_from(text)},
        )
        user_message = sql.row_insert(
            Message(
                conversation=conversation,
                role=Message.Role.USER,
                text=text,
                remembered=memory,
                run=run,
            )
        )
    return StartedRun(
        conversation=conversation,
        run=run,
        user_message=user_message,
        text=text,
        client_id=client_id,
    )


def _run_save(
    *,
    save: Callable[..., StartedRun],
    owner: Owner,
    signed_in_session: str | None,
    **fields: Any,
) -> StartedRun | None:
    """None, and nothing saved, when `signed_in_session` no longer signs the owner in. Not
    raised: the check's own write (Django flushes a session whose password hash is stale) is
    committed, and the other calls of the batch are not run again."""
    if signed_in_session is not None and not session_signs_in(
        session_key=signed_in_session, user_id=owner.user_id
    ):
        return None
    return save(owner=owner, **fields)


async def _run_begin(
    save: Callable[..., StartedRun],
    *,
    owner: Owner,
    signed_in_session: str | None,
    **fields: Any,
) -> StartedRun:
    """Saves a run's start on the database thread (`save`, with the channel of this process's
    relays), then tells the owner's other sockets. With `signed_in_session`, the session is
    checked in the same batched call, so a signed-in sender's message costs one trip to the
    database thread, as an anonymous one's does, and nothing is saved for a session that ended."""
    relay_channel = await relays_ensure()
    started = await db_batched(_run_save)(
        save=save,
        owner=owner,
        signed_in_session=signed_in_session,
        relay_channel=relay_channel,
        **fields,
    )
    if started is None:
        raise SignedOut()
    await conversation_active_publish(owner=owner, conversation=started.conversation)
    return started


async def chat_start(
    *,
    owner: Owner,
    conversation_id: Any,
    text: Any,
    memory: bool,
    client_id: str | None = None,
    signed_in_session: str | None = None,
) -> StartedRun:
    """Validates and saves the user's message and a pending run, before the backend is called.
    `signed_in_session`: the session a signed-in owner's socket was opened with, which must
    still sign them in (else SignedOut, and nothing is saved)."""
    return await _run_begin(
        _chat_start,
        owner=owner,
        signed_in_session=signed_in_session,
        conversation_id=conversation_id,
        text=message_text_clean(text=text),
        memory=memory,
        client_id=client_id,
    )


def _thread_runs_of(messages: Iterable[Message], *, thread_id: str) -> tuple[str, ...]:
    """The backend runs that wrote `messages` into the thread `thread_id`, oldest first; and
    for a run that was itself a regeneration, the runs it was to take out of the thread: had
    it failed before it did, they are still there. (Those began where it did or later, so the
    thread still goes back to the same place.)"""
    if not thread_id:
        return ()
    run_ids: list[str] = []
    for message in messages:
        run = message.run
        if run is None:
            continue
        candidates = []
        if run.mode == Run.Mode.THREAD and run.thread_id == thread_id and run.backend_run_id:
            candidates.append(run.backend_run_id)
        if run.rewind_thread_id == thread_id:
            candidates.extend(run.rewind_run_ids)
        for run_id in candidates:
            if run_id not in run_ids:
                run_ids.append(run_id)
    return tuple(run_ids)


def _chat_regenerate(
    *,
    owner: Owner,
    conversation_id: Any,
    message_id: uuid.UUID | None,
    text: str | None,
    client_id: str | None,
    relay_channel: str,
) -> StartedRun:
    _rate_limit_check(owner=owner)
    with transaction.atomic(savepoint=False):
        conversation = _conversation_lock_at_rest(owner=owner, conversation_id=conversation_id)
        from_message = transcript_from(conversation_id=conversation.pk, message_id=message_id)
        user_message, after = from_message[0], from_message[1:]
        # Asked again as it was asked: remembered or not, whatever the switch says now.
        mode = Run.Mode.THREAD if user_message.remembered else Run.Mode.STATELESS
        rewind_run_ids = _thread_runs_of(from_message, thread_id=conversation.thread_id)
        run = _run_claim(
            conversation=conversation,
            mode=mode,
            relay_channel=relay_channel,
            changes={},
            rewind_run_ids=rewind_run_ids,
        )
        replaced = tuple(after) if text is None else tuple(from_message)
        if replaced:
            now = timezone.now()
            sql.rows_update(
                Message, values={"replaced_at": now}, pk=tuple(message.pk for message in replaced)
            )
            for message in replaced:
                message.replaced_at = now
        if text is not None:
            user_message = sql.row_insert(
                Message(
                    conversation=conversation,
                    role=Message.Role.USER,
                    text=text,
                    remembered=user_message.remembered,
                    run=run,
                )
            )
    return StartedRun(
        conversation=conversation,
        run=run,
        user_message=user_message,
        text=user_message.text,
        client_id=client_id,
        replaces=replaced,
    )


async def chat_regenerate(
    *,
    owner: Owner,
    conversation_id: Any,
    message_id: uuid.UUID | None = None,
    text: Any = None,
    client_id: str | None = None,
    signed_in_session: str | None = None,
) -> StartedRun:
    """Asks again from one of the user's messages (`message_id`; by default the last, which
    must have a reply): a new run on that message, as it was sent (remembered or not), in
    place of its reply and of everything after it; with `text`, the message is first edited
    to say it. What is replaced is kept for review but leaves the transcript and the
    assistant's memory. `signed_in_session` as for `chat_start`."""
    return await _run_begin(
        _chat_regenerate,
        owner=owner,
        signed_in_session=signed_in_session,
        conversation_id=conversation_id,
        message_id=message_id,
        text=None if text is None else message_text_clean(text=text),
        client_id=client_id,
    )


def _chat_continue(
    *, owner: Owner, conversation_id: Any, client_id: str | None, relay_channel: str
) -> StartedRun:
    _rate_limit_check(owner=owner)
    with transaction.atomic(savepoint=False):
        conversation = _conversation_lock_at_rest(owner=owner, conversation_id=conversation_id)
        try:
            user_message, *_, reply = transcript_from(conversation_id=conversation.pk)
        except (NoReply, ValueError):
            raise NotContinuable() from None
        run = reply.run
        if run is None or not run.reply_cut:
            raise NotContinuable()
        if reply.remembered and run.thread_id != conversation.thread_id:
            raise NotContinuable(
                "The assistant no longer remembers this reply, so it cannot go on with it: "
                "Regenerate asks again."
            )
        # Remembered or not as the reply was: a thread holds the exchange already, a stateless
        # run is told it again.
        mode = Run.Mode.THREAD if reply.remembered else Run.Mode.STATELESS
        run = _run_claim(
            conversation=conversation,
            mode=mode,
            relay_channel=relay_channel,
            changes={},
            continues=reply,
        )
    history = ()
    if mode == Run.Mode.STATELESS:
        history = (ChatTurn("user", user_message.text), ChatTurn("assistant", reply.text))
    return StartedRun(
        conversation=conversation,
        run=run,
        user_message=user_message,
        text=CONTINUE_PROMPT,
        client_id=client_id,
        continues=reply,
        history=history,
    )


async def chat_continue(
    *,
    owner: Owner,
    conversation_id: Any,
    client_id: str | None = None,
    signed_in_session: str | None = None,
) -> StartedRun:
    """Asks the assistant to go on with the conversation's last reply, which its length limit
    cut: a new run, remembered or not as that reply was, whose text is added to it.
    NotContinuable for any other reply. `signed_in_session` as for `chat_start`."""
    return await _run_begin(
        _chat_continue,
        owner=owner,
        signed_in_session=signed_in_session,
        conversation_id=conversation_id,
        client_id=client_id,
    )


# The relay of a streamed run.


@dataclass
class LiveRun:
    """A run this process is relaying: the reply so far, for snapshots and for the final save.

    A token is published on the event loop's next turn, together with whatever else arrived in
    the same network read: at low load one frame per token. While this process relays at least
    CHAT_BATCH_DELTAS_FROM replies, a reply's frames after its first go out at most every
    CHAT_BATCH_DELTAS_MS, each carrying every token that came meanwhile: one frame, one send
    per socket and one client wakeup for several tokens is what keeps a busy process's CPU for
    the replies, and the first token still goes out at once. The replies waiting so share one
    timer (`_FlushTick`), so their frames go out together, on one wakeup of the process. On a
    networked layer (Redis) tokens that arrive while a send is in flight also join the next
    frame.

    Nothing is published before the run is announced (`announce`): its `run.started` always
    comes first.
    """

    run_id: uuid.UUID
    conversation_id: uuid.UUID
    mode: str
    text_in: str
    thread_id: str = ""
    rewind_thread_id: str = ""
    rewind_run_ids: tuple[str, ...] = ()
    history: tuple[ChatTurn, ...] = ()
    continues: Message | None = None  # a continuation's: the cut reply it goes on with
    backend_run_id: str = ""
    parts: list[str] = field(default_factory=list)  # published, as the watchers have it
    pending: list[str] = field(default_factory=list)  # received, published on the next turn
    seq: int = 0
    first_token_at: datetime | None = None
    notice: str = ""
    cancel_requested: bool = False
    finishing: bool = False
    task: asyncio.Task | None = None
    marking: asyncio.Future | None = None
    flush_handle: asyncio.Handle | None = None
    waits_for_tick: bool = False  # its pending text goes out with the next `_FlushTick`
    announce_timeout: asyncio.TimerHandle | None = None
    publishing: asyncio.Future | None = None
    published_at: float = float("-inf")  # the event loop's clock at the last frame
    # What `run.started` says, the socket that sent the message (it tells its client itself),
    # and whether the watchers have been told.
    started: StartedRun | None = None
    origin_channel: str = ""
    announced: bool = False
    announcement: asyncio.Future | None = None  # the encoded `run.started`, once announced
    # Worked out once, not per delta.
    group: str = field(init=False)
    run_key: str = field(init=False)
    batch_from: int = field(init=False)
    batch_seconds: float = field(init=False)

    def __post_init__(self) -> None:
        self.group = conversation_group(self.conversation_id)
        self.run_key = str(self.run_id)
        self.batch_seconds = max(settings.CHAT_BATCH_DELTAS_MS, 0) / 1000
        # Batching off is a threshold no process reaches.
        self.batch_from = settings.CHAT_BATCH_DELTAS_FROM if self.batch_seconds else sys.maxsize

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def announce(self) -> None:
        """Tells the conversation's watchers that the run started (the sending socket is told
        by its consumer, with the text `announcement` resolves to), then lets the deltas go.
        Called once the backend request is on its way, so that in a burst of messages every
        request leaves before any announcement is made; also, whatever happens, before the
        run's final frame. Once only."""
        if self.announced:
            return
        self.announced = True
        if self.announce_timeout is not None:
            # Else it wakes the process for nothing a quarter of a second after every start.
            self.announce_timeout.cancel()
            self.announce_timeout = None
        text = ""
        try:
            if self.started is not None:
                text = orjson.dumps(self.started.started_frame()).decode()
                self._publish({"type": "run.started", "text": text, "origin": self.origin_channel})
        finally:
            if self.announcement is not None and not self.announcement.done():
                self.announcement.set_result(text)
        if self.pending:
            self.flush()

    def announce_soon(self) -> None:
        """`announce` on the event loop's next turn: behind the other requests in line."""
        asyncio.get_running_loop().call_soon(self.announce)

    def notice_add(self, text: str) -> None:
        if text not in self.notice:
            self.notice = f"{self.notice} {text}".strip()

    def delta_add(self, text: str) -> None:
        self.pending.append(text)
        if self.flush_handle is not None or self.waits_for_tick or not self.announced:
            return
        loop = asyncio.get_running_loop()
        if len(LIVE_RUNS) >= self.batch_from:
            # Never due before the first frame: the first token does not wait.
            due = self.published_at + self.batch_seconds
            if due > loop.time():
                self.waits_for_tick = True
                _flush_tick(loop).add(self, due=due)
                return
        self.flush_handle = loop.call_soon(self.flush)

    def flush(self) -> None:
        """Publishes the pending text as one `run.delta`."""
        if self.flush_handle is not None:
            self.flush_handle.cancel()
            self.flush_handle = None
        if self.waits_for_tick:
            self.waits_for_tick = False
            _flush_tick(asyncio.get_running_loop()).discard(self)
        if not self.pending or not self.announced:
            return
        if self.publishing is not None and not self.publishing.done():
            # A networked layer takes a round trip a send: what arrives meanwhile goes out
            # in one frame when the send in flight is done, so the frames keep their order and
            # a busy relay makes fewer, larger sends instead of queueing one per token.
            return
        text = "".join(self.pending)
        self.pending.clear()
        self.parts.append(text)
        self.seq += 1
        self.published_at = asyncio.get_running_loop().time()
        frame = {"type": "run.delta", "run": self.run_key, "seq": self.seq, "text": text}
        self._publish(frame_message(frame))

    def _publish(self, message: dict[str, Any]) -> None:
        """Sends `message` to the conversation's group, after the ones published before it."""
        layer = get_channel_layer()
        send_nowait = getattr(layer, "group_send_nowait", None)
        if send_nowait is not None:
            send_nowait(self.group, message)
            return
        self.publishing = asyncio.ensure_future(layer.group_send(self.group, message))
        self.publishing.add_done_callback(self._published)

    def _published(self, publishing: asyncio.Future) -> None:
        if not publishing.cancelled() and publishing.exception() is not None:
            logger.warning(
                "run %s: a delta was not published: %r", self.run_id, publishing.exception()
            )
        self.flush()

    async def drained(self) -> None:
        """Publishes what is pending and waits until every delta is handed to the layer."""
        self.flush()
        while self.publishing is not None and not self.publishing.done():
            with contextlib.suppress(Exception):
                await self.publishing
            self.flush()


class _FlushTick:
    """One timer for every reply whose batched frame is waiting: due at the earliest of their
    times, it publishes them all, so a busy process wakes once for a round of frames instead of
    once for each reply's (and the frames' readers wake together). A reply's frames still go
    out at most every CHAT_BATCH_DELTAS_MS, or sooner, with another's that was due."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.waiting: dict[uuid.UUID, LiveRun] = {}
        self.handle: asyncio.TimerHandle | None = None

    def add(self, live: LiveRun, *, due: float) -> None:
        self.waiting[live.run_id] = live
        if self.handle is not None and self.handle.when() <= due:
            return
        if self.handle is not None:
            self.handle.cancel()
        self.handle = self.loop.call_at(due, self.fire)

    def discard(self, live: LiveRun) -> None:
        self.waiting.pop(live.run_id, None)

    def fire(self) -> None:
        self.handle = None
        waiting, self.waiting = self.waiting, {}
        for live in waiting.values():
            live.flush()


_flush_ticks: dict[asyncio.AbstractEventLoop, _FlushTick] = {}


def _flush_tick(loop: asyncio.AbstractEventLoop) -> _FlushTick:
    tick = _flush_ticks.get(loop)
    if tick is None:
        for old in [old for old in _flush_ticks if old.is_closed()]:
            del _flush_ticks[old]
        tick = _flush_ticks[loop] = _FlushTick(loop)
    return tick


# The longest a run waits for its backend request to leave before it is announced anyway.
ANNOUNCE_WAIT_SECONDS = 0.25

# Runs relayed by this process, by run id. Strong references keep the detached tasks alive.
LIVE_RUNS: dict[uuid.UUID, LiveRun] = {}


def _thread_attach(
    *, conversation_id: uuid.UUID, run_id: uuid.UUID, thread_id: str, lost: bool
) -> None:
    with transaction.atomic():
        updates: dict[str, Any] = {"thread_id": thread_id}
        if lost:
            updates["memory_lost_at"] = timezone.now()
        Conversation.objects.filter(pk=conversation_id).update(**updates)
        Run.objects.filter(pk=run_id).update(thread_id=thread_id)


async def _thread_new(live: LiveRun, *, lost: bool) -> str:
    thread = await get_backend().thread_create(
        metadata={"conversation_id": str(live.conversation_id)}
    )
    await db_call(_thread_attach)(
        conversation_id=live.conversation_id,
        run_id=live.run_id,
        thread_id=thread.thread_id,
        lost=lost,
    )
    return thread.thread_id


def _run_mark_streaming(*, run_id: uuid.UUID, backend_run_id: str) -> None:
    sql.rows_update(
        Run,
        values={"status": Run.Status.STREAMING, "backend_run_id": backend_run_id},
        pk=run_id,
        status=Run.Status.PENDING,
    )


def _run_finish(
    *,
    run_id: uuid.UUID,
    conversation_id: uuid.UUID,
    mode: str,
    status: str,
    text: str,
    first_token_at: datetime | None,
    error_code: str = "",
    error_message: str = "",
    notice: str = "",
    backend_run_id: str = "",
    continues_id: uuid.UUID | None = None,
) -> tuple[Run, Message] | None:
    """Saves the reply (complete or as far as it got) and frees the conversation, in a constant
    number of queries; a continuation's text is added to the reply it continues. None when the
    run had already been finished (e.g. swept as interrupted)."""
    now = timezone.now()
    updates: dict[str, Any] = {
        "status": status,
        "finished_at": now,
        "first_token_at": first_token_at,
        "reply_chars": len(text),
        "error_code": error_code,
        "error_message": error_message,
        "partial_text": "",
        "heartbeat_at": now,
    }
    if notice:
        updates["notice"] = notice
    if backend_run_id:
        updates["backend_run_id"] = backend_run_id
    with transaction.atomic(savepoint=False):
        # Only one finisher wins, whichever process it runs in.
        if not sql.rows_update(Run, values=updates, pk=run_id, status=Run.ACTIVE_STATUSES):
            return None
        message = None
        if continues_id is not None:
            message = Message.objects.select_related("run").filter(pk=continues_id).first()
        if message is None:
            message = sql.row_insert(
                Message(
                    conversation_id=conversation_id,
                    role=Message.Role.ASSISTANT,
                    text=text,
                    remembered=mode == Run.Mode.THREAD,
                    run_id=run_id,
                )
            )
        elif text:
            # Continued: the reply goes on, and tells how this run ended (cut again, stopped).
            message.text = reply_continued(message.text, text)
            message.run_id = run_id
            sql.rows_update(Message, values={"text": message.text, "run": run_id}, pk=message.pk)
        sql.rows_update(
            Conversation,
            values={"active_run": None, "updated_at": now},
            pk=conversation_id,
            active_run=run_id,
        )
    # What the final frame tells of the run, as the update left it, without a read.
    run = Run(id=run_id, conversation_id=conversation_id, mode=mode, **{"notice": "", **updates})
    if message.run_id == run_id:
        message.run = run
    # else a continuation that added nothing: the reply still tells how its own run ended.
    return run, message


def reply_continued(text: str, more: str) -> str:
    """A reply and its continuation as one text: a space between two words, none where
    either side already has one or the continuation begins with punctuation."""
    if not text or not more or text[-1].isspace() or more[0].isspace() or more[0] in ".,;:!?)]}":
        return text + more
    return f"{text} {more}"


def _final_frame(run: Run, message: Message) -> dict[str, Any]:
    frame: dict[str, Any] = {
        "type": {
            Run.Status.COMPLETED: "run.completed",
            Run.Status.CANCELLED: "run.cancelled",
            Run.Status.FAILED: "run.failed",
        }[run.status],
        "run": str(run.id),
        "message": message_to_dict(message, message.run),
    }
    if run.error_code:
        frame["error"] = {"code": run.error_code, "message": run.error_message}
    return frame


async def _relay_finish(
    live: LiveRun, *, status: str, error: ChatError | None = None
) -> dict[str, Any] | None:
    """Saves the outcome, tells every watcher, and returns the final frame."""
    live.finishing = True
    live.announce()  # if the request never went out: its run.started before its end
    await live.drained()
    if live.marking is not None:
        with contextlib.suppress(Exception):
            await live.marking
    # Not while the server stops, nor to wait out again a backend that just did not answer.
    unreachable = isinstance(error, BackendUnavailable | BackendTimeout) or (
        error is not None and error.code == INTERRUPTED
    )
    if live.continues is not None and live.thread_id and not unreachable:
        await _thread_join_continuation(live, continued=live.continues)
    finished = await db_batched(_run_finish)(
        run_id=live.run_id,
        conversation_id=live.conversation_id,
        mode=live.mode,
        status=status,
        text=live.text,
        first_token_at=live.first_token_at,
        error_code=error.code if error else "",
        error_message=error.message if error else "",
        notice=live.notice,
        backend_run_id=live.backend_run_id,
        continues_id=live.continues.id if live.continues is not None else None,
    )
    if finished is None:
        return None
    frame = _final_frame(*finished)
    await frame_publish(conversation_id=live.conversation_id, frame=frame)
    return frame


async def _thread_join_continuation(live: LiveRun, *, continued: Message) -> None:
    """After a remembered continuation, however it ended: the thread remembers the reply as
    the transcript shows it, one message with what the run added, and not the request to go on
    (CONTINUE_PROMPT), which the user never sent. Done before the run is finished, while the
    conversation takes no other run; should it fail, the thread keeps both, as it had them."""
    backend = get_backend()
    try:
        state = await backend.thread_state(thread_id=live.thread_id)
        messages = state.messages
        # The request is the run's input: last, or followed by the run's reply only.
        asked = next(
            (
                index
                for index in range(len(messages) - 1, max(len(messages) - 3, 0), -1)
                if messages[index].role == "user" and messages[index].text == CONTINUE_PROMPT
            ),
            None,
        )
        if asked is None or messages[asked - 1].role != "assistant":
            return  # a memory lost meanwhile: the new one starts with the request
        reply = messages[asked - 1]
        joined = BackendMessage(
            role="assistant",
            id=reply.id,
            text=reply_continued(continued.text, live.text),
            cut=REPLY_CUT_NOTICE in live.notice if live.text else reply.cut,
        )
        await backend.thread_messages_edit(
            thread_id=live.thread_id,
            remove=[message.id for message in messages[asked:]],
            rewrite=[joined],
        )
    except ChatError:
        logger.warning("run %s: the continuation stays apart in the memory", live.run_id)
    except Exception:
        # Whatever went wrong here, the reply is still saved after.
        logger.exception("run %s: the continuation stays apart in the memory", live.run_id)


async def _on_backend(live: LiveRun, attempt: Callable[[str | None], Awaitable[None]]) -> None:
    """Runs `attempt` stateless or on the conversation's thread, creating the thread lazily."""
    if live.rewind_run_ids:
        await _thread_rewind(live)
    thread_id: str | None = None
    if live.mode == Run.Mode.THREAD:
        thread_id = live.thread_id = live.thread_id or await _thread_new(live, lost=False)
    try:
        await attempt(thread_id)
    except ThreadNotFound:
        if thread_id is None:
            raise
        # The thread was deleted behind the site's back: say so, and start a new memory.
        live.notice_add(MEMORY_LOST_NOTICE)
        live.thread_id = await _thread_new(live, lost=True)
        await attempt(live.thread_id)


async def _thread_rewind(live: LiveRun) -> None:
    """A regeneration: what it replaces leaves the assistant's memory before the new run asks,
    whichever way that run is asked. The thread goes back to where it stood before the first
    of the replaced runs it holds; when that was its first run, the thread is deleted (a
    remembered run then starts a new one)."""
    backend = get_backend()
    thread_id = live.rewind_thread_id
    try:
        for run_id in live.rewind_run_ids:
            fork = await backend.thread_fork_point(thread_id=thread_id, run_id=run_id)
            if fork is not None:
                break
        else:
            return  # the thread holds nothing of those runs
        if fork.checkpoint_id is not None:
            await backend.thread_rewind(thread_id=thread_id, checkpoint_id=fork.checkpoint_id)
            return
        await backend.thread_delete(thread_id=thread_id)
    except ThreadNotFound:
        return  # gone already: a remembered run finds it gone, and says so
    await db_call(_conversation_clear_thread)(
        conversation_id=live.conversation_id, thread_id=thread_id
    )
    if live.thread_id == thread_id:
        live.thread_id = ""


async def _run_to_end(
    live: LiveRun, attempt: Callable[[str | None], Awaitable[None]]
) -> dict[str, Any] | None:
    """Runs `attempt` and saves the reply however it ends; returns the final frame."""
    try:
        await _on_backend(live, attempt)
    except asyncio.CancelledError:
        if live.cancel_requested:
            return await _relay_finish(live, status=Run.Status.CANCELLED)
        await _relay_finish(
            live,
            status=Run.Status.FAILED,
            error=ChatError(
                "The server stopped while the assistant was answering.", code=INTERRUPTED
            ),
        )
        raise
    except RunConflict as exc:
        return await _relay_finish(live, status=Run.Status.FAILED, error=Busy(exc.message))
    except ChatError as exc:
        return await _relay_finish(live, status=Run.Status.FAILED, error=exc)
    except Exception:
        logger.exception("run %s failed", live.run_id)
        return await _relay_finish(live, status=Run.Status.FAILED, error=ChatError())
    else:
        return await _relay_finish(
            live, status=Run.Status.CANCELLED if live.cancel_requested else Run.Status.COMPLETED
        )
    finally:
        # Only once the reply is saved: a snapshot meanwhile still finds the text so far.
        LIVE_RUNS.pop(live.run_id, None)


async def _relay(live: LiveRun) -> None:
    backend = get_backend()

    async def stream(thread_id: str | None) -> None:
        events = backend.run_stream(
            text=live.text_in,
            history=live.history,
            thread_id=thread_id,
            on_sent=live.announce_soon,
        )
        async with aclosing(events):
            async for event in events:
                if type(event) is TextDelta:
                    if live.first_token_at is None:
                        live.first_token_at = timezone.now()
                    live.delta_add(event.text)
                elif type(event) is ReplyCut:
                    live.notice_add(REPLY_CUT_NOTICE)
                elif type(event) is RunStarted:
                    live.announce()  # should the request's trace not have told
                    live.backend_run_id = event.run_id
                    # Not awaited: the first token need not wait for this write. Batched calls
                    # run in order, so it lands before the run is finished.
                    live.marking = asyncio.ensure_future(
                        db_batched(_run_mark_streaming)(
                            run_id=live.run_id, backend_run_id=event.run_id
                        )
                    )

    await _run_to_end(live, stream)


def _live_run(started: StartedRun, *, origin_channel: str = "") -> LiveRun:
    live = LiveRun(
        run_id=started.run.id,
        conversation_id=started.conversation.id,
        mode=started.run.mode,
        text_in=started.text,
        thread_id=started.run.thread_id,
        rewind_thread_id=started.run.rewind_thread_id,
        rewind_run_ids=tuple(started.run.rewind_run_ids),
        history=started.history,
        continues=started.continues,
        started=started,
        origin_channel=origin_channel,
        announcement=asyncio.get_running_loop().create_future(),
    )
    LIVE_RUNS[live.run_id] = live
    return live


async def run_launch(started: StartedRun, *, origin_channel: str = "") -> str:
    """Starts the run's relay task and returns its `run.started` frame, encoded, once the run
    is announced: when its backend request is on its way (or has failed), at the latest after
    ANNOUNCE_WAIT_SECONDS.

    The conversation's watchers are told through its group, all but the socket that sent the
    message (`origin_channel`), which sends the frame returned here itself: its first frame
    then never depends on a group subscription made a moment before (on Redis, a SUBSCRIBE and
    the next PUBLISH travel on different connections, and are sometimes served in the other
    order). Since nothing of the run is published before it is announced, that socket, which
    handles one message at a time, sends `run.started` before any frame of the run."""
    loop = asyncio.get_running_loop()
    live = _live_run(started, origin_channel=origin_channel)
    live.task = loop.create_task(_relay(live), name=f"relay-{live.run_id}")
    # A backend slow to answer (or to refuse) the connection must not hide the message from the
    # page for long; and however the task ends, even cancelled before it began, the sender
    # never waits for nothing.
    live.announce_timeout = loop.call_later(ANNOUNCE_WAIT_SECONDS, live.announce)
    live.task.add_done_callback(lambda _: live.announce())
    return await asyncio.shield(live.announcement)


@dataclass(frozen=True, slots=True)
class WaitOutcome:
    started: StartedRun
    final_frame: dict[str, Any]
    error: ChatError | None


async def chat_wait(*, owner: Owner, conversation_id: Any, text: Any, memory: bool) -> WaitOutcome:
    """The chat flow on a wait run (JSON API, the form without JavaScript): one answer, whole.
    Watching sockets still see the run start and end."""
    started = await chat_start(
        owner=owner, conversation_id=conversation_id, text=text, memory=memory
    )
    return await _run_wait(started)


async def chat_regenerate_wait(
    *,
    owner: Owner,
    conversation_id: Any,
    message_id: uuid.UUID | None = None,
    text: Any = None,
) -> WaitOutcome:
    """`chat_regenerate` on a wait run (JSON API, the form without JavaScript)."""
    started = await chat_regenerate(
        owner=owner, conversation_id=conversation_id, message_id=message_id, text=text
    )
    return await _run_wait(started)


async def chat_continue_wait(*, owner: Owner, conversation_id: Any) -> WaitOutcome:
    """`chat_continue` on a wait run (JSON API, the form without JavaScript)."""
    started = await chat_continue(owner=owner, conversation_id=conversation_id)
    return await _run_wait(started)


async def _run_wait(started: StartedRun) -> WaitOutcome:
    live = _live_run(started)
    live.announce()
    await live.drained()
    backend = get_backend()

    async def wait(thread_id: str | None) -> None:
        result = await backend.run_wait(
            text=live.text_in, history=live.history, thread_id=thread_id
        )
        live.first_token_at = timezone.now()
        live.backend_run_id = result.run_id or ""
        live.parts = [result.reply]
        if result.cut:
            live.notice_add(REPLY_CUT_NOTICE)

    final = await _run_to_end(live, wait)
    if final is None:
        raise ChatError("The server stopped while the assistant was answering.", code=INTERRUPTED)
    error = None
    if "error" in final:
        error = ChatError(final["error"]["message"], code=final["error"]["code"])
    return WaitOutcome(started=started, final_frame=final, error=error)


# Relays that stop with their process: heartbeats and the sweep.


def _relays_heartbeat(*, snapshots: list[tuple[uuid.UUID, str]]) -> None:
    now = timezone.now()
    sql.rows_update_each(
        Run,
        fields=["partial_text", "heartbeat_at"],
        rows=[(run_id, text, now) for run_id, text in snapshots],
    )


def runs_interrupt(
    *, stale_after: timedelta | None, exclude: set[uuid.UUID] = frozenset()
) -> list[tuple[uuid.UUID, dict[str, Any]]]:
    """Fails the active runs whose relay is gone (no heartbeat for `stale_after`; all of them
    when None), keeping the reply as far as it was saved. Returns their conversations and final
    frames."""
    runs = Run.objects.filter(status__in=Run.ACTIVE_STATUSES).exclude(pk__in=exclude)
    if stale_after is not None:
        runs = runs.filter(heartbeat_at__lt=timezone.now() - stale_after)
    frames = []
    fields = ("pk", "conversation_id", "mode", "partial_text", "first_token_at", "continues_id")
    for run in runs.only(*fields):
        finished = _run_finish(
            run_id=run.pk,
            conversation_id=run.conversation_id,
            mode=run.mode,
            status=Run.Status.FAILED,
            text=run.partial_text,
            first_token_at=run.first_token_at,
            error_code=INTERRUPTED,
            error_message="The server stopped while the assistant was answering. "
            "The reply is kept as far as it got.",
            continues_id=run.continues_id,
        )
        if finished is not None:
            frames.append((finished[0].conversation_id, _final_frame(*finished)))
    return frames


async def relays_supervise_once() -> None:
    """One beat: record the progress of this process's relays, then fail the runs whose relay
    has stopped beating anywhere and tell their watchers."""
    live = [(run.run_id, run.text) for run in LIVE_RUNS.values() if not run.finishing]
    if live:
        await db_call(_relays_heartbeat)(snapshots=live)
    beat = settings.CHAT_RELAY_HEARTBEAT_SECONDS
    frames = await db_call(runs_interrupt)(
        stale_after=timedelta(seconds=beat * 3), exclude=set(LIVE_RUNS)
    )
    for conversation_id, frame in frames:
        await frame_publish(conversation_id=conversation_id, frame=frame)


async def _relays_supervise() -> None:
    while True:
        await asyncio.sleep(settings.CHAT_RELAY_HEARTBEAT_SECONDS)
        try:
            await relays_supervise_once()
        except Exception:
            logger.exception("relay supervision failed; trying again at the next beat")


async def _live_cancel(live: LiveRun) -> None:
    if live.finishing or live.cancel_requested:
        return
    live.cancel_requested = True
    if live.mode == Run.Mode.THREAD and live.backend_run_id and live.thread_id:
        try:
            await get_backend().run_cancel(thread_id=live.thread_id, run_id=live.backend_run_id)
        except ChatError:
            logger.warning("backend cancel of run %s failed; closing its stream", live.run_id)
    if live.task is not None and not live.finishing:
        live.task.cancel()


async def _relays_listen(channel: str) -> None:
    """Answers other processes about the runs this one relays: cancel, and the reply so far."""
    layer = get_channel_layer()
    while True:
        message = await layer.receive(channel)
        try:
            live = LIVE_RUNS.get(uuid.UUID(str(message.get("run"))))
            if message["type"] == "relay.cancel" and live is not None:
                await _live_cancel(live)
            elif message["type"] == "relay.progress":
                await layer.send(
                    message["reply_to"],
                    {
                        "type": "relay.progress",
                        "text": live.text if live else None,
                        "seq": live.seq if live else 0,
                    },
                )
        except Exception:
            logger.exception("relay control message failed")


@dataclass
class _Relays:
    channel: str
    listener: asyncio.Task
    supervisor: asyncio.Task


_relays: dict[asyncio.AbstractEventLoop, _Relays] = {}


async def relays_ensure() -> str:
    """Starts this process's relay control channel and supervisor once per event loop, and
    returns the channel other processes reach its relays by. (Its name keeps the layer's
    default prefix: channels-redis serves all of a process's channels from one Redis list
    only when they share it.)"""
    loop = asyncio.get_running_loop()
    relays = _relays.get(loop)
    if relays is None or relays.listener.done() or relays.supervisor.done():
        for old in [old for old in _relays if old.is_closed()]:
            del _relays[old]
        channel = await get_channel_layer().new_channel()
        relays = _relays[loop] = _Relays(
            channel=channel,
            listener=loop.create_task(_relays_listen(channel), name="relay-control"),
            supervisor=loop.create_task(_relays_supervise(), name="relay-supervisor"),
        )
    return relays.channel


async def relays_stop() -> None:
    """Stops this event loop's relay control and supervisor (tests; a server never stops them)."""
    relays = _relays.pop(asyncio.get_running_loop(), None)
    if relays is not None:
        for task in (relays.listener, relays.supervisor):
            task.cancel()
        await asyncio.gather(relays.listener, relays.supervisor, return_exceptions=True)


async def _relay_progress(run: Run) -> tuple[str, int]:
    """The reply so far of a run relayed by another process: asked of that process, so the
    answer is no older than the caller's subscription; the last heartbeat's text otherwise."""
    if run.relay_channel:
        layer = get_channel_layer()
        reply_to = await layer.new_channel()
        await layer.send(
            run.relay_channel, {"type": "relay.progress", "run": str(run.id), "reply_to": reply_to}
        )
        try:
            async with asyncio.timeout(2):
                answer = await layer.receive(reply_to)
            if answer.get("text") is not None:
                return answer["text"], int(answer["seq"])
        except TimeoutError:
            pass
    return run.partial_text, 0


# Cancel.


def _run_for_owner(*, owner: Owner, run_id: Any) -> Run:
    try:
        return Run.objects.get(pk=run_id, conversation__in=conversation_queryset(owner=owner))
    except (Run.DoesNotExist, ValueError, TypeError) as exc:
        raise NotFound("No such run.") from exc


async def run_cancel(*, owner: Owner, run_id: Any) -> None:
    """Stops a run: a thread run through the backend's cancel endpoint, a stateless one by
    closing its stream (started with on_disconnect="cancel"). The partial reply is kept.
    A run relayed by another process is stopped by that process."""
    run = await db_call(_run_for_owner)(owner=owner, run_id=run_id)
    live = LIVE_RUNS.get(run.id)
    if live is not None:
        await _live_cancel(live)
    elif run.is_active and run.relay_channel:
        await get_channel_layer().send(
            run.relay_channel, {"type": "relay.cancel", "run": str(run.id)}
        )


# Memory switch and forget.


def _conversation_set_memory(*, owner: Owner, conversation_id: Any, enabled: bool) -> Conversation:
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    conversation.memory = enabled
    conversation.save(update_fields=["memory", "updated_at"])
    return conversation


async def conversation_set_memory(
    *, owner: Owner, conversation_id: Any, enabled: bool, origin_channel: str = ""
) -> Conversation:
    """Flips the switch. Off never deletes the thread: on again resumes it."""
    conversation = await db_call(_conversation_set_memory)(
        owner=owner, conversation_id=conversation_id, enabled=enabled
    )
    await conversation_changed_publish(
        conversation_id=conversation.id, origin_channel=origin_channel
    )
    return conversation


def _conversation_at_rest(*, owner: Owner, conversation_id: Any, doing: str) -> Conversation:
    """The owner's conversation, refused as busy while a reply streams in it."""
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    if conversation.active_run_id is not None and conversation.active_run.is_active:
        raise Busy(f"Wait for the reply to finish (or stop it) before {doing}.")
    return conversation


def _conversation_clear_thread(*, conversation_id: uuid.UUID, thread_id: str) -> None:
    Conversation.objects.filter(pk=conversation_id, thread_id=thread_id).update(
        thread_id="", memory_lost_at=None, updated_at=timezone.now()
    )


async def _thread_forget(conversation: Conversation) -> None:
    """Deletes the conversation's backend thread, if it has one, and clears it from the row.
    A thread already gone on the backend counts as deleted; other backend errors propagate."""
    if not conversation.thread_id:
        return
    try:
        await get_backend().thread_delete(thread_id=conversation.thread_id)
    except ThreadNotFound:
        pass  # already gone: forgetting it is done
    await db_call(_conversation_clear_thread)(
        conversation_id=conversation.id, thread_id=conversation.thread_id
    )
    conversation.thread_id = ""


async def conversation_forget(
    *, owner: Owner, conversation_id: Any, origin_channel: str = ""
) -> Conversation:
    """Deletes the backend thread; the transcript stays. The next remembered message starts anew."""
    conversation = await db_call(_conversation_at_rest)(
        owner=owner, conversation_id=conversation_id, doing="forgetting"
    )
    if conversation.thread_id:
        await _thread_forget(conversation)
        await conversation_changed_publish(
            conversation_id=conversation.id, origin_channel=origin_channel
        )
    return conversation


def _conversation_delete_rows(*, conversation_id: uuid.UUID) -> None:
    Conversation.objects.filter(pk=conversation_id).delete()


async def conversation_delete(*, owner: Owner, conversation_id: Any) -> Conversation:
    """Deletes the conversation, its transcript, and its backend thread, then tells every
    socket of the owner (`conversation.deleted`: its other tabs drop it from their lists, and
    a tab showing it becomes a new chat). If the backend cannot be reached the conversation is
    kept, so no thread is left behind unseen."""
    conversation = await db_call(_conversation_at_rest)(
        owner=owner, conversation_id=conversation_id, doing="deleting"
    )
    await _thread_forget(conversation)
    await db_call(_conversation_delete_rows)(conversation_id=conversation.id)
    await owner_frame_publish(
        owner=owner, frame={"type": "conversation.deleted", "conversation": str(conversation.id)}
    )
    return conversation


def _account_conversations(*, user_id: int) -> list[Conversation]:
    return list(Conversation.objects.filter(owner_id=user_id).select_related("active_run"))


def _account_delete_row(*, user_id: int) -> bool:
    """Deletes the account, unless a conversation of it came meanwhile (True when it went)."""
    with transaction.atomic():
        if Conversation.objects.filter(owner_id=user_id).exists():
            return False
        get_user_model().objects.filter(pk=user_id).delete()
        return True


async def account_delete(*, user_id: int) -> int:
    """Deletes the account and all its conversations, each with its transcript and its backend
    thread (as `conversation_delete`); returns how many conversations went. Busy while a reply
    streams in one of them. If the backend cannot be reached, the conversations whose memory
    was deleted are gone, and the account and the rest stay: asking again finishes."""
    deleted = 0
    for _ in range(3):  # again, should one be started in another tab meanwhile
        conversations = await db_call(_account_conversations)(user_id=user_id)
        if any(c.active_run_id and c.active_run.is_active for c in conversations):
            raise Busy("Wait for the reply to finish (or stop it) before deleting your account.")
        for conversation in conversations:
            await _thread_forget(conversation)
            await db_call(_conversation_delete_rows)(conversation_id=conversation.id)
            deleted += 1
        if await db_call(_account_delete_row)(user_id=user_id):
            return deleted
    raise Busy("Conversations were being started while your account was deleted: try again.")


def account_email_set(*, user_id: int, email: str) -> None:
    """The address a forgotten password's reset link goes to ("" for none)."""
    get_user_model().objects.filter(pk=user_id).update(email=email)


EMAIL_CONFIRM_SALT = "runs.account-email-confirm"
EMAIL_LINK_REFUSED = (
    "This link does not work: it is more than a day old, it was used already, or the "
    "account's address changed since it was sent."
)


def account_email_token(*, user_id: int, email: str) -> str:
    """What a confirmation link carries: signed with the site's key, it proves that whoever
    opens it reads `email`. It works while the account's address is the one it had when the
    link was made, so a link works once, and an older one not after a newer one."""
    current = get_user_model().objects.values_list("email", flat=True).get(pk=user_id)
    claim = {"user": user_id, "email": email, "was": current}
    return signing.dumps(claim, salt=EMAIL_CONFIRM_SALT, compress=True)


def account_email_confirm(*, token: str) -> Any:
    """Makes the address a link was sent to its account's; InvalidRequest when the link is
    forged, more than PASSWORD_RESET_TIMEOUT old, used, or overtaken."""
    try:
        claim = signing.loads(
            token, salt=EMAIL_CONFIRM_SALT, max_age=settings.PASSWORD_RESET_TIMEOUT
        )
    except signing.BadSignature:  # expired links too
        raise InvalidRequest(EMAIL_LINK_REFUSED) from None
    if not isinstance(claim, dict) or not isinstance(claim.get("email"), str):
        raise InvalidRequest(EMAIL_LINK_REFUSED)
    with transaction.atomic():
        user = get_user_model().objects.select_for_update().filter(pk=claim.get("user")).first()
        if user is None or user.email != claim.get("was"):
            raise InvalidRequest(EMAIL_LINK_REFUSED)
        user.email = claim["email"]
        user.save(update_fields=["email"])
    return user


def account_email_confirmation_send(*, username: str, email: str, link: str) -> bool:
    """Mails the link that confirms `email`; False, and a line in the log, when it fails."""
    context = {"username": username, "link": link}
    subject = render_to_string("registration/account_email_subject.txt").strip()
    body = render_to_string("registration/account_email_message.txt", context)
    try:
        send_mail(subject, body, None, [email])
    except Exception:  # any mail server's failure: the page says so, the log says why
        logger.exception("Failed to send the link confirming an e-mail address to %s", email)
        return False
    return True


def _conversation_rename(*, owner: Owner, conversation_id: Any, title: str) -> Conversation:
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    # `updated_at` stays: a new name is not news, so the list keeps its order.
    Conversation.objects.filter(pk=conversation.pk).update(title=title)
    conversation.title = title
    return conversation


async def conversation_rename(*, owner: Owner, conversation_id: Any, title: Any) -> Conversation:
    """Names the conversation, then tells every socket of the owner (`conversation.renamed`),
    this one's tabs included, so lists and headers show the new name. Allowed while a reply
    streams: a run never changes a title once it has one."""
    cleaned = conversation_title_clean(title=title)
    conversation = await db_call(_conversation_rename)(
        owner=owner, conversation_id=conversation_id, title=cleaned
    )
    frame = {"type": "conversation.renamed", "conversation": str(conversation.id), "title": cleaned}
    await owner_frame_publish(owner=owner, frame=frame)
    return conversation


# Feedback.


def message_feedback_clean(*, feedback: Any) -> str:
    """A rating as sent: "good", "bad", or None to take it back ("" once stored)."""
    if feedback is None:
        return ""
    if feedback not in Message.Feedback.values:
        raise InvalidRequest('`feedback` must be "good", "bad" or null.')
    return feedback


def _message_feedback_set(
    *, owner: Owner, conversation_id: Any, message_id: Any, feedback: str
) -> Message:
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    reply = reply_get(conversation_id=conversation.pk, message_id=message_id)
    rated_at = timezone.now() if feedback else None
    # `updated_at` stays: a rating is not news, so the list keeps its order.
    Message.objects.filter(pk=reply.pk).update(feedback=feedback, feedback_at=rated_at)
    return reply


async def message_feedback_set(
    *, owner: Owner, conversation_id: Any, message_id: Any, feedback: Any
) -> dict[str, Any]:
    """Rates one of the assistant's replies (None takes the rating back), for staff to review,
    then tells every socket watching the conversation (`message.feedback`)."""
    cleaned = message_feedback_clean(feedback=feedback)
    reply = await db_call(_message_feedback_set)(
        owner=owner, conversation_id=conversation_id, message_id=message_id, feedback=cleaned
    )
    frame = {
        "type": "message.feedback",
        "conversation": str(reply.conversation_id),
        "message": str(reply.pk),
        "feedback": cleaned or None,
    }
    await frame_publish(conversation_id=reply.conversation_id, frame=frame)
    return frame


# Sharing.


def conversation_share(*, owner: Owner, conversation_id: Any) -> Conversation:
    """Shares the conversation as it stands now: anyone with its link (`/s/<token>/`) can read
    it, without the owner's name. Shared again, the same link shows it as it stands then.
    Refused while a reply is being written, so a shared question never lacks its answer."""
    conversation = _conversation_at_rest(
        owner=owner, conversation_id=conversation_id, doing="sharing it"
    )
    token = conversation.share_token or secrets.token_urlsafe(24)
    shared_at = timezone.now()
    # `updated_at` stays, as for a new name: the list keeps its order.
    Conversation.objects.filter(pk=conversation.pk).update(share_token=token, shared_at=shared_at)
    conversation.share_token, conversation.shared_at = token, shared_at
    return conversation


def conversation_unshare(*, owner: Owner, conversation_id: Any) -> Conversation:
    """Stops sharing: the link stops working at once, and a new share makes a new link."""
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    Conversation.objects.filter(pk=conversation.pk).update(share_token="", shared_at=None)
    conversation.share_token, conversation.shared_at = "", None
    return conversation


def conversations_unshare_by_staff(*, conversation_ids: Iterable[Any]) -> int:
    """Staff take shared conversations off their links (the admin console's action)."""
    return (
        Conversation.objects.filter(pk__in=list(conversation_ids))
        .exclude(share_token="")
        .update(share_token="", shared_at=None)
    )


# Snapshots.


def _snapshot_rows(
    *, owner: Owner, conversation_id: Any
) -> tuple[Conversation, list[dict[str, Any]]]:
    conversation = conversation_get(owner=owner, conversation_id=conversation_id)
    return conversation, transcript_rows(conversation=conversation)


async def conversation_snapshot(*, owner: Owner, conversation_id: Any) -> dict[str, Any]:
    """The `conversation.snapshot` frame: the transcript and the reply streamed so far."""
    conversation, messages = await db_call(_snapshot_rows)(
        owner=owner, conversation_id=conversation_id
    )
    active_run = None
    run = conversation.active_run
    if run is not None and run.is_active:
        live = LIVE_RUNS.get(run.id)
        text, seq = (live.text, live.seq) if live else await _relay_progress(run)
        active_run = {
            "run": str(run.id),
            "text": text,
            "seq": seq,
            "continues": str(run.continues_id) if run.continues_id else None,
        }
    return {
        "type": "conversation.snapshot",
        "conversation": conversation_to_dict(conversation),
        "messages": messages,
        "active_run": active_run,
    }


# Staff: the admin console's actions, on any owner's conversations.


@dataclass(frozen=True, slots=True)
class StaffForgetOutcome:
    """What `conversation_forget_by_staff` did, conversation by conversation."""

    forgotten: list[uuid.UUID] = field(default_factory=list)  # thread deleted (or already gone)
    without_thread: list[uuid.UUID] = field(default_factory=list)  # nothing to forget
    busy: list[uuid.UUID] = field(default_factory=list)  # a reply is streaming: left alone
    failed: list[tuple[uuid.UUID, str]] = field(default_factory=list)  # backend error message


STAFF_FORGET_CONCURRENCY = 8


def _conversations_for_staff_forget(*, conversation_ids: list[Any]) -> list[Conversation]:
    return list(
        Conversation.objects.filter(pk__in=conversation_ids)
        .select_related("active_run")
        .order_by("-updated_at")
    )


async def conversation_forget_by_staff(*, conversation_ids: Iterable[Any]) -> StaffForgetOutcome:
    """Deletes the backend thread of each conversation, whoever owns it (the admin action).

    Like `conversation_forget`: the transcript stays, a thread already gone counts as forgotten,
    and a conversation whose reply is still streaming is left alone (reported as busy).
    """
    conversations = await db_call(_conversations_for_staff_forget)(
        conversation_ids=list(conversation_ids)
    )
    outcome = StaffForgetOutcome()
    to_delete: list[Conversation] = []
    for conversation in conversations:
        if not conversation.thread_id:
            outcome.without_thread.append(conversation.id)
        elif conversation.active_run_id is not None and conversation.active_run.is_active:
            outcome.busy.append(conversation.id)
        else:
            to_delete.append(conversation)

    limit = asyncio.Semaphore(STAFF_FORGET_CONCURRENCY)

    async def forget(conversation: Conversation) -> None:
        async with limit:
            try:
                await _thread_forget(conversation)
            except ChatError as exc:
                outcome.failed.append((conversation.id, exc.message))
                return
        outcome.forgotten.append(conversation.id)
        await conversation_changed_publish(conversation_id=conversation.id)

    await asyncio.gather(*(forget(conversation) for conversation in to_delete))
    return outcome


EXPORT_CHUNK = 500


def _duration_ms(delta: Any) -> int | None:
    return None if delta is None else round(delta.total_seconds() * 1000)


def _export_run(run: Run | None) -> dict[str, Any] | None:
    if run is None:
        return None
    data: dict[str, Any] = {
        "id": str(run.id),
        "mode": run.mode,
        "status": run.status,
        "started_at": run.started_at.isoformat(),
        "time_to_first_token_ms": _duration_ms(run.time_to_first_token),
        "duration_ms": _duration_ms(run.duration),
    }
    if run.error_code:
        data["error"] = {"code": run.error_code, "message": run.error_message}
    if run.notice:
        data["notice"] = run.notice
    if run.continues_id:
        data["continues"] = str(run.continues_id)  # a continuation: the reply it went on with
    return data


def _export_line(conversation: Conversation) -> bytes:
    owner = conversation.owner
    line = {
        "id": str(conversation.id),
        "title": conversation.title,
        # The session key of an anonymous owner is a credential: it is never exported.
        "owner": {"username": owner.get_username(), "anonymous": False}
        if owner is not None
        else {"username": None, "anonymous": True},
        "memory": conversation.memory,
        "has_thread": conversation.has_thread,
        "thread_id": conversation.thread_id or None,
        # Shared or not, and since when; the link's token opens it, so it stays out too.
        "shared_at": conversation.shared_at.isoformat() if conversation.shared_at else None,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
        "messages": [
            {
                "id": str(message.id),
                "role": message.role,
                "text": message.text,
                "remembered": message.remembered,
                "created_at": message.created_at.isoformat(),
                "replaced_at": message.replaced_at.isoformat() if message.replaced_at else None,
                "feedback": message.feedback or None,
                "run": _export_run(message.run),
            }
            for message in conversation.messages.all()
        ],
    }
    return orjson.dumps(line) + b"\n"


def conversation_export_jsonl(*, conversation_ids: Iterable[Any]) -> bytes:
    """The transcripts as JSON Lines: one conversation per line, newest activity first, each
    with its messages (oldest first) and how their runs went. Two queries per 500."""
    ids = list(conversation_ids)
    conversations: list[Conversation] = []
    for start in range(0, len(ids), EXPORT_CHUNK):
        conversations.extend(
            Conversation.objects.filter(pk__in=ids[start : start + EXPORT_CHUNK])
            .select_related("owner")
            .prefetch_related(
                Prefetch(
                    "messages",
                    queryset=Message.objects.select_related("run").order_by("created_at"),
                )
            )
        )
    conversations.sort(key=lambda conversation: conversation.updated_at, reverse=True)
    return b"".join(_export_line(conversation) for conversation in conversations)
