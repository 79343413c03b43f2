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
read sees every write made before it. What differs from tortoise's client:
- an error in a deferred statement is raised by the statement it went with, as an
  OperationalError that names the deferred statement, and it aborts the transaction: every later
  statement and the COMMIT fail (as on PostgreSQL), so the transaction cannot commit without it;
- a read-only transaction takes the write lock too (BEGIN IMMEDIATE); there is one connection;
- rollback, and clean-up after a cancelled commit, run in the database thread behind everything
  the transaction handed over, so a cancelled transaction never leaves the connection inside it.

aiosqlite has no public way to run several statements in one call into its thread; this uses
`Connection._execute` and `._conn` (aiosqlite 0.17 to 0.22). Where they are missing,
`get_client_class` gives tortoise's own client: slower, with a deferred BEGIN (a read-then-write
transaction can fail "database is locked" beside another writer), errors as tortoise raises
them. tortoise picks its migration schema editor by "sqlite" in the client's module name: keep
it in this module's name.
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import itertools
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import aiosqlite
from tortoise.backends.base.client import NestedTransactionContext, TransactionContext
from tortoise.backends.sqlite.client import (
    SqliteClient,
    SqliteTransactionContext,
    SqliteTransactionWrapper,
)
from tortoise.exceptions import IntegrityError, OperationalError, TransactionManagementError

from gatewayd.logs import get_logger

T = TypeVar("T")
BEGIN = "BEGIN IMMEDIATE"
_SAVEPOINTS = itertools.count(1)
CAN_BATCH = (callable(getattr(aiosqlite.Connection, "_execute", None))
             and hasattr(aiosqlite.Connection, "_conn"))

log = get_logger("gatewayd.store.sqlite")


class _Queue:
    """What a transaction (and its savepoints) shares: the statements it has not sent yet,
    whether it has sent any, and, written only in the database thread, the deferred statement
    that failed (after which the transaction is aborted: every later call fails, COMMIT too)."""

    def __init__(self) -> None:
        self.statements: list[tuple[str, Sequence[Any]]] = []
        self.sent = False
        self.failed: str | None = None

    def take(self) -> list[tuple[str, Sequence[Any]]]:
        taken, self.statements = self.statements, []
        self.sent = self.sent or bool(taken)
        return taken


def _run_all(raw: sqlite3.Connection, queue: _Queue, pending: list[tuple[str, Sequence[Any]]],
             last: Callable[[sqlite3.Connection], T]) -> T:
    """In aiosqlite's thread: the waiting statements in order, then the one whose result is
    wanted.

    A failing deferred statement aborts the transaction, as PostgreSQL does: its error may go to
    a caller that no longer listens (cancelled, timed out), and the statements after it in the
    batch never ran, so nothing more may run and nothing may commit.
    """
    if queue.failed is not None:
        raise sqlite3.OperationalError(
            f"the transaction was aborted: a deferred statement failed: {queue.failed}")
    for query, params in pending:
        try:
            raw.execute(query, params)
        except sqlite3.Error as exc:
            # Raised by a later statement than the one that caused it, so say which, and never
            # as an IntegrityError: a caller that expects one from its own statement (a
            # duplicate, say) must not take this one for it and carry on without the row.
            queue.failed = f"{exc} ({query[:120]})"
            raise sqlite3.OperationalError(
                f"a deferred statement failed: {queue.failed}") from exc
    return last(raw)


