"""Plain SQL reads for the hot paths (event actions run once per ticket change).

A tortoise query costs about 0.5 ms of Python before it reaches the database (query building,
model instances); the same read as plain SQL costs about 0.13 ms. `rows` runs a SELECT on the
current connection — inside `TicketStore.transaction()` that is the transaction's, so it sees
the change being made. Write `?` for parameters; PostgreSQL gets `$1, $2, ...`. Datetimes must be
aware; on SQLite they are compared as tortoise stores them (ISO text in UTC).
"""

from __future__ import annotations

import datetime as dt
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


async def rows(sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    """The rows of one SELECT as dicts (column names as written in the SELECT)."""
    conn = connections.get("default")
    dialect = conn.capabilities.dialect
    return list(await conn.execute_query_dict(
        _for_dialect(sql, dialect), [_param(p, dialect) for p in params]))
