"""Which instance polls which account: one poller task per account this instance holds.

On SQLite there is one instance (`ops.instance` refuses a second), so it holds every account.
On PostgreSQL each account is a session-level advisory lock held on one dedicated connection per
instance. When an instance dies, PostgreSQL ends its session and the locks go with it; a live
instance takes the accounts over at its next round (every `LEASE_ROUND_SECONDS`). Instances take
a fair share first (accounts / live instances) and pick up any account left free for two rounds.
If this instance loses its lease connection, it stops its pollers at once: it can no longer be
sure that it is the only one. Import is idempotent (inbound receipts), so the short overlap that
a network split can cause duplicates nothing.

SIGHUP: each round compares the accounts with the running pollers; a changed account's poller is
restarted, a removed one stopped, a new one started, and the unchanged ones keep their connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import zlib
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

import asyncpg

from gatewayd.config import Account
from gatewayd.logs import get_logger
from gatewayd.runtime import AccountHealth, Runtime, unpolled_state
from gatewayd.store.db import engine

log = get_logger("gatewayd.leases")

AccountRunner = Callable[[Runtime, Account, asyncio.Event], Coroutine[Any, Any, None]]
LEASE_NAMESPACE = 0x6777  # first key of every gatewayd account lock ("gw")
LEASE_ROUND_SECONDS = 2.0
APPLICATION_NAME = "gatewayd-leases"
# From SIGTERM, pollers have this long to finish the mail in hand before they are cancelled, and a
# cancelled poller this long to end: together well inside systemd's TimeoutStopSec=30s, with
# room for the HTTP server and the database to close after them.
STOP_GRACE_SECONDS = 20.0
CANCEL_WAIT_SECONDS = 5.0


def lease_key(account: str) -> int:
    """The advisory lock's second key for an account (positive 31-bit)."""
    return zlib.crc32(account.encode()) & 0x7FFFFFFF


def fair_share(accounts: int, instances: int) -> int:
    return math.ceil(accounts / max(instances, 1))


def choose_accounts(wanted: list[str], mine: set[str], held_elsewhere: set[str],
                    free_rounds: dict[str, int], instances: int) -> list[str]:
    """Which free accounts to try to take this round (pure; see the module text)."""
    free = [a for a in wanted if a not in mine and a not in held_elsewhere]
    room = fair_share(len(wanted), instances) - len(mine)
    take = free[:max(room, 0)]
    # Anything nobody has taken for two rounds is taken regardless of the share.
    take += [a for a in free if a not in take and free_rounds.get(a, 0) >= 2]
    return take


