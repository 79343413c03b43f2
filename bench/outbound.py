"""Benchmark: N tickets × an event action → rendered, queued and sent to a local aiosmtpd.

Beside it, in the same run and against the same server, the baseline: aiosmtplib sending N
pre-rendered mails over one connection. Prints mails per second for both and the ratio.

    python -m bench.outbound [--tickets 500] [--database-url sqlite://... | postgres://...]

"gatewayd" counts what outbound mail adds per mail: the event action fires for an existing
ticket (rule match, recipient chain, language, sandboxed template with header and footer, MIME
message, outbox row, all in the ticket's transaction), then the sender claims, sends and records
each row. "end to end" also includes creating each ticket with its first message.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from importlib import resources
from pathlib import Path
from typing import Any

import aiosmtplib

from gatewayd import logs
from gatewayd.config import Config, config_from_dict
from gatewayd.loopback.smtp import SmtpSink, smtp_sink
from gatewayd.outbound import sender
from gatewayd.outbound.actions import event_action_hook
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox
from gatewayd.store.tickets import DomainEvent, NewMessage, NewTicket, TicketStore

TEMPLATES = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))


def make_config(sink: SmtpSink, database_url: str, data_dir: Path) -> Config:
    data: dict[str, Any] = {
        "mode": "live", "database_url": database_url, "data_dir": str(data_dir),
        "templates_dir": str(TEMPLATES), "message_id_domain": "bench.example",
        "status_groups": [{"name": "Offen"}],
        "ticket_types": [{"name": "Anfrage", "statuses": [
            {"name": "Neu", "progress": 0, "group": "Offen"}]}],
        "owners": [{"name": "anna", "email": "anna@shop.example", "signature": "Anna"}],
        "accounts": [{"name": "support", "address": "support@shop.example", "language": "de",
                      "new_ticket": {"type": "Anfrage", "status": "Neu"},
                      "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none",
                               "sender_name": "Shop"}}],
        "events": [{"name": "ack", "on": "ticket_created",
                    "actions": [{"send_template": "ticket_received", "to": "customer"}]}],
        "outbound": {"batch_size": 100, "auto_reply_window_hours": 0, "daily_cap": 1_000_000},
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789"]},
    }
    return config_from_dict(data, data_dir / "gatewayd.toml")


def prerendered(n: int) -> list[bytes]:
    out = []
    for i in range(n):
        out.append((
            f"From: Shop <support@shop.example>\r\nTo: k{i}@example.org\r\n"
            f"Subject: [Ticket-ID {i}] Wir haben Ihre Anfrage erhalten\r\n"
            f"Message-ID: <base{i}@bench.example>\r\nMIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n"
            + "vielen Dank fuer Ihre Nachricht.\r\n" * 12
        ).encode())
    return out


async def baseline(sink: SmtpSink, n: int) -> float:
    mails = prerendered(n)
    start = time.perf_counter()
    async with aiosmtplib.SMTP(hostname="127.0.0.1", port=sink.port, start_tls=False) as smtp:
        for i, content in enumerate(mails):
            await smtp.sendmail("support@shop.example", [f"k{i}@example.org"], content)
    return time.perf_counter() - start


async def drain(config: Config) -> None:
    while await sender.run_once(config):
        pass


async def gatewayd_run(sink: SmtpSink, n: int, database_url: str, tmp: Path) -> dict[str, float]:
    config = make_config(sink, database_url, tmp)
    async with open_database(config.database_url):
        await Outbox.all().delete()
        plain = TicketStore(config)  # no hooks: tickets exist before the measured part
        ids = []
        for i in range(n):
            ticket = await plain.create_ticket(
                NewTicket(title=f"Frage {i}", source="mail", account="support",
                          reply_address=f"k{i}@example.org"),
                first_message=NewMessage(text="Wo ist mein Paket?",
                                         from_address=f"k{i}@example.org",
                                         message_id=f"<in{i}@customer.example>"))
            ids.append(ticket.id)
        store = TicketStore(config, [event_action_hook])
        start = time.perf_counter()
        for ticket_id in ids:
            async with store.transaction():
                await event_action_hook(store, DomainEvent(
                    "ticket_created", ticket_id, None, None, {"source": "mail"}))
        queued = time.perf_counter()
        await drain(config)
        done = time.perf_counter()
        sent = await Outbox.filter(status="sent").count()
        assert sent == n, f"only {sent} of {n} sent"

        # End to end: ticket creation included.
        await Outbox.all().delete()
        e2e_start = time.perf_counter()
        for i in range(n):
            await store.create_ticket(
                NewTicket(title=f"Neu {i}", source="mail", account="support",
                          reply_address=f"e{i}@example.org"),
                first_message=NewMessage(text="Hallo", from_address=f"e{i}@example.org"))
        await drain(config)
        e2e = time.perf_counter() - e2e_start
    return {"render_queue": queued - start, "send": done - queued, "total": done - start,
            "e2e": e2e}


async def main(n: int, database_url: str | None) -> None:
    logs.configure("WARNING")  # one log line per mail is terminal I/O, not outbound work
    with tempfile.TemporaryDirectory() as tmp:
        url = database_url or f"sqlite://{Path(tmp) / 'bench.sqlite3'}"
        async with smtp_sink() as sink:
            await baseline(sink, min(50, n))  # warm-up
            base = await baseline(sink, n)
            sink.received.clear()
            ours = await gatewayd_run(sink, n, url, Path(tmp))
    engine = url.split(":")[0]
    base_rate = n / base
    rate = n / ours["total"]
    print(f"outbound benchmark: {n} mails, database {engine}, aiosmtpd on loopback")
    print(f"  baseline  aiosmtplib, pre-rendered, one connection: {base_rate:8.0f} mails/s")
    print(f"  gatewayd  event action → template → outbox → sender: {rate:8.0f} mails/s "
          f"({rate / base_rate:.0%} of baseline)")
    print(f"            of which render+queue {n / ours['render_queue']:.0f}/s, "
          f"send+record {n / ours['send']:.0f}/s")
    print(f"  end to end incl. creating each ticket:              {n / ours['e2e']:8.0f} "
          f"mails/s ({n / ours['e2e'] / base_rate:.0%} of baseline)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=500)
    parser.add_argument("--database-url", default=None)
    args = parser.parse_args()
    asyncio.run(main(args.tickets, args.database_url))
