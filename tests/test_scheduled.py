"""Scheduled actions end to end on SQLite and PostgreSQL: delete with attachments, set status,
move to folder, once per day however many instances ask."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
from collections.abc import Callable
from typing import Any

import pytest

from gatewayd.config import Config, Scheduled
from gatewayd.ops.scheduler import due_jobs, run_due
from gatewayd.store.attachments import blob_path
from gatewayd.store.db import open_database
from gatewayd.store.models import Attachment, ScheduledRun, Ticket, TicketEvent
from gatewayd.store.tickets import NewAttachment, NewMessage, NewTicket, TicketStore

JOBS = [
    {"name": "delete old done", "at": "03:00", "action": "delete",
     "filter": {"statuses": ["Erledigt"], "last_status_change_days": 90}},
    {"name": "close stale complaints", "at": "03:10", "action": "set_status", "status": "Gelöst",
     "filter": {"types": ["Beschwerde"], "last_status_change_days": 30}},
    {"name": "archive tagged", "at": "03:20", "action": "move_to_folder", "folder": "Archiv",
     "filter": {"tags": ["archive-me"], "status_groups": ["Offen"]}},
    {"name": "later today", "at": "23:59", "action": "delete", "filter": {}},
]


def _local(hour: int, minute: int = 0) -> dt.datetime:
    """A moment at a given local wall-clock time (the scheduler works in host time)."""
    today = dt.date.today()
    return dt.datetime(today.year, today.month, today.day, hour, minute).astimezone()


async def _ticket(store: TicketStore, title: str, *, status: str = "Neu",
                  type_: str = "Kundenanfrage", age_days: int = 0, tags: tuple[str, ...] = (),
                  files: tuple[bytes, ...] = ()) -> int:
    ticket = await store.create_ticket(
        NewTicket(title=title, type=type_, status=status, tags=tags),
        first_message=NewMessage(text=f"text of {title}", attachments=[
            NewAttachment(f"f{i}.txt", "text/plain", content) for i, content in enumerate(files)
        ]),
    )
    if age_days:
        moment = dt.datetime.now(dt.UTC) - dt.timedelta(days=age_days)
        await Ticket.filter(id=ticket.id).update(last_status_change_at=moment)
    return ticket.id


async def test_scheduled_actions_end_to_end(make_config: Callable[..., Config]) -> None:
    config = make_config(scheduled=JOBS)
    store = TicketStore(config)
    now = _local(4).astimezone(dt.UTC)
    async with open_database(config.database_url):
        old_done = await _ticket(store, "old done", status="Erledigt", age_days=120,
                                 files=(b"only-here", b"shared"))
        keeper = await _ticket(store, "recent done", status="Erledigt", age_days=10,
                               files=(b"shared",))
        open_old = await _ticket(store, "old but open", age_days=400)
        complaint = await _ticket(store, "stale complaint", type_="Beschwerde",
                                  status="Eingegangen", age_days=45)
        fresh_complaint = await _ticket(store, "fresh complaint", type_="Beschwerde",
                                        status="Eingegangen", age_days=2)
        tagged = await _ticket(store, "tagged", tags=("archive-me",))
        only_here = blob_path(config.data_dir, hashlib.sha256(b"only-here")
                              .hexdigest())
        shared = blob_path(config.data_dir, hashlib.sha256(b"shared").hexdigest())
        assert only_here.exists() and shared.exists()

        results = {r.job: r for r in await run_due(store, now)}
        assert "later today" not in results  # 23:59 has not come yet at 04:00
        delete = results["delete old done"]
        assert delete.ran and delete.counts["matched"] == 1 and delete.counts["changed"] == 1
        assert delete.counts["attachments_removed"] == 1
        assert not await Ticket.exists(id=old_done)
        assert await Ticket.exists(id=keeper) and await Ticket.exists(id=open_old)
        assert not only_here.exists() and shared.exists()  # the shared file still has a user
        assert await Attachment.filter(sha256=hashlib.sha256(b"shared")
                                       .hexdigest()).count() == 1

        close = results["close stale complaints"]
        assert close.counts == {"matched": 1, "changed": 1, "skipped": 0, "failed": 0}
        assert (await Ticket.get(id=complaint)).status == "Gelöst"
        assert (await Ticket.get(id=fresh_complaint)).status == "Eingegangen"
        # the change went through the store: status history and event log name the job
        events = await TicketEvent.filter(ticket_id=complaint, kind="status_changed")
        assert events and events[0].actor == "scheduled:close stale complaints"

        archive = results["archive tagged"]
        assert archive.counts["changed"] == 1
        assert (await Ticket.get(id=tagged)).folder == "Archiv"

        # Once per day: a second tick, and two instances at once, run nothing again.
        again = await asyncio.gather(run_due(store, now), run_due(store, now))
        assert all(not r.ran for results_ in again for r in results_)
        runs = await ScheduledRun.all().order_by("id")
        assert [r.name for r in runs] == ["delete old done", "close stale complaints",
                                          "archive tagged"]
        assert all(r.finished_at is not None and r.counts for r in runs)

        # The next day it runs again (nothing left to delete).
        tomorrow = (_local(4) + dt.timedelta(days=1)).astimezone(dt.UTC)
        next_day = {r.job: r for r in await run_due(store, tomorrow)}
        assert next_day["delete old done"].ran and next_day["delete old done"].counts[
            "matched"] == 0


async def test_two_instances_race_for_one_run(make_config: Callable[..., Config]) -> None:
    config = make_config(scheduled=JOBS[:1])
    now = _local(5).astimezone(dt.UTC)
    async with open_database(config.database_url):
        store_a, store_b = TicketStore(config), TicketStore(config)
        await _ticket(store_a, "old done", status="Erledigt", age_days=100)
        first, second = await asyncio.gather(run_due(store_a, now), run_due(store_b, now))
        assert sorted([first[0].ran, second[0].ran]) == [False, True]
        assert await Ticket.all().count() == 0


def test_due_jobs_by_local_time() -> None:
    jobs = [Scheduled.model_validate(j) for j in JOBS]
    assert [j.name for j in due_jobs(jobs, _local(2, 59))] == []
    assert [j.name for j in due_jobs(jobs, _local(3, 10))] == ["delete old done",
                                                              "close stale complaints"]
    inactive = jobs[0].model_copy(update={"active": False})
    assert due_jobs([inactive], _local(12)) == []


async def test_a_run_that_fails_midway_is_taken_up_at_the_next_tick(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its claim stayed 'running' for an hour (STALE_CLAIM) before anyone took it over."""
    config = make_config(scheduled=JOBS[:1])
    now = _local(5).astimezone(dt.UTC)
    async with open_database(config.database_url):
        store = TicketStore(config)
        old = await _ticket(store, "old done", status="Erledigt", age_days=100)

        async def gone(*args: Any, **kwargs: Any) -> Any:
            raise ConnectionError("the database went away")

        monkeypatch.setattr(store, "delete_ticket", gone)
        with pytest.raises(ConnectionError):
            await run_due(store, now)
        monkeypatch.undo()
        later = now + dt.timedelta(minutes=1)  # the next tick, the same day
        again = await run_due(store, later)
        assert [(r.job, r.ran) for r in again] == [("delete old done", True)]
        assert not await Ticket.filter(id=old).exists()
        assert (await ScheduledRun.get(name="delete old done")).finished_at is not None
