from typing import Any

from django.contrib.auth.signals import user_logged_in, user_logged_out
from django.db.backends.signals import connection_created
from django.dispatch import receiver

from runs.middleware import session_ended_notice
from runs.selectors import Owner
from runs.services import VISITOR_SESSION_KEY, conversations_adopt, owner_group, session_group


@receiver(user_logged_in)
def adopt_anonymous_conversations(sender, request, user, **kwargs) -> None:
    """The visitor's conversations become the account's, and the visitor's open tabs are told
    to come back as the account."""
    if request is None or not hasattr(request, "session"):
        return
    visitor_key = request.session.get(VISITOR_SESSION_KEY, "")
    if not visitor_key:
        return
    conversations_adopt(user_id=user.pk, visitor_key=visitor_key)
    session_ended_notice(
        request,
        group=owner_group(Owner(user_id=None, session_key=visitor_key)),
        reason="signed_in",
        user_id=user.pk,
    )


@receiver(user_logged_out)
def end_the_sessions_sockets(sender, request, user, **kwargs) -> None:
    """Sent before the session is flushed: its key still names the sockets opened with it (the
    account's sockets in other browsers stay)."""
    session_key = getattr(getattr(request, "session", None), "session_key", None)
    if session_key:
        session_ended_notice(request, group=session_group(session_key), reason="signed_out")


def _lower(value: Any) -> Any:
    return value.lower() if isinstance(value, str) else value


@receiver(connection_created)
def sqlite_lower_folds_every_letter(sender, connection, **kwargs) -> None:
    """SQLite's lower() folds only ASCII letters, so a search for "über" missed "Über": on
    SQLite, lower() is Python's, which folds every letter as PostgreSQL's does."""
    if connection.vendor == "sqlite":
        connection.connection.create_function("lower", 1, _lower, deterministic=True)
