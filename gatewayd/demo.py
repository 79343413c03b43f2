"""`gatewayd demo`: the whole loop on loopback, no outside server needed.

An embedded IMAP server (two mailboxes, German and English) and an SMTP sink start on 127.0.0.1;
sample mails arrive (a new enquiry, one naming an order number, an auto-reply, and a reply that
names its `Ticket-ID`); the daemon runs in test mode against a SQLite database in a temporary
folder, and the demo prints the tickets, how the mails were threaded, and the mails it sent —
with where test mode really delivered them.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import sys
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from email.message import EmailMessage
from email.utils import make_msgid
from importlib import resources
from pathlib import Path
from typing import Any, TextIO

from gatewayd.config import Config, config_from_dict

TEST_RECIPIENT = "qa@shop.example"
ORDER_ID = 1001


def demo_config(directory: Path, imap_port: int, smtp_port: int) -> Config:
    """The `gatewayd init` configuration pointed at the loopback servers, in test mode."""
    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    data: dict[str, Any] = tomllib.loads(text)
    (directory / "imap.password").write_text("demo-password\n", "utf-8")
    templates = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))
    data.update(
        mode="test", test_recipient=TEST_RECIPIENT,
        database_url=f"sqlite://{directory / 'gatewayd.sqlite3'}",
        data_dir=str(directory / "data"), templates_dir=str(templates),
        http={"listen": "127.0.0.1:0", "api_tokens": [secrets.token_urlsafe(24)]},
        scheduled=[],
    )
    data.setdefault("outbound", {})["poll_seconds"] = 0.3
    accounts = []
    for name, language, user in (("support", "de", "support"), ("service", "en", "service")):
        accounts.append({
            "name": name, "address": f"{user}@shop.example", "active": True,
            "language": language, "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": imap_port, "security": "none",
                     "username": user, "password_file": "imap.password", "poll_seconds": 1,
                     "idle": True, "after_import": "move", "move_to": "Imported"},
            "smtp": {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                     "sender_name": "Shop"},
        })
    data["accounts"] = accounts
    return config_from_dict(data, directory / "gatewayd.toml")


def mail(sender: str, to: str, subject: str, body: str,
         headers: dict[str, str] | None = None) -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = make_msgid("demo", "customer.example")
    for key, value in (headers or {}).items():
        message[key] = value
    message.set_content(body)
    return bytes(message)


FIRST_MAILS = [
    ("support", mail("Erika Mustermann <erika@example.de>", "support@shop.example",
                     "Frage zur Lieferzeit",
                     "Hallo,\n\nwie lange dauert die Lieferung nach Österreich?\n\nViele Grüße\n"
                     "Erika Mustermann\n")),
    ("service", mail("John Smith <john@example.com>", "service@shop.example",
                     f"Where is my parcel? Order No. {ORDER_ID}",
                     f"Hello,\n\nmy order {ORDER_ID} has not arrived yet.\n\nThanks, John\n")),
    ("support", mail("Max Beispiel <max@example.de>", "support@shop.example",
                     "Automatische Antwort: Ich bin nicht im Büro",
                     "Ich bin bis Montag nicht erreichbar.\n",
                     {"Auto-Submitted": "auto-replied", "X-Autoreply": "yes"})),
]


def reply_mail(ticket_id: int) -> bytes:
    return mail("Erika Mustermann <erika@example.de>", "support@shop.example",
                f"AW: Frage zur Lieferzeit [Ticket-ID {ticket_id}]",
                "Danke! Und gibt es auch Expressversand?\n\nErika\n")


async def add_sample_order() -> None:
    """The contact and the order (ORDER_ID) the English sample mail names, unless there."""
    from gatewayd.store.contacts import NewContact, NewOrder, create_contact, create_order
    from gatewayd.store.models import Order

    if await Order.filter(id=ORDER_ID).exists():
        return
    contact = await create_contact(NewContact(first_name="John", last_name="Smith",
                                              language="en"))
    await create_order(NewOrder(id=ORDER_ID, contact_id=contact.id, language="en",
                                billing_email="john.smith@example.com"))


async def _until(check: Callable[[], Awaitable[bool]], seconds: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not await check():
        if loop.time() > deadline:
            raise TimeoutError(f"demo: timed out waiting for {what}")
        await asyncio.sleep(0.2)


async def run_demo(directory: Path, out: TextIO) -> dict[str, Any]:
    """Run the loop once and print what happened; returns the facts (tests read them)."""
    from gatewayd import daemon
    from gatewayd.loopback.imap import start_imap_server
    from gatewayd.loopback.smtp import smtp_sink
    from gatewayd.store.models import InboundReceipt, Message, Outbox, Ticket

    started = time.monotonic()
    users = {"support": "demo-password", "service": "demo-password"}
    async with start_imap_server(users) as imap, smtp_sink() as sink:
        config = demo_config(directory, imap.port, sink.port)
        print(f"embedded IMAP server on 127.0.0.1:{imap.port} (mailboxes support, service), "
              f"SMTP sink on 127.0.0.1:{sink.port}", file=out)
        print(f"daemon in test mode: every mail goes to {TEST_RECIPIENT}; database "
              f"{directory / 'gatewayd.sqlite3'}", file=out)
        async with daemon.start(config) as runtime:
            await add_sample_order()
            for user, raw in FIRST_MAILS:
                await imap.append(user, raw)
            print(f"delivered {len(FIRST_MAILS)} mails; waiting for the pollers …", file=out)

            async def imported(n: int) -> bool:
                return await InboundReceipt.all().count() >= n

            await _until(lambda: imported(3), 30, "the first three mails")
            first = await Message.filter(subject="Frage zur Lieferzeit").first()
            assert first is not None
            ticket_id = first.ticket_id  # type: ignore[attr-defined]
            await imap.append("support", reply_mail(ticket_id))
            print(f"delivered a reply naming Ticket-ID {ticket_id} …", file=out)
            await _until(lambda: imported(4), 30, "the reply")

            async def settled() -> bool:
                return not await Outbox.filter(status__in=["queued", "sending"]).exists()

            await _until(settled, 30, "the outbox to be sent")
            tickets = await Ticket.all().order_by("id")
            facts: dict[str, Any] = {"tickets": [], "outbox": [], "smtp": []}
            print("\nTickets", file=out)
            for ticket in tickets:
                messages = await Message.filter(ticket_id=ticket.id).order_by("id")
                facts["tickets"].append({
                    "id": ticket.id, "title": ticket.title, "account": ticket.account,
                    "order_id": ticket.order_id,  # type: ignore[attr-defined]
                    "contact_id": ticket.contact_id,  # type: ignore[attr-defined]
                    "messages": [{"subject": m.subject, "routed_by": m.routed_by,
                                  "auto_reply": m.auto_reply, "direction": m.direction}
                                 for m in messages],
                })
                links = []
                if ticket.order_id:  # type: ignore[attr-defined]
                    links.append(f"order {ticket.order_id}")  # type: ignore[attr-defined]
                if ticket.contact_id:  # type: ignore[attr-defined]
                    links.append(f"contact {ticket.contact_id}")  # type: ignore[attr-defined]
                print(f"  #{ticket.id} [{ticket.account}] {ticket.title!r} — {ticket.type} / "
                      f"{ticket.status}" + (f" — linked to {', '.join(links)}" if links else ""),
                      file=out)
                for m in messages:
                    flags = " (auto-reply: no automatic answer)" if m.auto_reply else ""
                    how = f", routed by {m.routed_by}" if m.routed_by else ""
                    print(f"      {m.direction:>3} {m.subject!r}{how}{flags}", file=out)
            print("\nMails gatewayd sent (test mode diverts every one)", file=out)
            for row in await Outbox.all().order_by("id"):
                facts["outbox"].append({"template": row.template, "status": row.status,
                                        "intended_to": row.intended_to,
                                        "envelope_to": row.envelope_to})
                where = (f"delivered to {', '.join(row.envelope_to)}" if row.status == "sent"
                         else f"not sent ({row.status}: {row.last_error or 'no reason given'})")
                # A suppressed row is never rendered: its subject is the template's name.
                subject = (repr(row.subject) if row.subject != row.template
                           else "(not rendered)")
                print(f"  {row.template or '-'}: {subject}\n      meant for "
                      f"{', '.join(row.intended_to) or '-'} → {where}", file=out)
            for item in sink.received:
                facts["smtp"].append(sorted(item.rcpt_tos))
            print(f"\nThe SMTP sink received {len(sink.received)} mail(s), all to "
                  f"{', '.join(sorted(sink.envelope_recipients())) or 'nobody'}.", file=out)
            facts["api_port"] = runtime.http_port
    print(f"Done in {time.monotonic() - started:.1f} s. Next: `gatewayd init --loopback mysite` "
          "keeps such a loop running for your own form posts and mails; `gatewayd init mysite` "
          "writes a configuration for your own mailboxes.", file=out)
    return facts


def main(keep: str | None = None, out: TextIO = sys.stdout) -> int:
    from gatewayd import logs

    logs.configure("WARNING")
    if keep:
        directory = Path(keep)
        directory.mkdir(parents=True, exist_ok=True)
        asyncio.run(run_demo(directory.resolve(), out))
        print(f"(the demo's database and files stay in {directory})", file=out)
        return 0
    directory = Path(tempfile.mkdtemp(prefix="gatewayd-demo-"))
    try:
        asyncio.run(run_demo(directory, out))
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(directory)
    return 0


def cmd_demo(args: Any) -> int:
    """`gatewayd demo [--keep DIR]`."""
    return main(args.keep)
