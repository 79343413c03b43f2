"""The sender: drains the outbox over SMTP (aiosmtplib), per account, retrying what may succeed.

One cycle: `requeue_stale` (a `sending` row whose claim is older than the claim timeout belongs
to a dead process; looked for every few seconds), `claim_due` (queued rows due now become
`sending` with a claim time, in one small transaction; `FOR UPDATE SKIP LOCKED` on PostgreSQL so
several instances never claim a row twice), then each account's rows go out over up to
`outbound.connections_per_account` SMTP connections, the accounts side by side. Each connection
waits until its mail's outcome is committed (group commit: `outbound.recorder`) before its next
mail, so a crash repeats at most the mails on the wire. What an answer means is decided purely in
`outbound.outcomes`. Nothing is sent that is not an outbox row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import ssl
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiosmtplib
from tortoise.transactions import in_transaction

from gatewayd.config import Account, Config
from gatewayd.logs import get_logger
from gatewayd.outbound.outbox import register_waker
from gatewayd.outbound.outcomes import (
    Outcome,
    classify_exception,
    classify_partial,
)
from gatewayd.outbound.recorder import OutcomeRecorder
from gatewayd.outbound.waiting import sending_account, waiting_reason
from gatewayd.store import sql, sqlite_backend
from gatewayd.store.models import Outbox

log = get_logger("gatewayd.outbound.sender")

INSTANCE = f"{socket.gethostname()}:{os.getpid()}"
QUIT_SECONDS = 5.0  # how long a connection's QUIT may wait for the server's answer
SHUTDOWN_GRACE = 20.0  # seconds a running send cycle may take to finish at shutdown
ROWS_PER_CONNECTION = 4  # an account's extra connection opens for every this many rows
# Customers' mails are claimed before the shop's internal ones (`Outbox.internal`: the form's
# info mail, owner notices) while both wait; an internal mail waits at most this long for that.
INTERNAL_GRACE = dt.timedelta(seconds=60)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------- claiming


async def requeue_stale(timeout_seconds: float, now: dt.datetime | None = None) -> int:
    """Rows left `sending` by a process that died: back to `queued` (a restart loses none)."""
    cutoff = (now or _now()) - dt.timedelta(seconds=timeout_seconds)
    return await Outbox.filter(status="sending", claimed_at__lt=cutoff).update(
        status="queued", claimed_at=None, claimed_by=None)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def requeue_orphans(instance: str = INSTANCE) -> int:
    """At start: rows left `sending` by a dead process on this host go back to `queued` now,
    instead of after the claim timeout (which covers other hosts)."""
    host = instance.rpartition(":")[0]
    orphans = []
    for row in await Outbox.filter(status="sending", claimed_by__startswith=f"{host}:").only(
            "id", "claimed_by"):
        pid = (row.claimed_by or "").rpartition(":")[2]
        if row.claimed_by == instance or (pid.isdigit() and not _pid_alive(int(pid))):
            orphans.append(row.id)
    if not orphans:
        return 0
    return await Outbox.filter(id__in=orphans, status="sending").update(
        status="queued", claimed_at=None, claimed_by=None)


async def claim_due(limit: int, now: dt.datetime | None = None,
                    instance: str = INSTANCE) -> list[Outbox]:
    """Claim up to `limit` queued rows that are due: they become `sending`, claimed now.

    One short transaction. On PostgreSQL the rows are locked with FOR UPDATE SKIP LOCKED, so
    concurrent instances each get different rows; SQLite serialises writers anyway. Oldest
    first, but customers' mails before internal ones (`Outbox.internal`) younger than
    INTERNAL_GRACE: a customer's receipt does not wait behind the merchant's info mails.
    """
    now = now or _now()
    postgres = sql.dialect() == "postgres"
    async with in_transaction() as conn:
        # Customers first: an internal row ranks behind them until it has waited
        # INTERNAL_GRACE, then by age like any other.
        found = await sql.rows(
            "SELECT id FROM outbox WHERE status = 'queued' "
            "AND (next_attempt_at IS NULL OR next_attempt_at <= ?) "
            "ORDER BY CASE WHEN internal AND created_at > ? THEN 1 ELSE 0 END, id LIMIT ?"
            + (" FOR UPDATE SKIP LOCKED" if postgres else ""),
            (now, now - INTERNAL_GRACE, limit))
        ids = [int(row["id"]) for row in found]
        if not ids:
            return []
        await Outbox.filter(id__in=ids, status="queued").using_db(conn).update(
            status="sending", claimed_at=now, claimed_by=instance)
        rows = await Outbox.filter(id__in=ids, claimed_by=instance, status="sending").using_db(
            conn)
        order = {row_id: position for position, row_id in enumerate(ids)}
        return sorted(rows, key=lambda row: order[row.id])


# ---------------------------------------------------------------------- SMTP


_tls_contexts: dict[tuple[str | None, float], ssl.SSLContext] = {}


def tls_context(cafile: Path | None) -> ssl.SSLContext:
    """A verifying client context per CA file (loading the system's CAs takes ~40 ms; a changed
    CA file, by its mtime, gets a new context)."""
    key = (str(cafile) if cafile else None, cafile.stat().st_mtime if cafile else 0.0)
    context = _tls_contexts.get(key)
    if context is None:
        context = ssl.create_default_context(cafile=key[0])
        _tls_contexts[key] = context
    return context


def smtp_client(account: Account) -> aiosmtplib.SMTP:
    """A client for the account: implicit TLS or required STARTTLS, certificates verified."""
    smtp = account.smtp
    if smtp is None:
        raise ValueError(f"account {account.name!r} has no [accounts.smtp]")
    context = tls_context(smtp.cafile) if smtp.security != "none" else None
    return aiosmtplib.SMTP(
        hostname=smtp.host, port=smtp.effective_port,
        use_tls=smtp.security == "tls",
        # True = STARTTLS is required: a server without it is an error, never plain text.
        start_tls=True if smtp.security == "starttls" else False,
        tls_context=context,
        validate_certs=True, timeout=smtp.timeout_seconds,
        local_hostname=account.address.rpartition("@")[2] or None,
    )


async def _login(client: aiosmtplib.SMTP, account: Account) -> None:
    smtp = account.smtp
    assert smtp is not None
    if smtp.auth == "oauth2":
        from gatewayd.oauth.smtp_auth import login as oauth_login

        await oauth_login(client, smtp, account.address)
    elif smtp.username:
        password = smtp.password.get_secret_value() if smtp.password else ""
        await client.login(smtp.username, password)


def connections_for(rows: int, allowed: int) -> int:
    """How many SMTP connections an account's claimed rows get: one more for every
    ROWS_PER_CONNECTION rows, at most `allowed` (`outbound.connections_per_account`). A short
    queue is sent over one connection (opening one costs a round trip or a TLS handshake)."""
    return max(1, min(allowed, -(-rows // ROWS_PER_CONNECTION)))


async def deliver(config: Config, account: Account, rows: Sequence[Outbox],
                  recorder: OutcomeRecorder | None = None) -> list[Outcome]:
    """Send rows through one account over up to `outbound.connections_per_account`
    connections; one Outcome per row, in the rows' order. Never raises for SMTP.

    Each connection takes the next unsent row, sends it, and waits until its outcome is
    committed before it takes another (`OutcomeRecorder`: outcomes arriving during a commit
    share the next one). A crash therefore repeats at most the mail each connection has on the
    wire, never one recorded as sent; no row is handed to two connections.
    """
    recorder = recorder or OutcomeRecorder(config)
    outcomes: dict[int, Outcome] = {}
    todo = iter(range(len(rows)))
    max_attempts = config.outbound.max_attempts
    problems: list[BaseException] = []

    async def settle(index: int, outcome: Outcome) -> None:
        outcomes[index] = outcome
        await recorder.record(rows[index], outcome)

    async def connection() -> None:
        client = smtp_client(account)
        try:
            await client.connect()
            await _login(client, account)
        except Exception as exc:  # this connection failed: the others take the rows
            problems.append(exc)
            with contextlib.suppress(Exception):
                client.close()
            return
        try:
            for index in todo:
                row = rows[index]
                recipients = list(row.envelope_to)
                try:
                    refused, _reply = await client.sendmail(
                        row.mail_from or account.address, recipients,
                        row.content.encode("utf-8"))
                except aiosmtplib.SMTPServerDisconnected as exc:
                    # This row waits for the next cycle; the other connections go on.
                    problems.append(exc)
                    await settle(index, classify_exception(exc, row.attempts + 1, max_attempts))
                    return
                except Exception as exc:
                    await settle(index, classify_exception(exc, row.attempts + 1, max_attempts))
                    with contextlib.suppress(Exception):
                        await client.rset()
                else:
                    await settle(index, classify_partial(refused, recipients))
        finally:
            await _close(client)

    count = connections_for(len(rows), config.outbound.connections_per_account)
    try:
        # An outcome that cannot be recorded (the database failed) stops every connection of
        # the account: no mail goes out that could not be recorded.
        async with asyncio.TaskGroup() as group:
            for _ in range(count):
                group.create_task(connection())
    except* Exception as failed:
        raise failed.exceptions[0] from None
    # Rows no connection could take (every connection failed): nothing of them was sent, one
    # commit for all of them.
    left = [index for index in todo]
    if left:
        problem = problems[-1] if problems else RuntimeError("no SMTP connection")
        for index in left:
            outcomes[index] = classify_exception(problem, rows[index].attempts + 1, max_attempts)
        await recorder.record_all([(rows[i], outcomes[i]) for i in left])
    return [outcomes[index] for index in range(len(rows))]


async def _close(client: aiosmtplib.SMTP) -> None:
    """QUIT politely, but briefly; a cancelled connection (shutdown) only drops the socket:
    waiting for a silent server's answer to QUIT would spend the whole command timeout."""
    task = asyncio.current_task()
    if task is None or not task.cancelling():
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.quit(), QUIT_SECONDS)
    with contextlib.suppress(Exception):
        client.close()


