"""Group commit (`store.groups`, `TicketStore.run_grouped`): submissions that wait together
share one SQLite transaction, yet each commits or fails as if it had one of its own."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from tortoise.exceptions import BaseORMException, DoesNotExist
from tortoise.transactions import in_transaction

from gatewayd.config import Config
from gatewayd.store import groups, sql
from gatewayd.store.models import Outbox, Ticket
from gatewayd.store.sqlite_backend import mark_urgent
from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore


class Refused(Exception):
    pass


def _on_disk(config: Config) -> Callable[[], list[str]]:
    """The ticket titles another connection sees: what is committed."""
    path = Path(config.database_url[len("sqlite://"):])

    def titles() -> list[str]:
        with sqlite3.connect(path) as other:
            return [row[0] for row in other.execute("SELECT title FROM ticket ORDER BY id")]
    return titles


def _creating(store: TicketStore, title: str) -> Callable[[], Awaitable[int]]:
    async def job() -> int:
        ticket = await store.create_ticket(
            NewTicket(title=title, source="form"),
            first_message=NewMessage(text="Hallo", from_address="kunde@example.org"))
        return int(ticket.id)
    return job


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_waiting_changes_share_a_commit_and_answer_only_once_durable(
        store: TicketStore, config: Config) -> None:
    committed = _on_disk(config)
    seen_at_answer: dict[str, list[str]] = {}

    async def submit(title: str) -> int:
        ticket_id = await store.run_grouped(_creating(store, title))
        seen_at_answer[title] = committed()  # another connection sees it the moment we hear
        return ticket_id

    titles = [f"Anfrage {n}" for n in range(12)]
    ids = await asyncio.gather(*(submit(t) for t in titles))
    assert len(set(ids)) == 12
    assert sorted(committed()) == sorted(titles)
    for title in titles:
        assert title in seen_at_answer[title]
    stats = store.group_stats
    assert stats is not None
    assert stats.jobs == 12 and stats.groups < 12 and stats.largest > 1 and stats.broken == 0


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_refused_change_is_rolled_back_alone(store: TicketStore, config: Config) -> None:
    def refusing(title: str) -> Callable[[], Awaitable[int]]:
        async def job() -> int:
            await _creating(store, title)()
            raise Refused(title)
        return job

    results = await asyncio.gather(
        store.run_grouped(_creating(store, "eins")), store.run_grouped(refusing("zwei")),
        store.run_grouped(_creating(store, "drei")), return_exceptions=True)
    assert isinstance(results[1], Refused)
    assert isinstance(results[0], int) and isinstance(results[2], int)
    assert sorted(_on_disk(config)()) == ["drei", "eins"]
    stats = store.group_stats
    assert stats is not None and stats.groups < 3  # they did share a transaction


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_database_error_breaks_the_group_and_each_change_runs_alone(
        store: TicketStore, config: Config) -> None:
    async def poisoned() -> int:
        await _creating(store, "vergiftet")()
        # Deferred: it fails with whatever statement goes next, perhaps another job's.
        await sql.later("INSERT INTO no_such_table (x) VALUES (?)", [1])
        return 0

    results = await asyncio.gather(
        store.run_grouped(_creating(store, "vorher")), store.run_grouped(poisoned),
        store.run_grouped(_creating(store, "danach")), return_exceptions=True)
    assert isinstance(results[1], BaseORMException), results
    assert isinstance(results[0], int) and isinstance(results[2], int), results
    assert sorted(_on_disk(config)()) == ["danach", "vorher"]
    stats = store.group_stats
    assert stats is not None and stats.broken == 1


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_change_whose_caller_left_before_it_started_is_not_made(
        store: TicketStore, config: Config) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def slow() -> int:
        started.set()
        await release.wait()
        return await _creating(store, "erste")()

    first = asyncio.create_task(store.run_grouped(slow))
    await started.wait()
    left = asyncio.create_task(store.run_grouped(_creating(store, "verlassen")))
    await asyncio.sleep(0)
    left.cancel()
    release.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await left
    assert _on_disk(config)() == ["erste"]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_sender_waits_for_at_most_the_group_so_far(store: TicketStore) -> None:
    assert groups.YIELD_AFTER == 0.0  # the sender never waits for more than the running change
    order: list[str] = []
    assert store.group_stats is None
    urgent_started = asyncio.Event()

    def job(name: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            if name == "1":
                urgent_started.set()
                await asyncio.sleep(0.01)  # the urgent task queues for the connection meanwhile
            order.append(name)
            return await _creating(store, name)()
        return run

    async def urgent() -> None:
        mark_urgent()
        await urgent_started.wait()
        await Outbox.filter(id=0).update(status="queued")  # a transaction of the sender's kind
        order.append("urgent")

    sender = asyncio.create_task(urgent())
    await asyncio.gather(*(store.run_grouped(job(str(n))) for n in range(6)), sender)
    # All six were queued before the first began; the group stopped after "1" for the sender.
    assert order == ["0", "1", "urgent", "2", "3", "4", "5"], order
    stats = store.group_stats
    assert stats is not None and stats.groups == 2
    assert await Ticket.all().count() == 6


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_the_senders_outcomes_join_the_running_group_and_it_commits_at_once(
        store: TicketStore, config: Config) -> None:
    committed = _on_disk(config)
    order: list[str] = []
    job_one_running = asyncio.Event()

    def job(name: str) -> Callable[[], Awaitable[int]]:
        async def run() -> int:
            if name == "1":
                job_one_running.set()
                await asyncio.sleep(0.01)
            order.append(name)
            return await _creating(store, name)()
        return run

    async def outcome() -> None:
        await job_one_running.wait()

        async def update() -> list[str]:
            await sql.later("UPDATE ticket SET folder = 'gesendet' WHERE title = ?", ["0"])
            order.append("outcome")
            return committed()  # not yet durable while it runs

        seen_inside = await groups.shared().run(update, urgent=True)
        assert "0" not in seen_inside
        assert {"0", "1"} <= set(committed())  # durable with the group when we hear
        order.append("heard")

    await asyncio.gather(*(store.run_grouped(job(str(n))) for n in range(6)), outcome())
    # Taken after the change in hand; the rest went in the next group.
    assert order[:3] == ["0", "1", "outcome"] and "heard" in order, order
    stats = store.group_stats
    assert stats is not None and stats.groups == 2 and stats.urgent == 1
    assert await Ticket.filter(folder="gesendet").count() == 1


async def test_run_grouped_commits_on_every_engine(store: TicketStore) -> None:
    ids = await asyncio.gather(*(store.run_grouped(_creating(store, f"t{n}")) for n in range(5)))
    assert sorted(await Ticket.filter(id__in=ids).values_list("title", flat=True)) == [
        f"t{n}" for n in range(5)]
    with pytest.raises(Refused):
        async def refused() -> int:
            await _creating(store, "nein")()
            raise Refused
        await store.run_grouped(refused)
    assert not await Ticket.filter(title="nein").exists()


# ---------------------------------------------------------------------- edge cases from review


def _gated() -> tuple[asyncio.Event, asyncio.Event, Callable[[], Awaitable[None]]]:
    """A job that holds its group until `gate` is set (`started` says it runs)."""
    gate, started = asyncio.Event(), asyncio.Event()

    async def blocker() -> None:
        started.set()
        await gate.wait()
    return gate, started, blocker


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_refusal_never_takes_an_earlier_changes_deferred_statements_with_it(
        store: TicketStore, config: Config) -> None:
    """Sibling savepoints get names of their own: a refused job's rollback finds its own
    marker, not that of the job before it (whose statements were all still deferred)."""
    ticket_id = await store.run_grouped(_creating(store, "t"))
    gate, started, blocker = _gated()

    async def deferred_only() -> str:
        await sql.later("UPDATE ticket SET folder = 'A' WHERE id = ?", [ticket_id])
        return "ok"

    async def refused() -> None:
        raise Refused

    first = asyncio.create_task(store.run_grouped(blocker))
    await started.wait()
    both = [asyncio.create_task(store.run_grouped(job)) for job in (deferred_only, refused)]
    gate.set()
    await first
    results = await asyncio.gather(*both, return_exceptions=True)
    assert results[0] == "ok" and isinstance(results[1], Refused)
    path = Path(config.database_url[len("sqlite://"):])
    with sqlite3.connect(path) as other:
        assert other.execute("SELECT folder FROM ticket WHERE id = ?",
                             (ticket_id,)).fetchone() == ("A",)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_change_whose_caller_left_while_its_group_ran_is_not_made(
        store: TicketStore, config: Config) -> None:
    gate, started, blocker = _gated()
    first = asyncio.create_task(store.run_grouped(blocker))
    second = asyncio.create_task(store.run_grouped(_creating(store, "zweite")))
    await started.wait()  # both are in the group; the first runs
    second.cancel()
    gate.set()
    await first
    with pytest.raises(asyncio.CancelledError):
        await second
    assert _on_disk(config)() == []


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_cancelled_committer_leaves_no_caller_waiting(store: TicketStore) -> None:
    _gate, started, blocker = _gated()
    committer = groups.shared()
    committer._max_group = 1
    first = asyncio.create_task(store.run_grouped(blocker))
    await started.wait()
    queued = asyncio.create_task(store.run_grouped(_creating(store, "wartet")))
    await asyncio.sleep(0)
    assert committer._worker is not None
    committer._worker.cancel()
    done, pending = await asyncio.wait([first, queued], timeout=5)
    assert not pending and all(task.cancelled() for task in done)


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_missing_row_is_a_refusal_not_a_broken_group(store: TicketStore) -> None:
    runs: list[str] = []

    def counted(title: str) -> Callable[[], Awaitable[int]]:
        async def job() -> int:
            runs.append(title)
            return await _creating(store, title)()
        return job

    async def missing() -> None:
        await Ticket.get(id=999_999)

    results = await asyncio.gather(
        store.run_grouped(counted("a")), store.run_grouped(missing),
        store.run_grouped(counted("b")), return_exceptions=True)
    assert isinstance(results[1], DoesNotExist)
    assert sorted(runs) == ["a", "b"]  # each ran once: the group was not rerun
    stats = store.group_stats
    assert stats is not None and stats.broken == 0 and stats.groups < 3


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_change_asked_for_inside_a_transaction_runs_in_it(store: TicketStore) -> None:
    """Waiting for the group while holding SQLite's connection would wait for ourselves."""
    async def outer() -> int:
        async with in_transaction():
            await Ticket.all().count()
            return await store.run_grouped(_creating(store, "innen"))
    ticket_id = await asyncio.wait_for(outer(), timeout=10)
    assert await Ticket.filter(id=ticket_id, title="innen").exists()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_an_outcome_arriving_during_a_groups_last_change_joins_it(
        store: TicketStore) -> None:
    running = asyncio.Event()

    async def change() -> int:
        running.set()
        await asyncio.sleep(0.01)
        return await _creating(store, "einzig")()

    async def outcome() -> None:
        await running.wait()

        async def update() -> None:
            await sql.later("UPDATE ticket SET folder = 'x' WHERE title = 'einzig'", [])
        await groups.shared().run(update, urgent=True)

    await asyncio.gather(store.run_grouped(change), outcome())
    stats = store.group_stats
    assert stats is not None and (stats.groups, stats.urgent) == (1, 1)
    assert await Ticket.filter(folder="x").count() == 1
