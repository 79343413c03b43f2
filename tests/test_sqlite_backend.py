"""gatewayd's SQLite client (store.sqlite_backend): transactions that begin lazily with BEGIN
IMMEDIATE and send deferred statements with the next one. What must hold: the statements run in
the order issued (a read sees the deferred writes before it), fewer calls reach aiosqlite's
thread, an error in a deferred statement rolls the whole transaction back and leaves the
connection usable, savepoints still work, and another process's writer is waited for."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any

import aiosqlite
import pytest
from tortoise import connections
from tortoise.exceptions import IntegrityError, OperationalError
from tortoise.transactions import in_transaction

from gatewayd.config import Config
from gatewayd.store import sql
from gatewayd.store.db import open_database
from gatewayd.store.sqlite_backend import CAN_BATCH, BatchingTransactionWrapper
from gatewayd.store.tickets import NewTicket, TicketStore

pytestmark = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
def thread_calls(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The name of every function sent to aiosqlite's thread, in order."""
    calls: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    yield calls


async def events(ticket_id: int) -> list[str]:
    found = await sql.rows("SELECT kind FROM ticket_event WHERE ticket_id = ? ORDER BY id",
                           (ticket_id,))
    return [str(r["kind"]) for r in found]


@dataclass
class Probe:
    """A database with one ticket in it, and what its event log held at the start."""

    store: TicketStore
    ticket: int
    before: list[str]
    path: str  # the SQLite file, for another process's connection


@pytest.fixture
async def probe(config: Config) -> AsyncIterator[Probe]:
    store = TicketStore(config)
    async with open_database(config.database_url):
        ticket = await store.create_ticket(NewTicket(title="Probe", source="api"))
        yield Probe(store, ticket.id, await events(ticket.id),
                    config.database_url.removeprefix("sqlite://"))


async def test_sqlite_transactions_use_the_batching_client(config: Config) -> None:
    # Fails when an aiosqlite upgrade drops Connection._execute (the client would fall back to
    # one round trip per statement: correct, but slower).
    assert CAN_BATCH
    async with open_database(config.database_url), in_transaction() as conn:
        assert isinstance(conn, BatchingTransactionWrapper)
        assert connections.get("default") is conn


async def test_deferred_writes_are_read_in_order_and_sent_together(
        probe: Probe, thread_calls: list[str]) -> None:
    thread_calls.clear()
    async with probe.store.transaction():
        for kind in ("eins", "zwei", "drei"):
            await probe.store.log_event(probe.ticket, kind, {"n": kind})
        assert thread_calls == []  # nothing sent yet, not even BEGIN
        inside = await events(probe.ticket)
        assert inside == [*probe.before, "eins", "zwei", "drei"]
    # BEGIN + three inserts + the read in one call, COMMIT in a second (tortoise's own
    # client: a no-op COMMIT, BEGIN, three inserts, the read and COMMIT, seven calls).
    assert thread_calls == ["_run_all", "_run_all"]
    assert await events(probe.ticket) == inside


async def test_a_transaction_that_does_nothing_sends_nothing(
        config: Config, thread_calls: list[str]) -> None:
    async with open_database(config.database_url):
        thread_calls.clear()
        async with in_transaction():
            pass
        assert thread_calls == []


async def test_a_failing_deferred_statement_rolls_everything_back(probe: Probe) -> None:
    # Raised by the next statement, naming the deferred one, and not as an IntegrityError
    # (a caller expecting a duplicate from its own statement must not swallow it); the
    # earlier insert is undone.
    with pytest.raises(OperationalError, match="deferred statement failed: FOREIGN KEY "
                       "constraint failed \\(INSERT INTO ticket_event") as raised:
        async with probe.store.transaction():
            await probe.store.log_event(probe.ticket, "vorher", {})
            await probe.store.log_event(999_999_999, "kein Ticket", {})  # foreign key fails
            await events(probe.ticket)
    assert not isinstance(raised.value, IntegrityError)
    assert await events(probe.ticket) == probe.before
    # Raised by COMMIT when nothing came after it; the connection leaves the transaction.
    with pytest.raises(OperationalError, match="deferred statement failed: FOREIGN KEY"):
        async with probe.store.transaction():
            await probe.store.log_event(probe.ticket, "vorher", {})
            await probe.store.log_event(999_999_999, "kein Ticket", {})
    assert await events(probe.ticket) == probe.before
    async with probe.store.transaction():
        await probe.store.log_event(probe.ticket, "danach", {})
    assert await events(probe.ticket) == [*probe.before, "danach"]


async def test_a_savepoint_rolls_back_only_its_own_statements(probe: Probe) -> None:
    async with in_transaction():
        await probe.store.log_event(probe.ticket, "außen", {})
        with pytest.raises(RuntimeError):
            async with in_transaction():
                await probe.store.log_event(probe.ticket, "innen", {})
                assert (await events(probe.ticket))[-2:] == ["außen", "innen"]
                raise RuntimeError("roll back the savepoint")
        async with in_transaction():
            await probe.store.log_event(probe.ticket, "innen behalten", {})
    assert await events(probe.ticket) == [*probe.before, "außen", "innen behalten"]


