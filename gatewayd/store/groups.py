"""Group commit for SQLite: changes that arrive while one commits share the next transaction.

SQLite has one writer, and gatewayd one connection to it: every transaction waits for the one
before it, and each pays its own BEGIN, COMMIT and fsync. Under form load 16 submissions queue
for the connection, and each, once it has it, waits for the event loop at every round trip
to the database thread while the others wait for it. `GroupCommit.run(job)` queues the job;
one task runs the queued jobs one after the other inside one transaction and commits them
together: one BEGIN, one COMMIT and one fsync for the group, and the connection's lock is taken
once. There is one committer per connection (`shared`): the ticket store's changes
(`TicketStore.run_grouped`, each wrapped in a `TicketStore.transaction()`, a savepoint inside
the group) and the sender's outcome UPDATEs share it.

What holds for each ticket change, as it would in a transaction of its own:
- A change that raises is rolled back to its savepoint and its caller gets the exception; the
  other changes of the group commit without it. Its events and their event actions (outbox
  rows) go with it.
- Its caller hears "done" only after the group's COMMIT has returned: the change is durable.
- A database error (a failed statement, a failed COMMIT, an aborted transaction) breaks the
  group: it is rolled back whole and every job of it runs again alone, in a transaction of its
  own, so one job's fault reaches only its own caller. Jobs must therefore be safe to run again
  after a rollback (they are database work only: their files are written before, by content).
- A job whose caller has gone (cancelled) before it started is not run.

The sender comes first. Its outcome UPDATEs are urgent jobs: the running group takes them after
the change in hand and commits at once (a group of them alone goes first at the connection), so
an SMTP connection waits at most one change and one COMMIT before its next mail. Its other
transactions (claims) go first at the connection (`sqlite_backend.PriorityLock`), and a group
stops taking changes while one waits. `YIELD_AFTER` says why the group does not run on.

PostgreSQL has many writers and row locks: there each job simply runs in its own transaction
(`TicketStore.run_grouped` decides).
"""

from __future__ import annotations

import asyncio
import collections
import contextvars
import weakref
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from tortoise import connections
from tortoise.exceptions import BaseORMException, TransactionManagementError
from tortoise.transactions import in_transaction

from gatewayd.logs import get_logger
from gatewayd.store.sqlite_backend import URGENT

T = TypeVar("T")
MAX_GROUP = 32
# How long a group goes on taking changes while the sender waits for the connection. Measured
# with bench.forms (concurrency 16, 2 SMTP connections): 0 ms kept the confirmation mail's
# queue → sent p95 under 2 s during the load; at 10 ms the forms ran 1.6x faster but the
# sender, waiting up to a group per mail, sent a third of the confirmations while the load ran
# and their p95 rose to 6-7 s. Customers' receipts go first.
YIELD_AFTER = 0.0

log = get_logger("gatewayd.store.groups")


@dataclass
class _Job(Generic[T]):
    run: Callable[[], Awaitable[T]]
    done: asyncio.Future[T]
    urgent: bool = False


@dataclass
class GroupStats:
    """What the committer did (for the benchmark and `status`)."""

    groups: int = 0
    jobs: int = 0
    urgent: int = 0  # of them the sender's (outcomes recorded in a group's transaction)
    broken: int = 0  # groups rolled back for a database error, their jobs run alone
    largest: int = 0


