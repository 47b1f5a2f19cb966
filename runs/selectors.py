"""Reads: who owns what, and the shapes of protocol v1 (conversations, messages)."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import import_module
from itertools import groupby
from operator import attrgetter
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.http import HttpRequest
from django.urls import reverse
from django.utils.text import slugify

from runs.exceptions import InvalidRequest, NoReply, NotFound
from runs.models import Conversation, Message, Run
from runs.rendering import markdown_to_safe_html


@dataclass(frozen=True, slots=True)
class Owner:
    """Who is asking: a signed-in user, or an anonymous visitor.

    An anonymous visitor is known by a random key kept in their session (`session_key` here
    and on Conversation): unlike the session's own key, it survives the key rotation at
    sign-in, so what they started can be adopted by their account.
    """

    user_id: int | None
    session_key: str

    @property
    def identity(self) -> str:
        return f"user:{self.user_id}" if self.user_id is not None else f"visitor:{self.session_key}"

    @property
    def is_anonymous(self) -> bool:
        return self.user_id is None

    def conversation_fields(self) -> dict[str, Any]:
        if self.user_id is not None:
            return {"owner_id": self.user_id, "session_key": ""}
        return {"owner_id": None, "session_key": self.session_key}


def session_signs_in(*, session_key: str, user_id: int) -> bool:
    """False once the session `session_key` has been signed out, has expired, or was ended by a
    change of the account's password: Django's own check of a request's session (the password
    hash included), on a fresh read of it."""
    if not session_key:
        return False
    request = HttpRequest()
    request.session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    return get_user(request).pk == user_id


def conversation_queryset(*, owner: Owner) -> QuerySet[Conversation]:
    if owner.user_id is not None:
        return Conversation.objects.filter(owner_id=owner.user_id)
    if not owner.session_key:
        return Conversation.objects.none()
    return Conversation.objects.filter(owner__isnull=True, session_key=owner.session_key)


# Conversations a list shows at once: the page, the API; "Show older" gets the next ones.
CONVERSATIONS_PER_PAGE = 50


@dataclass(frozen=True, slots=True)
class ConversationListPage:
    conversations: list[Conversation]
    offset: int  # how many newer ones (that match) come before this page
    more: bool  # older ones (that match) exist past this page

    @property
    def next_offset(self) -> int | None:
        return self.offset + len(self.conversations) if self.more else None


def conversation_list(
    *, owner: Owner, query: str = "", offset: int = 0, limit: int = CONVERSATIONS_PER_PAGE
) -> ConversationListPage:
    """The owner's conversations, newest first, `limit` of them after the `offset` newest:
    with a `query`, only those whose title or any message contains it (case-insensitive)."""
    conversations = conversation_queryset(owner=owner)
    if query:
        said = Message.objects.filter(
            text__contains_folded=query, conversation=OuterRef("pk"), replaced_at__isnull=True
        )
        conversations = conversations.filter(Q(title__contains_folded=query) | Exists(said))
    rows = list(conversations.order_by("-updated_at", "-pk")[offset : offset + limit + 1])
    return ConversationListPage(conversations=rows[:limit], offset=offset, more=len(rows) > limit)


def conversations_exist(*, owner: Owner) -> bool:
    return conversation_queryset(owner=owner).exists()


def conversation_get(*, owner: Owner, conversation_id: Any) -> Conversation:
    """The caller's conversation; another's is `NotFound`, exactly like one that doesn't exist."""
    try:
        return (
            conversation_queryset(owner=owner).select_related("active_run").get(pk=conversation_id)
        )
    except (Conversation.DoesNotExist, ValueError, TypeError) as exc:
        raise NotFound() from exc


def shared_path(*, conversation: Conversation) -> str | None:
    """The path of the conversation's share link; None while it is not shared."""
    if not conversation.is_shared:
        return None
    return reverse("shared", args=[conversation.share_token])


def shared_conversation_get(*, token: str) -> Conversation:
    """The conversation shared under `token`; NotFound once it is no longer shared."""
    if not token:
        raise NotFound()
    try:
        return Conversation.objects.get(share_token=token)
    except Conversation.DoesNotExist as exc:
        raise NotFound() from exc


def shared_transcript_rows(*, conversation: Conversation) -> list[dict[str, Any]]:
    """The transcript as it was shown when the conversation was shared: what came later is
    left out, and what a regeneration or an edit has replaced since is still in."""
    shared_at = conversation.shared_at
    messages = (
        Message.objects.filter(conversation_id=conversation.pk, created_at__lte=shared_at)
        .filter(Q(replaced_at__isnull=True) | Q(replaced_at__gt=shared_at))
        .select_related("run")
        .order_by("created_at")
    )
    return [message_to_dict(message, message.run) for message in messages]


def _shown_messages(**where: Any) -> QuerySet[Message]:
    """Messages (of the conversations `where` names) as their transcripts show them (what a
    regeneration or an edit replaced is left out), each with its run."""
    return Message.objects.filter(replaced_at__isnull=True, **where).select_related("run")


