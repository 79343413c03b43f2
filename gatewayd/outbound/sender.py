"""The sender: drains the outbox over SMTP (aiosmtplib), per account, retrying what may succeed.

One cycle: `requeue_stale` (a `sending` row whose claim is older than the claim timeout belongs
to a dead process), `claim_due` (queued rows due now become `sending` with a claim time, in one
small transaction; `FOR UPDATE SKIP LOCKED` on PostgreSQL so several instances never claim a row
twice), then one SMTP connection per account sends the claimed rows. `classify_*` decide what an
answer means, purely: 4xx and connection errors are retried with exponential backoff (the stored
message keeps its Message-ID), 5xx fail with the server's answer, partial refusals are recorded
per recipient. Nothing is sent that is not an outbox row.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import socket
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiosmtplib
from tortoise import connections
from tortoise.transactions import in_transaction

from gatewayd.config import Account, Config
from gatewayd.logs import get_logger
from gatewayd.outbound.outbox import register_waker
from gatewayd.store import sql
from gatewayd.store.models import Outbox

log = get_logger("gatewayd.outbound.sender")

INSTANCE = f"{socket.gethostname()}:{os.getpid()}"
SHUTDOWN_GRACE = 20.0  # seconds a running send cycle may take to finish at shutdown


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


# ---------------------------------------------------------------------- decisions (pure)


@dataclass(frozen=True)
class Outcome:
    """What to do with a row after one attempt."""

    status: str  # sent | queued (retry) | failed
    error: str | None = None
    recipient_results: dict[str, Any] = field(default_factory=dict)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential: base, 2·base, 4·base, ... capped. `attempts` counts the tries made so far."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


def retry_or_fail(error: str, attempts: int, max_attempts: int) -> Outcome:
    if attempts >= max_attempts:
        return Outcome("failed", f"{error} (gave up after {attempts} attempts)")
    return Outcome("queued", error)


def classify_exception(exc: BaseException, attempts: int, max_attempts: int) -> Outcome:
    """An exception from connecting or sending: 5xx answers fail, everything else retries."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        results = {r.recipient: {"code": r.code, "message": r.message}
                   for r in exc.recipients}
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return Outcome("failed", f"every recipient refused: {text}", results)
        outcome = retry_or_fail(f"recipients refused for now: {text}", attempts, max_attempts)
        return Outcome(outcome.status, outcome.error, results)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # The account's password, not the mail, is wrong: keep the mail until it is fixed.
        return retry_or_fail(f"SMTP login refused: {exc.code} {exc.message}", attempts,
                             max_attempts)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if 500 <= exc.code < 600:
            return Outcome("failed", f"server refused the mail: {exc.code} {exc.message}")
        return retry_or_fail(f"server answered {exc.code} {exc.message}", attempts, max_attempts)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return retry_or_fail(f"TLS certificate not accepted: {exc.verify_message}", attempts,
                             max_attempts)
    if isinstance(exc, aiosmtplib.SMTPException | OSError | asyncio.TimeoutError):
        return retry_or_fail(f"{type(exc).__name__}: {exc}", attempts, max_attempts)
    return retry_or_fail(f"unexpected {type(exc).__name__}: {exc}", attempts, max_attempts)


def classify_partial(refused: dict[str, Any], recipients: Sequence[str]) -> Outcome:
    """The server took the mail for some recipients: sent, with each refusal recorded."""
    results: dict[str, Any] = {r: {"code": 250, "message": "accepted"} for r in recipients}
    for address, response in refused.items():
        results[address] = {"code": response.code, "message": response.message}
    error = None
    if refused:
        error = "some recipients refused: " + "; ".join(
            f"{a}: {r.code} {r.message}" for a, r in refused.items())
    return Outcome("sent", error, results)


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
    concurrent instances each get different rows; SQLite serialises writers anyway.
    """
    now = now or _now()
    async with in_transaction() as conn:
        from tortoise.expressions import Q

        query = Outbox.filter(status="queued").filter(
            Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now)
        ).order_by("id").limit(limit).using_db(conn)
        if connections.get("default").capabilities.dialect == "postgres":
            query = query.select_for_update(skip_locked=True)
        # `.only()` keeps FOR UPDATE (values_list() would silently drop it).
        ids = [row.id for row in await query.only("id")]
        if not ids:
            return []
        await Outbox.filter(id__in=ids, status="queued").using_db(conn).update(
            status="sending", claimed_at=now, claimed_by=instance)
        return await Outbox.filter(id__in=ids, claimed_by=instance, status="sending").using_db(
            conn).order_by("id")


def outcome_update(row: Outbox, outcome: Outcome, config: Config,
                   now: dt.datetime) -> dict[str, Any]:
    """The columns one attempt's outcome sets on its row. Pure."""
    attempts = row.attempts + 1
    update: dict[str, Any] = {
        "status": outcome.status, "attempts": attempts, "last_error": outcome.error,
        "claimed_at": None, "claimed_by": None,
    }
    if outcome.recipient_results:
        update["recipient_results"] = sql.json_text(outcome.recipient_results)
    if outcome.status == "sent":
        update["sent_at"] = now
    elif outcome.status == "queued":
        delay = backoff_seconds(attempts, config.outbound.retry_base_seconds,
                                config.outbound.retry_max_seconds)
        update["next_attempt_at"] = now + dt.timedelta(seconds=delay)
    return update


