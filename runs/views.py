"""HTTP views: the chat page, the form that works without JavaScript, health.

Thin: parse, call a service, render. Views that wait on the backend are async, so a slow
reply never holds one of the server's threads.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any

from asgiref.sync import sync_to_async
from django.conf import settings
from django.contrib import messages as flash
from django.contrib.auth import login, logout
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.db import connection
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.middleware.csrf import rotate_token
from django.shortcuts import redirect, render
from django.urls import reverse, reverse_lazy
from django.utils import timezone
from django.utils.decorators import method_decorator
from django.utils.http import content_disposition_header
from django.views.decorators.cache import never_cache
from django.views.decorators.debug import sensitive_post_parameters
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django.views.generic.edit import FormView
from django_ratelimit.core import get_usage

from runs import services
from runs.backend import get_backend
from runs.exceptions import (
    ChatError,
    EmptyText,
    InvalidRequest,
    NoReply,
    NotFound,
    TextTooLong,
)
from runs.forms import AccountDeleteForm, AccountEmailForm, SignUpForm
from runs.middleware import session_ended_notice
from runs.models import Conversation
from runs.selectors import (
    Owner,
    conversation_file_name,
    conversation_get,
    conversation_list,
    conversation_markdown,
    conversation_to_dict,
    conversations_exist,
    conversations_markdown_zip,
    shared_conversation_get,
    shared_path,
    shared_transcript_rows,
    transcript_from,
    transcript_rows,
)


def owner_of(request: HttpRequest) -> Owner:
    """The request's owner; an anonymous visitor gets a saved session of their own."""
    return services.owner_for_session(user=request.user, session=request.session)


async def aowner_of(request: HttpRequest) -> Owner:
    return await sync_to_async(owner_of)(request)


def login_required_if_configured(request: HttpRequest) -> HttpResponse | None:
    if settings.CHAT_REQUIRE_LOGIN and not request.user.is_authenticated:
        return redirect(f"{reverse('login')}?next={request.path}")
    return None


def not_found_page(request: HttpRequest) -> HttpResponse:
    """No such conversation, or another's: answered exactly alike, by every page."""
    return render(request, "runs/not_found.html", status=404)


async def _not_found(request: HttpRequest) -> HttpResponse:
    return await sync_to_async(not_found_page)(request)


def chat_page(request: HttpRequest, conversation_id: Any = None) -> HttpResponse:
    if refusal := login_required_if_configured(request):
        return refusal
    owner = owner_of(request)
    conversation = None
    transcript: list[dict[str, Any]] = []
    if conversation_id is not None:
        try:
            conversation = conversation_get(owner=owner, conversation_id=conversation_id)
        except NotFound:
            return not_found_page(request)
        transcript = transcript_rows(conversation=conversation)
    # The last reply, which Regenerate acts on (Edit is on each of the user's messages).
    last_reply = ""
    if len(transcript) >= 2 and [m["role"] for m in transcript[-2:]] == ["user", "assistant"]:
        last_reply = transcript[-1]["id"]
    active_run = None
    if (
        conversation is not None
        and conversation.active_run_id
        and conversation.active_run.is_active
    ):
        active_run = str(conversation.active_run_id)
    search_error = ""
    try:
        query = services.conversation_search_clean(query=request.GET.get("q"))
        offset = services.list_offset_clean(offset=request.GET.get("offset"))
    except ChatError as exc:
        query, offset, search_error = "", 0, exc.message
    listed = conversation_list(owner=owner, query=query, offset=offset)
    # A page that lists none says the owner has none only when it is unfiltered and the first.
    has_conversations = bool(listed.conversations) or (
        bool(query or offset) and conversations_exist(owner=owner)
    )
    context = {
        "conversations": listed.conversations,
        "has_conversations": has_conversations,
        "query": query,
        "list_offset": offset,
        "next_offset": listed.next_offset,
        "search_error": search_error,
        "conversation": conversation,
        "conversation_json": conversation_to_dict(conversation) if conversation else None,
        "transcript": transcript,
        "last_reply": last_reply,
        "memory_default": conversation.memory if conversation else settings.CHAT_MEMORY_DEFAULT,
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
        "active_run": active_run,
    }
    return render(request, "runs/chat.html", context, status=400 if search_error else 200)


