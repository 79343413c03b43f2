"""SIGTERM in the middle of an import: the daemon finishes the mail in hand and exits 0; after a
restart every mail is imported exactly once and every outbox mail sent exactly once."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

from gatewayd.ingest.drain import FETCH_BATCH
from gatewayd.loopback.dovecot import DovecotServer
from gatewayd.loopback.imap import start_imap_server
from gatewayd.loopback.ports import free_port
from gatewayd.loopback.smtp import smtp_sink
from tests.conftest import fresh_user
from tests.test_cluster import fill_mailboxes, site_config, wait_until
from tests.test_ingest_faults import backlog_mails, dovecot_site, folder_count
from tests.test_lifecycle import NotifyListener, daemon

ACCOUNTS = 5
PER_ACCOUNT = 80  # enough that the import is still running when SIGTERM arrives


def _count(db: Path, sql: str) -> int:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10) as conn:
        return int(conn.execute(sql).fetchone()[0] or 0)


async def test_sigterm_mid_import_loses_and_doubles_nothing(tmp_path: Path) -> None:
    total = ACCOUNTS * PER_ACCOUNT
    db = tmp_path / "gw.sqlite3"
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        async with start_imap_server() as imap, smtp_sink() as sink:
            await fill_mailboxes(imap, ACCOUNTS, PER_ACCOUNT)
            config = site_config(tmp_path / "site", db_url=f"sqlite://{db}",
                                 imap_port=imap.port, smtp_port=sink.port, accounts=ACCOUNTS,
                                 http_port=free_port())

            async def receipts(at_least: int) -> bool:
                return db.exists() and _count(db, "SELECT count(*) FROM inbound_receipt") \
                    >= at_least

            async with daemon(config, listener.path, 0) as (proc, lines):
                await listener.wait_for("READY", "1")
                await wait_until(lambda: receipts(1), 60, "the first mails imported")
                at_signal = _count(db, "SELECT count(*) FROM inbound_receipt")
                proc.send_signal(signal.SIGTERM)
                # systemd's TimeoutStopSec is 30 s; the daemon must be out well before.
                assert await asyncio.wait_for(proc.wait(), 30) == 0, "".join(lines[-20:])
            at_stop = _count(db, "SELECT count(*) FROM inbound_receipt")
            assert at_stop < total, "everything was imported before SIGTERM; use more mail"
            # Every poller stops at the signal, not after the sender's and scheduler's shutdown:
            # at most the batch each account had in hand (and the one fetched ahead) goes in.
            assert at_stop - at_signal <= ACCOUNTS * 2 * FETCH_BATCH, (at_signal, at_stop)
            # Nothing half-done: every mail still in an INBOX has no receipt or an unfinished
            # server action; every receipt without a finished action is still in its INBOX.
            left = sum([len(await imap.uids(f"user{i:02d}")) for i in range(ACCOUNTS)])
            pending = _count(db, "SELECT count(*) FROM inbound_receipt "
                                 "WHERE NOT server_action_done")
            assert left == total - at_stop + pending

            async def finished() -> bool:
                if not await receipts(total):
                    return False
                if _count(db, "SELECT count(*) FROM outbox WHERE status <> 'sent'"):
                    return False
                for i in range(ACCOUNTS):
                    if await imap.uids(f"user{i:02d}"):
                        return False
                return True

            mark = len(listener.messages)
            async with daemon(config, listener.path, 0) as (proc, lines):
                await listener.wait_for("READY", "1", after=mark)
                await wait_until(finished, 90, "the restarted daemon to finish")
                proc.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc.wait(), 30) == 0, "".join(lines[-20:])

        assert _count(db, "SELECT count(*) FROM inbound_receipt") == total
        assert _count(db, "SELECT count(*) FROM message WHERE direction = 'in'") == total
        assert _count(db, "SELECT count(DISTINCT message_id) FROM message "
                          "WHERE direction = 'in'") == total
        assert _count(db, "SELECT count(*) FROM ticket") == total
        rows = _count(db, "SELECT count(*) FROM outbox")
        assert rows == total
        sent = Counter(str(r.message()["Message-ID"]) for r in sink.received)
        assert len(sent) == rows and set(sent.values()) == {1}, "an outbox mail went out twice"
    finally:
        listener.close()


async def test_sigterm_with_a_hanging_imap_connection_stops_well_within_30_s(
    tmp_path: Path, dovecot: DovecotServer
) -> None:
    """The account's Dovecot process is SIGSTOPped in the middle of an import (the connection
    stays open, nothing answers; timeout_seconds is the default 60 s): SIGTERM still ends the
    daemon with exit 0 well inside systemd's 30 s, and a restart imports every mail once."""
    user = fresh_user("term")
    total = 400
    dovecot.deliver_files(user, backlog_mails(total, user))
    db = tmp_path / "gw.sqlite3"
    config = dovecot_site(tmp_path / "site", f"sqlite://{db}", user, dovecot.port)
    listener = NotifyListener(tmp_path / "notify.sock")

    async def receipts(at_least: int) -> bool:
        return db.exists() and _count(db, "SELECT count(*) FROM inbound_receipt") >= at_least

    pids: list[int] = []
    try:
        async with daemon(config, listener.path, 0) as (proc, lines):
            await listener.wait_for("READY", "1")
            await wait_until(lambda: receipts(1), 60, "the first mails imported")
            pids += dovecot.freeze(user)
            await asyncio.sleep(0.5)  # the next command goes out and waits for its answer
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, "".join(lines[-20:])
            took = time.monotonic() - started
        print(f"\nSIGTERM with a hanging IMAP connection: exited after {took:.1f} s")
        assert _count(db, "SELECT count(*) FROM inbound_receipt") < total, "use more mail"
        dovecot.thaw(pids)

        async def finished() -> bool:
            return await receipts(total) and folder_count(dovecot, user, "INBOX") == 0

        mark = len(listener.messages)
        async with daemon(config, listener.path, 0) as (proc, lines):
            await listener.wait_for("READY", "1", after=mark)
            await wait_until(finished, 90, "the restarted daemon to finish")
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0, "".join(lines[-20:])
    finally:
        dovecot.thaw(pids)
        listener.close()
    assert _count(db, "SELECT count(*) FROM inbound_receipt") == total
    assert _count(db, "SELECT count(DISTINCT message_id) FROM message WHERE direction = 'in'") \
        == total
    assert _count(db, "SELECT count(*) FROM ticket") == total
    assert folder_count(dovecot, user, "Imported") == total


