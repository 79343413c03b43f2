"""What the running daemon shares between its parts: configuration, store and health."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gatewayd.config import Config
from gatewayd.store.tickets import TicketStore


@dataclass
class AccountHealth:
    """One account poller's state as /healthz, `status` and the systemd STATUS line see it."""

    account: str
    state: str = "starting"  # starting | idle | polling | backoff | parked | disabled | stopped
    last_poll_at: dt.datetime | None = None
    last_error: str | None = None
    backoff_seconds: float = 0.0

    @property
    def healthy(self) -> bool:
        return self.state in ("idle", "polling", "starting")

    def view(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "state": self.state,
            "healthy": self.healthy,
            "last_poll_at": self.last_poll_at.isoformat() if self.last_poll_at else None,
            "last_error": self.last_error,
            "backoff_seconds": self.backoff_seconds,
        }


@dataclass
class Runtime:
    config: Config
    store: TicketStore
    health: dict[str, AccountHealth] = field(default_factory=dict)
    http_port: int | None = None
    # Called at once on SIGTERM, before the workers are awaited one by one: every worker stops
    # taking new work at the same moment (a poller must not keep importing while the sender
    # finishes its batch).
    stop_requests: list[Callable[[], None]] = field(default_factory=list)

    def request_stop(self) -> None:
        for request in list(self.stop_requests):
            request()

    def replace_config(self, config: Config) -> None:
        self.config = config
        self.store.config = config
