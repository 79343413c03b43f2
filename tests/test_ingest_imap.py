"""Ingest end to end against a real IMAP server on loopback (pymap, in-process): several accounts,
routing into tickets, server actions after commit, poison mail, crash safety. (The account's
connection, IDLE and polling, refused logins and the CLI: test_ingest_sessions.py.)

These tests pin SQLite; the store's engine-specific parts are covered with both engines in
test_ingest_uids.py.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.pipeline import Envelope, Outcome
from gatewayd.ingest.poller import AccountPoller
from gatewayd.ingest.quarantine import retry_quarantined
from gatewayd.loopback.imap import LoopbackImap, start_imap_server
from gatewayd.runtime import Runtime
from gatewayd.store.contacts import NewContact, NewOrder, create_contact, create_order
from gatewayd.store.db import open_database
from gatewayd.store.models import (
    InboundReceipt,
    Message,
    Outbox,
    Quarantine,
    Ticket,
    TicketEvent,
)
from gatewayd.store.tickets import NewTicket, TicketPatch, TicketStore

MAILS = Path(__file__).parent / "mails"
USERS = {"support": "secret-1", "sales": "secret-2"}


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def account(name: str, port: int, **imap: Any) -> dict[str, Any]:
    settings = {"host": "127.0.0.1", "port": port, "security": "none", "username": name,
                "password": USERS.get(name, "x"), "poll_seconds": 1, **imap}
    return {"name": name, "address": f"{name}@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"}, "imap": settings}


@pytest.fixture
async def imap() -> AsyncIterator[LoopbackImap]:
    async with start_imap_server(USERS) as server:
        yield server


@contextlib.asynccontextmanager
async def running(config: Config) -> AsyncIterator[Runtime]:
    async with open_database(config.database_url):
        yield Runtime(config=config, store=TicketStore(config, event_hooks(config)))


def text_mail(subject: str, body: str = "Hallo", sender: str = "kunde@example.org",
              message_id: str | None = None, **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    mid = message_id or f"<{abs(hash((subject, body, sender)))}@example.org>"
    return (f"From: Kunde <{sender}>\r\nTo: support@shop.example\r\nSubject: {subject}\r\n"
            f"Message-ID: {mid}\r\n{head}Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}\r\n").encode()


async def poll(runtime: Runtime, name: str, **kwargs: Any) -> int:
    acc = runtime.config.account(name)
    assert acc is not None
    return await AccountPoller(runtime, acc, asyncio.Event(), **kwargs).poll_now()


async def wait_for(predicate: Callable[[], Any], limit: float = 15.0) -> None:
    """Wait until the predicate holds (a bound so a broken test fails instead of hanging)."""
    async with asyncio.timeout(limit):
        while True:
            if await predicate():
                return
            await asyncio.sleep(0.05)


# ------------------------------------------------------------------------------ tests


async def test_two_accounts_import_and_move(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port), account("sales", imap.port)])
    await imap.append("support", text_mail("Lieferung verspätet", "Wo bleibt mein Paket?"))
    await imap.append("support", (MAILS / "apple_layout.eml").read_bytes())
    await imap.append("sales", text_mail("Angebot", "Bitte ein Angebot", "firma@example.com"))
    async with running(config) as runtime:
        assert await poll(runtime, "support") == 2
        assert await poll(runtime, "sales") == 1
        tickets = await Ticket.all().order_by("id")
        assert [(t.account, t.source, t.type, t.status) for t in tickets] == [
            ("support", "mail", "Kundenanfrage", "Neu")] * 2 + [
            ("sales", "mail", "Kundenanfrage", "Neu")]
        assert tickets[0].reply_address == "kunde@example.org"
        assert tickets[0].language == "de"
        apple = await Message.get(ticket_id=tickets[1].id)
        assert "Und hier der Text nach dem Bild" in apple.text
        assert apple.routed_by == "new_ticket"
        assert [n["filename"] for n in apple.notes if n["kind"] == "rejected_attachment"] == [
            "virus.exe"]
        assert await apple.attachments.all().count() == 1
        assert await InboundReceipt.filter(server_action_done=True).count() == 3
        # A second poll finds nothing: the mails were moved after the commit.
        assert await poll(runtime, "support") == 0
    assert await imap.uids("support") == []
    assert len(await imap.uids("support", "Imported")) == 2
    assert len(await imap.uids("sales", "Imported")) == 1


async def test_delete_after_import(imap: LoopbackImap,
                                   make_config: Callable[..., Config]) -> None:
    config = make_config(accounts=[account("support", imap.port, after_import="delete")])
    await imap.append("support", text_mail("Bitte löschen"))
    async with running(config) as runtime:
        assert await poll(runtime, "support") == 1
        assert await Ticket.all().count() == 1
    assert await imap.uids("support") == []
    assert await imap.uids("support", "Imported") == []


async def test_server_without_move_copies_and_expunges_by_uid(
    make_config: Callable[..., Config]
) -> None:
    async with start_imap_server(USERS, move=False) as server:
        config = make_config(accounts=[account("support", server.port)])
        await server.append("support", text_mail("Ohne MOVE"))
        keep = await server.append("support", text_mail("Schon gelesen"), flags=["\\Seen"])
        async with running(config) as runtime:
            assert await poll(runtime, "support") == 1
        # Only the imported mail left INBOX: UID EXPUNGE, never a bare EXPUNGE.
        assert await server.uids("support") == [keep]
        assert len(await server.uids("support", "Imported")) == 1


async def test_threading_by_received_and_sent_message_ids(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    await imap.append("support", text_mail("Erste Frage", message_id="<first@example.org>"))
    async with running(config) as runtime:
        await poll(runtime, "support")
        ticket = await Ticket.get()
        other = await runtime.store.create_ticket(NewTicket(title="Andere"))
        await Outbox.create(ticket_id=other.id, message_id="<sent-1@tickets.shop.example>",
                            subject="Antwort", status="sent")
        await imap.append("support", text_mail(
            "Re: Erste Frage", "Nachtrag", message_id="<second@example.org>",
            In_Reply_To="<first@example.org>", References="<first@example.org>"))
        await imap.append("support", text_mail(
            "Re: Antwort", "Danke", message_id="<third@example.org>",
            In_Reply_To="<sent-1@tickets.shop.example>"))
        assert await poll(runtime, "support") == 2
        second = await Message.get(message_id="<second@example.org>")
        third = await Message.get(message_id="<third@example.org>")
        assert (second.ticket_id, second.routed_by) == (ticket.id, "thread_headers")  # type: ignore[attr-defined]
        assert (third.ticket_id, third.routed_by) == (other.id, "thread_headers")  # type: ignore[attr-defined]
        assert await Ticket.all().count() == 2


@pytest.mark.parametrize("where", ["subject", "body"])
async def test_ticket_keyword_appends_and_reopens_closed_ticket(
    where: str, imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    async with running(config) as runtime:
        await imap.append("support", text_mail("Erste Mail", message_id="<k1@example.org>"))
        await poll(runtime, "support")
        ticket = await Ticket.get()
        await runtime.store.update_ticket(ticket.id, TicketPatch(status="Erledigt"))
        keyword = f"Ticketnummer {ticket.id}"
        subject, body = (f"Re: {keyword}", "Noch was") if where == "subject" else (
            "Noch eine Frage", f"Hallo,\nzu {keyword.upper()} noch was.")
        await imap.append("support", text_mail(subject, body, "anders@example.net",
                                               message_id="<k2@example.org>"))
        await poll(runtime, "support")
        message = await Message.get(message_id="<k2@example.org>")
        assert (message.ticket_id, message.routed_by) == (ticket.id, "ticket_keyword")  # type: ignore[attr-defined]
        assert await TicketEvent.filter(ticket_id=ticket.id, kind="customer_message").exists()
        assert await Ticket.all().count() == 1


async def test_unknown_ticket_number_makes_new_ticket_with_note(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    await imap.append("support", text_mail("Ticket-ID 4711", message_id="<u1@example.org>"))
    async with running(config) as runtime:
        await poll(runtime, "support")
        message = await Message.get(message_id="<u1@example.org>")
        assert message.routed_by == "ticket_keyword_unknown"
        assert any("4711" in str(n.get("text")) for n in message.notes)


async def test_customer_order_invoice_and_sender_linking(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    async with running(config) as runtime:
        anna = await create_contact(NewContact(first_name="Anna", number="K-1", id=500,
                                               language="en",
                                               email_private="anna@example.org"))
        bert = await create_contact(NewContact(first_name="Bert", id=501))
        order = await create_order(NewOrder(id=9001, contact_id=bert.id,
                                            invoice_number="20240017"))
        await imap.append("support", text_mail("Kundennummer 500", "Frage",
                                               "x1@example.net", message_id="<c1@x>"))
        await imap.append("support", text_mail("Frage", "zu Auftrags-ID 9001 bitte",
                                               "x2@example.net", message_id="<c2@x>"))
        await imap.append("support", text_mail("Rechnungsnummer 20240017", "falsch",
                                               "x3@example.net", message_id="<c3@x>"))
        await imap.append("support", text_mail("Hallo", "ohne Nummer", "Anna@Example.org",
                                               message_id="<c4@x>"))
        assert await poll(runtime, "support") == 4
        found = {}
        for mid in ("<c1@x>", "<c2@x>", "<c3@x>", "<c4@x>"):
            message = await Message.get(message_id=mid)
            t = await Ticket.get(id=message.ticket_id)  # type: ignore[attr-defined]
            found[mid] = (message.routed_by, t.contact_id, t.order_id, t.language)  # type: ignore[attr-defined]
        assert found["<c1@x>"] == ("customer_keyword", anna.id, None, "en")
        assert found["<c2@x>"] == ("order_keyword", bert.id, order.id, "de")
        assert found["<c3@x>"] == ("invoice_keyword", bert.id, order.id, "de")
        assert found["<c4@x>"] == ("sender_contact", anna.id, None, "en")


@pytest.mark.parametrize(("fixture", "auto"), [
    ("html_only.eml", False), ("broken_mime.eml", False), ("8bit_headers.eml", False),
    ("auto_reply.eml", True), ("bounce.eml", True),
])
async def test_fixture_mails_become_tickets(
    fixture: str, auto: bool, imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    await imap.append("support", (MAILS / fixture).read_bytes())
    async with running(config) as runtime:
        assert await poll(runtime, "support") == 1
        message = await Message.get()
        assert message.auto_reply is auto
        assert message.text.strip()
        message.text.encode("utf-8")
        if fixture == "8bit_headers.eml":
            assert message.from_name == "Müller"
            assert (await Ticket.get()).title == "Prüfung der Rücksendung"


async def test_own_mail_coming_back_is_not_imported(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)],
                         message_id_domain="tickets.shop.example")
    await imap.append("support", text_mail("Ihre Anfrage", sender="support@shop.example",
                                           message_id="<out-1@tickets.shop.example>"))
    await imap.append("support", text_mail("Schleife", X_Loop="support@shop.example"))
    async with running(config) as runtime:
        assert await poll(runtime, "support") == 2
        assert await Ticket.all().count() == 0
        assert await InboundReceipt.filter(outcome="own_mail").count() == 2
    assert await imap.uids("support") == []


async def test_poison_mail_quarantined_while_next_is_imported(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    lines = ["From: a@example.org", "Subject: poison", 'Content-Type: multipart/mixed; '
             'boundary="b0"', ""]
    for i in range(80):
        lines += [f"--b{i}", f'Content-Type: multipart/mixed; boundary="b{i + 1}"', ""]
    poison = "\r\n".join([*lines, "--b80--", ""]).encode()
    poison_uid = await imap.append("support", poison)
    await imap.append("support", text_mail("Nach dem Gift", message_id="<after@x>"))
    async with running(config) as runtime:
        assert await poll(runtime, "support") == 2
        assert await Message.filter(message_id="<after@x>").exists()
        entry = await Quarantine.get()
        assert entry.reason.startswith("cannot parse") and entry.uid == poison_uid
        assert (Path(config.data_dir) / "quarantine" / f"{entry.sha256}.eml").read_bytes() == (
            poison)
        # The original is flagged and seen, not deleted; a new poll leaves it alone.
        assert {"\\Flagged", "\\Seen"} <= await imap.flags("support", poison_uid)
        assert await poll(runtime, "support") == 0
        with pytest.raises(Exception, match="cannot parse"):
            await retry_quarantined(runtime.store, entry.id)


async def test_failing_mail_retried_then_quarantined(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port, max_attempts=2,
                                           quarantine_folder="Quarantine")])
    await imap.append("support", text_mail("Kaputt", message_id="<bad@x>"))
    await imap.append("support", text_mail("Gut", message_id="<good@x>"))

    async def failing_hook(store: TicketStore, event: Any) -> None:
        ticket = await Ticket.get(id=event.ticket_id)
        if ticket.title == "Kaputt":
            raise RuntimeError("event action exploded")

    async with running(config) as runtime:
        runtime.store.hooks.append(failing_hook)
        acc = config.account("support")
        assert acc is not None
        poller = AccountPoller(runtime, acc, asyncio.Event())
        assert await poller.poll_now() == 1  # the good one; the bad one failed once
        assert await Quarantine.all().count() == 0
        assert await poller.poll_now() == 1  # second failure: quarantined
        entry = await Quarantine.get()
        assert "event action exploded" in entry.reason and entry.attempts == 2
        assert await Ticket.filter(title="Kaputt").count() == 0  # rolled back cleanly
        runtime.store.hooks.remove(failing_hook)
        outcome = await retry_quarantined(runtime.store, entry.id)
        assert outcome.kind == "imported"
        assert (await Quarantine.get()).status == "retried"
    assert len(await imap.uids("support", "Quarantine")) == 1


class Killed(BaseException):
    """Stands in for a kill -9 between the commit and the server action."""


async def test_kill_between_commit_and_server_action_leaves_one_ticket(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port)])
    await imap.append("support", text_mail("Absturz", message_id="<crash@x>"))

    async def kill(env: Envelope, outcome: Outcome) -> None:
        raise Killed

    async with running(config) as runtime:
        with pytest.raises(Killed):
            await poll(runtime, "support", after_commit=kill)
        assert await Ticket.all().count() == 1
        assert len(await imap.uids("support")) == 1  # still on the server
    async with running(config) as runtime:  # "restart"
        assert await poll(runtime, "support") == 1
        assert await Ticket.all().count() == 1
        assert await InboundReceipt.filter(server_action_done=True).count() == 1
    assert await imap.uids("support") == []


async def test_oversized_mail_becomes_ticket_and_stays_flagged(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port, max_message_bytes=2048)])
    uid = await imap.append("support", text_mail("Riesig", "x" * 10_000, message_id="<big@x>"))
    async with running(config) as runtime:
        assert await poll(runtime, "support") == 1
        message = await Message.get(message_id="<big@x>")
        assert "more than the limit of 2,048 bytes" in message.text
        assert "xxxx" not in message.text
    assert await imap.uids("support") == [uid]
    assert "\\Flagged" in await imap.flags("support", uid)


async def test_uidvalidity_change_falls_back_to_message_id_and_hash(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port, after_import="delete")])
    raw = text_mail("Einmal", message_id="<once@x>")
    await imap.append("support", raw)
    async with running(config) as runtime:
        await poll(runtime, "support")
        # The server lost its state: new UIDVALIDITY, the same mail appears again.
        await imap.set_uids("support", uidvalidity=12345, last_uid=100)
        await imap.append("support", raw)
        assert await poll(runtime, "support") == 1
        assert await Ticket.all().count() == 1
        assert await InboundReceipt.filter(outcome="duplicate").count() == 1