class GroupCommit:
    """Runs jobs in shared transactions (see the module); one per database connection
    (`shared`). A job that must be atomic on its own wraps itself (`TicketStore.run_grouped`
    wraps it in `TicketStore.transaction()`, a savepoint inside the group)."""

    def __init__(self, max_group: int = MAX_GROUP) -> None:
        self._max_group = max_group
        self._queue: collections.deque[_Job[Any]] = collections.deque()
        self._urgent: collections.deque[_Job[Any]] = collections.deque()
        self._worker: asyncio.Task[None] | None = None
        self.yield_after = YIELD_AFTER
        self.stats = GroupStats()

    async def run(self, job: Callable[[], Awaitable[T]], *, urgent: bool = False) -> T:
        """Run `job` in a group; its result once the group has committed. An urgent job (the
        sender's outcomes: small, and a connection waits for it before its next mail) joins
        the running group after its current job, and the group commits right after it."""
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        (self._urgent if urgent else self._queue).append(_Job(job, done, urgent))
        if self._worker is None or self._worker.done():
            # A context of its own: the worker must not inherit a caller's transaction or
            # its urgency at the connection.
            self._worker = asyncio.get_running_loop().create_task(
                self._work(), name="gatewayd-group-commit", context=contextvars.Context())
        return await done

    async def _work(self) -> None:
        try:
            while self._queue or self._urgent:
                group = self._take()
                if group:
                    await self._commit(group)
        except BaseException:  # cancelled (shutdown): nobody is left to run what waits
            for queue in (self._urgent, self._queue):
                while queue:
                    queue.popleft().done.cancel()
            raise

    def _take(self) -> list[_Job[Any]]:
        """The next group: the urgent jobs alone if there are any (they commit at once),
        else the waiting changes."""
        queue = self._urgent if self._urgent else self._queue
        group: list[_Job[Any]] = []
        while queue and len(group) < self._max_group:
            job = queue.popleft()
            if not job.done.done():  # its caller went away before it started: not run
                group.append(job)
        return group

    def _should_stop(self, started: float, now: float, lock_urgent: Callable[[], bool]) -> bool:
        """Whether the sender waits (for this group, or for the connection) long enough."""
        return now - started >= self.yield_after and (bool(self._urgent) or lock_urgent())

    async def _commit(self, group: list[_Job[Any]]) -> None:
        lock = getattr(connections.get("default"), "_lock", None)
        lock_urgent: Callable[[], bool] = getattr(lock, "urgent_waiting", lambda: False)
        results: list[tuple[_Job[Any], bool, Any]] = []
        clock = asyncio.get_running_loop().time
        started = clock()
        # A group of the sender's outcomes goes first at the connection, as its own
        # transactions would (the worker's context is its own: this stays in it).
        URGENT.set(group[0].urgent)
        try:
            async with in_transaction():
                index = 0
                while index < len(group):
                    if index and self._should_stop(started, clock(), lock_urgent):
                        # The sender waits: the other changes go first in the next group,
                        # and this one commits now (with the sender's outcomes, below).
                        self._queue.extendleft(reversed(group[index:]))
                        del group[index:]
                        break
                    job = group[index]
                    if job.done.done():  # its caller went away before it started
                        del group[index]
                        continue
                    results.append(await self._one(job))
                    index += 1
                # Outcomes that arrived meanwhile join before the COMMIT, whatever the group.
                joined = [job for job in self._urgent if not job.done.done()]
                self._urgent.clear()
                group.extend(joined)
                for job in joined:
                    results.append(await self._one(job))
        except Exception as exc:
            self.stats.broken += 1
            log.warning("group commit failed, running its changes one by one",
                        error=f"{type(exc).__name__}: {exc}", jobs=len(group))
            try:
                for job in group:
                    await self._alone(job)
            except BaseException:
                for job in group:
                    job.done.cancel()
                raise
            return
        except BaseException:
            # Cancelled (shutdown): the callers are told so. A COMMIT already in the database
            # thread may still complete; their changes are then stored all the same.
            for job in group:
                job.done.cancel()
            raise
        self._count(group)
        for job, ok, value in results:
            if job.done.done():
                continue  # its caller went away; the change is committed all the same
            if ok:
                job.done.set_result(value)
            else:
                job.done.set_exception(value)

    @staticmethod
    async def _one(job: _Job[Any]) -> tuple[_Job[Any], bool, Any]:
        try:
            return job, True, await job.run()
        except Exception as exc:
            if _transaction_broken(job, exc):
                raise  # the group runs again, each job alone
            return job, False, exc  # the job's own refusal, rolled back to its savepoint

    @staticmethod
    async def _alone(job: _Job[Any]) -> None:
        if job.done.done():
            return
        try:
            async with in_transaction():
                value = await job.run()
        except Exception as exc:
            if not job.done.done():
                job.done.set_exception(exc)
        else:
            if not job.done.done():
                job.done.set_result(value)

    def _count(self, group: list[_Job[Any]]) -> None:
        stats = self.stats
        stats.groups += 1
        stats.jobs += len(group)
        stats.urgent += sum(job.urgent for job in group)
        stats.largest = max(stats.largest, len(group))


def _transaction_broken(job: _Job[Any], exc: Exception) -> bool:
    """Whether a job's exception leaves the group's transaction unfit to commit. A refusal
    (a 404, a duplicate, a refused value) was rolled back to the job's savepoint and concerns
    its caller alone; but a failed deferred statement aborts the transaction (the batching
    client marks it), a savepoint rollback that failed leaves the job's statements in it, tortoise
    skips the savepoint rollback on a TransactionManagementError, and an urgent job has no
    savepoint at all (whatever it raises, its statements may be in the transaction)."""
    if job.urgent:
        return True
    if not isinstance(exc, BaseORMException):
        return False
    queue = getattr(connections.get("default"), "_queue", None)
    return (queue is None or queue.failed is not None or job.urgent
            or isinstance(exc, TransactionManagementError))


_shared: weakref.WeakKeyDictionary[Any, GroupCommit] = weakref.WeakKeyDictionary()


def shared() -> GroupCommit:
    """The group committer of the database connection in use (one per SQLite client, so the
    ticket store and the sender share its transactions)."""
    client = connections.get("default")
    committer = _shared.get(client)
    if committer is None:
        committer = _shared[client] = GroupCommit()
    return committer


def existing() -> GroupCommit | None:
    """The connection's group committer if it has run (for statistics)."""
    return _shared.get(connections.get("default"))
