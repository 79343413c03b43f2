"""Scheduled actions (`[[scheduled]]`): daily at a set time, once per day across a cluster.

Each run claims the row (name, day) in `scheduled_run`; the unique key lets exactly one instance
win, on SQLite and PostgreSQL alike. A job whose time has passed today and that has not run yet
runs at the next tick, so a daemon that was down at 03:00 catches up when it starts. The time is
the host's local time (systemd: the system time zone). Every change goes through `TicketStore`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
from dataclasses import dataclass, field

from tortoise.exceptions import IntegrityError
from tortoise.expressions import Q, Subquery

from gatewayd.config import Config, Scheduled, ScheduledFilter
from gatewayd.logs import get_logger
from gatewayd.runtime import Runtime
from gatewayd.store.attachments import remove_unused_blobs
from gatewayd.store.models import Attachment, Message, ScheduledRun, Ticket, TicketTag
from gatewayd.store.tickets import StoreError, TicketPatch, TicketStore

log = get_logger("gatewayd.scheduler")

TICK_SECONDS = 30.0
# A claim whose instance died mid-run may be taken over after this long.
STALE_CLAIM = dt.timedelta(hours=1)
BATCH = 200


def instance_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


# ------------------------------------------------------------------------------ decisions


def job_time(job: Scheduled) -> dt.time:
    hour, minute = job.at.split(":")
    return dt.time(int(hour), int(minute))


def due_jobs(jobs: list[Scheduled], now_local: dt.datetime) -> list[Scheduled]:
    """Active jobs whose time of day has come today (whether they ran is the database's say)."""
    return [j for j in jobs if j.active and now_local.time() >= job_time(j)]


def ticket_filter(config: Config, flt: ScheduledFilter, now: dt.datetime) -> Q:
    """The job's filter as one query condition (as for searches, plus last_status_change_days)."""
    cond = Q()
    if flt.types:
        cond &= Q(type__in=flt.types)
    if flt.statuses:
        cond &= Q(status__in=flt.statuses)
    if flt.status_groups:
        pairs = [(t.name, s.name) for t in config.ticket_types for s in t.statuses
                 if s.group in flt.status_groups]
        group = Q(id__in=[])  # matches nothing when the groups hold no status
        for type_name, status_name in pairs:
            group |= Q(type=type_name, status=status_name)
        cond &= group
    if flt.folders:
        cond &= Q(folder__in=flt.folders)
    if flt.tags:
        cond &= Q(id__in=Subquery(TicketTag.filter(tag__in=flt.tags).values("ticket_id")))
    if flt.last_status_change_days is not None:
        cutoff = now - dt.timedelta(days=flt.last_status_change_days)
        # Tickets from before the column existed fall back to their creation time.
        cond &= (Q(last_status_change_at__lte=cutoff)
                 | Q(last_status_change_at__isnull=True, created_at__lte=cutoff))
    return cond


@dataclass
class RunResult:
    job: str
    day: dt.date
    ran: bool
    counts: dict[str, int] = field(default_factory=dict)


# ------------------------------------------------------------------------------ I/O


async def _claim(job: Scheduled, day: dt.date, now: dt.datetime) -> ScheduledRun | None:
    """Take today's run of the job, or None when another instance has it (or had it)."""
    try:
        return await ScheduledRun.create(name=job.name, day=day, instance=instance_name(),
                                         started_at=now)
    except IntegrityError:
        pass
    # Taken: only a claim abandoned mid-run (its instance died) may be taken over.
    taken = await ScheduledRun.filter(
        name=job.name, day=day, finished_at__isnull=True, started_at__lt=now - STALE_CLAIM
    ).update(instance=instance_name(), started_at=now)
    if taken:
        return await ScheduledRun.get(name=job.name, day=day)
    return None


async def _release(claim: ScheduledRun, now: dt.datetime) -> None:
    """A run that failed midway is left for the next tick to take over (its claim made stale
    at once; the actions are safe to run again: a changed ticket no longer matches, or is
    skipped). When even that fails (the database is gone), the claim goes stale by itself
    after STALE_CLAIM."""
    with contextlib.suppress(Exception):
        await ScheduledRun.filter(id=claim.id, finished_at__isnull=True).update(
            started_at=now - STALE_CLAIM - dt.timedelta(seconds=1))


async def apply_job(store: TicketStore, job: Scheduled, now: dt.datetime) -> dict[str, int]:
    """Run one job's action on every matching ticket; return the counts."""
    config = store.config
    ids = await Ticket.filter(ticket_filter(config, job.filter, now)).order_by("id").values_list(
        "id", flat=True)
    counts = {"matched": len(ids), "changed": 0, "skipped": 0, "failed": 0}
    actor = f"scheduled:{job.name}"
    for start in range(0, len(ids), BATCH):
        batch: list[int] = [int(i) for i in ids[start:start + BATCH]]  # type: ignore[call-overload]
        if job.action == "delete":
            digests = {str(d) for d in await Attachment.filter(
                message_id__in=Subquery(Message.filter(ticket_id__in=batch).values("id"))
            ).values_list("sha256", flat=True)}
            for ticket_id in batch:
                try:
                    await store.delete_ticket(ticket_id, actor=actor)
                    counts["changed"] += 1
                except StoreError as exc:
                    counts["failed"] += 1
                    log.warning("scheduled delete failed", job=job.name, ticket_id=ticket_id,
                                error=str(exc))
            # Files are shared by content: remove only those no remaining message uses.
            counts["attachments_removed"] = counts.get("attachments_removed", 0) + \
                await remove_unused_blobs(store.data_dir, digests)
            continue
        for ticket in await Ticket.filter(id__in=batch).order_by("id"):
            if job.action == "set_status":
                type_def = config.ticket_type(ticket.type)
                if ticket.status == job.status or type_def is None or \
                        type_def.status(job.status or "") is None:
                    counts["skipped"] += 1  # already there, or the type has no such status
                    continue
                patch = TicketPatch(status=job.status)
            else:
                if ticket.folder == job.folder:
                    counts["skipped"] += 1
                    continue
                patch = TicketPatch(folder=job.folder)
            try:
                await store.update_ticket(ticket.id, patch, actor=actor)
                counts["changed"] += 1
            except StoreError as exc:
                counts["failed"] += 1
                log.warning("scheduled change failed", job=job.name, ticket_id=ticket.id,
                            error=str(exc))
    return counts


async def run_due(store: TicketStore, now: dt.datetime | None = None) -> list[RunResult]:
    """Run every job that is due today and not yet claimed by any instance."""
    now = now or dt.datetime.now(dt.UTC)
    local = now.astimezone()
    results = []
    for job in due_jobs(store.config.scheduled, local):
        claim = await _claim(job, local.date(), now)
        if claim is None:
            results.append(RunResult(job.name, local.date(), False))
            continue
        try:
            counts = await apply_job(store, job, now)
        except Exception:
            await _release(claim, now)
            raise
        claim.counts = counts
        claim.finished_at = dt.datetime.now(dt.UTC)
        await claim.save(update_fields=["counts", "finished_at"])
        log.info("scheduled action ran", job=job.name, action=job.action, day=str(local.date()),
                 **counts)
        results.append(RunResult(job.name, local.date(), True, counts))
    return results


async def scheduler_loop(runtime: Runtime, tick: float = TICK_SECONDS) -> None:
    while True:
        try:
            await run_due(runtime.store)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next tick tries again; never take the daemon down
            log.exception("scheduled actions failed", error=str(exc))
        await asyncio.sleep(tick)


async def scheduler_worker(stack: contextlib.AsyncExitStack, runtime: Runtime) -> None:
    """Daemon worker: the scheduler task, cancelled when the stack unwinds."""
    task = asyncio.create_task(scheduler_loop(runtime), name="scheduler")

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    stack.push_async_callback(stop)
