"""LMTP when storing fails for reasons that are not the mail's: storing too slow, SQLite locked
by another process, PostgreSQL gone. The MTA is told 451 and keeps the mail; its retry is
stored once; the outage never counts against the mail. The real daemon, as in test_lmtp.py."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.loopback.lmtp import deliver
from gatewayd.store.models import InboundReceipt, Quarantine, Ticket
from tests.db_proxy import DatabaseProxy
from tests.test_lmtp import SQLITE, address, gateway, mail


@SQLITE
async def test_storing_that_takes_too_long_is_451_and_the_retry_a_redelivery(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    from gatewayd.ingest.lmtp import LmtpListener

    monkeypatch.setattr(LmtpListener, "delivery_seconds", 0.5)
    slow = asyncio.Event()
    async with gateway(make_config) as runtime:

        async def hook(store: Any, event: Any) -> None:
            if not slow.is_set():
                slow.set()
                await asyncio.sleep(1.5)

        runtime.store.hooks.append(hook)
        first = await deliver(address(runtime), "k@kunde.example", ["support@shop.example"],
                              mail())
        assert str(first["support@shop.example"]) == (
            "451 4.3.0 storing the mail took too long, try again later")
        for _ in range(100):  # the delivery went on by itself and commits
            if await InboundReceipt.exists():
                break
            await asyncio.sleep(0.05)
        again = await deliver(address(runtime), "k@kunde.example", ["support@shop.example"],
                              mail())
        assert "already delivered" in again["support@shop.example"].text
        assert await Ticket.all().count() == 1


@SQLITE
async def test_locked_database_defers_with_451_and_the_retry_delivers(
        make_config: Callable[..., Config], db_url: str) -> None:
    """Another process holds SQLite's write lock past the busy timeout: 451 4.3.0, nothing
    stored; once it lets go, the MTA's retry is delivered. (A busy timeout of 0.3 s instead of
    SQLite's 5 s keeps the test short.)"""
    async with gateway(make_config, database_url=f"{db_url}?busy_timeout=300") as runtime:
        path = db_url[len("sqlite://"):]
        holder = sqlite3.connect(path, isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        try:
            replies = await deliver(address(runtime), "k@kunde.example",
                                    ["support@shop.example"], mail(), reply_seconds=60)
        finally:
            holder.execute("ROLLBACK")
            holder.close()
        assert replies["support@shop.example"].code == 451
        assert replies["support@shop.example"].text.startswith("4.3.0")
        assert await Ticket.all().count() == 0
        retry = await deliver(address(runtime), "k@kunde.example", ["support@shop.example"],
                              mail())
        assert retry["support@shop.example"].code == 250
        assert await Ticket.all().count() == 1


@pytest.mark.parametrize("db_url", ["postgres"], indirect=True)
async def test_database_down_defers_with_451_and_never_quarantines(
        make_config: Callable[..., Config], db_url: str) -> None:
    """PostgreSQL goes away (a proxy in front of it is cut): every delivery is 451 4.3.0, the
    MTA keeps the mail, and however often it retries, the outage never counts against the
    mail (no quarantine). Once the database is back the retry is stored, once."""
    async with DatabaseProxy.before(db_url) as proxy, \
            gateway(make_config, database_url=proxy.url(db_url)) as runtime:
        await proxy.down()
        for _ in range(4):  # more than max_attempts (3)
            replies = await deliver(address(runtime), "k@kunde.example",
                                    ["support@shop.example", "sales@shop.example"], mail())
            assert [str(r) for r in replies.values()] == [
                "451 4.3.0 the database is unavailable, try again later"] * 2
        await proxy.up()
        replies = await deliver(address(runtime), "k@kunde.example",
                                ["support@shop.example", "sales@shop.example"], mail())
        assert [r.code for r in replies.values()] == [250, 250]
        assert await Ticket.all().count() == 2 and await Quarantine.all().count() == 0