def account_for_row(config: Config, row: Outbox) -> Account | None:
    return sending_account(config, row.account)


async def send_claimed(config: Config, rows: Sequence[Outbox], *, retry: bool = True) -> int:
    """Deliver claimed rows grouped by account, the accounts side by side; record every
    outcome (one group commit for all of them: `OutcomeRecorder`). Returns rows sent.
    `retry=False` (test-send): what would be tried again later fails now instead."""
    recorder = OutcomeRecorder(config, retry=retry)
    by_account: dict[str, list[Outbox]] = {}
    unsendable: list[tuple[Outbox, Outcome]] = []
    for row in rows:
        account = account_for_row(config, row)
        if account is None or account.smtp is None:
            name = account.name if account else "(none)"
            unsendable.append((row, Outcome("failed", f"account {name} has no [accounts.smtp]: "
                                            "add host, port and security to send its mail")))
        elif not row.envelope_to:
            unsendable.append((row, Outcome("failed", "no envelope recipient")))
        else:
            by_account.setdefault(account.name, []).append(row)
    if unsendable:
        await recorder.record_all(unsendable)
    results = await asyncio.gather(*(
        deliver(config, account, batch, recorder)
        for account, batch in ((config.account(name), batch)
                               for name, batch in by_account.items())
        if account is not None))
    return sum(outcome.status == "sent" for outcomes in results for outcome in outcomes)


