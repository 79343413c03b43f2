"""What the running daemon shares between its parts: configuration, store and health."""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gatewayd.config import Account, Config
from gatewayd.store.tickets import TicketStore

if TYPE_CHECKING:
    from gatewayd.ingest.lmtp import LmtpListener

# States in which an account is doing its job (or about to). "no imap": an active account
# without [accounts.imap], which receives its mail over LMTP only.
HEALTHY_STATES = ("starting", "connecting", "polling", "idle", "no imap")
RATE_WINDOW_SECONDS = 60.0  # the import rate is averaged over this long


def unpolled_state(account: Account) -> str:
    """The state of an account no poller runs: switched off (`disabled`), or active without
    [accounts.imap] (`no imap`: its mail comes over LMTP). Pure."""
    return "no imap" if account.active and account.imap is None else "disabled"


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


@dataclass
class AccountHealth:
    """One account poller's state as /healthz, `status` and the systemd STATUS line see it.

    state: starting | connecting | polling | idle | backoff | stalled | storage_full | parked |
    wedged | disabled | stopped | remote | removed. `stalled_since` is when the account last
    made progress before its supervisor found it stalled; it stays set until it makes progress
    again. `backlog` is the unseen mail found by the last search and not yet handled.
    """

    account: str
    state: str = "starting"
    last_poll_at: dt.datetime | None = None
    last_error: str | None = None
    backoff_seconds: float = 0.0
    stalled_since: dt.datetime | None = None
    backlog: int = 0
    imported: int = 0  # mails handled (ticket, duplicate or quarantine) since the start
    _handled: collections.deque[tuple[float, int]] = field(
        default_factory=collections.deque, repr=False)

    @property
    def healthy(self) -> bool:
        return self.state in HEALTHY_STATES and self.stalled_since is None

    def found_unseen(self, count: int) -> None:
        self.backlog = count

    def handled(self, count: int, now: float | None = None) -> None:
        """`count` mails were handled just now: the backlog shrinks, the rate moves."""
        now = time.monotonic() if now is None else now
        self.backlog = max(0, self.backlog - count)
        self.imported += count
        self._handled.append((now, count))
        self._forget(now)

    def _forget(self, now: float) -> None:
        while self._handled and now - self._handled[0][0] > RATE_WINDOW_SECONDS:
            self._handled.popleft()

    def import_rate(self, now: float | None = None) -> float:
        """Mails handled per second over the last minute (over less when it started later)."""
        now = time.monotonic() if now is None else now
        self._forget(now)
        if not self._handled:
            return 0.0
        total = sum(count for _, count in self._handled)
        span = max(now - self._handled[0][0], 1.0)
        return total / span

    def view(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "state": self.state,
            "healthy": self.healthy,
            "last_poll_at": _iso(self.last_poll_at),
            "last_error": self.last_error,
            "backoff_seconds": self.backoff_seconds,
            "stalled_since": _iso(self.stalled_since),
            "backlog": self.backlog,
            "imported": self.imported,
            "import_rate": round(self.import_rate(), 2),
        }


@dataclass(frozen=True)
class StorageProblem:
    kind: str  # "database" or "data_dir"
    reason: str
    since: dt.datetime


@dataclass
class StorageHealth:
    """Writes that failed for lack of disk, by who saw them (e.g. "account support"). A fault
    stays until the one who reported it writes successfully again."""

    problems: dict[str, StorageProblem] = field(default_factory=dict)

    def report(self, source: str, kind: str, reason: str) -> None:
        known = self.problems.get(source)
        since = known.since if known and known.kind == kind else dt.datetime.now(dt.UTC)
        self.problems[source] = StorageProblem(kind, reason, since)

    def clear(self, source: str) -> bool:
        return self.problems.pop(source, None) is not None

    @property
    def ok(self) -> bool:
        return not self.problems

    def view(self) -> list[dict[str, Any]]:
        return [{"source": source, "kind": p.kind, "reason": p.reason, "since": _iso(p.since)}
                for source, p in sorted(self.problems.items())]


# Seconds from SIGTERM until every worker has finished or been cancelled; what is left of
# systemd's 30 s is for cancelled work to unwind and the process to exit.
SHUTDOWN_BUDGET = 22.0


@dataclass
class Runtime:
    config: Config
    store: TicketStore
    health: dict[str, AccountHealth] = field(default_factory=dict)
    storage: StorageHealth = field(default_factory=StorageHealth)
    http_port: int | None = None
    lmtp: LmtpListener | None = None  # the LMTP listener, when [lmtp] is configured
    # Called at once on SIGTERM, before the workers are awaited one by one: every worker stops
    # taking new work at the same moment (a poller must not keep importing while the sender
    # finishes its batch).
    stop_requests: list[Callable[[], None]] = field(default_factory=list)
    # Loop time by which every worker must have stopped: one budget for the whole shutdown,
    # counted from the signal, so graces taken one after the other never add up past
    # systemd's TimeoutStopSec (30 s).
    stop_deadline: float | None = None

    def request_stop(self) -> None:
        if self.stop_deadline is None:
            self.stop_deadline = asyncio.get_running_loop().time() + SHUTDOWN_BUDGET
        for request in list(self.stop_requests):
            request()

    def grace(self, most: float) -> float:
        """How long a stopping part may still wait: `most`, or less when the shutdown budget
        runs out sooner (0 when it is spent)."""
        if self.stop_deadline is None:
            return most
        left = self.stop_deadline - asyncio.get_running_loop().time()
        return max(0.0, min(most, left))

    def replace_config(self, config: Config) -> None:
        self.config = config
        self.store.config = config