async def _finish(row: Outbox, outcome: Outcome, config: Config) -> None:
    """Record one attempt's outcome (in the caller's transaction, or committed on its own)."""
    update = outcome_update(row, outcome, config, _now())
    await sql.execute(
        f"UPDATE outbox SET {', '.join(f'{c} = ?' for c in update)} WHERE id = ?",
        [*update.values(), row.id])
    attempts = update["attempts"]
    log.info("outbox row " + ("sent" if outcome.status == "sent" else
                              "will be retried" if outcome.status == "queued" else "failed"),
             outbox_id=row.id, ticket_id=row.ticket_id,  # type: ignore[attr-defined]
             account=row.account, attempts=attempts, error=outcome.error)


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
    if smtp.username:
        password = smtp.password.get_secret_value() if smtp.password else ""
        await client.login(smtp.username, password)


async def deliver(config: Config, account: Account, rows: Sequence[Outbox]) -> list[Outcome]:
    """Send rows through one account over one connection, recording each row's outcome as soon
    as its SMTP transaction ends (one UPDATE, committed on its own: a crash can repeat at most
    the mail that was on the wire, never the rows sent before it). One Outcome per row; never
    raises for SMTP. (Committing while the next mail is on the wire was measured: no faster
    on SQLite, and it would let a crash repeat two mails.)"""
    outcomes: list[Outcome] = []

    async def settle(row: Outbox, outcome: Outcome) -> None:
        outcomes.append(outcome)
        await _finish(row, outcome, config)

    async def settle_rest(exc: BaseException) -> None:
        # Nothing of these was sent: one commit for all of them.
        async with in_transaction():
            for row in rows[len(outcomes):]:
                await settle(row, classify_exception(exc, row.attempts + 1,
                                                     config.outbound.max_attempts))

    client = smtp_client(account)
    try:
        await client.connect()
        await _login(client, account)
    except Exception as exc:  # the connection failed: every row waits for the next try
        with contextlib.suppress(Exception):
            client.close()
        await settle_rest(exc)
        return outcomes
    try:
        for row in rows:
            recipients = list(row.envelope_to)
            try:
                refused, _reply = await client.sendmail(
                    row.mail_from or account.address, recipients,
                    row.content.encode("utf-8"))
            except aiosmtplib.SMTPServerDisconnected as exc:
                # This row and the rest go in the next cycle over a new connection.
                await settle_rest(exc)
                return outcomes
            except Exception as exc:
                await settle(row, classify_exception(exc, row.attempts + 1,
                                                     config.outbound.max_attempts))
                with contextlib.suppress(Exception):
                    await client.rset()
            else:
                await settle(row, classify_partial(refused, recipients))
    finally:
        with contextlib.suppress(Exception):
            await client.quit()
        with contextlib.suppress(Exception):
            client.close()
    return outcomes


def account_for_row(config: Config, row: Outbox) -> Account | None:
    if row.account:
        account = config.account(row.account)
        if account is not None:
            return account
    return config.accounts[0] if config.accounts else None


async def send_claimed(config: Config, rows: Sequence[Outbox]) -> int:
    """Deliver claimed rows grouped by account; record every outcome. Returns rows sent."""
    by_account: dict[str, list[Outbox]] = {}
    sent = 0
    for row in rows:
        account = account_for_row(config, row)
        if account is None or account.smtp is None:
            name = account.name if account else "(none)"
            await _finish(row, Outcome("failed", f"account {name} has no [accounts.smtp]: add "
                                       "host, port and security to send its mail"), config)
            continue
        if not row.envelope_to:
            await _finish(row, Outcome("failed", "no envelope recipient"), config)
            continue
        by_account.setdefault(account.name, []).append(row)
    for name, batch in by_account.items():
        account = config.account(name)
        assert account is not None
        outcomes = await deliver(config, account, batch)
        sent += sum(outcome.status == "sent" for outcome in outcomes)
    return sent


async def run_once(config: Config, instance: str = INSTANCE) -> int:
    """One cycle: re-queue stale claims, claim due rows, send them. Returns rows claimed."""
    await requeue_stale(config.outbound.claim_timeout_seconds)
    rows = await claim_due(config.outbound.batch_size, instance=instance)
    # Rows of an inactive account wait (queued) until it is switched on.
    ready = []
    for row in rows:
        account = account_for_row(config, row)
        if account is not None and not account.active:
            await Outbox.filter(id=row.id).update(status="queued", claimed_at=None,
                                                  claimed_by=None,
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
            await asyncio.wait_for(asyncio.shield(task), SHUTDOWN_GRACE)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        except Exception as exc:
            log.warning("outbox sender ended with an error", error=f"{type(exc).__name__}: {exc}")
        # Rows this process claimed but did not finish go back to the queue at once.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(requeue_orphans(), 10)

    stack.push_async_callback(stop)
