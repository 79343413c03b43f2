"""Interoperability with Dovecot (Debian's dovecot-imapd): started for the session on high
loopback ports from a private config (the `dovecot` fixture, gatewayd.loopback.dovecot) — plain
IMAP, required STARTTLS and implicit TLS with a test CA."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aioimaplib
import pytest

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.imap import TlsRequired
from gatewayd.ingest.poller import AccountPoller, run_account
from gatewayd.loopback.dovecot import DovecotServer as Dovecot
from gatewayd.runtime import Runtime
from gatewayd.store.db import open_database
from gatewayd.store.models import Message, Ticket
from gatewayd.store.tickets import TicketStore
from tests.test_ingest_imap import wait_for


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def account(name: str, port: int, **imap: Any) -> dict[str, Any]:
    return {"name": name, "address": f"{name}@shop.example",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": port, "security": "none", "username": name,
                     "password": "dove-secret", "poll_seconds": 300, **imap}}


async def deliver(port: int, user: str, raw: bytes) -> None:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=10)
    await client.wait_hello_from_server()
    assert (await client.login(user, "dove-secret")).result == "OK"
    assert (await client.append(raw, mailbox="INBOX")).result == "OK"
    await client.logout()


async def folder_count(port: int, user: str, folder: str) -> int:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=10)
    await client.wait_hello_from_server()
    await client.login(user, "dove-secret")
    response = await client.select(folder)
    await client.logout()
    if response.result != "OK":
        return 0
    return next(int(bytes(x).split()[0]) for x in response.lines
                if bytes(x).endswith(b" EXISTS"))


def mail(subject: str, mid: str) -> bytes:
    return (f"From: Kunde <kunde@example.org>\r\nTo: support@shop.example\r\nSubject: {subject}"
            f"\r\nMessage-ID: {mid}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
            "Grüße aus Dovecot\r\n").encode()


async def test_dovecot_import_move_and_idle(
    dovecot: Dovecot, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", dovecot.port)])
    await deliver(dovecot.port, "support", mail("Über Dovecot", "<d1@example.org>"))
    await deliver(dovecot.port, "support", mail("Noch eine", "<d2@example.org>"))
    async with open_database(config.database_url):
        runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
        acc = config.account("support")
        assert acc is not None
        assert await AccountPoller(runtime, acc, asyncio.Event()).poll_now() == 2
        assert await Ticket.all().count() == 2
        assert await folder_count(dovecot.port, "support", "INBOX") == 0
        assert await folder_count(dovecot.port, "support", "Imported") == 2
        # IDLE against Dovecot: a delivered mail arrives without a poll.
        stop = asyncio.Event()
        task = asyncio.create_task(run_account(runtime, acc, stop))
        async def idle() -> bool:
            health = runtime.health.get("support")
            return health is not None and health.state == "idle"

        await wait_for(idle)
        await asyncio.sleep(0.3)
        await deliver(dovecot.port, "support", mail("Per IDLE", "<d3@example.org>"))
        await wait_for(lambda: Message.filter(message_id="<d3@example.org>").exists())
        stop.set()
        await asyncio.wait_for(task, 10)
        assert (await Message.get(message_id="<d3@example.org>")).text.startswith("Grüße")


async def test_dovecot_starttls_and_implicit_tls_with_verified_certificates(
    dovecot: Dovecot, make_config: Callable[..., Config]
) -> None:
    cafile = str(dovecot.ca.ca_cert)
    config = make_config(accounts=[
        account("support", dovecot.port, security="starttls", cafile=cafile),
        account("sales", dovecot.tls_port, security="tls", cafile=cafile),
    ])
    await deliver(dovecot.port, "sales", mail("Über TLS", "<t1@example.org>"))
    async with open_database(config.database_url):
        runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
        for acc in config.accounts:
            await AccountPoller(runtime, acc, asyncio.Event()).poll_now()
        assert await Message.filter(message_id="<t1@example.org>").exists()
        # Without the test CA the certificate is not trusted: no login, no fallback.
        untrusted = make_config(accounts=[account("sales", dovecot.tls_port, security="tls")])
        sales = untrusted.account("sales")
        assert sales is not None
        with pytest.raises(TlsRequired, match="TLS handshake"):
            await AccountPoller(runtime, sales, asyncio.Event()).poll_now()
        untrusted = make_config(accounts=[account("support", dovecot.port,
                                                  security="starttls")])
        support = untrusted.account("support")
        assert support is not None
        with pytest.raises(TlsRequired, match="STARTTLS"):
            await AccountPoller(runtime, support, asyncio.Event()).poll_now()
