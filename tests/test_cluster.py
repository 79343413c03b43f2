"""Two `gatewayd run` processes on one PostgreSQL: 1,000 mails from 20 accounts on a real IMAP
server, one instance SIGKILLed half-way. Every mail is imported exactly once, every outbox row
is sent, and the dead instance's accounts are taken over."""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from email.message import EmailMessage
from email.utils import make_msgid
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gatewayd.loopback.imap import LoopbackImap, start_imap_server
from gatewayd.loopback.ports import free_port
from gatewayd.loopback.smtp import smtp_sink
from gatewayd.store.db import migrate
from tests.conftest import TOKEN, skeleton_data
from tests.test_config import to_toml
from tests.test_lifecycle import NotifyListener, daemon, kill_service

ACCOUNTS = int(os.environ.get("GW_CLUSTER_ACCOUNTS", 20))
MAILS_PER_ACCOUNT = int(os.environ.get("GW_CLUSTER_MAILS", 50))


def site_config(directory: Path, *, db_url: str, imap_port: int, smtp_port: int,
                accounts: int, http_port: int) -> Path:
    """A config with `accounts` mailboxes on the loopback IMAP server and the SMTP sink."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "imap.password").write_text("secret\n")
    data = skeleton_data()
    data.update(
        database_url=db_url, data_dir=str(directory / "data"),
        templates_dir=str(Path(str(resources.files("gatewayd") / "skeleton" / "templates"))),
        http={"listen": f"127.0.0.1:{http_port}", "api_tokens": [TOKEN]},
    )
    data.setdefault("outbound", {})
    # A live sender must never lose its rows to the stale-claim re-queue: well above a batch.
    data["outbound"].update(poll_seconds=0.5, claim_timeout_seconds=20, batch_size=10)
    data["accounts"] = [{
        "name": f"box{i:02d}", "address": f"box{i:02d}@shop.example", "language": "de",
        "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
        "imap": {"host": "127.0.0.1", "port": imap_port, "security": "none",
                 "username": f"user{i:02d}", "password_file": "imap.password",
                 "poll_seconds": 1, "idle": True, "after_import": "move", "move_to": "Imported"},
        "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none"},
    } for i in range(accounts)]
    data["scheduled"] = []
    path = directory / "gatewayd.toml"
    path.write_text(to_toml(data), "utf-8")
    return path


def sample_mail(account: int, number: int) -> bytes:
    message = EmailMessage()
    message["From"] = f"Kunde {account}-{number} <kunde{account:02d}x{number:03d}@example.org>"
    message["To"] = f"box{account:02d}@shop.example"
    message["Subject"] = f"Frage {account}-{number} zur Lieferung"
    message["Message-ID"] = make_msgid(f"c{account}n{number}", "customer.example")
    message.set_content(f"Hallo, wo bleibt meine Bestellung? ({account}/{number})\n")
    return bytes(message)


async def fill_mailboxes(imap: LoopbackImap, accounts: int, per_account: int) -> None:
    for i in range(accounts):
        await imap.add_user(f"user{i:02d}", "secret")
        await imap.create_folder(f"user{i:02d}", "Imported")
        for n in range(per_account):
            await imap.append(f"user{i:02d}", sample_mail(i, n))


async def _count(conn: asyncpg.Connection, sql: str) -> int:
    return int(await conn.fetchval(sql) or 0)


async def wait_until(check: Any, seconds: float, what: str, describe: Any = None) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while loop.time() < deadline:
        if await check():
            return
        await asyncio.sleep(0.2)
    state = await describe() if describe else ""
    raise AssertionError(f"timed out waiting for {what}: {state}")


async def progress(pg: asyncpg.Connection) -> dict[str, Any]:
    """Where the import and the outbox stand (for timeout messages)."""
    return {
        "receipts": await _count(pg, "SELECT count(*) FROM inbound_receipt"),
        "server_action_done": await _count(pg, "SELECT count(*) FROM inbound_receipt "
                                               "WHERE server_action_done"),
        "outbox": {r["status"]: r["n"] for r in await pg.fetch(
            "SELECT status, count(*) AS n FROM outbox GROUP BY status")},
        "quarantine": await _count(pg, "SELECT count(*) FROM quarantine"),
    }


async def local_accounts(port: int) -> list[str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        health = (await http.get("/healthz")).json()
    return sorted(a["account"] for a in health["accounts"] if a["state"] not in ("remote",))


async def test_two_instances_one_killed(tmp_path: Path, db_url: str) -> None:
    if not db_url.startswith("postgres"):
        pytest.skip("several instances need PostgreSQL; SQLite refuses a second instance "
                    "(tested in test_lifecycle)")
    total = ACCOUNTS * MAILS_PER_ACCOUNT
    await migrate(db_url)
    pg = await asyncpg.connect(db_url.replace("postgres://", "postgresql://", 1))
    listeners: list[NotifyListener] = []
    try:
        async with start_imap_server() as imap, smtp_sink() as sink:
            await fill_mailboxes(imap, ACCOUNTS, MAILS_PER_ACCOUNT)
            ports = [free_port(), free_port()]
            configs = [site_config(tmp_path / name, db_url=db_url, imap_port=imap.port,
                                   smtp_port=sink.port, accounts=ACCOUNTS, http_port=port)
                       for name, port in zip("ab", ports, strict=True)]
            listeners = [NotifyListener(tmp_path / f"notify-{n}.sock") for n in "ab"]
            async with daemon(configs[0], listeners[0].path, 0) as (proc_a, _log_a), \
                    daemon(configs[1], listeners[1].path, 0) as (proc_b, log_b):
                await listeners[0].wait_for("READY", "1")
                await listeners[1].wait_for("READY", "1")

                async def balanced() -> bool:
                    # Under load one instance can be up well before the other and start with
                    # every account; wait for the hand-over so that the kill tests a take-over.
                    held = [await local_accounts(port) for port in ports]
                    return all(held) and not set(held[0]) & set(held[1])

                async def halfway() -> bool:
                    return await _count(pg, "SELECT count(*) FROM inbound_receipt") >= total // 2

                await wait_until(balanced, 60, "both instances to hold accounts",
                                 lambda: progress(pg))
                await wait_until(halfway, 90, "half of the mails imported",
                                 lambda: progress(pg))
                held_by_a = await local_accounts(ports[0])
                kill_service(proc_a)
                await proc_a.wait()
                imported_at_kill = await _count(pg, "SELECT count(*) FROM inbound_receipt")
                in_flight = {str(r["message_id"]).strip(" <>") for r in await pg.fetch(
                    "SELECT message_id FROM outbox WHERE status = 'sending' "
                    "AND claimed_by LIKE $1", f"%:{proc_a.pid}")}
                assert held_by_a, "instance a polled no account before it was killed"
                assert imported_at_kill < total, "import finished before the kill; use more mail"

                async def finished() -> bool:
                    # Done when every mail has a receipt, no INBOX holds a mail any more (the
                    # server action may have happened just before the kill, unrecorded), and
                    # every outbox row is sent.
                    receipts = await _count(pg, "SELECT count(*) FROM inbound_receipt")
                    unsent = await _count(pg, "SELECT count(*) FROM outbox "
                                              "WHERE status <> 'sent'")
                    rows = await _count(pg, "SELECT count(*) FROM outbox")
                    if receipts != total or rows != total or unsent:
                        return False
                    for i in range(ACCOUNTS):
                        if await imap.uids(f"user{i:02d}"):
                            return False
                    return True

                await wait_until(finished, 120, "instance b to finish every mail",
                                 lambda: progress(pg))
                assert await local_accounts(ports[1]) == [f"box{i:02d}" for i in range(ACCOUNTS)]
                proc_b.send_signal(signal.SIGTERM)
                assert await asyncio.wait_for(proc_b.wait(), 30) == 0, "".join(log_b[-30:])

            # Every mail imported exactly once: one receipt, one message, one ticket each.
            assert await _count(pg, "SELECT count(*) FROM inbound_receipt") == total
            assert await _count(pg, "SELECT count(DISTINCT message_id) FROM message "
                                    "WHERE direction = 'in'") == total
            assert await _count(pg, "SELECT count(*) FROM message WHERE direction = 'in'") == total
            assert await _count(pg, "SELECT count(*) FROM ticket") == total
            for i in range(ACCOUNTS):
                assert await imap.uids(f"user{i:02d}") == [], f"user{i:02d} INBOX not emptied"
                assert len(await imap.uids(f"user{i:02d}", "Imported")) == MAILS_PER_ACCOUNT

            # Every outbox row sent: each reached the SMTP sink; a repeat is possible only for
            # a row the killed instance had on the wire (SMTP cannot be exactly-once there).
            sent_ids = Counter(str(r.message()["Message-ID"]).strip(" <>") for r in sink.received)
            outbox_ids = {str(r["message_id"]).strip(" <>")
                          for r in await pg.fetch("SELECT message_id FROM outbox")}
            assert outbox_ids <= set(sent_ids), "an outbox row never reached the SMTP server"
            repeated = {m for m, n in sent_ids.items() if n > 1}
            # Each connection's outcome is committed before its next mail: at most the mails on
            # the wire at the kill (one per SMTP connection, `connections_per_account` = 2 per
            # account by default, the accounts side by side) can go out twice.
            accounts_of = {str(r["message_id"]).strip(" <>"): r["account"] for r in await pg.fetch(
                "SELECT message_id, account FROM outbox")}
            per_account = Counter(accounts_of[m] for m in repeated)
            assert max(per_account.values(), default=0) <= 2, f"sent twice: {sorted(repeated)}"
            assert repeated <= in_flight, (
                f"{len(repeated)} sent twice, {len(repeated - in_flight)} of them not on the wire "
                f"at the kill ({len(in_flight)} were): {sorted(repeated - in_flight)[:5]}")
            print(f"\nkilled a at {imported_at_kill}/{total} imported; a held {len(held_by_a)} "
                  f"accounts; rows on the wire at the kill: {len(in_flight)}, sent twice: "
                  f"{len(repeated)}")
    finally:
        for listener in listeners:
            listener.close()
        await pg.close()
