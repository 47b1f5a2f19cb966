"""The review console: staff read conversations beside what the assistant remembers of them.

Review never rewrites history: conversations, runs and messages are view-only here. The two
things staff can do are the actions: forget a conversation's backend thread, and export
transcripts as JSON Lines. List pages annotate what they show, so they cost the same handful of
queries whatever the number of rows.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any
from urllib.parse import urlencode

from asgiref.sync import async_to_sync
from django.contrib import admin, messages
from django.db.models import (
    Count,
    DurationField,
    Exists,
    ExpressionWrapper,
    F,
    IntegerField,
    OuterRef,
    QuerySet,
    Subquery,
    TextChoices,
)
from django.db.models.functions import Coalesce
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.text import Truncator
from django.views.decorators.http import require_POST

from runs import services
from runs.backend import ThreadState, get_backend
from runs.exceptions import BackendError, BackendTimeout, BackendUnavailable, ThreadNotFound
from runs.models import Conversation, Message, Run
from runs.rendering import markdown_to_safe_html
from runs.selectors import shared_path

# Display helpers.


def seconds_display(delta: timedelta | None) -> str:
    """A duration for people: "0.42 s", "12.3 s", "2 min 5 s"; "-" when there is none."""
    if delta is None:
        return "-"
    seconds = delta.total_seconds()
    if seconds < 10:
        return f"{seconds:.2f} s"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


def owner_display(conversation: Conversation) -> str:
    """The owner's username, or "anonymous session" with a short tag that groups a visitor's
    conversations without showing their key (which must stay secret)."""
    if conversation.owner_id is not None:
        return conversation.owner.get_username()
    if not conversation.session_key:
        return "anonymous session"
    tag = hashlib.sha256(conversation.session_key.encode()).hexdigest()[:8]
    return f"anonymous session · {tag}"


def jsonl_response(body: bytes, *, name: str) -> HttpResponse:
    response = HttpResponse(body, content_type="application/x-ndjson; charset=utf-8")
    stamp = timezone.now().strftime("%Y%m%d-%H%M%S")
    response["Content-Disposition"] = f'attachment; filename="{name}-{stamp}.jsonl"'
    return response


# The remembers panel.


@dataclass
class Remembered:
    """What the backend thread holds, or why it cannot be shown (`state` says which)."""

    state: str  # "ok", "no_thread", "gone", "unavailable", "error"
    thread_id: str = ""
    notice: str = ""
    messages: list[dict[str, Any]] = field(default_factory=list)


# How long the conversation page waits for the backend before showing the page without it.
REMEMBERS_TIMEOUT = 10.0


async def _thread_state(thread_id: str) -> ThreadState:
    try:
        async with asyncio.timeout(REMEMBERS_TIMEOUT):
            return await get_backend().thread_state(thread_id=thread_id)
    except TimeoutError as exc:
        raise BackendTimeout() from exc


def remembered_for(conversation: Conversation) -> Remembered:
    """Asks the backend (GET /threads/{id}/state) what the assistant remembers."""
    thread_id = conversation.thread_id
    if not thread_id:
        return Remembered(
            state="no_thread",
            notice=(
                "This conversation has no backend thread: the assistant remembers nothing of it. "
                "Either memory was never on, or the thread was forgotten; the next remembered "
                "message starts a new one."
            ),
        )
    try:
        state = async_to_sync(_thread_state)(thread_id)
    except ThreadNotFound:
        return Remembered(
            state="gone",
            thread_id=thread_id,
            notice=(
                "The backend no longer has this conversation's thread (deleted, or the backend "
                "lost it): the assistant remembers nothing of it. The next remembered message "
                "starts a new memory."
            ),
        )
    except (BackendUnavailable, BackendTimeout) as exc:
        problem = (
            "did not answer in time"
            if isinstance(exc, BackendTimeout)
            else "is unreachable right now"
        )
        return Remembered(
            state="unavailable",
            thread_id=thread_id,
            notice=(
                f"The run backend {problem}, so what the assistant remembers cannot be shown. "
                "The transcript is Django's own record and is complete."
            ),
        )
    except BackendError as exc:
        return Remembered(
            state="error",
            thread_id=thread_id,
            notice=f"The run backend could not show the thread: {exc.message}",
        )
    return Remembered(
        state="ok",
        thread_id=thread_id,
        messages=[
            {"role": message.role, "html": markdown_to_safe_html(message.text)}
            for message in state.messages
        ],
    )


def transcript_for(conversation: Conversation) -> list[dict[str, Any]]:
    """The messages, oldest first, each with its run (one query)."""
    rows = []
    for message in conversation.messages.select_related("run").order_by("created_at"):
        run = message.run
        rows.append(
            {
                "message": message,
                "html": markdown_to_safe_html(message.text),
                "run": run,
                "run_url": reverse("admin:runs_run_change", args=[run.pk]) if run else "",
                "time_to_first_token": seconds_display(run.time_to_first_token) if run else "",
                "duration": seconds_display(run.duration) if run else "",
            }
        )
    return rows


# Conversations.


def _count_of(rows: QuerySet) -> Coalesce:
    """A correlated COUNT of `rows` of each conversation: no joins, so filters and search
    never multiply it."""
    counted = (
        rows.filter(conversation=OuterRef("pk"))
        .order_by()
        .values("conversation")
        .annotate(n=Count("pk"))
        .values("n")
    )
    return Coalesce(Subquery(counted, output_field=IntegerField()), 0)


class SetOrBlankFilter(admin.SimpleListFilter):
    """Yes or no: whether a text field of the conversation is set."""

    field: str
    labels: tuple[str, str]  # for yes, for no

    def lookups(self, request, model_admin):
        return list(zip(("yes", "no"), self.labels, strict=True))

    def queryset(self, request, queryset):
        if self.value() == "yes":
            return queryset.exclude(**{self.field: ""})
        if self.value() == "no":
            return queryset.filter(**{self.field: ""})
        return queryset


class HasThreadFilter(SetOrBlankFilter):
    title = "backend thread"
    parameter_name = "has_thread"
    field = "thread_id"
    labels = ("has a thread", "no thread")


class SharedFilter(SetOrBlankFilter):
    title = "shared"
    parameter_name = "shared"
    field = "share_token"
    labels = ("shared by link", "not shared")


class OwnerKindFilter(admin.SimpleListFilter):
    title = "owner"
    parameter_name = "owner_kind"

    def lookups(self, request, model_admin):
        return [("user", "signed-in user"), ("anonymous", "anonymous session")]

    def queryset(self, request, queryset):
        if self.value() == "user":
            return queryset.filter(owner__isnull=False)
        if self.value() == "anonymous":
            return queryset.filter(owner__isnull=True)
        return queryset


class HasRowFilter(admin.SimpleListFilter):
    """Conversations with at least one `model` row whose `field` is the value chosen."""

    model: type[Run] | type[Message]
    field: str
    values: type[TextChoices]

    def lookups(self, request, model_admin):
        return self.values.choices

    def queryset(self, request, queryset):
        if self.value() in self.values.values:
            rows = self.model.objects.filter(
                conversation=OuterRef("pk"), **{self.field: self.value()}
            )
            return queryset.filter(Exists(rows))
        return queryset


class RunStatusFilter(HasRowFilter):
    title = "has a run that is"
    parameter_name = "run_status"
    model, field, values = Run, "status", Run.Status


class FeedbackFilter(HasRowFilter):
    title = "has a reply rated"
    parameter_name = "feedback"
    model, field, values = Message, "feedback", Message.Feedback


@admin.register(Conversation)
class ConversationAdmin(admin.ModelAdmin):
    change_form_template = "admin/runs/conversation/change_form.html"
    list_display = [
        "title_display",
        "owner_column",
        "memory",
        "message_count",
        "failed_runs",
        "updated_at",
        "has_thread_column",
    ]
    list_display_links = ["title_display"]
    list_filter = [
        "memory",
        HasThreadFilter,
        SharedFilter,
        FeedbackFilter,
        RunStatusFilter,
        OwnerKindFilter,
        ("updated_at", admin.DateFieldListFilter),
        ("created_at", admin.DateFieldListFilter),
    ]
    search_fields = [
        "title__contains_folded",
        "messages__text__contains_folded",
        "owner__username__contains_folded",
        "=thread_id",
    ]
    search_help_text = "Searches titles, message text, owners' usernames and thread ids."
    list_select_related = ["owner"]
    ordering = ["-updated_at"]
    actions = ["forget_threads", "export_jsonl", "stop_sharing"]
    fields = [
        "id",
        "title",
        "owner_column",
        "memory",
        "has_thread_column",
        "thread_id",
        "memory_lost_at",
        "shared_link",
        "created_at",
        "updated_at",
    ]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Conversation]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                message_count=_count_of(Message.objects.all()),
                failed_runs=_count_of(Run.objects.filter(status=Run.Status.FAILED)),
            )
        )

    # Review cannot rewrite history: nothing here is added, edited or deleted.

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_forget_permission(self, request: HttpRequest) -> bool:
        """Forgetting changes what the assistant remembers: it takes the change permission."""
        opts = self.opts
        return request.user.has_perm(f"{opts.app_label}.change_{opts.model_name}")

    # Columns.

    @admin.display(description="title", ordering="title")
    def title_display(self, obj: Conversation) -> str:
        return obj.title or "(untitled)"

    @admin.display(description="owner", ordering="owner__username")
    def owner_column(self, obj: Conversation) -> str:
        return owner_display(obj)

    @admin.display(description="messages", ordering="message_count")
    def message_count(self, obj: Conversation) -> int:
        return obj.message_count

    @admin.display(description="failed runs", ordering="failed_runs")
    def failed_runs(self, obj: Conversation) -> str:
        if not obj.failed_runs:
            return "0"
        query = urlencode({"conversation__id__exact": obj.pk, "status__exact": Run.Status.FAILED})
        url = f"{reverse('admin:runs_run_changelist')}?{query}"
        return format_html('<a href="{}">{}</a>', url, obj.failed_runs)

    @admin.display(description="has thread", boolean=True, ordering="thread_id")
    def has_thread_column(self, obj: Conversation) -> bool:
        return obj.has_thread

    @admin.display(description="shared")
    def shared_link(self, obj: Conversation) -> str:
        path = shared_path(conversation=obj)
        if path is None:
            return "not shared"
        return format_html(
            '<a href="{}">{}</a> (as of {})', path, path, obj.shared_at.strftime("%Y-%m-%d %H:%M")
        )

    # The page of one conversation: the transcript beside what the assistant remembers.

    def change_view(self, request, object_id, form_url="", extra_context=None):
        conversation = self.get_object(request, object_id)
        extra_context = dict(extra_context or {})
        if conversation is not None and self.has_view_permission(request, conversation):
            active = conversation.active_run
            extra_context.update(
                transcript=transcript_for(conversation),
                remembered=remembered_for(conversation),
                streaming=active is not None and active.is_active,
                streaming_html=markdown_to_safe_html(active.partial_text)
                if active is not None and active.is_active and active.partial_text
                else "",
                can_forget=self.has_forget_permission(request) and conversation.has_thread,
                export_url=reverse("admin:runs_conversation_export", args=[conversation.pk]),
                forget_url=reverse("admin:runs_conversation_forget", args=[conversation.pk]),
                runs_url=reverse("admin:runs_run_changelist")
                + f"?conversation__id__exact={conversation.pk}",
            )
        return super().change_view(request, object_id, form_url, extra_context)

    def get_urls(self):
        own = [
            path(
                "<uuid:object_id>/export/",
                self.admin_site.admin_view(self.export_view),
                name="runs_conversation_export",
            ),
            path(
                "<uuid:object_id>/forget/",
                self.admin_site.admin_view(self.forget_view),
                name="runs_conversation_forget",
            ),
        ]
        return own + super().get_urls()

    def export_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        conversation = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not self.has_view_permission(request, conversation):
            return HttpResponse(status=403)
        body = services.conversation_export_jsonl(conversation_ids=[conversation.pk])
        return jsonl_response(body, name=f"conversation-{conversation.pk}")

    def forget_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        return require_POST(self._forget_view)(request, object_id)

    def _forget_view(self, request: HttpRequest, object_id: Any) -> HttpResponse:
        conversation = get_object_or_404(self.get_queryset(request), pk=object_id)
        if not self.has_forget_permission(request):
            return HttpResponse(status=403)
        self._forget(request, [conversation.pk])
        return HttpResponseRedirect(
            reverse("admin:runs_conversation_change", args=[conversation.pk])
        )

    # Actions.

    @admin.action(
        description="Forget the backend thread of the selected conversations",
        permissions=["forget"],
    )
    def forget_threads(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        self._forget(request, list(queryset.values_list("pk", flat=True)))

    @admin.action(description="Export the selected transcripts as JSON Lines", permissions=["view"])
    def export_jsonl(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> HttpResponse:
        ids = list(queryset.values_list("pk", flat=True))
        return jsonl_response(
            services.conversation_export_jsonl(conversation_ids=ids), name="conversations"
        )

    @admin.action(description="Stop sharing the selected conversations", permissions=["forget"])
    def stop_sharing(self, request: HttpRequest, queryset: QuerySet[Conversation]) -> None:
        ids = list(queryset.values_list("pk", flat=True))
        count = services.conversations_unshare_by_staff(conversation_ids=ids)
        self.message_user(
            request,
            f"Stopped sharing {count} conversation{'s' if count != 1 else ''}: "
            "their links no longer work.",
            messages.SUCCESS,
        )

    def _forget(self, request: HttpRequest, conversation_ids: list[Any]) -> None:
        outcome = async_to_sync(services.conversation_forget_by_staff)(
            conversation_ids=conversation_ids
        )
        if outcome.forgotten:
            count = len(outcome.forgotten)
            self.message_user(
                request,
                f"Forgot the backend thread of {count} conversation{'s' if count != 1 else ''}. "
                "Their transcripts stay; their next remembered message starts a new memory.",
                messages.SUCCESS,
            )
        if outcome.without_thread:
            count = len(outcome.without_thread)
            self.message_user(
                request,
                f"{count} conversation{'s' if count != 1 else ''} had no backend thread to forget.",
                messages.INFO,
            )
        if outcome.busy:
            count = len(outcome.busy)
            self.message_user(
                request,
                f"{count} conversation{'s are' if count != 1 else ' is'} still streaming a reply: "
                "left alone. Try again once the reply has finished.",
                messages.WARNING,
            )
        for conversation_id, error in outcome.failed:
            self.message_user(
                request,
                f"Could not forget the thread of conversation {conversation_id}: {error}",
                messages.ERROR,
            )


# Runs.


@admin.register(Run)
class RunAdmin(admin.ModelAdmin):
    list_display = [
        "run_display",
        "status",
        "mode",
        "conversation_link",
        "started_at",
        "ttft_column",
        "duration_column",
        "error_column",
    ]
    list_display_links = ["run_display"]
    list_filter = ["status", "mode", ("started_at", admin.DateFieldListFilter)]
    search_fields = [
        "conversation__title__contains_folded",
        "error_code",
        "error_message__contains_folded",
        "=backend_run_id",
    ]
    search_help_text = "Searches conversation titles, errors and backend run ids."
    list_select_related = ["conversation"]
    ordering = ["-started_at"]
    fields = [
        "id",
        "conversation_link",
        "status",
        "mode",
        "started_at",
        "ttft_column",
        "duration_column",
        "reply_chars",
        "error_code",
        "error_message",
        "notice",
        "continues",
        "backend_run_id",
        "thread_id",
        "messages_display",
    ]
    readonly_fields = fields

    def get_queryset(self, request: HttpRequest) -> QuerySet[Run]:
        return (
            super()
            .get_queryset(request)
            .annotate(
                ttft=ExpressionWrapper(
                    F("first_token_at") - F("started_at"), output_field=DurationField()
                ),
                run_duration=ExpressionWrapper(
                    F("finished_at") - F("started_at"), output_field=DurationField()
                ),
            )
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    @admin.display(description="run")
    def run_display(self, obj: Run) -> str:
        return f"{obj.started_at:%Y-%m-%d %H:%M:%S} · {str(obj.pk)[:8]}"

    @admin.display(description="conversation", ordering="conversation__title")
    def conversation_link(self, obj: Run) -> str:
        url = reverse("admin:runs_conversation_change", args=[obj.conversation_id])
        return format_html('<a href="{}">{}</a>', url, str(obj.conversation))

    @admin.display(description="time to first token", ordering="ttft")
    def ttft_column(self, obj: Run) -> str:
        return seconds_display(obj.time_to_first_token)

    @admin.display(description="duration", ordering="run_duration")
    def duration_column(self, obj: Run) -> str:
        return seconds_display(obj.duration)

    @admin.display(description="error", ordering="error_code")
    def error_column(self, obj: Run) -> str:
        if not obj.error_code and not obj.error_message:
            return ""
        text = Truncator(obj.error_message).chars(120)
        return f"{obj.error_code}: {text}" if obj.error_code else text

    @admin.display(description="messages")
    def messages_display(self, obj: Run) -> str:
        parts = []
        for message in obj.messages.order_by("created_at"):
            label = "remembered" if message.remembered else "stateless"
            if message.replaced_at:
                label += ", replaced (the user regenerated or edited it)"
            parts.append(
                format_html(
                    '<div class="run-message"><strong>{}</strong> <em>({})</em>'
                    '<div class="run-message-text">{}</div></div>',
                    message.role,
                    label,
                    mark_safe(markdown_to_safe_html(message.text)),
                )
            )
        return mark_safe("".join(parts)) if parts else "-"


admin.site.site_header = "Chat review console"
admin.site.site_title = "Chat review"
admin.site.index_title = "Review conversations, runs and what the assistant remembers"