def transcript_from(*, conversation_id: Any, message_id: Any = None) -> list[Message]:
    """The transcript as shown, from the user's message `message_id` on (by default the last
    one, which must have a reply: NoReply otherwise); InvalidRequest when `message_id` is not
    a message of the user shown in the conversation."""
    shown = _shown_messages(conversation_id=conversation_id)
    if message_id is None:
        last = shown.order_by("-created_at").first()
        first = shown.filter(role=Message.Role.USER).order_by("-created_at").first()
        if last is None or last.role != Message.Role.ASSISTANT or first is None:
            raise NoReply()
    else:
        first = shown.filter(pk=message_id, role=Message.Role.USER).first()
        if first is None:
            raise InvalidRequest("`message` must be one of your messages in this conversation.")
    later = shown.filter(created_at__gt=first.created_at).order_by("created_at")
    return [first, *later]


def reply_get(*, conversation_id: Any, message_id: Any) -> Message:
    """One of the assistant's replies shown in the conversation; InvalidRequest otherwise."""
    reply = (
        _shown_messages(conversation_id=conversation_id)
        .filter(pk=message_id, role=Message.Role.ASSISTANT)
        .first()
    )
    if reply is None:
        raise InvalidRequest("`message` must be one of the replies shown in this conversation.")
    return reply


def conversation_markdown(*, conversation: Conversation) -> str:
    """The conversation as its transcript shows it, as a Markdown document to download: each
    message under a heading that says who, when, and whether it was remembered."""
    return _markdown(
        conversation, _shown_messages(conversation_id=conversation.pk).order_by("created_at")
    )


def conversation_file_name(*, conversation: Conversation) -> str:
    """The name its Download saves it under."""
    return f"{_slug(conversation)}.md"


def conversations_markdown_zip(*, owner: Owner) -> bytes:
    """Every conversation of the owner as its Download gives it, one Markdown file each (named
    after its day, its title and its id, so that none overwrites another), in a zip archive.
    Two queries, whatever the number of conversations."""
    conversations = {
        conversation.pk: conversation
        for conversation in conversation_queryset(owner=owner).order_by("created_at")
    }
    messages = _shown_messages(
        conversation__in=conversation_queryset(owner=owner).values("pk")
    ).order_by("conversation_id", "created_at")
    by_conversation = {
        conversation_id: list(shown)
        for conversation_id, shown in groupby(messages, key=attrgetter("conversation_id"))
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", compression=zipfile.ZIP_DEFLATED) as files:
        for conversation in conversations.values():
            entry = zipfile.ZipInfo(
                f"{conversation.created_at:%Y-%m-%d}-{_slug(conversation)}"
                f"-{conversation.pk.hex[:8]}.md",
                date_time=conversation.updated_at.timetuple()[:6],
            )
            entry.compress_type = zipfile.ZIP_DEFLATED
            document = _markdown(conversation, by_conversation.get(conversation.pk, []))
            files.writestr(entry, document)
    return archive.getvalue()


def _slug(conversation: Conversation) -> str:
    return slugify(conversation.title)[:60] or "conversation"


def _markdown(conversation: Conversation, messages: Iterable[Message]) -> str:
    lines = [f"# {conversation.title or 'Conversation'}", ""]
    for message in messages:
        who = "You" if message.role == Message.Role.USER else "Assistant"
        notes = [
            message.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            "remembered" if message.remembered else "not remembered",
        ]
        if message.role == Message.Role.ASSISTANT and message.run is not None:
            if message.run.status == Run.Status.CANCELLED:
                notes.append("stopped")
            elif message.run.status == Run.Status.FAILED:
                notes.append("failed")
        lines += [f"## {who} · {' · '.join(notes)}", "", message.text or "*(nothing)*", ""]
    return "\n".join(lines)


def message_to_dict(message: Message, run: Run | None = None) -> dict[str, Any]:
    """A protocol v1 message; a reply also says how its run ended (`status`, `error`, `notice`)."""
    data: dict[str, Any] = {
        "id": str(message.id),
        "role": message.role,
        "text": message.text,
        "html": markdown_to_safe_html(message.text),
        "remembered": message.remembered,
        "created_at": message.created_at.isoformat(),
    }
    if message.role == Message.Role.ASSISTANT:
        data["feedback"] = message.feedback or None
    if run is not None and message.role == Message.Role.ASSISTANT:
        data["status"] = run.status
        if run.error_code:
            data["error"] = {"code": run.error_code, "message": run.error_message}
        if run.notice:
            data["notice"] = run.notice
        # Cut at the length limit: the last such reply can be continued.
        data["cut"] = run.reply_cut
    return data


def conversation_to_dict(conversation: Conversation) -> dict[str, Any]:
    return {
        "id": str(conversation.id),
        "title": conversation.title,
        "memory": conversation.memory,
        "has_thread": conversation.has_thread,
        "created_at": conversation.created_at.isoformat(),
        "updated_at": conversation.updated_at.isoformat(),
    }


def transcript_rows(*, conversation: Conversation) -> list[dict[str, Any]]:
    """The conversation's messages, oldest first, as protocol v1 messages (one query). What a
    regeneration or an edit replaced is left out."""
    messages = _shown_messages(conversation_id=conversation.pk).order_by("created_at")
    return [message_to_dict(message, message.run) for message in messages]