_last_stale_check = 0.0


async def run_once(config: Config, instance: str = INSTANCE) -> int:
    """One cycle: re-queue stale claims, claim due rows, send them. Returns rows claimed."""
    global _last_stale_check
    # Stale claims are minutes old by definition: looking every few seconds is enough, and it
    # spares a write (and, on SQLite, a turn at the one connection) per busy cycle.
    timeout = config.outbound.claim_timeout_seconds
    if time.monotonic() - _last_stale_check >= min(10.0, timeout / 4):
        await requeue_stale(timeout)
        _last_stale_check = time.monotonic()
    rows = await claim_due(config.outbound.batch_size, instance=instance)
    # Rows whose account cannot send (inactive, no SMTP) wait, queued, saying why, until the
    # configuration changes; they are not attempts.
    ready = []
    for row in rows:
        reason = waiting_reason(config, row.account)
        if reason is not None:
            if row.last_error != reason:
                log.info("outbox row waits", outbox_id=row.id, account=row.account,
                         reason=reason)
            await Outbox.filter(id=row.id).update(status="queued", claimed_at=None,
                                                  claimed_by=None, last_error=reason,
                                                  next_attempt_at=_now() + dt.timedelta(
                                                      seconds=config.outbound.poll_seconds * 30))
            continue
        ready.append(row)
    if ready:
        await send_claimed(config, ready)
    return len(rows)


class Sender:
    """The outbox-draining task: polls, and wakes early when a row is queued in this process."""

    def __init__(self, runtime: Any):
        self.runtime = runtime
        self._wake = asyncio.Event()
        self._stop = False

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Finish the running cycle, then return (no cancellation inside a transaction)."""
        self._stop = True
        self._wake.set()

    async def run(self) -> None:
        # On SQLite the sender's short transactions go before queued form and ingest ones:
        # otherwise each claim and commit waits behind all of them and receipts pile up
        # exactly when the shop is busiest (see store.sqlite_backend.PriorityLock).
        sqlite_backend.mark_urgent()
        unregister = register_waker(self.wake)
        try:
            with contextlib.suppress(Exception):
                found = await requeue_orphans()
                if found:
                    log.info("outbox rows of a stopped process re-queued", rows=found)
            while not self._stop:
                config: Config = self.runtime.config
                try:
                    claimed = await run_once(config)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # the database hiccuped: try again next cycle
                    log.warning("outbox cycle failed", error=f"{type(exc).__name__}: {exc}")
                    claimed = 0
                if self._stop:
                    break
                if claimed >= config.outbound.batch_size:
                    continue  # more may be waiting
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), config.outbound.poll_seconds)
        finally:
            unregister()


async def sender_worker(stack: contextlib.AsyncExitStack, runtime: Any) -> None:
    """Daemon worker: start the sender task; on shutdown let the running batch finish."""
    sender = Sender(runtime)
    task = asyncio.create_task(sender.run(), name="outbox-sender")
    runtime.stop_requests.append(sender.stop)

    async def stop() -> None:
        # Cancelling a task inside a database transaction can leave the connection's lock
        # held (seen with tortoise on SQLite): ask the loop to stop after its cycle instead,
        # and cancel only a cycle stuck longer than SHUTDOWN_GRACE (e.g. a slow SMTP server).
        sender.stop()
        try:
            await asyncio.wait_for(asyncio.shield(task), runtime.grace(SHUTDOWN_GRACE))
        except TimeoutError:
            task.cancel()
            _done, stuck = await asyncio.wait({task}, timeout=5)
            if stuck:
                log.error("outbox sender did not end when cancelled; leaving it behind")
        except Exception as exc:
            log.warning("outbox sender ended with an error", error=f"{type(exc).__name__}: {exc}")
        # Rows this process claimed but did not finish go back to the queue at once.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(requeue_orphans(), max(2.0, runtime.grace(10)))

    stack.push_async_callback(stop)