@require_POST
async def chat_form_send(request: HttpRequest) -> HttpResponse:
    """The chat without JavaScript: post, wait for the whole reply, redirect back (PRG)."""
    user = await request.auser()
    if settings.CHAT_REQUIRE_LOGIN and not user.is_authenticated:
        return redirect(reverse("login"))
    owner = await aowner_of(request)
    conversation_id = request.POST.get("conversation") or None
    memory = request.POST.get("memory") in {"on", "true", "1"}
    try:
        outcome = await services.chat_wait(
            owner=owner,
            conversation_id=conversation_id,
            text=request.POST.get("text", ""),
            memory=memory,
        )
    except NotFound:
        return await _not_found(request)
    except ChatError as exc:
        await sync_to_async(flash.error)(request, exc.message)
        target = (
            reverse("conversation", args=[conversation_id]) if conversation_id else reverse("chat")
        )
        return redirect(target)
    if outcome.error is not None:
        await sync_to_async(flash.error)(request, outcome.error.message)
    return redirect(reverse("conversation", args=[outcome.started.conversation.id]))


ConversationPage = Callable[[HttpRequest, Owner, Conversation], Awaitable[HttpResponse]]
ConfirmedAction = Callable[[Owner, Conversation], Awaitable[tuple[str, str]]]


def conversation_page(view: ConversationPage) -> Callable[..., Awaitable[HttpResponse]]:
    """A page about one of the owner's conversations: sign-in when required, then the owner's
    conversation, or the not-found page for anyone else's (answered exactly alike)."""

    @wraps(view)
    async def wrapper(request: HttpRequest, conversation_id: Any) -> HttpResponse:
        user = await request.auser()
        if settings.CHAT_REQUIRE_LOGIN and not user.is_authenticated:
            return redirect(reverse("login"))
        owner = await aowner_of(request)
        try:
            conversation = await sync_to_async(conversation_get)(
                owner=owner, conversation_id=conversation_id
            )
        except NotFound:
            return await _not_found(request)
        return await view(request, owner, conversation)

    return wrapper


async def _confirm_then(
    request: HttpRequest,
    owner: Owner,
    conversation: Conversation,
    *,
    template: str,
    act: ConfirmedAction,
) -> HttpResponse:
    """A confirmation page (GET), then the POST that does it: without JavaScript, and the
    chat page's dialogs post here too. `act` answers with what to say and where to go."""
    if request.method == "POST":
        try:
            done, target = await act(owner, conversation)
        except NotFound:  # gone meanwhile
            return await _not_found(request)
        except ChatError as exc:
            await sync_to_async(flash.error)(request, exc.message)
            return redirect(reverse("conversation", args=[conversation.id]))
        await sync_to_async(flash.success)(request, done)
        return redirect(target)
    return await sync_to_async(render)(request, template, {"conversation": conversation})


async def _forget(owner: Owner, conversation: Conversation) -> tuple[str, str]:
    await services.conversation_forget(owner=owner, conversation_id=conversation.id)
    return (
        "Forgotten: the next remembered message starts a new memory.",
        reverse("conversation", args=[conversation.id]),
    )


async def _delete(owner: Owner, conversation: Conversation) -> tuple[str, str]:
    await services.conversation_delete(owner=owner, conversation_id=conversation.id)
    return f"Deleted “{conversation.title or 'Untitled'}”.", reverse("chat")