async def test_another_writer_is_waited_for_not_a_locked_error(probe: Probe) -> None:
    """BEGIN IMMEDIATE takes the write lock with the first statement: a second process that
    writes while a transaction reads waits for it. (With a deferred BEGIN the other write went
    first and this transaction's write then failed with "database is locked".)"""
    other_done = threading.Event()

    def other_process_writes() -> None:
        with sqlite3.connect(probe.path, timeout=10) as other:
            other.execute("INSERT INTO ticket_event (ticket_id, kind, data, created_at) "
                          "VALUES (?, 'fremd', '{}', '2026-12-01 00:00:00+00:00')",
                          (probe.ticket,))
        other.close()
        other_done.set()

    async with probe.store.transaction():
        await events(probe.ticket)  # a read first
        writer = threading.Thread(target=other_process_writes)
        writer.start()
        await asyncio.sleep(0.3)  # the other write would be done by now, were it not held
        assert not other_done.is_set()
        await probe.store.log_event(probe.ticket, "eigen", {})
    await asyncio.to_thread(writer.join, 10)
    assert other_done.is_set()
    assert (await events(probe.ticket))[-2:] == ["eigen", "fremd"]


# ---------------------------------------------------------------- cancellation, tasks, aborts
# (found by review: each of these failed before the fix, and passes on tortoise's own client)

SLOW = ("WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 300000) "
        "SELECT count(*) FROM c")


def hold_write_lock(path: str, seconds: float) -> sqlite3.Connection:
    """Another process's writer: holds SQLite's write lock for `seconds`."""
    other = sqlite3.connect(path, timeout=10, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(seconds, other.commit).start()
    return other


async def cancel_behind_another_writer(path: str, work: Coroutine[Any, Any, None]) -> None:
    """Start `work`, let its batch wait in the database thread for another process's writer,
    cancel it there, and return once that writer has let go."""
    other = hold_write_lock(path, 0.6)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(work, 0.2)
    await asyncio.sleep(0.8)
    other.close()


async def connection_is_outside_a_transaction() -> bool:
    """After everything handed to the database thread so far has run."""
    client = connections.get("default")
    await client.execute_query("SELECT 1")  # queued behind every earlier job of the thread
    return not client._connection._conn.in_transaction


async def test_a_cancelled_transaction_never_leaves_the_connection_inside_it(probe: Probe) -> None:
    async def write(kind: str) -> None:
        async with probe.store.transaction():
            await probe.store.log_event(probe.ticket, kind, {})
            await events(probe.ticket)

    # Cancelled while its BEGIN waits in the thread for another writer: the BEGIN runs
    # after the cancellation, and the rollback must still come after it.
    await cancel_behind_another_writer(probe.path, write("abgebrochen"))
    assert await connection_is_outside_a_transaction()
    await probe.store.log_event(probe.ticket, "danach", {})  # autocommit: must not vanish
    # Cancelled at every point of its way, with no other writer.
    for step in range(40):
        task = asyncio.create_task(write("abgebrochen"))
        for _ in range(step % 5):
            await asyncio.sleep(0)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        assert await connection_is_outside_a_transaction(), f"left open at step {step}"
    kinds = await events(probe.ticket)
    assert kinds[:len(probe.before) + 1] == [*probe.before, "danach"]
    assert set(kinds[len(probe.before) + 1:]) <= {"abgebrochen"}  # those that got to commit


async def test_a_cancelled_commit_whose_deferred_statement_fails_rolls_back(probe: Probe) -> None:
    async def write() -> None:
        async with probe.store.transaction():
            await probe.store.log_event(probe.ticket, "vorher", {})
            await probe.store.log_event(999_999_999, "kein Ticket", {})  # fails at COMMIT

    await cancel_behind_another_writer(probe.path, write())
    assert await connection_is_outside_a_transaction()
    assert await events(probe.ticket) == probe.before


async def test_statements_of_two_tasks_in_one_transaction_keep_their_order(probe: Probe) -> None:
    async with probe.store.transaction():
        await probe.store.log_event(probe.ticket, "eins", {})
        slow = asyncio.create_task(sql.rows(SLOW))
        await asyncio.sleep(0)
        delete = asyncio.create_task(
            sql.execute("DELETE FROM ticket_event WHERE ticket_id = ?", (probe.ticket,)))
        await asyncio.sleep(0)
        add = asyncio.create_task(probe.store.log_event(probe.ticket, "fünf", {}))
        await asyncio.sleep(0)
        await asyncio.gather(slow, delete, add)
    assert await events(probe.ticket) == ["fünf"]  # the insert issued after the delete


async def test_a_failed_deferred_statement_aborts_the_transaction_even_unheard(
        probe: Probe) -> None:
    """Its error can go to a caller that stopped listening, or surface inside a savepoint that
    a caller catches: the transaction must still not commit without it."""

    async def queue_a_failing_write() -> None:
        await probe.store.log_event(probe.ticket, "eins", {})
        await probe.store.log_event(999_999_999, "kein Ticket", {})
        await probe.store.log_event(probe.ticket, "drei", {})

    # 1. the statement it went with timed out, and the caller carried on
    other = hold_write_lock(probe.path, 0.5)
    with pytest.raises(OperationalError, match="aborted: a deferred statement failed"):
        async with probe.store.transaction():
            await queue_a_failing_write()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(sql.rows("SELECT 1"), 0.2)
            await asyncio.sleep(0.5)
    other.close()
    # 2. it surfaced inside a savepoint, and the caller caught that
    with pytest.raises(OperationalError, match="aborted: a deferred statement failed"):
        async with probe.store.transaction():
            await queue_a_failing_write()
            with contextlib.suppress(OperationalError):
                async with in_transaction():
                    await sql.rows("SELECT 1")
    assert await connection_is_outside_a_transaction()
    assert await events(probe.ticket) == probe.before
