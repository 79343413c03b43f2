"""Account leases on PostgreSQL advisory locks: one poller per account across instances, fair
shares, take-over when a holder's session dies, restart of only the changed account on reload.

The account runners here are stand-ins that record when they run (the real IMAP pollers are
exercised with leases in test_cluster.py); the locks, sessions and PostgreSQL are real.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Account, Config
from gatewayd.ops.leases import (
    AccountPollers,
    LocalLeases,
    PostgresLeases,
    choose_accounts,
    fair_share,
)
from gatewayd.ops.lifecycle import status_line
from gatewayd.runtime import AccountHealth, Runtime
from gatewayd.store.tickets import TicketStore


def _accounts(n: int, *, poll_seconds: int = 60) -> list[dict[str, Any]]:
    return [{
        "name": f"acct{i:02d}", "address": f"acct{i:02d}@shop.example",
        "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
        "imap": {"host": "127.0.0.1", "port": 1, "security": "none", "username": f"u{i}",
                 "password": "x", "poll_seconds": poll_seconds},
    } for i in range(n)]


class Recorder:
    """A stand-in poller: marks the account polling until told to stop."""

    def __init__(self) -> None:
        self.active: dict[str, int] = {}
        self.starts: list[str] = []
        self.max_concurrent: dict[str, int] = {}

    async def __call__(self, runtime: Runtime, account: Account, stop: asyncio.Event) -> None:
        self.starts.append(account.name)
        self.active[account.name] = self.active.get(account.name, 0) + 1
        self.max_concurrent[account.name] = max(self.max_concurrent.get(account.name, 0),
                                                self.active[account.name])
        runtime.health[account.name].state = "idle"
        try:
            await stop.wait()
        finally:
            self.active[account.name] -= 1


def _runtime(config: Config) -> Runtime:
    return Runtime(config=config, store=TicketStore(config))


def _pg(db_url: str) -> None:
    if not db_url.startswith("postgres"):
        pytest.skip("advisory-lock leases exist on PostgreSQL only (SQLite is single-instance)")


async def _rounds(*pollers: AccountPollers, n: int = 1) -> None:
    for _ in range(n):
        for p in pollers:
            await p.round()


async def test_leases_split_hand_over_and_take_over(
        make_config: Callable[..., Config], db_url: str) -> None:
    _pg(db_url)
    config = make_config(accounts=_accounts(20))
    recorder = Recorder()
    a = AccountPollers(_runtime(config), recorder, PostgresLeases(db_url))
    b = AccountPollers(_runtime(config), recorder, PostgresLeases(db_url))
    try:
        await a.round()
        assert len(a.running) == 20  # alone: it takes everything
        await _rounds(b, a, b, b)  # b joins: a hands over beyond its share, b picks them up
        assert len(a.running) == 10 and len(b.running) == 10
        assert set(a.running).isdisjoint(b.running)
        assert status_line(a.runtime.config, a.runtime.health).startswith(
            "10/10 accounts healthy (10 polled by other instances)")

        # b's session dies (as with SIGKILL): its locks go, a takes every account over.
        assert isinstance(b.leases, PostgresLeases) and b.leases.conn is not None
        b.leases.conn.terminate()
        for task in [r.task for r in b.running.values()]:
            task.cancel()
        await _rounds(a, n=3)
        assert len(a.running) == 20
        assert all(v == 1 for v in recorder.max_concurrent.values()), recorder.max_concurrent
    finally:
        for p in (a, b):
            for entry in p.running.values():
                entry.task.cancel()
            await p.leases.close()


async def test_reload_restarts_only_the_changed_account(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    config = make_config(accounts=_accounts(3))
    recorder = Recorder()
    pollers = AccountPollers(_runtime(config), recorder, LocalLeases())
    await pollers.round()
    await asyncio.sleep(0.01)  # let the new tasks start
    assert sorted(recorder.starts) == ["acct00", "acct01", "acct02"]
    kept = {n: r.task for n, r in pollers.running.items()}

    data = _accounts(3)
    data[1]["imap"]["poll_seconds"] = 5  # changed
    del data[2]  # removed
    data[0]["active"] = True
    new = make_config(accounts=[*data, *_accounts(4)[3:]])  # acct03 added
    pollers.runtime.replace_config(new)
    await pollers.round()
    await asyncio.sleep(0.01)
    assert pollers.running["acct00"].task is kept["acct00"]  # unchanged: same connection
    assert pollers.running["acct01"].task is not kept["acct01"]
    assert "acct02" not in pollers.running and pollers.runtime.health["acct02"].state == "removed"
    assert "acct03" in pollers.running
    await pollers.shutdown()
    assert not pollers.running and all(v == 0 for v in recorder.active.values())


def test_choosing_accounts() -> None:
    names = [f"a{i}" for i in range(6)]
    assert fair_share(6, 4) == 2 and fair_share(0, 3) == 0 and fair_share(5, 0) == 5
    assert choose_accounts(names, set(), set(), {}, 2) == ["a0", "a1", "a2"]
    assert choose_accounts(names, {"a0", "a1", "a2"}, {"a3"}, {"a4": 1, "a5": 2}, 2) == ["a5"]
    assert choose_accounts(names, set(), set(names), {}, 1) == []


def test_status_line_counts_only_local_accounts(make_config: Callable[..., Config]) -> None:
    config = make_config(accounts=_accounts(2))
    health = {"acct00": AccountHealth("acct00", state="idle"),
              "acct01": AccountHealth("acct01", state="remote")}
    assert status_line(config, health) == ("1/1 accounts healthy (1 polled by other instances), "
                                           "mode test")

