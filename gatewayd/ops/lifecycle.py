"""The daemon's life under systemd: READY once serving, STATUS, watchdog pings, SIGHUP reload.

Decisions are pure functions (`status_line`, `wedged_accounts`, `reload_decision`); the
`Lifecycle` object does the I/O: notify socket, signal handlers, the watchdog task.

The watchdog is for what nothing inside the daemon can repair: a blocked event loop (no ping is
sent at all) and an account whose stalled session does not even end when its supervisor cancels
it (`wedged`). A stalled account is not a reason to restart the whole service: its supervisor
cancels the session and reconnects (ingest.supervisor), and the other accounts, the forms and the
sender go on meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.config import Config, ConfigError, load_config
from gatewayd.logs import get_logger
from gatewayd.ops.notify import Notifier, watchdog_interval
from gatewayd.runtime import AccountHealth, Runtime, StorageHealth
from gatewayd.store.db import ping

log = get_logger("gatewayd.lifecycle")
# Keys whose change needs a restart: they belong to sockets and pools opened at start.
RESTART_KEYS = ("database_url", "data_dir")

ReloadListener = Callable[[Config, Config], Awaitable[None]]
_reload_listeners: list[ReloadListener] = []


def on_reload(listener: ReloadListener) -> None:
    """Register `async def listener(old, new)`, called after a new config is in place (SIGHUP)."""
    if listener not in _reload_listeners:
        _reload_listeners.append(listener)


def remove_reload_listener(listener: ReloadListener) -> None:
    with contextlib.suppress(ValueError):
        _reload_listeners.remove(listener)


# ------------------------------------------------------------------------------ decisions


def status_line(config: Config, health: dict[str, AccountHealth],
                storage: StorageHealth | None = None) -> str:
    """The systemd STATUS= text: how many active accounts are healthy, the mode, what is wrong
    (a stall with its start, a full disk) and the backlogs being drained."""
    # Accounts without [accounts.imap] are not polled (they may receive over LMTP).
    active = [a.name for a in config.accounts if a.polled]
    remote = [n for n in active if n in health and health[n].state == "remote"]
    local = [n for n in active if n not in remote]
    healthy = sum(1 for name in local if name in health and health[name].healthy)
    text = f"{healthy}/{len(local)} accounts healthy"
    if remote:
        text += f" ({len(remote)} polled by other instances)"
    text += f", mode {config.mode}"
    if storage is not None and not storage.ok:
        kinds = sorted({p.kind for p in storage.problems.values()})
        text += f"; storage full: {', '.join(kinds)}"
    sick = [name for name in local if name in health and not health[name].healthy]
    if sick:
        text += "; not healthy: " + ", ".join(_sick(health[name]) for name in sick[:5])
    draining = [health[n] for n in local if n in health and health[n].backlog > 0]
    if draining:
        text += "; draining: " + ", ".join(
            f"{h.account} {h.backlog:,} unseen at {h.import_rate():.1f}/s" for h in draining[:5])
    return text


def _sick(h: AccountHealth) -> str:
    if h.stalled_since is not None:
        return f"{h.account} ({h.state}, stalled since {h.stalled_since:%H:%M:%S} UTC)"
    return f"{h.account} ({h.state})"


def wedged_accounts(health: dict[str, AccountHealth]) -> list[str]:
    """Accounts whose supervisor lost control (a cancelled session that does not end): the only
    account state for which the watchdog ping is withheld."""
    return sorted(name for name, h in health.items() if h.state == "wedged")


@dataclass(frozen=True)
class ReloadDecision:
    accept: bool
    reason: str
    restart_needed: list[str] = field(default_factory=list)


def reload_decision(old: Config, new: Config) -> ReloadDecision:
    """Whether a freshly loaded config can replace the running one in place."""
    restart = [key for key in RESTART_KEYS if getattr(old, key) != getattr(new, key)]
    if old.http.listen != new.http.listen:
        restart.append("http.listen")
    if restart:
        return ReloadDecision(
            True, "applied; " + ", ".join(restart) + " keep their old value until restart",
            restart,
        )
    return ReloadDecision(True, "applied")


# ------------------------------------------------------------------------------ I/O


async def reload_config(runtime: Runtime, path: Path | None = None) -> ReloadDecision:
    """Load the config file again; keep the old one (and say why) when the new one is broken."""
    old = runtime.config
    path = path or old.source
    if path is None:
        decision = ReloadDecision(False, "the running configuration has no file to reload from")
        log.error("reload rejected", reason=decision.reason)
        return decision
    try:
        new = await asyncio.to_thread(load_config, path)
    except ConfigError as exc:
        reasons = [p.format(exc.file) for p in exc.problems]
        decision = ReloadDecision(False, "; ".join(reasons))
        log.error("reload rejected, the old configuration keeps running", file=str(path),
                  problems=reasons)
        return decision
    decision = reload_decision(old, new)
    keep = {key: getattr(old, key) for key in RESTART_KEYS}
    if "http.listen" in decision.restart_needed:
        keep["http"] = new.http.model_copy(update={"listen": old.http.listen})
    if keep:
        new = new.model_copy(update=keep)
    runtime.replace_config(new)
    for listener in list(_reload_listeners):
        try:
            await listener(old, new)
        except Exception as exc:  # one listener's failure must not undo the reload for all
            log.exception("reload listener failed", listener=getattr(listener, "__qualname__",
                                                                     repr(listener)),
                          error=str(exc))
    log.info("configuration reloaded", file=str(path), result=decision.reason,
             accounts=len(new.accounts), mode=new.mode)
    return decision


class Lifecycle:
    """READY, STATUS and WATCHDOG for one running daemon, and its SIGHUP handler."""

    def __init__(self, runtime: Runtime, notifier: Notifier | None = None,
                 interval: float | None = None) -> None:
        self.runtime = runtime
        self.notifier = notifier or Notifier()
        self.interval = interval if interval is not None else watchdog_interval()
        self._last_status = ""
        self._reloading: asyncio.Lock = asyncio.Lock()
        self.reloads: list[ReloadDecision] = []

    def current_status(self) -> str:
        return status_line(self.runtime.config, self.runtime.health, self.runtime.storage)

    async def announce_ready(self) -> None:
        """READY=1 only when the database answers (HTTP is bound before we get here)."""
        if not await ping():
            raise RuntimeError("the database does not answer; not telling systemd READY")
        self._last_status = self.current_status()
        self.notifier.ready(self._last_status)
        log.info("ready", status=self._last_status, port=self.runtime.http_port,
                 watchdog_seconds=self.interval)

    def _update_status(self) -> None:
        status = self.current_status()
        if status != self._last_status:
            self._last_status = status
            self.notifier.status(status)

    async def _watchdog(self) -> None:
        """Ping while the loop runs (a blocked loop never gets here) and no account is wedged;
        keep STATUS current meanwhile."""
        interval = self.interval or 5.0
        while True:
            started = time.monotonic()
            await asyncio.sleep(interval)
            lag = time.monotonic() - started - interval
            self._update_status()
            if self.interval is None:
                continue
            wedged = wedged_accounts(self.runtime.health)
            if wedged:
                log.error("accounts wedged; withholding the watchdog ping so systemd restarts "
                          "the service", accounts=wedged)
                self.notifier.status(f"wedged: {', '.join(wedged)}")
                continue
            if lag > interval:
                log.warning("event loop was blocked", seconds=round(lag, 3))
            self.notifier.watchdog()

    async def reload(self) -> ReloadDecision:
        async with self._reloading:
            self.notifier.send("RELOADING=1",
                               f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC)//1000}")
            try:
                decision = await reload_config(self.runtime)
            finally:
                self.notifier.send("READY=1", f"STATUS={self.current_status()}")
            self.reloads.append(decision)
            return decision

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Lifecycle]:
        """READY now; watchdog and SIGHUP until the block ends; STOPPING on the way out."""
        loop = asyncio.get_running_loop()
        await self.announce_ready()
        tasks: set[asyncio.Task[ReloadDecision]] = set()

        def on_hup() -> None:
            task = asyncio.create_task(self.reload(), name="reload")
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_signal_handler(signal.SIGHUP, on_hup)
        watchdog = asyncio.create_task(self._watchdog(), name="watchdog")
        try:
            yield self
        finally:
            self.notifier.stopping()
            loop.remove_signal_handler(signal.SIGHUP)
            watchdog.cancel()
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(watchdog, *tasks, return_exceptions=True)