def _end(raw: sqlite3.Connection) -> None:
    """In aiosqlite's thread, after everything the transaction sent: roll back if it is open."""
    if raw.in_transaction:
        raw.rollback()


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
        # Taking the queue and handing the batch to the thread happen in one step, with no
        # await between (`_execute` queues before its first await): the thread runs batches in
        # the order they were handed over, so statements of several tasks keep their order.
        connection = self._connection
        try:
            return await connection._execute(
                _run_all, connection._conn, self._queue, self._queue.take(), last)
        except sqlite3.Error as exc:
            raise _translated(exc) from exc

    async def _end(self) -> None:
        """Leave the connection outside any transaction. It runs in the thread behind whatever
        this transaction handed over, even a batch whose caller was cancelled before its BEGIN
        ran: looking at the connection from here could miss that transaction, and leave the
        shared connection inside it for whoever takes the lock next."""
        if self._queue.sent:
            await self._connection._execute(_end, self._connection._conn)

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
        except BaseException:  # an error, or cancelled while COMMIT waited for the thread
            await self._end()
            raise

    async def rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        self._finalized = True
        self._queue.take()  # never sent: nothing to undo
        await self._end()

    async def savepoint(self) -> None:
        # A name of its own: a group commit runs sibling savepoints one after the other, and
        # `id()` of a freed wrapper comes back (a refused job's rollback would then find an
        # earlier job's marker and drop that job's statements).
        self._savepoint = f"gatewayd_savepoint_{next(_SAVEPOINTS)}"
        self.defer(f"SAVEPOINT {self._savepoint}", ())

    async def savepoint_rollback(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        name, self._savepoint = self._savepoint, None
        statements = self._queue.statements
        marker = (f"SAVEPOINT {name}", ())
        if marker in statements:  # the savepoint was never sent: drop it and what followed it
            del statements[len(statements) - 1 - statements[::-1].index(marker):]
            return
        try:
            await self._run(lambda raw: raw.execute(f"ROLLBACK TO {name}"))
        except BaseException:
            # What the savepoint did may still be in the transaction: it must not commit.
            self._queue.failed = self._queue.failed or f"ROLLBACK TO {name} did not complete"
            raise

    async def release_savepoint(self) -> None:
        if self._finalized:
            raise TransactionManagementError("Transaction already finalised")
        if self._savepoint is None:
            raise TransactionManagementError("No savepoint to rollback to")
        self.defer(f"RELEASE {self._savepoint}", ())


# Set in a task whose statements and transactions go before the queued ones of other tasks.
URGENT: contextvars.ContextVar[bool] = contextvars.ContextVar("gatewayd_sqlite_urgent",
                                                              default=False)


def mark_urgent() -> None:
    """The current task (and the tasks it starts) is served first at the one connection."""
    URGENT.set(True)


class PriorityLock:
    """`asyncio.Lock` for the one SQLite connection, whose urgent waiters (`URGENT`) are served
    before the others, each kind in arrival order.

    Under form load 16 transactions queue for the connection; the outbox sender, behind all of
    them at every claim and outcome commit, sent 0 of 958 confirmations while the load ran.
    Its transactions are short (a claim, a group of outcomes), so letting them go first costs
    a form a few milliseconds at most, and customers get their receipt while the shop is busy.
    """

    def __init__(self) -> None:
        self._locked = False
        self._urgent: collections.deque[asyncio.Future[bool]] = collections.deque()
        self._normal: collections.deque[asyncio.Future[bool]] = collections.deque()

    def locked(self) -> bool:
        return self._locked

    def urgent_waiting(self) -> bool:
        """Whether an urgent task waits for the connection (a group commit then stops taking
        more changes: `store.groups`)."""
        return any(not waiter.done() for waiter in self._urgent)

    async def acquire(self) -> bool:
        if not self._locked and not self._urgent and not self._normal:
            self._locked = True
            return True
        waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        queue = self._urgent if URGENT.get() else self._normal
        queue.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter in queue:
                queue.remove(waiter)
            elif waiter.done() and not waiter.cancelled():
                self._hand_over()  # it was ours already: pass it on
            raise
        return True

    def release(self) -> None:
        if not self._locked:
            raise RuntimeError("Lock is not acquired.")
        self._hand_over()

    def _hand_over(self) -> None:
        """Give the (still locked) lock to the next waiter, urgent ones first; else unlock."""
        for queue in (self._urgent, self._normal):
            while queue:
                waiter = queue.popleft()
                if not waiter.done():
                    waiter.set_result(True)
                    return
        self._locked = False

    async def __aenter__(self) -> None:
        await self.acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class BatchingSqliteClient(SqliteClient):
    """tortoise's SQLite client whose transactions batch their statements, and whose one
    connection serves urgent tasks first (`PriorityLock`)."""

    def __init__(self, file_path: str, **kwargs: Any) -> None:
        super().__init__(file_path, **kwargs)
        self._lock = PriorityLock()  # type: ignore[assignment]

    def _in_transaction(self) -> TransactionContext:
        return SqliteTransactionContext(BatchingTransactionWrapper(self), self._lock)


def get_client_class(db_info: dict[str, Any]) -> type[SqliteClient]:
    """tortoise's engine hook (`engine = "gatewayd.store.sqlite_backend"`)."""
    if CAN_BATCH:
        return BatchingSqliteClient
    log.warning("aiosqlite has no Connection._execute: SQLite transactions send one statement "
                "per round trip (tortoise's own client: slower, deferred BEGIN)",
                aiosqlite=aiosqlite.__version__)
    return SqliteClient

