"""The account pollers: one supervised task per active account, IDLE or polling, with backoff.

`run_account(runtime, account, stop)` is one account's whole life and can be wrapped (e.g. in a
PostgreSQL advisory-lock lease). Each connection (session) runs under a supervisor that cancels
it when it has work in hand and makes no progress for `stall_seconds` (ingest.supervisor); any
fault (a lost connection, a command without answer, a stall, a full disk) ends the session and the
account reconnects after a backoff with jitter. When `stop` is set it finishes the mail in hand
(commit and server action, or a clean rollback) and returns. One broken account never affects
the others. The import steps themselves are in ingest.drain.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import random
from dataclasses import dataclass
from typing import Any

import structlog

from gatewayd.config import Account
from gatewayd.ingest.drain import AfterCommit, Drainer, StorageFull
from gatewayd.ingest.imap import AuthFailed, ImapError, ImapSession, TlsRequired
from gatewayd.ingest.supervisor import Stalled, Wedged, supervise
from gatewayd.logs import get_logger
from gatewayd.ops.scheduler import instance_name
from gatewayd.runtime import Runtime
from gatewayd.store.models import AccountState, InboundReceipt

log = get_logger("gatewayd.poller")

BACKOFF_START = 2.0
BACKOFF_CAP = 300.0
STORAGE_BACKOFF_CAP = 60.0  # a full disk is retried at least every minute: space comes back
PARK_SECONDS = 1800.0  # a refused login is retried this rarely (or after a config reload)
IDLE_MAX_SECONDS = 25 * 60  # re-issue IDLE well before the 29-minute limit
# After SIGTERM an IMAP command may wait this long for the next line of its answer (not the
# usual timeout_seconds): the mail in hand is finished, or left to the next start, in seconds.
STOP_COMMAND_SECONDS = 5.0


def backoff_delay(failures: int, *, start: float = BACKOFF_START, cap: float = BACKOFF_CAP,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with full jitter, capped. Pure apart from the random source."""
    ceiling = min(cap, start * (2 ** max(0, failures - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)


@dataclass
class AccountPoller(Drainer):
    session_ok: bool = False  # the current session completed a poll: backoff starts afresh

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
        # `instance` lets `gatewayd status` check that the daemon it asks is the one polling.
        values: dict[str, Any] = {"state": state, "backoff_seconds": backoff,
                                  "instance": instance_name()}
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
        imap = self.account.imap
        assert imap is not None
        failures = 0
        while not self.stop.is_set():
            try:
                await supervise(self._session(), self.progress, imap.effective_stall_seconds)
                failures = 0
            except AuthFailed as exc:
                failures = 0
                log.error("login refused: account parked", error=str(exc))
                await self._record("parked", error=str(exc), backoff=PARK_SECONDS)
                await self._sleep(PARK_SECONDS)
            except Wedged as exc:
                self._stalled()
                log.error("account wedged: its stalled session does not end; the systemd "
                          "watchdog restarts the service", reason=str(exc))
                await self._record("wedged", error=str(exc))
                await asyncio.wait({exc.task})  # nothing else until it ends (or the restart)
            except (Stalled, StorageFull, ImapError, OSError, TimeoutError,
                    ConnectionError) as exc:
                failures = 1 if self.session_ok else failures + 1
                await self._failed(exc, failures)
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

    async def _failed(self, exc: Exception, failures: int) -> None:
        """Log why the session ended, show it, and wait out the backoff."""
        message = str(exc) or type(exc).__name__
        if isinstance(exc, StorageFull):
            delay = backoff_delay(failures, cap=STORAGE_BACKOFF_CAP)
            self.runtime.storage.report(self.storage_source, exc.fault.kind, exc.fault.reason)
            log.error("storage full: import paused, the mails stay unseen on the server (not "
                      "their fault)", kind=exc.fault.kind, error=exc.fault.reason[:300],
                      delay=round(delay, 1))
            await self._record("storage_full", error=message, backoff=delay)
        elif isinstance(exc, Stalled):
            delay = backoff_delay(failures)
            self._stalled()
            log.error("account stalled: session cancelled, reconnecting", reason=message,
                      delay=round(delay, 1))
            await self._record("stalled", error=message, backoff=delay)
        else:
            delay = backoff_delay(failures)
            if isinstance(exc, TlsRequired):
                delay = max(delay, 60.0)
            log.warning("account error, backing off", error=message[:300],
                        delay=round(delay, 1), failures=failures)
            await self._record("backoff", error=message, backoff=delay)
        await self._sleep(delay)

    def _stalled(self) -> None:
        if self.health.stalled_since is None:
            self.health.stalled_since = self.progress.last_wall

    async def _sleep(self, seconds: float) -> None:
        self.progress.waiting()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stop.wait(), seconds)

    # ------------------------------------------------------------------ one connection

    def _new_session(self) -> ImapSession:
        imap = self.account.imap
        assert imap is not None
        password = imap.password.get_secret_value() if imap.password else ""
        return ImapSession(imap, password, on_progress=self.progress.advanced)

    async def _select(self, session: ImapSession) -> int:
        """Select the account's folder; returns its UIDVALIDITY (a change since the last
        import switches to matching mails by content)."""
        imap = self.account.imap
        assert imap is not None
        selected = await session.select(imap.folder)
        self.dedupe_by_content = await self._uidvalidity_changed(selected.uidvalidity)
        return selected.uidvalidity

    async def _session(self) -> None:
        imap = self.account.imap
        assert imap is not None
        session = self._new_session()
        self.session_ok = False
        self.progress.working(f"connecting to {imap.host}:{imap.effective_port}")
        await self._record("connecting")
        hurry = asyncio.create_task(self._hurry_on_stop(session))
        try:
            await session.connect()
            self.progress.working(f"selecting {imap.folder!r}")
            uidvalidity = await self._select(session)
            use_idle = imap.idle and session.has("IDLE")
            log.info("connected", folder=imap.folder, uidvalidity=uidvalidity,
                     idle=use_idle, move=session.has("MOVE"), tls=session.tls)
            while not self.stop.is_set():
                self.progress.working("polling")
                await self._record("polling", polled=True)
                await self.poll_once(session, uidvalidity)
                self.session_ok = True
                self.made_progress()
                await self._record("idle", polled=True, success=True)
                if self.stop.is_set():
                    break
                self.progress.waiting()
                if use_idle:
                    await session.idle(min(imap.poll_seconds, IDLE_MAX_SECONDS), self.stop)
                else:
                    await self._sleep(imap.poll_seconds)
                    if not self.stop.is_set():
                        self.progress.working("NOOP")
                        await session.noop()
        except BaseException:
            session.abort("the session ended with an error")  # no LOGOUT into a broken line
            raise
        finally:
            hurry.cancel()
            await session.close()

    async def _hurry_on_stop(self, session: ImapSession) -> None:
        await self.stop.wait()
        session.hurry(STOP_COMMAND_SECONDS)

    async def poll_now(self) -> int:
        """Connect, import every unseen mail once, disconnect (tests, `demo`, one-shot runs)."""
        session = self._new_session()
        try:
            await session.connect()
            return await self.poll_once(session, await self._select(session))
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


async def run_account(runtime: Runtime, account: Account, stop: asyncio.Event,
                      after_commit: AfterCommit | None = None) -> None:
    """One account's poller until `stop` is set (finishing the mail in hand)."""
    with structlog.contextvars.bound_contextvars(account=account.name):
        await AccountPoller(runtime, account, stop, after_commit).run()

