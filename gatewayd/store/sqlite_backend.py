"""SQLite for gatewayd: tortoise's SQLite client, with transactions that batch their statements.

tortoise's SQLite client sends every statement as its own call into aiosqlite's thread and back
through the event loop (about 0.3 ms under load), and its one connection is locked for the whole
of a transaction. A form submission made 13 such round trips; its transaction held the lock for
all of them. This client's transactions make fewer:

- They begin lazily: `BEGIN IMMEDIATE` goes with the transaction's first statement (tortoise
  sends a no-op COMMIT and a BEGIN of their own first), and a transaction that does nothing costs
  nothing. IMMEDIATE takes the write lock at once, so a transaction that reads and then writes
  waits for another process's writer (the busy timeout) instead of failing "database is locked".
- A statement whose result nobody reads (`defer`, used by `store.sql.add`) waits and goes with
  the transaction's next statement, in the same call into the thread; COMMIT carries the rest.

Every statement still runs in the order it was issued, on the transaction's connection, so a
read sees every write made before it. One thing differs: an error in a deferred statement is
raised by the statement it went with (the transaction is rolled back either way), as an
OperationalError that names the deferred statement.

aiosqlite has no public way to run several statements in one call into its thread; this uses
`Connection._execute` (aiosqlite 0.17 to 0.22). Where it is missing, `get_client_class` gives
tortoise's own client: slower, the same behaviour.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
import structlog
from tortoise.backends.base.client import NestedTransactionContext, TransactionContext
from tortoise.backends.sqlite.client import (
    SqliteClient,
    SqliteTransactionContext,
    SqliteTransactionWrapper,
)
from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError

T = TypeVar("T")
BEGIN = "BEGIN IMMEDIATE"
CAN_BATCH = callable(getattr(aiosqlite.Connection, "_execute", None))

log = structlog.get_logger(__name__)


class _Queue:
    """The statements a transaction (and its savepoints) has not sent yet."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Sequence[Any]]] = []

    def take(self) -> list[tuple[str, Sequence[Any]]]:
        taken, self.statements = self.statements, []
        return taken


def _run_all(raw: sqlite3.Connection, pending: list[tuple[str, Sequence[Any]]],
             last: Callable[[sqlite3.Connection], T]) -> T:
    """In aiosqlite's thread: the waiting statements in order, then the one whose result is
    wanted."""
    for query, params in pending:
        try:
            raw.execute(query, params)
        except sqlite3.Error as exc:
            # Raised by a later statement than the one that caused it, so say which, and never
            # as an IntegrityError: a caller that expects one from its own statement (a
            # duplicate, say) must not take this one for it and carry on without the row.
            raise sqlite3.OperationalError(
                f"a deferred statement failed: {exc} ({query[:120]})") from exc
    return last(raw)


def _translated(exc: sqlite3.Error) -> Exception:
    """tortoise's exception for an sqlite3 one (as its `translate_exceptions` does)."""
    if isinstance(exc, sqlite3.IntegrityError):
        return IntegrityError(exc)
    return OperationalError(exc)


class BatchingTransactionWrapper(SqliteTransactionWrapper):
    """A transaction whose statements go to the database thread in batches (see the module)."""

    def __init__(self, connection: SqliteClient, queue: _Queue | None = None) -> None:
        super().__init__(connection)
        self._queue = queue if queue is not None else _Queue()

    def _in_transaction(self) -> TransactionContext:
        # A savepoint shares its transaction's queue, so the order of statements holds.
        return NestedTransactionContext(BatchingTransactionWrapper(self, self._queue))

    def defer(self, query: str, params: Sequence[Any]) -> None:
        """Send this statement with the transaction's next one (its result is not needed)."""
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._queue.statements.append((query, params))

    async def _run(self, last: Callable[[sqlite3.Connection], T]) -> T:
        connection = self._connection
        async with self._lock:
            pending = self._queue.take()
            try:
                return await connection._execute(_run_all, connection._conn, pending, last)
            except sqlite3.Error as exc:
                raise _translated(exc) from exc

    # ------------------------------------------------------------- statements

    async def execute_insert(self, query: str, values: list[Any]) -> int:
        self.log.debug("%s: %s", query, values)
        return int(await self._run(lambda raw: raw.execute(query, values).lastrowid or 0))

    async def execute_query(self, query: str,
                            values: list[Any] | None = None) -> tuple[int, Sequence[dict]]:
        query = query.replace("\x00", "'||CHAR(0)||'")
        self.log.debug("%s: %s", query, values)

        def last(raw: sqlite3.Connection) -> tuple[int, Sequence[dict]]:
            start = raw.total_changes
            rows = raw.execute(query, values or ()).fetchall()
            return (raw.total_changes - start) or len(rows), rows

        return await self._run(last)

    async def execute_query_dict(self, query: str,
                                 values: list[Any] | None = None) -> list[dict]:
        query = query.replace("\x00", "'||CHAR(0)||'")
        self.log.debug("%s: %s", query, values)
        return await self._run(
            lambda raw: [dict(row) for row in raw.execute(query, values or ()).fetchall()])

    async def execute_many(self, query: str, values: list[list[Any]]) -> None:
        self.log.debug("%s: %s", query, values)
        await self._run(lambda raw: raw.executemany(query, values))

    async def execute_script(self, query: str) -> None:
        self.log.debug(query)
        await self._run(lambda raw: raw.executescript(query))

    # ------------------------------------------------------------- transaction control

    async def begin(self) -> None:
        self._queue.statements.append((BEGIN, ()))

    async def commit(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        if self._queue.statements == [(BEGIN, ())]:
            self._queue.take()  # nothing was done: nothing to send
            return
        try:
            await self._run(lambda raw: raw.commit())
        except Exception:
            # A deferred statement failed before COMMIT ran: end the transaction here, or the
            # connection would stay inside it for whoever takes the lock next.
            if self._connection._conn.in_transaction:
                await self._connection.rollback()
            raise

    async def rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        self._queue.take()  # never sent: nothing to undo
        if self._connection._conn.in_transaction:
            await self._connection.rollback()

    async def savepoint(self) -> None:
        self._savepoint = f"gatewayd_savepoint_{id(self)}"
        self.defer(f"SAVEPOINT {self._savepoint}", ())

    async def savepoint_rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        name, self._savepoint = self._savepoint, None
        await self._run(lambda raw: raw.execute(f"ROLLBACK TO {name}"))

    async def release_savepoint(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        self.defer(f"RELEASE {self._savepoint}", ())


class BatchingSqliteClient(SqliteClient):
    """tortoise's SQLite client whose transactions batch their statements."""

    def _in_transaction(self) -> TransactionContext:
        return SqliteTransactionContext(BatchingTransactionWrapper(self), self._lock)


def get_client_class(db_info: dict[str, Any]) -> type[SqliteClient]:
    """tortoise's engine hook (`engine = "gatewayd.store.sqlite_backend"`)."""
    if CAN_BATCH:
        return BatchingSqliteClient
    log.warning("aiosqlite has no Connection._execute: SQLite transactions send one statement "
                "per round trip (slower, same behaviour)", aiosqlite=aiosqlite.__version__)
    return SqliteClient


client_class = BatchingSqliteClient