async def test_sigterm_with_smtp_and_http_hanging_too_ends_within_30_s(tmp_path: Path) -> None:
    """Every part stuck at once: the SMTP server greets and then never answers (the sender is
    mid-send with the default 60 s timeout), a client holds a form post half sent, and the
    account polls. Each part's own grace is long (sender 20 s, HTTP 10 s); the shutdown
    budget counts from the signal for all of them, so the daemon still exits inside
    systemd's 30 s (before, the graces ran one after the other: 30 s and more)."""
    db = tmp_path / "gw.sqlite3"
    listener = NotifyListener(tmp_path / "notify.sock")
    greeted = asyncio.Event()

    async def tarpit(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 tarpit ESMTP\r\n")
        await writer.drain()
        greeted.set()
        with contextlib.suppress(Exception):
            while await reader.read(1024):  # read everything, answer nothing
                pass

    smtp = await asyncio.start_server(tarpit, "127.0.0.1", 0)
    smtp_port = smtp.sockets[0].getsockname()[1]
    http_port = free_port()
    held: asyncio.StreamWriter | None = None
    try:
        async with start_imap_server() as imap:
            await fill_mailboxes(imap, 1, 3)
            config = site_config(tmp_path / "site", db_url=f"sqlite://{db}",
                                 imap_port=imap.port, smtp_port=smtp_port, accounts=1,
                                 http_port=http_port)
            async with daemon(config, listener.path, 0) as (proc, lines):
                await listener.wait_for("READY", "1")
                await asyncio.wait_for(greeted.wait(), 60)  # the sender is on the wire
                _reader, held = await asyncio.open_connection("127.0.0.1", http_port)
                held.write(b"POST /forms/contact HTTP/1.1\r\nHost: x\r\n"
                           b"Content-Type: application/x-www-form-urlencoded\r\n"
                           b"Content-Length: 1000\r\n\r\nemail=a%40")
                await held.drain()
                await asyncio.sleep(0.5)
                started = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                # A hang check against systemd's TimeoutStopSec, as the contract requires.
                code = await asyncio.wait_for(proc.wait(), 30)
                took = time.monotonic() - started
                assert code == 0, "".join(lines[-20:])
        print(f"\nSIGTERM with SMTP, HTTP and IMAP busy: exited after {took:.1f} s")
        # The mail that was on the wire is queued again for the next start, not lost.
        assert _count(db, "SELECT count(*) FROM outbox WHERE status = 'sending'") == 0
        assert _count(db, "SELECT count(*) FROM outbox WHERE status = 'queued'") >= 1
    finally:
        if held is not None:
            held.close()
        smtp.close()
        listener.close()
