"""The statements every message runs, as plain SQL (issue 7).

Each message's start and finish run on the process's one database thread (`runs.db`), so their
cost decides how long a burst of senders waits in line for its first token, and every
millisecond of it is CPU taken from the replies streaming meanwhile. Django's ORM spends
0.2 to 0.9 ms of Python building each of these queries; written out they take 0.05 to 0.1 ms.
Values go through the models' own fields (`get_db_prep_value`), so the statements hold on
SQLite and PostgreSQL alike. Everything off the hot path stays in the ORM.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import connection
from django.db.models import Field, Model

from runs.models import Conversation, Message, Run


def _table(model: type[Model]) -> str:
    return connection.ops.quote_name(model._meta.db_table)


def _field(model: type[Model], name: str) -> Field:
    return model._meta.pk if name == "pk" else model._meta.get_field(name)


def _column(model: type[Model], name: str) -> str:
    return connection.ops.quote_name(_field(model, name).column)


def _value(model: type[Model], name: str, value: Any) -> Any:
    return _field(model, name).get_db_prep_value(value, connection)


def _execute(sql: str, params: list[Any]) -> int:
    """Runs one statement and returns how many rows it changed (or its first value for a
    SELECT)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if sql.startswith("SELECT"):
            return cursor.fetchone()[0]
        return cursor.rowcount


def rows_update(model: type[Model], *, values: dict[str, Any], **where: Any) -> int:
    """UPDATE `model` SET `values` WHERE each `where` field equals its value (is NULL for None;
    given a tuple, is one of them). Returns the number of rows changed."""
    assignments = [f"{_column(model, name)} = %s" for name in values]
    params = [_value(model, name, value) for name, value in values.items()]
    conditions = []
    for name, wanted in where.items():
        if wanted is None:
            conditions.append(f"{_column(model, name)} IS NULL")
        elif isinstance(wanted, tuple):
            conditions.append(f"{_column(model, name)} IN ({', '.join(['%s'] * len(wanted))})")
            params.extend(_value(model, name, one) for one in wanted)
        else:
            conditions.append(f"{_column(model, name)} = %s")
            params.append(_value(model, name, wanted))
    sql = f"UPDATE {_table(model)} SET {', '.join(assignments)} WHERE {' AND '.join(conditions)}"
    return _execute(sql, params)


def rows_update_each(
    model: type[Model], *, fields: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Updates many rows by primary key, each with values of its own: `rows` holds
    (pk, value of each of `fields`) tuples. One statement, executed once per row."""
    assignments = ", ".join(f"{_column(model, name)} = %s" for name in fields)
    sql = f"UPDATE {_table(model)} SET {assignments} WHERE {_column(model, 'pk')} = %s"
    params = [
        [*(_value(model, name, value) for name, value in zip(fields, values, strict=True)),
         _value(model, "pk", pk)]
        for pk, *values in rows
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


def _owned(*, user_id: int | None, session_key: str) -> tuple[str, list[Any]]:
    """The WHERE condition (and its parameters) on the conversation table for one owner: a
    user, or an anonymous visitor by their key."""
    conversation = _table(Conversation)
    owner_id = f"{conversation}.{_column(Conversation, 'owner')}"
    if user_id is not None:
        return f"{owner_id} = %s", [_value(Conversation, "owner", user_id)]
    if not session_key:
        return "1 = 0", []  # as conversation_queryset: a visitor without a key owns nothing
    session = f"{conversation}.{_column(Conversation, 'session_key')}"
    return f"{owner_id} IS NULL AND {session} = %s", [session_key]


def owner_user_messages_count(*, user_id: int | None, session_key: str, since: datetime) -> int:
    """How many messages the owner has sent since `since`, in all their conversations."""
    owned, params = _owned(user_id=user_id, session_key=session_key)
    conversation, message = _table(Conversation), _table(Message)
    sql = (
        f"SELECT COUNT(*) FROM {message} INNER JOIN {conversation} "
        f"ON {message}.{_column(Message, 'conversation')} "
        f"= {conversation}.{_column(Conversation, 'id')} "
        f"WHERE {owned} AND {message}.{_column(Message, 'role')} = %s "
        f"AND {message}.{_column(Message, 'created_at')} >= %s"
    )
    role = _value(Message, "role", Message.Role.USER)
    return _execute(sql, [*params, role, _value(Message, "created_at", since)])


def owner_conversation_lock(
    *, user_id: int | None, session_key: str, conversation_id: Any
) -> Conversation | None:
    """The owner's conversation, None if it is not theirs or doesn't exist, with
    `active_run_status`: the status of its active run (None without one).

    Inside a transaction its row stays locked until the end (SELECT ... FOR UPDATE where the
    database has it; SQLite's writers take turns anyway), so a second sender reads it only
    once the first has committed its claim, and sees the run that claim started."""
    try:
        conversation_pk = _value(Conversation, "id", conversation_id)
    except (ValidationError, ValueError, TypeError):
        return None
    owned, params = _owned(user_id=user_id, session_key=session_key)
    conversation, run = _table(Conversation), _table(Run)
    sql = (
        f"SELECT {conversation}.*, {run}.{_column(Run, 'status')} AS active_run_status "
        f"FROM {conversation} LEFT OUTER JOIN {run} ON {run}.{_column(Run, 'id')} "
        f"= {conversation}.{_column(Conversation, 'active_run')} "
        f"WHERE {conversation}.{_column(Conversation, 'id')} = %s AND {owned}"
    )
    if connection.features.has_select_for_update_of:
        sql += f" FOR UPDATE OF {conversation}"
    found = list(Conversation.objects.raw(sql, [conversation_pk, *params]))
    return found[0] if found else None


def conversation_claim(
    *, conversation_id: Any, values: dict[str, Any], active_statuses: Iterable[str]
) -> bool:
    """Sets `values` (among them `active_run`) on the conversation only if no run of it is
    active: the claim that lets one request at a time, in any process, start a run."""
    statuses = list(active_statuses)
    run = _table(Run)
    assignments = [f"{_column(Conversation, name)} = %s" for name in values]
    conversation = _table(Conversation)
    active_run = f"{conversation}.{_column(Conversation, 'active_run')}"
    sql = (
        f"UPDATE {conversation} SET {', '.join(assignments)} "
        f"WHERE {_column(Conversation, 'id')} = %s AND ({active_run} IS NULL OR NOT EXISTS "
        f"(SELECT 1 FROM {run} WHERE {run}.{_column(Run, 'id')} = {active_run} "
        f"AND {run}.{_column(Run, 'status')} IN ({', '.join(['%s'] * len(statuses))})))"
    )
    params = [_value(Conversation, name, value) for name, value in values.items()]
    params.append(_value(Conversation, "id", conversation_id))
    params.extend(_value(Run, "status", status) for status in statuses)
    return _execute(sql, params) == 1
