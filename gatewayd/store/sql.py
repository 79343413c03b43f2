"""Plain SQL reads for the hot paths (event actions run once per ticket change).

A tortoise query costs about 0.5 ms of Python before it reaches the database (query building,
model instances); the same read as plain SQL costs about 0.13 ms. `rows` runs a SELECT on the
current connection — inside `TicketStore.transaction()` that is the transaction's, so it sees
the change being made. Write `?` for parameters; PostgreSQL gets `$1, $2, ...`. Datetimes must be
aware; on SQLite they are compared as tortoise stores them (ISO text in UTC).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Sequence
from typing import Any

from tortoise import connections

_PLACEHOLDER = re.compile(r"\?")


def _param(value: Any, dialect: str) -> Any:
    """SQLite holds tortoise's datetimes as ISO text in UTC (`2026-11-29 20:31:49.132846+00:00`):
    compare with the same text, not with the deprecated sqlite3 datetime adapter."""
    if dialect != "postgres" and isinstance(value, dt.datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime in a query: use an aware UTC datetime")
        return value.astimezone(dt.UTC).isoformat(" ")
    return value


def _for_dialect(sql: str, dialect: str) -> str:
    if dialect != "postgres":
        return sql
    counter = iter(range(1, 10_000))
    return _PLACEHOLDER.sub(lambda _m: f"${next(counter)}", sql)


def dialect() -> str:
    """The database in use: "sqlite" or "postgres"."""
    return str(connections.get("default").capabilities.dialect)


async def rows(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The rows of one SELECT as dicts (column names as written in the SELECT)."""
    conn = connections.get("default")
    dialect = conn.capabilities.dialect
    return list(await conn.execute_query_dict(
        _for_dialect(sql, dialect), [_param(p, dialect) for p in params]))


async def execute(sql: str, params: Sequence[Any] = ()) -> int:
    """Run one UPDATE or DELETE; returns the number of rows it changed."""
    conn = connections.get("default")
    dialect = conn.capabilities.dialect
    count, _rows = await conn.execute_query(
        _for_dialect(sql, dialect), [_param(p, dialect) for p in params])
    return int(count)


async def execute_many(sql: str, params: Sequence[Sequence[Any]]) -> None:
    """Run one UPDATE (or INSERT) for each parameter list, in one call to the database (the
    sender records a group of outcomes this way)."""
    conn = connections.get("default")
    dialect = conn.capabilities.dialect
    await conn.execute_many(_for_dialect(sql, dialect),
                            [[_param(p, dialect) for p in values] for values in params])


def _insert_sql(table: str, values: dict[str, Any]) -> str:
    return f"INSERT INTO {table} ({', '.join(values)}) VALUES ({', '.join('?' * len(values))})"


async def insert(table: str, values: dict[str, Any]) -> int:
    """Insert one row and return its id. JSON columns take `json_text(...)`; datetimes must be
    aware (see `_param`). For the hot paths only: it skips tortoise's model validation, so the
    caller passes what the model's fields would accept."""
    conn = connections.get("default")
    dialect = conn.capabilities.dialect
    params = [_param(v, dialect) for v in values.values()]
    if dialect == "postgres":
        row = await conn.execute_insert(
            _for_dialect(f"{_insert_sql(table, values)} RETURNING id", dialect), params)
        return int(row["id"])
    return int(await conn.execute_insert(_insert_sql(table, values), params))


async def add(table: str, values: dict[str, Any]) -> None:
    """Insert one row whose id nobody needs (a log entry), as `insert` does. Inside a SQLite
    transaction it goes with the transaction's next statement, one round trip fewer (see
    `store.sqlite_backend`); an error in it is raised there. Elsewhere it is sent at once."""
    await later(_insert_sql(table, values), list(values.values()))


async def later(sql: str, params: Sequence[Any] = ()) -> None:
    """Run an INSERT, UPDATE or DELETE whose result nobody reads: inside a SQLite transaction
    it goes with the transaction's next statement or its COMMIT (one round trip fewer; an error
    in it is raised there and aborts the transaction). Elsewhere it runs at once."""
    conn = connections.get("default")
    defer = getattr(conn, "defer", None)
    if defer is None:
        await execute(sql, params)
        return
    defer(sql, [_param(v, "sqlite") for v in params])


def json_text(value: Any) -> str:
    """A JSON column's value as tortoise writes it (compact, ASCII)."""
    return json.dumps(value, separators=(",", ":"))
