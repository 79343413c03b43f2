"""Outbound mail per second: event action → rendered, queued, sent and recorded, beside floors.

    python -m bench.outbound [--tickets 500] [--rounds 3] [--database-url postgres://...]

Every row sends N mails to one SMTP sink (aiosmtpd in its own process, so what the server spends
never counts here), in the same run, taking turns for a few rounds:

- bare (for information): aiosmtplib sending N pre-rendered mails over one connection;
- durable floor: the same, plus one durable SQLite commit per outcome (an UPDATE and COMMIT
  with plain aiosqlite, WAL, synchronous=FULL) after each mail — the least a sender that must
  not lose or repeat mail across a crash does;
- gatewayd, action → sent: N existing tickets each fire a `ticket_created` action (rule match,
  recipient chain, language, sandboxed template with header and footer, composed mail, outbox
  row, one durable transaction per ticket), then the sender claims, sends (up to
  `connections_per_account` connections) and records every outcome (group commit);
- gatewayd, send + record: the second half of that alone.

Printed: mails per second, the share of the durable floor, and this process's CPU ms per mail
(client, database thread and gatewayd together; the sink's is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiosmtplib

from bench.httpload import machine
from bench.httpload import server as start_server
from bench.smtpsink import serve_sink
from gatewayd import logs
from gatewayd.config import Config, config_from_dict
from gatewayd.outbound import sender
from gatewayd.outbound.actions import event_action_hook
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox
from gatewayd.store.tickets import DomainEvent, NewMessage, NewTicket, TicketStore

TEMPLATES = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))


def make_config(smtp_port: int, database_url: str, data_dir: Path,
                connections: int | None = None) -> Config:
    outbound: dict[str, Any] = {"batch_size": 100, "auto_reply_window_hours": 0,
                                "daily_cap": 1_000_000}
    if connections:
        outbound["connections_per_account"] = connections
    data: dict[str, Any] = {
        "mode": "live", "database_url": database_url, "data_dir": str(data_dir),
        "templates_dir": str(TEMPLATES), "message_id_domain": "bench.example",
        "status_groups": [{"name": "Offen"}],
        "ticket_types": [{"name": "Anfrage", "statuses": [
            {"name": "Neu", "progress": 0, "group": "Offen"}]}],
        "owners": [{"name": "anna", "email": "anna@shop.example", "signature": "Anna"}],
        "accounts": [{"name": "support", "address": "support@shop.example", "language": "de",
                      "new_ticket": {"type": "Anfrage", "status": "Neu"},
                      "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                               "sender_name": "Shop"}}],
        "events": [{"name": "ack", "on": "ticket_created",
                    "actions": [{"send_template": "ticket_received", "to": "customer"}]}],
        "outbound": outbound,
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789"]},
    }
    return config_from_dict(data, data_dir / "gatewayd.toml")


def prerendered(n: int) -> list[bytes]:
    return [(f"From: Shop <support@shop.example>\r\nTo: k{i}@example.org\r\n"
             f"Subject: [Ticket-ID {i}] Wir haben Ihre Anfrage erhalten\r\n"
             f"Message-ID: <base{i}@bench.example>\r\nMIME-Version: 1.0\r\n"
             "Content-Type: text/plain; charset=utf-8\r\n\r\n"
             + "vielen Dank fuer Ihre Nachricht.\r\n" * 12).encode() for i in range(n)]


class Stopwatch:
    """Wall time and this process's CPU time (all threads) of a block."""

    def __enter__(self) -> Stopwatch:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


async def bare(port: int, mails: list[bytes]) -> Stopwatch:
    with Stopwatch() as watch:
        async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False) as smtp:
            for i, content in enumerate(mails):
                await smtp.sendmail("support@shop.example", [f"k{i}@example.org"], content)
    return watch


async def durable_floor(port: int, mails: list[bytes], path: Path) -> Stopwatch:
    """aiosmtplib over one connection + one durable SQLite commit per outcome."""
    import aiosqlite

    async with aiosqlite.connect(path) as db:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("DROP TABLE IF EXISTS mail")
        await db.execute("CREATE TABLE mail (id INTEGER PRIMARY KEY, status TEXT, sent_at TEXT)")
        await db.executemany("INSERT INTO mail (status) VALUES ('queued')",
                             [() for _ in mails])
        await db.commit()
        with Stopwatch() as watch:
            async with aiosmtplib.SMTP(hostname="127.0.0.1", port=port,
                                       start_tls=False) as smtp:
                for i, content in enumerate(mails):
                    await smtp.sendmail("support@shop.example", [f"k{i}@example.org"], content)
                    await db.execute("UPDATE mail SET status = 'sent', sent_at = ? WHERE id = ?",
                                     (time.time(), i + 1))
                    await db.commit()
    return watch


