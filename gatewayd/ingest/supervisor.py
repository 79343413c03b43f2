"""Progress, not liveness: one account's session runs under a supervisor that cancels it when
it has work in hand and makes no progress for `stall_seconds`.

Progress is anything that moves the work forward: a byte of a command's answer, a command
answered, a mail parsed, a batch committed. "Work in hand" is everything but waiting for new mail
(IDLE or the pause between polls): those waits are bounded by the IMAP timeouts and TCP
keepalive, not here. A stalled session is cancelled and the poller reconnects; a session that
does not even end when cancelled (within CANCEL_GRACE_SECONDS) is `Wedged`: the supervisor has
lost control of it, and only then does the systemd watchdog restart the whole service.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Coroutine
from typing import Any

CHECK_SECONDS = 1.0
CANCEL_GRACE_SECONDS = 10.0
# When the supervisor itself is cancelled (shutdown), the session gets this long to end: the
# daemon's stop budget (ops.leases) has little room left by then.
SHUTDOWN_WAIT_SECONDS = 3.0


class Stalled(Exception):
    """The session had work in hand and made no progress for too long; it was cancelled."""


class Wedged(Stalled):
    """A stalled session did not end when cancelled: the supervisor cannot restart it."""

    def __init__(self, reason: str, task: asyncio.Future[None]) -> None:
        super().__init__(reason)
        self.task = task  # still running; the poller waits for it before anything else


class Progress:
    """What an account is doing and when it last moved forward (monotonic clock)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.doing: str | None = None  # None: waiting for new mail, nothing in hand
        self.last = clock()

    def working(self, what: str) -> None:
        """Starting a step (counts as progress: the previous one finished)."""
        self.doing = what
        self.advanced()

    def advanced(self) -> None:
        # Called for every chunk an IMAP answer arrives in: one clock read, nothing more.
        self.last = self._clock()

    @property
    def last_wall(self) -> dt.datetime:
        """When the last progress was, on the wall clock (for `stalled_since`)."""
        return dt.datetime.now(dt.UTC) - dt.timedelta(seconds=self._clock() - self.last)

    def waiting(self) -> None:
        self.doing = None
        self.advanced()

    def stall(self, limit: float) -> str | None:
        """Why the work in hand counts as stalled, or None."""
        return stall_reason(self.doing, self._clock() - self.last, limit)


def stall_reason(doing: str | None, quiet_seconds: float, limit: float) -> str | None:
    """A stall is work in hand without progress for longer than the limit (pure)."""
    if doing is None or quiet_seconds <= limit:
        return None
    return f"no progress for {quiet_seconds:.0f} s while {doing}"


async def supervise(session: Coroutine[Any, Any, None], progress: Progress, limit: float, *,
                    check_seconds: float = CHECK_SECONDS,
                    cancel_grace: float = CANCEL_GRACE_SECONDS) -> None:
    """Run one session to its end; raise Stalled (after cancelling it) when it stalls, Wedged
    when it does not end within `cancel_grace` of being cancelled. Cancelling the supervisor
    cancels the session and waits for it the same bounded time."""
    task = asyncio.ensure_future(session)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=check_seconds)
            if done:
                return task.result()
            reason = progress.stall(limit)
            if reason is not None:
                task.cancel()
                done, _ = await asyncio.wait({task}, timeout=cancel_grace)
                if not done:
                    raise Wedged(f"{reason}; the session did not end when cancelled", task)
                if not task.cancelled() and task.exception() is not None:
                    reason += f" (then: {task.exception()})"
                raise Stalled(reason)
    except Wedged:
        raise
    except BaseException:
        if not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=min(cancel_grace, SHUTDOWN_WAIT_SECONDS))
        raise
