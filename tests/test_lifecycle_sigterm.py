"""SIGTERM in the middle of an import: the daemon finishes the mail in hand and exits 0; after a
restart every mail is imported exactly once and every outbox mail sent exactly once."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
import time
from collections import Counter
from pathlib import Path

from gatewayd.ingest.poller import FETCH_BATCH
from gatewayd.loopback.dovecot import DovecotServer
from gatewayd.loopback.imap import start_imap_server
from gatewayd.loopback.smtp import smtp_sink
from tests.conftest import fresh_user
from tests.test_cluster import fill_mailboxes, site_config, wait_until
from tests.test_ingest_faults import backlog_mails, dovecot_site, folder_count
from tests.test_lifecycle import NotifyListener, _free_port, daemon

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
                                 http_port=_free_port())

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
