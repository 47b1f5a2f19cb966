"""The statements every message runs, as plain SQL (issue 7).

Each message's start and finish run on the process's one database thread (`runs.db`), so their
cost decides how long a burst of senders waits in line for its first token, and every
millisecond of it is CPU taken from the replies streaming meanwhile. Django's ORM spends
0.2 to 0.9 ms of Python building each of these queries (an INSERT through `create()` too);
written out they take 0.05 to 0.1 ms, and each statement's text is made once per database,
not per message. Values go through the models' own fields (`get_db_prep_value`,
`get_db_prep_save`), so the statements hold on SQLite and PostgreSQL alike. Everything off the
hot path stays in the ORM.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.db import DEFAULT_DB_ALIAS, connection, connections
from django.db.models import Field, Model

from runs.models import Conversation, Run


def _statement(build: Callable[..., str]) -> Callable[..., str]:
    """`build` run once per database vendor and arguments: a message's statements are the same
    text every time, so they are made once, not per message."""
    made: dict[tuple[Any, ...], str] = {}

    @functools.wraps(build)
    def cached(*args: Any) -> str:
        key = (connection.vendor, *args)
        sql = made.get(key)
        if sql is None:
            sql = made[key] = build(*args)
        return sql

    return cached


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
    # The connection itself, not the `connection` proxy that each attribute read goes through.
    return _field(model, name).get_db_prep_value(value, connections[DEFAULT_DB_ALIAS])


def _execute(sql: str, params: list[Any]) -> int:
    """Runs one statement and returns how many rows it changed (or its first value for a
    SELECT)."""
    with connection.cursor() as cursor:
        cursor.execute(sql, params)
        if sql.startswith("SELECT"):
            return cursor.fetchone()[0]
        return cursor.rowcount


@_statement
def _insert_sql(model: type[Model]) -> str:
    columns = ", ".join(connection.ops.quote_name(f.column) for f in model._meta.concrete_fields)
    placeholders = _placeholders(len(model._meta.concrete_fields))
    return f"INSERT INTO {_table(model)} ({columns}) VALUES ({placeholders})"


def row_insert(row: Model) -> Model:
    """INSERTs a new `row` (its primary key made by its default), every field as `save()`
    would write it (defaults, `auto_now_add`), and returns it saved. No signals: the chat's
    models have none on save."""
    fields = row._meta.concrete_fields
    db = connections[DEFAULT_DB_ALIAS]
    params = [field.get_db_prep_save(field.pre_save(row, True), db) for field in fields]
    _execute(_insert_sql(type(row)), params)
    row._state.adding = False
    row._state.db = db.alias
    return row


@_statement
def _update_sql(
    model: type[Model], names: tuple[str, ...], where: tuple[tuple[str, Any], ...]
) -> str:
    assignments = ", ".join(f"{_column(model, name)} = %s" for name in names)
    conditions = []
    for name, shape in where:
        if shape is None:
            conditions.append(f"{_column(model, name)} IS NULL")
        elif shape == "=":
            conditions.append(f"{_column(model, name)} = %s")
        else:
            conditions.append(f"{_column(model, name)} IN ({_placeholders(shape)})")
    return f"UPDATE {_table(model)} SET {assignments} WHERE {' AND '.join(conditions)}"


def rows_update(model: type[Model], *, values: dict[str, Any], **where: Any) -> int:
    """UPDATE `model` SET `values` WHERE each `where` field equals its value (is NULL for None;
    given a tuple, is one of them). Returns the number of rows changed."""
    params = [_value(model, name, value) for name, value in values.items()]
    shape = []
    for name, wanted in where.items():
        if wanted is None:
            shape.append((name, None))
        elif isinstance(wanted, tuple):
            shape.append((name, len(wanted)))
            params.extend(_value(model, name, one) for one in wanted)
        else:
            shape.append((name, "="))
            params.append(_value(model, name, wanted))
    return _execute(_update_sql(model, tuple(values), tuple(shape)), params)


def rows_update_each(
    model: type[Model], *, fields: list[str], rows: Iterable[tuple[Any, ...]]
) -> None:
    """Updates many rows by primary key, each with values of its own: `rows` holds
    (pk, value of each of `fields`) tuples. One statement, executed once per row."""
    sql = _update_sql(model, tuple(fields), (("pk", "="),))
    params = [
        [*(_value(model, name, value) for name, value in zip(fields, values, strict=True)),
         _value(model, "pk", pk)]
        for pk, *values in rows
    ]  # fmt: skip
    with connection.cursor() as cursor:
        cursor.executemany(sql, params)


@_statement
def _owned_sql(kind: str) -> str:
    """The WHERE condition on the conversation table for one kind of owner (see `_owned`)."""
    owner_id = _qualified(Conversation, "owner")
    if kind == "user":
        return f"{owner_id} = %s"
    if kind == "visitor":
        return f"{owner_id} IS NULL AND {_qualified(Conversation, 'session_key')} = %s"
    return "1 = 0"  # as conversation_queryset: a visitor without a key owns nothing


def _owned(*, user_id: int | None, session_key: str) -> tuple[str, list[Any]]:
    """The kind of owner (a user, or an anonymous visitor by their key) and the parameters of
    its WHERE condition."""
    if user_id is not None:
        return "user", [_value(Conversation, "owner", user_id)]
    if not session_key:
        return "nobody", []
    return "visitor", [session_key]


@_statement
def _runs_count_sql(owner_kind: str) -> str:
    return (
        f"SELECT COUNT(*) FROM {_table(Run)} INNER JOIN {_table(Conversation)} "
        f"ON {_qualified(Run, 'conversation')} = {_qualified(Conversation, 'id')} "
        f"WHERE {_owned_sql(owner_kind)} AND {_qualified(Run, 'started_at')} >= %s"
    )


def owner_runs_count(*, user_id: int | None, session_key: str, since: datetime) -> int:
    """How many runs the owner has started since `since` (a message each, and each reply
    regenerated), in all their conversations."""
    owner_kind, params = _owned(user_id=user_id, session_key=session_key)
    params.append(_value(Run, "started_at", since))
    return _execute(_runs_count_sql(owner_kind), params)


@_statement
def _conversation_lock_sql(owner_kind: str) -> str:
    conversation = _table(Conversation)
    sql = (
        f"SELECT {_qualified(Conversation, 'title')}, {_qualified(Conversation, 'thread_id')}, "
        f"{_qualified(Run, 'status')} FROM {conversation} LEFT OUTER JOIN {_table(Run)} "
        f"ON {_qualified(Run, 'id')} = {_qualified(Conversation, 'active_run')} "
        f"WHERE {_qualified(Conversation, 'id')} = %s AND {_owned_sql(owner_kind)}"
    )
    if connection.features.has_select_for_update_of:
        sql += f" FOR UPDATE OF {conversation}"
    return sql


def owner_conversation_lock(
    *, user_id: int | None, session_key: str, conversation_id: Any
) -> Conversation | None:
    """The owner's conversation, None if it is not theirs or doesn't exist, with
    `active_run_status`: the status of its active run (None without one). What starting a run
    needs is loaded (id, title, thread id); any other field is deferred, read on first use.

    Inside a transaction its row stays locked until the end (SELECT ... FOR UPDATE where the
    database has it; SQLite's writers take turns anyway), so a second sender reads it only
    once the first has committed its claim, and sees the run that claim started."""
    try:
        conversation_pk = _field(Conversation, "id").to_python(conversation_id)
    except (ValidationError, ValueError, TypeError):
        return None
    owner_kind, params = _owned(user_id=user_id, session_key=session_key)
    with connection.cursor() as cursor:
        cursor.execute(
            _conversation_lock_sql(owner_kind),
            [_value(Conversation, "id", conversation_pk), *params],
        )
        found = cursor.fetchone()
    if found is None:
        return None
    title, thread_id, active_run_status = found
    conversation = Conversation.from_db(
        connection.alias, ["id", "title", "thread_id"], [conversation_pk, title, thread_id]
    )
    conversation.active_run_status = active_run_status
    return conversation


@_statement
def _claim_sql(names: tuple[str, ...], statuses: int) -> str:
    assignments = ", ".join(f"{_column(Conversation, name)} = %s" for name in names)
    active_run = _qualified(Conversation, "active_run")
    return (
        f"UPDATE {_table(Conversation)} SET {assignments} "
        f"WHERE {_column(Conversation, 'id')} = %s AND ({active_run} IS NULL OR NOT EXISTS "
        f"(SELECT 1 FROM {_table(Run)} WHERE {_qualified(Run, 'id')} = {active_run} "
        f"AND {_qualified(Run, 'status')} IN ({_placeholders(statuses)})))"
    )


def conversation_claim(
    *, conversation_id: Any, values: dict[str, Any], active_statuses: Iterable[str]
) -> bool:
    """Sets `values` (among them `active_run`) on the conversation only if no run of it is
    active: the claim that lets one request at a time, in any process, start a run."""
    statuses = list(active_statuses)
    params = [_value(Conversation, name, value) for name, value in values.items()]
    params.append(_value(Conversation, "id", conversation_id))
    params.extend(_value(Run, "status", status) for status in statuses)
    return _execute(_claim_sql(tuple(values), len(statuses)), params) == 1