class Leases(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def alive(self) -> bool: ...
    async def instances(self) -> int: ...
    async def held(self) -> set[int]: ...
    async def acquire(self, account: str) -> bool: ...
    async def release(self, account: str) -> None: ...


class LocalLeases:
    """SQLite: this is the only instance; every account is ours."""

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def alive(self) -> bool:
        return True

    async def instances(self) -> int:
        return 1

    async def held(self) -> set[int]:
        return set()

    async def acquire(self, account: str) -> bool:
        return True

    async def release(self, account: str) -> None:
        return None


class PostgresLeases:
    """Advisory locks on one dedicated connection; they end with the session."""

    def __init__(self, database_url: str) -> None:
        self.url = database_url.replace("postgres://", "postgresql://", 1)
        self.conn: asyncpg.Connection | None = None

    async def open(self) -> None:
        self.conn = await asyncpg.connect(self.url, timeout=10, server_settings={
            "application_name": APPLICATION_NAME})

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.conn.close(), 5)
            self.conn = None

    def _c(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            raise ConnectionError("the lease connection is closed")
        return self.conn

    async def alive(self) -> bool:
        try:
            await asyncio.wait_for(self._c().fetchval("SELECT 1"), 5)
        except (Exception, TimeoutError):
            return False
        return True

    async def instances(self) -> int:
        count = await self._c().fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND datname = current_database()", APPLICATION_NAME)
        return int(count or 1)

    async def held(self) -> set[int]:
        rows = await self._c().fetch(
            "SELECT objid::bigint AS key FROM pg_locks WHERE locktype = 'advisory' AND granted "
            "AND classid::bigint = $1 AND objsubid = 2 AND database = "
            "(SELECT oid FROM pg_database WHERE datname = current_database())", LEASE_NAMESPACE)
        return {int(r["key"]) for r in rows}

    async def acquire(self, account: str) -> bool:
        return bool(await self._c().fetchval("SELECT pg_try_advisory_lock($1::int, $2::int)",
                                             LEASE_NAMESPACE, lease_key(account)))

    async def release(self, account: str) -> None:
        with contextlib.suppress(Exception):
            await self._c().fetchval("SELECT pg_advisory_unlock($1::int, $2::int)",
                                     LEASE_NAMESPACE, lease_key(account))


@dataclass
class _Running:
    account: Account
    stop: asyncio.Event
    task: asyncio.Task[None]


@dataclass
class AccountPollers:
    """Keeps one poller task per held account, in step with the config and the leases."""

    runtime: Runtime
    runner: AccountRunner
    leases: Leases
    round_seconds: float = LEASE_ROUND_SECONDS
    running: dict[str, _Running] = field(default_factory=dict)
    free_rounds: dict[str, int] = field(default_factory=dict)
    connected: bool = False
    stopping: bool = False
    stop_deadline: float | None = None  # loop time by which every poller must have stopped

    def request_stop(self) -> None:
        """SIGTERM: every poller finishes the mail in hand; no new poller starts. The grace
        counts from now, not from when the shutdown reaches the pollers."""
        self.stopping = True
        self.stop_deadline = asyncio.get_running_loop().time() + self.runtime.grace(
            STOP_GRACE_SECONDS)
        for entry in self.running.values():
            entry.stop.set()

    def _wanted(self) -> dict[str, Account]:
        return {a.name: a for a in self.runtime.config.accounts if a.polled}

    def _start(self, account: Account) -> None:
        stop = asyncio.Event()
        self.runtime.health[account.name] = AccountHealth(account.name)
        task = asyncio.create_task(self.runner(self.runtime, account, stop),
                                   name=f"poller:{account.name}")
        self.running[account.name] = _Running(account, stop, task)
        log.info("polling account", account=account.name)

    async def _stop(self, names: list[str], *, grace: float = STOP_GRACE_SECONDS,
                    release: bool = True) -> None:
        entries = [self.running.pop(n) for n in names if n in self.running]
        for entry in entries:
            entry.stop.set()
        tasks = [e.task for e in entries]
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                log.warning("pollers did not finish in time; cancelled",
                            accounts=sorted(e.account.name for e in entries
                                            if e.task in pending))
                _done, stuck = await asyncio.wait(pending, timeout=CANCEL_WAIT_SECONDS)
                if stuck:
                    log.error("pollers did not end when cancelled; leaving them behind",
                              accounts=sorted(e.account.name for e in entries
                                              if e.task in stuck))
            for task in tasks:  # retrieve what they ended with (nothing is raised here)
                if task.done() and not task.cancelled():
                    task.exception()
        for entry in entries:
            if release:
                await self.leases.release(entry.account.name)

    async def round(self) -> None:
        """One step: drop what must stop, check the lease connection, take what we may."""
        if self.stopping:
            return
        wanted = self._wanted()
        gone = [n for n, r in self.running.items()
                if n not in wanted or wanted[n] != r.account or r.task.done()]
        if gone:
            for name in gone:
                entry = self.running[name]
                if entry.task.done() and not entry.task.cancelled() and entry.task.exception():
                    log.error("poller ended", account=name, error=str(entry.task.exception()))
            log.info("stopping pollers (config changed, removed or ended)", accounts=gone)
            await self._stop(gone)
        for name in list(self.runtime.health):
            if name not in wanted and name not in self.running:
                account = self.runtime.config.account(name)
                state = unpolled_state(account) if account else "removed"
                self.runtime.health[name] = AccountHealth(name, state=state)
        for account in self.runtime.config.accounts:
            if account.name not in wanted:
                self.runtime.health.setdefault(
                    account.name, AccountHealth(account.name, state=unpolled_state(account)))

        if not self.connected or not await self.leases.alive():
            if self.connected:
                log.error("lease connection lost; stopping every poller of this instance")
                await self._stop(list(self.running), grace=5, release=False)
            await self.leases.close()
            try:
                await self.leases.open()
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                self.connected = False
                log.warning("cannot open the lease connection; retrying", error=str(exc)[:200])
                return
            self.connected = True

        held_keys = await self.leases.held()
        held_elsewhere = {n for n in wanted
                          if n not in self.running and lease_key(n) in held_keys}
        names = list(wanted)
        for name in names:
            if name in self.running:
                self.free_rounds.pop(name, None)
            elif name in held_elsewhere:
                self.free_rounds.pop(name, None)
                health = self.runtime.health.get(name)
                if health is None or health.state != "remote":
                    self.runtime.health[name] = AccountHealth(name, state="remote")
            else:
                self.free_rounds[name] = self.free_rounds.get(name, 0) + 1
        instances = await self.leases.instances()
        excess = len(self.running) - fair_share(len(names), instances)
        if instances > 1 and excess > 0:
            # Another instance joined: hand over what is beyond this one's share.
            drop = sorted(self.running)[-excess:]
            log.info("handing accounts over to other instances", accounts=drop,
                     instances=instances)
            await self._stop(drop)
            for name in drop:
                self.runtime.health[name] = AccountHealth(name, state="remote")
            return
        take = choose_accounts(names, set(self.running), held_elsewhere, self.free_rounds,
                               instances)
        for name in take:
            if await self.leases.acquire(name):
                self.free_rounds.pop(name, None)
                self._start(wanted[name])

    async def loop(self) -> None:
        while True:
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the next round tries again
                log.exception("lease round failed", error=str(exc)[:300])
                self.connected = False
            await asyncio.sleep(self.round_seconds)

    async def shutdown(self) -> None:
        grace = STOP_GRACE_SECONDS
        if self.stop_deadline is not None:
            grace = max(0.0, self.stop_deadline - asyncio.get_running_loop().time())
        await self._stop(list(self.running), grace=grace)
        await self.leases.close()


def leases_for(database_url: str) -> Leases:
    return PostgresLeases(database_url) if engine(database_url) == "postgres" else LocalLeases()


async def start_account_pollers(stack: contextlib.AsyncExitStack, runtime: Runtime,
                                runner: AccountRunner, *,
                                round_seconds: float = LEASE_ROUND_SECONDS) -> AccountPollers:
    """Daemon worker: the lease loop; on shutdown every poller finishes its mail in hand."""
    pollers = AccountPollers(runtime, runner, leases_for(runtime.config.database_url),
                             round_seconds=round_seconds)
    await pollers.round()  # the first accounts start before READY
    task = asyncio.create_task(pollers.loop(), name="account-leases")
    runtime.stop_requests.append(pollers.request_stop)

    async def stop() -> None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await pollers.shutdown()

    stack.push_async_callback(stop)
    return pollers


async def account_pollers_worker(stack: contextlib.AsyncExitStack, runtime: Runtime) -> None:
    """The daemon's poller worker: ingest's `run_account` per account, under leases."""
    from gatewayd.ingest.poller import run_account

    await start_account_pollers(stack, runtime, run_account)
