"""The account pollers: one supervised task per active account, IDLE or polling, with backoff.

`run_account(runtime, account, stop)` is one account's whole life and can be wrapped (e.g. in a
PostgreSQL advisory-lock lease). When `stop` is set it finishes the mail in hand (commit and
server action, or a clean rollback) and returns. One broken account never affects the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from gatewayd.config import Account
from gatewayd.ingest.imap import AuthFailed, ImapError, ImapSession, TlsRequired
from gatewayd.ingest.parsers import POOL
from gatewayd.ingest.pipeline import (
    Envelope,
    Outcome,
    PoisonMail,
    Prepared,
    existing_receipts,
    import_batch,
    import_one,
    prepare,
    quarantine_mail,
)
from gatewayd.logs import get_logger
from gatewayd.runtime import AccountHealth, Runtime
from gatewayd.store.models import AccountState, InboundReceipt

log = get_logger("gatewayd.poller")

BACKOFF_START = 2.0
BACKOFF_CAP = 300.0
PARK_SECONDS = 1800.0  # a refused login is retried this rarely (or after a config reload)
IDLE_MAX_SECONDS = 25 * 60  # re-issue IDLE well before the 29-minute limit
FETCH_BATCH = 25
# Two batches are in hand per account (one stored, the next fetched and parsed): 4 MB each.
FETCH_BATCH_BYTES = 4 * 1024 * 1024

# Tests hook in here to simulate a crash between commit and server action.
AfterCommit = Callable[[Envelope, Outcome], Awaitable[None]]


def backoff_delay(failures: int, *, start: float = BACKOFF_START, cap: float = BACKOFF_CAP,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter, capped. Pure apart from the random source."""
    ceiling = min(cap, start * (2 ** max(0, failures - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)


def server_action(account: Account, outcome_kind: str) -> tuple[str, str | None]:
    """What to do on the server with a mail after its commit: ("move", folder) / ("delete",
    None) / ("flag", None). Quarantined mails are moved aside or flagged, never deleted."""
    imap = account.imap
    assert imap is not None
    if outcome_kind == "quarantined":
        return ("move", imap.quarantine_folder) if imap.quarantine_folder else ("flag", None)
    if outcome_kind == "oversized":
        return ("flag", None)
    if imap.after_import == "delete":
        return ("delete", None)
    return ("move", imap.move_to)


@dataclass
class Fetched:
    """A fetched batch: its parsed mails, and those already quarantined as unparseable."""

    prepared: list[Prepared] = field(default_factory=list)
    quarantined: list[tuple[Envelope, str]] = field(default_factory=list)


@dataclass
class AccountPoller:
    runtime: Runtime
    account: Account
    stop: asyncio.Event
    after_commit: AfterCommit | None = None
    attempts: dict[tuple[int, int], int] = field(default_factory=dict)
    ensured_folders: set[str] = field(default_factory=set)
    dedupe_by_content: bool = False  # set when UIDVALIDITY changed since the last import
    session_ok: bool = False  # the current session completed a poll: backoff starts afresh

    @property
    def health(self) -> AccountHealth:
        return self.runtime.health.setdefault(self.account.name, AccountHealth(self.account.name))

    async def _record(self, state: str, *, error: str | None = None, backoff: float = 0.0,
                      polled: bool = False, success: bool = False) -> None:
        health = self.health
        health.state = state
        health.backoff_seconds = backoff
        now = dt.datetime.now(dt.UTC)
        if polled:
            health.last_poll_at = now
        if error is not None:
            health.last_error = error
        values: dict[str, Any] = {"state": state, "backoff_seconds": backoff}
        if polled:
            values["last_poll_at"] = now
        if success:
            values["last_success_at"] = now
        if error is not None:
            values["last_error"] = error[:2000]
        try:
            updated = await AccountState.filter(account=self.account.name).update(**values)
            if not updated:
                await AccountState.create(account=self.account.name, **values)
        except Exception as exc:  # health bookkeeping must never stop the poller
            log.warning("cannot record account state", error=str(exc)[:200])

    # ------------------------------------------------------------------ supervisor

    async def run(self) -> None:
        failures = 0
        while not self.stop.is_set():
            try:
                await self._session()
                failures = 0
            except AuthFailed as exc:
                failures = 0
                log.error("login refused: account parked", error=str(exc))
                await self._record("parked", error=str(exc), backoff=PARK_SECONDS)
                await self._sleep(PARK_SECONDS)
            except (ImapError, OSError, TimeoutError, ConnectionError) as exc:
                failures = 1 if self.session_ok else failures + 1
                delay = backoff_delay(failures)
                message = str(exc) or type(exc).__name__
                if isinstance(exc, TlsRequired):
                    delay = max(delay, 60.0)
                log.warning("account error, backing off", error=message[:300],
                            delay=round(delay, 1), failures=failures)
                await self._record("backoff", error=message, backoff=delay)
                await self._sleep(delay)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not kill the account for good
                failures = 1 if self.session_ok else failures + 1
                delay = backoff_delay(failures)
                log.exception("account loop failed", delay=round(delay, 1))
                await self._record("backoff", error=f"{type(exc).__name__}: {exc}"[:500],
                                   backoff=delay)
                await self._sleep(delay)
        await self._record("stopped")

    async def _sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    # ------------------------------------------------------------------ one connection

    async def _session(self) -> None:
        imap = self.account.imap
        assert imap is not None
        password = imap.password.get_secret_value() if imap.password else ""
        session = ImapSession(imap, password)
        self.session_ok = False
        try:
            await session.connect()
            selected = await session.select(imap.folder)
            self.dedupe_by_content = await self._uidvalidity_changed(selected.uidvalidity)
            use_idle = imap.idle and session.has("IDLE")
            log.info("connected", folder=imap.folder, uidvalidity=selected.uidvalidity,
                     idle=use_idle, move=session.has("MOVE"), tls=session.tls)
            while not self.stop.is_set():
                await self._record("polling", polled=True)
                await self.poll_once(session, selected.uidvalidity)
                self.session_ok = True
                await self._record("idle", polled=True, success=True)
                if self.stop.is_set():
                    break
                if use_idle:
                    await session.idle(min(imap.poll_seconds, IDLE_MAX_SECONDS), self.stop)
                else:
                    await self._sleep(imap.poll_seconds)
                    if not self.stop.is_set():
                        await session.noop()
        finally:
            await session.close()

    async def poll_now(self) -> int:
        """Connect, import every unseen mail once, disconnect (tests, `demo`, one-shot runs)."""
        imap = self.account.imap
        assert imap is not None
        session = ImapSession(imap, imap.password.get_secret_value() if imap.password else "")
        try:
            await session.connect()
            selected = await session.select(imap.folder)
            self.dedupe_by_content = await self._uidvalidity_changed(selected.uidvalidity)
            return await self.poll_once(session, selected.uidvalidity)
        finally:
            await session.close()

    async def _uidvalidity_changed(self, uidvalidity: int) -> bool:
        imap = self.account.imap
        assert imap is not None
        last = await InboundReceipt.filter(account=self.account.name, folder=imap.folder).order_by(
            "-id").first()
        if last is not None and last.uidvalidity != uidvalidity:
            log.warning("UIDVALIDITY changed: matching mails by Message-ID and content hash",
                        old=last.uidvalidity, new=uidvalidity)
            return True
        return False

    async def poll_once(self, session: ImapSession, uidvalidity: int) -> int:
        """Import every unseen mail; returns how many were handled.

        Mails are fetched in batches and each batch is committed in one transaction (falling
        back to one transaction per mail when anything in it fails); the server actions of a
        batch follow its commit, one command per action (one UID MOVE for the batch).

        Pipelined, one batch deep: while a batch is routed and committed, the next one is
        fetched and parsed (nothing of it is written before its own turn, so a crash or a stop
        between the two leaves it unseen on the server, to be fetched again). A stop finishes
        the batch being stored (commit and server action) and drops the one fetched behind it.
        """
        imap = self.account.imap
        assert imap is not None
        uids = await session.unseen()
        if not uids:
            return 0
        sizes = await session.sizes(uids)
        receipts = await existing_receipts(self.account.name, imap.folder, uidvalidity, uids)
        done: list[tuple[Envelope, str]] = []  # committed, server action pending
        plan: list[tuple[list[int], bool]] = []  # (UIDs, headers only) in UID order
        batch: list[int] = []
        batch_bytes = 0
        for uid in uids:
            env = Envelope(self.account.name, imap.folder, uidvalidity, uid)
            if uid in receipts:
                # Imported before (a crash or a failed action): only re-apply the server action.
                done.append((env, receipts[uid].outcome))
                continue
            size = sizes.get(uid, (0, frozenset()))[0]
            if size > imap.max_message_bytes:
                plan.append(([uid], True))
                continue
            batch.append(uid)
            batch_bytes += size
            if len(batch) >= FETCH_BATCH or batch_bytes >= FETCH_BATCH_BYTES:
                plan.append((batch, False))
                batch, batch_bytes = [], 0
        if batch:
            plan.append((batch, False))

        lock = asyncio.Lock()  # one IMAP command at a time on the connection
        handled = 0

        def fetch(n: int) -> asyncio.Task[Fetched]:
            uids, headers_only = plan[n]
            return asyncio.create_task(self._fetch_and_prepare(
                session, lock, uids, uidvalidity, sizes, headers_only=headers_only))

        ahead: asyncio.Task[Fetched] | None = None
        try:
            for n in range(len(plan)):
                if self.stop.is_set():
                    if ahead is not None:
                        # Fetched and parsed, not stored: left unseen on the server for next
                        # time. Only what was quarantined already gets its server action.
                        done.extend((await ahead).quarantined)
                        ahead = None
                    break
                fetched = await (ahead or fetch(n))
                # The next batch is fetched and parsed while this one is stored.
                ahead = fetch(n + 1) if n + 1 < len(plan) else None
                done.extend(fetched.quarantined)
                await self._import_prepared(fetched.prepared, done)
                async with lock:
                    handled += await self._apply(session, done)
        finally:
            if ahead is not None:  # an error (or a stop) left a fetch running: end it
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
        # Even when stopping: the mails in hand are committed, so finish their server actions.
        async with lock:
            handled += await self._apply(session, done)
        return handled

    async def _fetch_and_prepare(
        self, session: ImapSession, lock: asyncio.Lock, uids: list[int], uidvalidity: int,
        sizes: dict[int, tuple[int, frozenset[str]]], *, headers_only: bool = False,
    ) -> Fetched:
        """Fetch a batch and parse its mails (all at once: the parser pool bounds the work);
        a mail that cannot be parsed is quarantined here, at once."""
        imap = self.account.imap
        assert imap is not None
        async with lock:
            raws = await session.fetch(uids, headers_only=headers_only)
        envs = [(Envelope(self.account.name, imap.folder, uidvalidity, uid), raws[uid])
                for uid in uids if uid in raws]  # a missing one was expunged meanwhile
        results = await asyncio.gather(
            *(prepare(self.account, env, raw, sizes.get(env.uid, (len(raw),))[0])
              for env, raw in envs),
            return_exceptions=True,
        )
        fetched = Fetched()
        for (env, raw), result in zip(envs, results, strict=True):
            if isinstance(result, PoisonMail):
                await quarantine_mail(self.runtime.store, env, raw, str(result),
                                      self.attempts.pop((uidvalidity, env.uid), 0) + 1)
                fetched.quarantined.append((env, "quarantined"))
            elif isinstance(result, BaseException):
                raise result
            else:
                fetched.prepared.append(result)
        return fetched

    async def _import_prepared(self, prepared: list[Prepared],
                               done: list[tuple[Envelope, str]]) -> None:
        """Commit a parsed batch in one transaction, or its mails one by one if that fails."""
        store = self.runtime.store
        if len(prepared) > 1:
            try:
                outcomes = await import_batch(store, self.account, prepared,
                                              dedupe_by_content=self.dedupe_by_content)
            except (OSError, ConnectionError):
                raise  # the database is gone: the account backs off
            except Exception as exc:
                log.info("batch rolled back, importing its mails one by one",
                         mails=len(prepared), error=f"{type(exc).__name__}: {exc}"[:200])
            else:
                for item, outcome in zip(prepared, outcomes, strict=True):
                    await self._committed(item, outcome, done)
                return
        for item in prepared:
            if self.stop.is_set():
                break
            await self._import(item, done)

    async def _committed(self, item: Prepared, outcome: Outcome,
                         done: list[tuple[Envelope, str]]) -> None:
        self.attempts.pop((item.env.uidvalidity, item.env.uid), None)
        if self.after_commit is not None:
            await self.after_commit(item.env, outcome)
        done.append((item.env, "oversized" if item.oversized else outcome.kind))

    async def _import(self, item: Prepared, done: list[tuple[Envelope, str]]) -> None:
        """Commit one mail, or count a failure and quarantine it after max_attempts."""
        imap = self.account.imap
        assert imap is not None
        env = item.env
        key = (env.uidvalidity, env.uid)
        try:
            outcome = await import_one(self.runtime.store, self.account, item,
                                       dedupe_by_content=self.dedupe_by_content)
        except (OSError, ConnectionError, ImapError):
            raise  # the connection or the database is gone: the account backs off
        except Exception as exc:
            attempts = self.attempts.get(key, 0) + 1
            self.attempts[key] = attempts
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            if attempts >= imap.max_attempts:
                log.error("mail failed too often: quarantined", uid=env.uid, attempts=attempts,
                          error=reason[:300])
                await quarantine_mail(self.runtime.store, env, item.raw,
                                      f"failed {attempts} times: {reason}", attempts,
                                      item.mail.message_id)
                self.attempts.pop(key, None)
                done.append((env, "quarantined"))
                return
            log.warning("mail failed, will retry", uid=env.uid, attempts=attempts,
                        error=reason[:300])
            return
        await self._committed(item, outcome, done)

    async def _apply(self, session: ImapSession, done: list[tuple[Envelope, str]]) -> int:
        """Run the server actions of committed mails, one command per action; clears `done`."""
        groups: dict[tuple[str, str | None], list[Envelope]] = {}
        for env, kind in done:
            groups.setdefault(server_action(self.account, kind), []).append(env)
        count = len(done)
        done.clear()
        for (action, folder), envs in groups.items():
            uids = [e.uid for e in envs]
            if action == "move" and folder:
                if folder not in self.ensured_folders:
                    await session.ensure_folder(folder)
                    self.ensured_folders.add(folder)
                await session.move(uids, folder)
            elif action == "delete":
                await session.delete(uids)
            else:
                await session.flag(uids, "\\Flagged", "\\Seen")
            first = envs[0]
            await InboundReceipt.filter(account=first.account, folder=first.folder,
                                        uidvalidity=first.uidvalidity, uid__in=uids).update(
                server_action_done=True)
        return count


async def run_account(runtime: Runtime, account: Account, stop: asyncio.Event,
                      after_commit: AfterCommit | None = None) -> None:
    """One account's poller until `stop` is set (finishing the mail in hand)."""
    with structlog.contextvars.bound_contextvars(account=account.name):
        await AccountPoller(runtime, account, stop, after_commit).run()


def pollable(account: Account) -> bool:
    return account.active and account.imap is not None


async def start_pollers(stack: contextlib.AsyncExitStack, runtime: Runtime) -> None:
    """The daemon worker: one task per active account; on shutdown set stop and wait."""
    stop = asyncio.Event()
    tasks: list[asyncio.Task[None]] = []
    for account in runtime.config.accounts:
        if not pollable(account):
            runtime.health.setdefault(account.name, AccountHealth(account.name, state="disabled"))
            continue
        runtime.health[account.name] = AccountHealth(account.name)
        tasks.append(asyncio.create_task(run_account(runtime, account, stop),
                                         name=f"poller:{account.name}"))

    async def shutdown() -> None:
        stop.set()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=30)
            for task in pending:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        await asyncio.to_thread(POOL.shutdown)  # the parser worker processes

    stack.push_async_callback(shutdown)