async def drain(config: Config) -> None:
    while await sender.run_once(config):
        pass


async def gatewayd_round(config: Config, n: int, first: int) -> tuple[Stopwatch, Stopwatch]:
    """N tickets fire their action (render + queue), then the sender drains (send + record)."""
    await Outbox.all().delete()
    plain = TicketStore(config)  # no hooks: tickets exist before the measured part
    ids = []
    for i in range(first, first + n):
        ticket = await plain.create_ticket(
            NewTicket(title=f"Frage {i}", source="mail", account="support",
                      reply_address=f"k{i}@example.org"),
            first_message=NewMessage(text="Wo ist mein Paket?", from_address=f"k{i}@example.org",
                                     message_id=f"<in{i}@customer.example>"))
        ids.append(ticket.id)
    store = TicketStore(config, [event_action_hook])
    with Stopwatch() as queue:
        for ticket_id in ids:
            async with store.transaction():
                await event_action_hook(store, DomainEvent(
                    "ticket_created", ticket_id, None, None, {"source": "mail"}))
    with Stopwatch() as send:
        await drain(config)
    sent = await Outbox.filter(status="sent").count()
    assert sent == n, f"only {sent} of {n} sent"
    return queue, send


async def run(n: int, rounds: int, database_url: str | None,
              connections: int | None) -> None:
    logs.configure("WARNING")  # one log line per mail is terminal I/O, not outbound work
    rows: dict[str, list[tuple[float, float]]] = {  # name → [(mails/s, CPU ms per mail)]
        "bare": [], "floor": [], "action": [], "send": [], "queue": []}
    with tempfile.TemporaryDirectory() as tmp, start_server(serve_sink) as sink:
        url = database_url or f"sqlite://{Path(tmp) / 'bench.sqlite3'}"
        config = make_config(sink.port, url, Path(tmp), connections)
        mails = prerendered(n)
        await bare(sink.port, mails[:50])  # warm-up
        async with open_database(config.database_url):
            await gatewayd_round(config, min(50, n), 0)  # warm-up: templates compiled
            for number in range(rounds):
                for name, watch in (("bare", await bare(sink.port, mails)),
                                    ("floor", await durable_floor(sink.port, mails,
                                                                  Path(tmp) / "floor.sqlite3"))):
                    rows[name].append((n / watch.wall, watch.cpu / n * 1000))
                queue, send = await gatewayd_round(config, n, (number + 1) * n)
                rows["queue"].append((n / queue.wall, queue.cpu / n * 1000))
                rows["send"].append((n / send.wall, send.cpu / n * 1000))
                rows["action"].append((n / (queue.wall + send.wall),
                                       (queue.cpu + send.cpu) / n * 1000))
                print(f"round {number + 1}: " + ", ".join(
                    f"{name} {values[-1][0]:.0f}/s" for name, values in rows.items()),
                    file=sys.stderr)
    engine = url.split(":")[0]
    floor = statistics.median(rate for rate, _cpu in rows["floor"])
    print(f"outbound: {n} mails x {rounds} rounds, gatewayd on {engine}, "
          f"{config.outbound.connections_per_account} SMTP connections per account, "
          f"aiosmtpd in its own process; medians; {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{machine()}")
    titles = {"bare": "bare: aiosmtplib, pre-rendered, one connection",
              "floor": "durable floor: + one SQLite commit per outcome",
              "action": "gatewayd action → sent",
              "queue": "  of which render + queue (one commit per ticket)",
              "send": "  of which send + record"}
    targets = {"action": 0.5, "send": 0.85}
    print(f"{'':52} {'mails/s':>8} {'of floor':>9} {'CPU ms/mail':>12}")
    for name in ("bare", "floor", "action", "queue", "send"):
        rate = statistics.median(r for r, _ in rows[name])
        cpu = statistics.median(c for _, c in rows[name])
        target = f" (target >= {targets[name]})" if name in targets else ""
        print(f"{titles[name]:52} {rate:8.0f} {rate / floor:9.2f} {cpu:12.2f}{target}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--tickets", type=int, default=500)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=None,
                        help="[outbound] connections_per_account (default: gatewayd's, 2)")
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args(argv)
    asyncio.run(run(args.tickets, args.rounds, args.database_url, args.connections))


if __name__ == "__main__":
    main()