@require_http_methods(["GET", "POST"])
@conversation_page
async def conversation_forget_form(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Forget: deletes the backend thread; the transcript stays."""
    return await _confirm_then(
        request, owner, conversation, template="runs/forget_confirm.html", act=_forget
    )


@require_http_methods(["GET", "POST"])
@conversation_page
async def conversation_delete_form(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Delete: the transcript and the backend thread, for good."""
    return await _confirm_then(
        request, owner, conversation, template="runs/delete_confirm.html", act=_delete
    )


@require_http_methods(["GET", "POST"])
@conversation_page
async def conversation_rename_form(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Rename without JavaScript: a form with the current name; a refused name is shown again
    with the reason, as typed."""
    context: dict[str, Any] = {"conversation": conversation, "title": conversation.title}
    if request.method == "POST":
        context["title"] = typed = request.POST.get("title", "")
        try:
            renamed = await services.conversation_rename(
                owner=owner, conversation_id=conversation.id, title=typed
            )
        except NotFound:  # deleted meanwhile: as Forget and Delete answer it
            return await _not_found(request)
        except ChatError as exc:
            context["error"] = exc.message
            return await sync_to_async(render)(request, "runs/rename.html", context, status=400)
        await sync_to_async(flash.success)(request, f"Renamed to “{renamed.title}”.")
        return redirect(reverse("conversation", args=[conversation.id]))
    return await sync_to_async(render)(request, "runs/rename.html", context)


@require_http_methods(["GET", "POST"])
@conversation_page
async def chat_form_edit(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Edit one of the user's messages without JavaScript (`?message=`, by default the last
    one): a form with its text; sent, it waits for the new reply and redirects back (PRG). A
    refused text is shown again with the reason."""
    asked = request.POST.get("message") or request.GET.get("message")
    refusal = ""
    try:
        from_message = await sync_to_async(transcript_from)(
            conversation_id=conversation.id, message_id=_message_id(asked) if asked else None
        )
    except NoReply as exc:
        refusal = exc.message
    except InvalidRequest:
        refusal = "There is no such message of yours to edit."
    if refusal:
        await sync_to_async(flash.error)(request, refusal)
        return redirect(reverse("conversation", args=[conversation.id]))
    message_id = from_message[0].pk
    context: dict[str, Any] = {
        "conversation": conversation,
        "message_id": message_id,
        "text": from_message[0].text,
        "replaced_after": len(from_message) - 1,
        "max_chars": settings.CHAT_MAX_MESSAGE_CHARS,
    }
    if request.method == "POST":
        context["text"] = typed = request.POST.get("text", "")
        try:
            return await _regenerated(
                request, owner, conversation, message_id=message_id, text=typed
            )
        except (EmptyText, TextTooLong, InvalidRequest) as exc:
            context["error"] = exc.message
            return await sync_to_async(render)(request, "runs/edit.html", context, status=400)
    return await sync_to_async(render)(request, "runs/edit.html", context)


def _message_id(value: str) -> uuid.UUID:
    try:
        return uuid.UUID(value)
    except ValueError:
        raise InvalidRequest("`message` is not a valid uuid.") from None


@require_GET
@conversation_page
async def conversation_download(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """The conversation as a Markdown file, named after its title."""
    document = await sync_to_async(conversation_markdown)(conversation=conversation)
    response = HttpResponse(document, content_type="text/markdown; charset=utf-8")
    name = conversation_file_name(conversation=conversation)
    response["Content-Disposition"] = content_disposition_header(True, name)
    return response


@require_GET
def conversations_download(request: HttpRequest) -> HttpResponse:
    """All of the visitor's or the account's conversations, each as its Download gives it, in
    one zip archive."""
    if refusal := login_required_if_configured(request):
        return refusal
    archive = conversations_markdown_zip(owner=owner_of(request))
    response = HttpResponse(archive, content_type="application/zip")
    name = f"conversations-{timezone.now():%Y-%m-%d}.zip"
    response["Content-Disposition"] = content_disposition_header(True, name)
    return response


SHARE_DONE = {
    "share": "Shared: anyone with the link can read this conversation as it is now.",
    "update": "Updated: the link now shows this conversation as it is now.",
    "stop": "No longer shared: the link does not work any more.",
}


@require_http_methods(["GET", "POST"])
@conversation_page
async def conversation_share_form(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Share: a read-only link to the conversation as it stands (POST `action`: `share`,
    `update` or `stop`); the chat page's Share button comes here, with or without JavaScript."""
    if request.method == "POST":
        action = request.POST.get("action")
        if action not in SHARE_DONE:
            return HttpResponse(
                "Unknown action: it is share, update or stop.",
                status=400,
                content_type="text/plain",
            )
        try:
            if action == "stop":
                await sync_to_async(services.conversation_unshare)(
                    owner=owner, conversation_id=conversation.id
                )
            else:
                await sync_to_async(services.conversation_share)(
                    owner=owner, conversation_id=conversation.id
                )
        except NotFound:  # deleted meanwhile
            return await _not_found(request)
        except ChatError as exc:
            await sync_to_async(flash.error)(request, exc.message)
        else:
            await sync_to_async(flash.success)(request, SHARE_DONE[action])
        return redirect(reverse("conversation_share", args=[conversation.id]))
    path = shared_path(conversation=conversation)
    context = {
        "conversation": conversation,
        "share_url": request.build_absolute_uri(path) if path else None,
    }
    return await sync_to_async(render)(request, "runs/share.html", context)


def _is_owner(request: HttpRequest, conversation: Conversation) -> bool:
    """Whether the request comes from the conversation's owner, without giving a visitor a
    session just to ask."""
    if request.user.is_authenticated:
        return conversation.owner_id == request.user.pk
    visitor_key = request.session.get(services.VISITOR_SESSION_KEY)
    return (
        bool(visitor_key)
        and conversation.owner_id is None
        and (conversation.session_key == visitor_key)
    )


@require_GET
@never_cache
def shared_conversation(request: HttpRequest, token: str) -> HttpResponse:
    """A shared conversation, read-only, for anyone with the link (signed in when the site
    requires it): as it stood when shared, without its owner's name."""
    if refusal := login_required_if_configured(request):
        return refusal
    try:
        conversation = shared_conversation_get(token=token)
    except NotFound:
        response = render(request, "runs/shared_gone.html", status=404)
    else:
        context = {
            "conversation": conversation,
            "transcript": shared_transcript_rows(conversation=conversation),
            "yours": _is_owner(request, conversation),
        }
        response = render(request, "runs/shared.html", context)
    # Links to it may get passed around; search engines should not list what was shared.
    response["X-Robots-Tag"] = "noindex, nofollow"
    return response


@require_POST
@conversation_page
async def chat_form_feedback(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Rates a reply without JavaScript (`message`, `feedback`: good, bad, or empty to take the
    rating back), then back to the conversation, at that reply."""
    asked = request.POST.get("message", "")
    try:
        await services.message_feedback_set(
            owner=owner,
            conversation_id=conversation.id,
            message_id=_message_id(asked),
            feedback=request.POST.get("feedback") or None,
        )
    except NotFound:
        return await _not_found(request)
    except ChatError as exc:
        await sync_to_async(flash.error)(request, exc.message)
        return redirect(reverse("conversation", args=[conversation.id]))
    return redirect(f"{reverse('conversation', args=[conversation.id])}#m-{asked}")


@require_POST
@conversation_page
async def chat_form_regenerate(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Regenerate without JavaScript: post, wait for the new reply, redirect back (PRG)."""
    return await _regenerated(request, owner, conversation)


@require_POST
@conversation_page
async def chat_form_continue(
    request: HttpRequest, owner: Owner, conversation: Conversation
) -> HttpResponse:
    """Continue without JavaScript: post, wait for the rest of the reply, redirect back (PRG)."""
    waiting = services.chat_continue_wait(owner=owner, conversation_id=conversation.id)
    return await _after_waiting(request, conversation, waiting)


async def _regenerated(
    request: HttpRequest,
    owner: Owner,
    conversation: Conversation,
    *,
    message_id: uuid.UUID | None = None,
    text: str | None = None,
) -> HttpResponse:
    """Waits for the regenerated reply (with `text`, of the edited message), then goes back to
    the conversation. A refused edit is the caller's."""
    waiting = services.chat_regenerate_wait(
        owner=owner, conversation_id=conversation.id, message_id=message_id, text=text
    )
    return await _after_waiting(
        request, conversation, waiting, raises=(EmptyText, TextTooLong, InvalidRequest)
    )


async def _after_waiting(
    request: HttpRequest,
    conversation: Conversation,
    waiting: Awaitable[services.WaitOutcome],
    *,
    raises: tuple[type[ChatError], ...] = (),
) -> HttpResponse:
    """Waits for the reply a form asked for, then goes back to the conversation (PRG), where
    what went wrong is said; the errors of `raises` are the caller's to show."""
    try:
        outcome = await waiting
    except NotFound:  # deleted meanwhile
        return await _not_found(request)
    except raises:
        raise
    except ChatError as exc:
        await sync_to_async(flash.error)(request, exc.message)
    else:
        if outcome.error is not None:
            await sync_to_async(flash.error)(request, outcome.error.message)
    return redirect(reverse("conversation", args=[conversation.id]))


TOO_MANY = "Too many attempts from here: try again in an hour."


def _over_limit(request: HttpRequest, *, group: str, key: str, count: bool) -> bool:
    """Whether this attempt goes past CHAT_ACCOUNT_RATE_LIMIT attempts an hour at `group` for
    `key` ("ip", or a value); `count` counts it (without, only the attempts counted before)."""
    limit = settings.CHAT_ACCOUNT_RATE_LIMIT
    if limit <= 0:
        return False
    usage = get_usage(
        request,
        group=group,
        key=key if key == "ip" else (lambda group, request: key),
        rate=f"{limit}/h",
        method="POST",
        increment=count,
    )
    if usage is None:
        return False
    return usage["count"] > limit if count else usage["count"] >= limit


def _too_many(view: FormView) -> HttpResponse:
    """The view's form again, refused: too many attempts from this address."""
    form = view.get_form()
    form.add_error(None, TOO_MANY)
    return view.render_to_response(view.get_context_data(form=form), status=429)


def _password_reset_closed(request: HttpRequest) -> HttpResponse:
    """Without a way to send e-mail (EMAIL_URL, with DEBUG off), the pages say whom to ask."""
    return render(request, "registration/password_reset_form.html", {"closed": True}, status=403)


class SignInView(auth_views.LoginView):
    """Django's sign-in; an address that failed too often in the last hour is refused before
    its password is checked."""

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if _over_limit(request, group="sign-in", key="ip", count=False):
            # An unbound form: a bound one would check the password to list its errors.
            form = self.form_class(request, initial={"username": request.POST.get("username")})
            context = self.get_context_data(form=form, limited=TOO_MANY)
            return self.render_to_response(context, status=429)
        return super().post(request, *args, **kwargs)

    def form_invalid(self, form: Any) -> HttpResponse:
        _over_limit(self.request, group="sign-in", key="ip", count=True)
        return super().form_invalid(form)


def _account_sockets_tell(request: HttpRequest, *, user_id: int, reason: str) -> None:
    """Every socket of the account hears `session.ended` once the response leaves: after a
    password change (`password_changed`) each checks its own session, and those the change
    ended are sent away."""
    owner = Owner(user_id=user_id, session_key="")
    session_ended_notice(request, group=services.owner_group(owner), reason=reason)


class PasswordChangeView(auth_views.PasswordChangeView):
    """Django's password change, which ends the account's other sessions and renews this one
    under a new key. This browser's other tabs are told to come back with the new cookie (the
    CSRF cookie is renewed too, their sign that it is there); the other sessions' sockets are
    told to leave (each checks its own session)."""

    success_url = reverse_lazy("password_change_done")

    def form_valid(self, form: Any) -> HttpResponse:
        old_session_key = self.request.session.session_key
        response = super().form_valid(form)
        rotate_token(self.request)
        if old_session_key:
            session_ended_notice(
                self.request, group=services.session_group(old_session_key), reason="renewed"
            )
        _account_sockets_tell(self.request, user_id=self.request.user.pk, reason="password_changed")
        return response


@method_decorator([sensitive_post_parameters(), never_cache], name="dispatch")
class SignUpView(auth_views.RedirectURLMixin, FormView):
    """Django's own account form; the new account is signed in at once, so, as after a sign-in,
    the visitor's conversations become its own and the browser's other tabs follow. Closed
    (CHAT_SIGNUP_OPEN=false), the page says who creates accounts instead."""

    form_class = SignUpForm
    template_name = "registration/signup.html"
    next_page = settings.LOGIN_REDIRECT_URL

    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.CHAT_SIGNUP_OPEN:
            return render(request, self.template_name, {"closed": True}, status=403)
        if request.user.is_authenticated:
            return redirect(self.get_success_url())
        return super().dispatch(request, *args, **kwargs)

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if _over_limit(request, group="sign-up", key="ip", count=False):
            return _too_many(self)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: SignUpForm) -> HttpResponse:
        _over_limit(self.request, group="sign-up", key="ip", count=True)
        user = form.save()
        login(self.request, user)
        if email := form.cleaned_data.get("email"):
            _email_confirmation_send(self.request, user=user, email=email)
        return redirect(self.get_success_url())

    def form_invalid(self, form: SignUpForm) -> HttpResponse:
        # The page comes back with the cursor in the first field to fix, not the first field.
        refused = next((name for name in form.fields if name in form.errors), None)
        if refused is not None:
            for field in form.fields.values():
                field.widget.attrs.pop("autofocus", None)
            form.fields[refused].widget.attrs["autofocus"] = True
        return super().form_invalid(form)

    def get_context_data(self, **kwargs: Any) -> dict[str, Any]:
        return super().get_context_data(next=self.get_redirect_url(), **kwargs)


class PasswordResetClosedMixin:
    def dispatch(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if not settings.CHAT_PASSWORD_RESET:
            return _password_reset_closed(request)
        return super().dispatch(request, *args, **kwargs)


class PasswordResetView(PasswordResetClosedMixin, auth_views.PasswordResetView):
    """Django's: a link to set a new password goes to every account with that address, and the
    page says the same whether there is one or not."""

    email_template_name = "registration/password_reset_email.txt"

    def post(self, request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
        if _over_limit(request, group="password-reset", key="ip", count=True):
            return _too_many(self)
        return super().post(request, *args, **kwargs)

    def form_valid(self, form: Any) -> HttpResponse:
        # An inbox is not flooded from many addresses either; past the limit the page is the
        # same, so it still tells nobody whether an account has the address.
        email = form.cleaned_data["email"].lower()
        if _over_limit(self.request, group="password-reset-mail", key=email, count=True):
            return redirect(self.get_success_url())
        return super().form_valid(form)


class PasswordResetConfirmView(PasswordResetClosedMixin, auth_views.PasswordResetConfirmView):
    """Django's, signing the browser in once the new password is set; the account's sessions
    elsewhere end, and their sockets are sent away, as after a password change."""

    post_reset_login = True

    def form_valid(self, form: Any) -> HttpResponse:
        response = super().form_valid(form)
        _account_sockets_tell(self.request, user_id=form.user.pk, reason="password_changed")
        return response


def _email_confirmation_send(request: HttpRequest, *, user: Any, email: str) -> None:
    """Mails `email` the link that makes it the account's, and says on the next page what
    happened: sent, refused (too many links to that inbox this hour), or failed."""
    if _over_limit(request, group="account-email-mail", key=email.lower(), count=True):
        flash.error(request, f"Too many links went to {email} in the last hour: try again later.")
        return
    token = services.account_email_token(user_id=user.pk, email=email)
    link = request.build_absolute_uri(reverse("account_email_confirm", args=[token]))
    if services.account_email_confirmation_send(
        username=user.get_username(), email=email, link=link
    ):
        flash.success(
            request,
            f"We sent a link to {email}: open it (within a day) to make it your address.",
        )
    else:
        flash.error(request, f"The link to {email} could not be sent: try again later.")


@require_GET
@never_cache
def account_email_confirm(request: HttpRequest, token: str) -> HttpResponse:
    """The link mailed to a new address: opened, the address is the account's."""
    if not settings.CHAT_PASSWORD_RESET:
        return _password_reset_closed(request)
    try:
        user = services.account_email_confirm(token=token)
    except InvalidRequest as exc:
        context = {"refused": exc.message}
        return render(request, "registration/account_email_confirm.html", context, status=400)
    context = {"email": user.email, "username": user.get_username()}
    return render(request, "registration/account_email_confirm.html", context)


@login_required
@sensitive_post_parameters()
@require_http_methods(["GET", "POST"])
def account_email(request: HttpRequest) -> HttpResponse:
    """Sets (or clears) the address a forgotten password's link goes to, once the password is
    given: whoever controls the address can take over the account."""
    if not settings.CHAT_PASSWORD_RESET:
        return _password_reset_closed(request)
    form = AccountEmailForm(
        request.user,
        request.POST if request.method == "POST" else None,
        initial={"email": request.user.email},
    )
    if form.is_bound and form.is_valid():
        email = form.cleaned_data["email"]
        if not email:
            services.account_email_set(user_id=request.user.pk, email="")
            flash.success(request, "Your account has no e-mail address now.")
        elif email == request.user.email:
            flash.success(request, f"Your e-mail address is {email} already.")
        else:
            _email_confirmation_send(request, user=request.user, email=email)
        return redirect("password_change")
    return render(
        request,
        "registration/account_email.html",
        {"form": form},
        status=400 if form.errors else 200,
    )


@login_required
@require_http_methods(["GET", "POST"])
async def account_delete(request: HttpRequest) -> HttpResponse:
    """Deletes the signed-in account and everything of it, once its password is given; then
    this browser is signed out and every socket of the account is told to leave. Staff
    accounts are removed in the admin console instead."""
    user = await request.auser()
    if user.is_staff:
        return await sync_to_async(render)(
            request, "registration/account_delete.html", {"staff": True}, status=403
        )
    form = AccountDeleteForm(user, request.POST if request.method == "POST" else None)
    if form.is_bound and await sync_to_async(form.is_valid)():
        try:
            await services.account_delete(user_id=user.pk)
        except ChatError as exc:
            form.add_error(None, exc.message)
        else:
            await sync_to_async(logout)(request)
            _account_sockets_tell(request, user_id=user.pk, reason="signed_out")
            await sync_to_async(flash.success)(
                request, "Your account was deleted, with its conversations and their memory."
            )
            return redirect("chat")
    count = await Conversation.objects.filter(owner_id=user.pk).acount()
    return await sync_to_async(render)(
        request,
        "registration/account_delete.html",
        {"form": form, "conversation_count": count},
        status=400 if form.errors else 200,
    )


@require_GET
async def healthz(request: HttpRequest) -> JsonResponse:
    def database_ok() -> bool:
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
            return True
        except Exception:
            return False

    database = await sync_to_async(database_ok)()
    backend = await get_backend().health()
    body = {
        "status": "ok" if database and backend else "degraded",
        "database": "up" if database else "down",
        "backend": "up" if backend else "down",
    }
    return JsonResponse(body, status=200 if database and backend else 503)
