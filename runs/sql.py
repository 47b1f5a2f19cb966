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


def _qualified(model: type[Model], name: str) -> str:
    """The column as `table`.`column`, for statements that name two tables."""
    return f"{_table(model)}.{_column(model, name)}"


def _placeholders(count: int) -> str:
    return ", ".join(["%s"] * count)


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
            conditions.append(f"{_column(model, name)} IN ({_placeholders(len(wanted))})")
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
    owner_id = _qualified(Conversation, "owner")
    if user_id is not None:
        return f"{owner_id} = %s", [_value(Conversation, "owner", user_id)]
    if not session_key:
        return "1 = 0", []  # as conversation_queryset: a visitor without a key owns nothing
    return f"{owner_id} IS NULL AND {_qualified(Conversation, 'session_key')} = %s", [session_key]


def owner_user_messages_count(*, user_id: int | None, session_key: str, since: datetime) -> int:
    """How many messages the owner has sent since `since`, in all their conversations."""
    owned, params = _owned(user_id=user_id, session_key=session_key)
    sql = (
        f"SELECT COUNT(*) FROM {_table(Message)} INNER JOIN {_table(Conversation)} "
        f"ON {_qualified(Message, 'conversation')} = {_qualified(Conversation, 'id')} "
        f"WHERE {owned} AND {_qualified(Message, 'role')} = %s "
        f"AND {_qualified(Message, 'created_at')} >= %s"
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
    conversation = _table(Conversation)
    sql = (
        f"SELECT {conversation}.*, {_qualified(Run, 'status')} AS active_run_status "
        f"FROM {conversation} LEFT OUTER JOIN {_table(Run)} "
        f"ON {_qualified(Run, 'id')} = {_qualified(Conversation, 'active_run')} "
        f"WHERE {_qualified(Conversation, 'id')} = %s AND {owned}"
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
    assignments = [f"{_column(Conversation, name)} = %s" for name in values]
    active_run = _qualified(Conversation, "active_run")
    sql = (
        f"UPDATE {_table(Conversation)} SET {', '.join(assignments)} "
        f"WHERE {_column(Conversation, 'id')} = %s AND ({active_run} IS NULL OR NOT EXISTS "
        f"(SELECT 1 FROM {_table(Run)} WHERE {_qualified(Run, 'id')} = {active_run} "
        f"AND {_qualified(Run, 'status')} IN ({_placeholders(len(statuses))})))"
    )
    params = [_value(Conversation, name, value) for name, value in values.items()]
    params.append(_value(Conversation, "id", conversation_id))
    params.extend(_value(Run, "status", status) for status in statuses)
    return _execute(sql, params) == 1
