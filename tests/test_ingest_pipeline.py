"""Ingest's batching and pipelining: batched routing look-ups give each mail the facts the
one-mail-at-a-time look-ups gave (SQLite and PostgreSQL), a mail sees what the mails before it in
its batch stored, and the poller's pipeline (the next batch fetched and parsed while one is
committed) keeps UID order, commits before every server action and survives a kill or a stop
between the two.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from tortoise.expressions import Q

from gatewayd.config import Account, Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest import drain as drain_module
from gatewayd.ingest.parse import parse_mail
from gatewayd.ingest.pipeline import Envelope, Outcome, Prepared, import_batch
from gatewayd.ingest.poller import AccountPoller
from gatewayd.loopback.imap import LoopbackImap, start_imap_server
from gatewayd.mail import InboundMail
from gatewayd.routing.keywords import Keywords
from gatewayd.routing.lookup import facts_for, lookup_batch
from gatewayd.routing.rules import Facts, keywords_of, referenced_ids
from gatewayd.runtime import Runtime
from gatewayd.store.contacts import (
    NewAddress,
    NewContact,
    NewOrder,
    create_contact,
    create_order,
    find_contacts_by_email,
)
from gatewayd.store.db import open_database
from gatewayd.store.models import Contact, InboundReceipt, Message, Order, Outbox, Ticket
from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore
from tests.test_ingest_imap import USERS, account, running, text_mail


def support(config: Config) -> Account:
    acc = config.account("support")
    assert acc is not None
    return acc


async def one_at_a_time(mail: InboundMail, keys: Keywords) -> Facts:
    """The look-ups as they were made before batching, one mail at a time: the reference."""
    thread_id = thread_mid = None
    ids = referenced_ids(mail)[:100]
    known: dict[str, int] = {}
    for mid, ticket_id in await Outbox.filter(
        message_id__in=ids or [""], ticket_id__isnull=False
    ).order_by("id").values_list("message_id", "ticket_id"):
        known.setdefault(str(mid), int(ticket_id))
    for mid, ticket_id in await Message.filter(message_id__in=ids or [""]).order_by(
        "id").values_list("message_id", "ticket_id"):
        known.setdefault(str(mid), int(ticket_id))
    for mid in ids:
        if mid in known and await Ticket.exists(id=known[mid]):
            thread_id, thread_mid = known[mid], mid
            break
    ticket_exists = keys.ticket_id is not None and await Ticket.exists(id=keys.ticket_id)
    phrase_ticket = None
    for number in keys.ticket_phrases:
        if await Ticket.exists(id=number):
            phrase_ticket = number
            break

    async def customer_of(value: str) -> Contact | None:
        cond = Q(number=value)
        if len(value) < 10:
            cond |= Q(id=int(value))
        matches = await Contact.filter(cond).order_by("id")
        return next((c for c in matches if c.number == value), matches[0] if matches else None)

    customer = customer_via = None
    if keys.customer is not None:
        customer = await customer_of(keys.customer)
        customer_via = "customer_keyword" if customer else None
    for value in keys.customer_phrases:
        if customer is None:
            customer = await customer_of(value)
            customer_via = "customer_phrase" if customer else None
    order = order_via = None
    if keys.order_id is not None:
        order = await Order.get_or_none(id=keys.order_id)
        order_via = "order_keyword" if order else None
    if order is None and keys.invoice is not None:
        order = await Order.filter(invoice_number=keys.invoice).order_by("-id").first()
        order_via = "invoice_keyword" if order else None
    for number in keys.order_phrases:
        if order is None:
            order = await Order.get_or_none(id=number)
            order_via = "order_phrase" if order else None
    for value in keys.invoice_phrases:
        if order is None:
            order = await Order.filter(invoice_number=value).order_by("-id").first()
            order_via = "invoice_phrase" if order else None
    sender = None
    if mail.from_address:
        found = await find_contacts_by_email(mail.from_address)
        sender = found[0] if found else None
    order_contact_id = order.contact_id if order else None  # type: ignore[attr-defined]
    chosen = (customer.id if customer else None) or order_contact_id or (
        sender.id if sender else None)
    language = None
    if chosen is not None:
        for candidate in (customer, sender):
            if candidate is not None and candidate.id == chosen:
                language = candidate.language
        if language is None:
            languages = await Contact.filter(id=chosen).values_list("language", flat=True)
            language = languages[0] if languages else None  # type: ignore[assignment]
    return Facts(thread_ticket_id=thread_id, thread_message_id=thread_mid,
                 ticket_exists=bool(ticket_exists),
                 customer_contact_id=customer.id if customer else None,
                 order_id=order.id if order else None, order_contact_id=order_contact_id,
                 order_language=order.language if order else None,
                 sender_contact_id=sender.id if sender else None, contact_language=language,
                 phrase_ticket_id=phrase_ticket, order_via=order_via, customer_via=customer_via)


async def test_batched_lookups_give_the_facts_of_one_at_a_time(
    db_url: str, make_config: Callable[..., Config]
) -> None:
    config = make_config()
    async with open_database(db_url):
        store = TicketStore(config)
        anna = await create_contact(NewContact(first_name="Anna", id=500, number="K-1",
                                               language="en", email_private="anna@example.org"))
        await create_contact(NewContact(first_name="Zahl", id=501, number="500",
                                        language="fr"))  # number 500 beats id 500
        bert = await create_contact(NewContact(
            first_name="Bert", id=502, email_business="bert@example.org",
            addresses=[NewAddress(kind="billing", primary=True, email="shared@example.org")]))
        await create_contact(NewContact(first_name="Cleo", id=503, language="it",
                                        email_paypal="shared@example.org"))
        await create_order(NewOrder(id=9001, contact_id=bert.id, invoice_number="R-1",
                                    language="nl"))
        await create_order(NewOrder(id=9002, contact_id=anna.id, invoice_number="2024"))
        await create_order(NewOrder(id=9003, contact_id=503, invoice_number="2024"))
        await create_order(NewOrder(id=9004, invoice_number="77"))
        first = await store.create_ticket(NewTicket(title="eins"), NewMessage(
            text="x", message_id="<m1@example.org>"))
        second = await store.create_ticket(NewTicket(title="zwei"), NewMessage(
            text="x", message_id="<m2@example.org>"))
        gone = await store.create_ticket(NewTicket(title="weg"), NewMessage(
            text="x", message_id="<gone@example.org>"))
        await Outbox.create(ticket_id=second.id, message_id="<m1@example.org>",
                            subject="Antwort", status="sent")  # sent beats received
        await Outbox.create(ticket_id=first.id, message_id="<out@tickets.example>",
                            subject="Antwort", status="sent")
        await store.delete_ticket(gone.id)
        mails = [
            text_mail("Re: eins", In_Reply_To="<m1@example.org>"),
            text_mail("Re", In_Reply_To="<gone@example.org>",
                      References="<out@tickets.example> <gone@example.org>"),
            text_mail("Re", References="<nobody@example.org> <m2@example.org>"),
            text_mail(f"Ticket-ID {first.id}"), text_mail("Ticket-ID 999999"),
            text_mail("Kundennummer 500", sender="x@example.net"),
            text_mail("Kunden-Nr. K-1"), text_mail("Kunden-Nr. 502"),
            text_mail("Kundennummer 4242"),
            text_mail("Auftrags-ID 9001", sender="anna@example.org"),
            text_mail("Auftrags-ID 9004"), text_mail("Auftrags-ID 31337"),
            text_mail("Rechnungsnummer 2024"), text_mail("Rechnungsnummer 77"),
            text_mail("Auftrags-ID 31337 Rechnung Nr R-1"),
            text_mail("Hallo", sender="Anna@Example.org"),
            text_mail("Hallo", sender="shared@example.org"),
            text_mail("Hallo", sender="bert@example.org"),
            text_mail("Hallo", sender="niemand@example.org"),
            text_mail("Kundennummer 500 Auftrags-ID 9001", sender="bert@example.org"),
            # Phrases customers write: linked only when the order (contact) exists.
            text_mail("Bestellnummer 9004"), text_mail("Bestellnummer 31337, Order #9002"),
            text_mail("Auftrags-ID 31337", "Bestell-Nr. 9001"), text_mail("Kd.-Nr. 502"),
            text_mail("Rg.-Nr. 77"), text_mail("Kd.-Nr. 4242"),
        ]
        parsed = [parse_mail(raw) for raw in mails]
        pairs = [(mail, keywords_of(mail)) for mail in parsed]
        found = await lookup_batch(pairs)
        for mail, keys in pairs:
            assert facts_for(mail, keys, found) == await one_at_a_time(mail, keys), mail.subject
        # Spot checks that the reference itself means what it should.
        facts = [facts_for(mail, keys, found) for mail, keys in pairs]
        assert facts[0].thread_ticket_id == second.id
        assert (facts[1].thread_ticket_id, facts[1].thread_message_id) == (
            first.id, "<out@tickets.example>")
        assert facts[5].customer_contact_id == 501
        assert facts[12].order_id == 9003
        assert facts[16].sender_contact_id == bert.id
        assert (facts[20].order_id, facts[20].order_via) == (9004, "order_phrase")
        assert (facts[21].order_id, facts[21].order_via) == (9002, "order_phrase")
        assert (facts[22].order_id, facts[22].order_via) == (9001, "order_phrase")
        assert (facts[23].customer_contact_id, facts[23].customer_via) == (
            502, "customer_phrase")
        assert (facts[24].order_id, facts[24].order_via) == (9004, "invoice_phrase")
        assert facts[25].customer_contact_id is None


async def test_a_batch_sees_what_the_mails_before_it_stored(
    tmp_path: Path, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", 1)])
    acc = config.account("support")
    assert acc is not None
    raws = [
        text_mail("Erste Frage", message_id="<q1@example.org>"),
        text_mail("Re: Erste Frage", "Nachtrag", message_id="<q2@example.org>",
                  In_Reply_To="<q1@example.org>"),
        text_mail("Andere Frage", sender="b@example.org", message_id="<q3@example.org>"),
    ]
    async with open_database(config.database_url):
        store = TicketStore(config, event_hooks(config))
        items = [Prepared(Envelope("support", "INBOX", 7, 101 + n), raw, parse_mail(raw))
                 for n, raw in enumerate(raws)]
        outcomes = await import_batch(store, acc, items)
        assert [o.kind for o in outcomes] == ["imported"] * 3
        assert [o.rule for o in outcomes] == ["new_ticket", "thread_headers", "new_ticket"]
        assert outcomes[1].ticket_id == outcomes[0].ticket_id != outcomes[2].ticket_id
        # A ticket number naming a ticket opened earlier in the same batch appends to it.
        keyword = text_mail(f"Ticket-ID {outcomes[2].ticket_id}", message_id="<q4@example.org>",
                            sender="c@example.org")
        late = [text_mail("Neu", sender="d@example.org", message_id="<q5@example.org>"),
                keyword]
        more = await import_batch(store, acc, [
            Prepared(Envelope("support", "INBOX", 7, 201 + n), raw, parse_mail(raw))
            for n, raw in enumerate(late)])
        assert [o.rule for o in more] == ["new_ticket", "ticket_keyword"]
        for outcome, raw in zip([*outcomes, *more], [*raws, *late], strict=True):
            message = await Message.get(id=outcome.message_id)
            assert message.message_id == parse_mail(raw).message_id
            receipt = await InboundReceipt.get(ticket_message_id=outcome.message_id)
            assert receipt.ticket_id == outcome.ticket_id  # type: ignore[attr-defined]
        assert await InboundReceipt.all().count() == 5


async def test_attachments_are_written_before_the_transaction(
    make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", 1)])
    acc = config.account("support")
    assert acc is not None
    pdf = b"%PDF-1.4 pipeline test"
    raw = (b"From: a@example.org\r\nSubject: Beleg\r\nMessage-ID: <att@x>\r\n"
           b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n'
           b"Content-Type: text/plain\r\n\r\nanbei\r\n--b\r\nContent-Type: application/pdf\r\n"
           b'Content-Disposition: attachment; filename="a.pdf"\r\n'
           b"Content-Transfer-Encoding: base64\r\n\r\n"
           + base64.encodebytes(pdf) + b"--b--\r\n")
    digest = hashlib.sha256(pdf).hexdigest()
    blob = Path(config.data_dir) / "attachments" / digest[:2] / digest[2:]

    async def refuse(store: TicketStore, event: Any) -> None:
        assert blob.read_bytes() == pdf  # in place before anything commits
        raise RuntimeError("no")

    async with open_database(config.database_url):
        store = TicketStore(config, [refuse])
        items = [Prepared(Envelope("support", "INBOX", 1, uid), raw, parse_mail(raw))
                 for uid in (5, 6)]
        with pytest.raises(RuntimeError):
            await import_batch(store, acc, items)
        assert await Ticket.all().count() == 0 and await InboundReceipt.all().count() == 0


# ------------------------------------------------------------------------------ pipelining


class Killed(BaseException):
    """Stands in for a kill -9 between a commit and its server action."""


@pytest.fixture
async def imap() -> Any:
    async with start_imap_server(USERS) as server:
        yield server


async def fill(imap: LoopbackImap, count: int) -> list[int]:
    return [await imap.append("support", text_mail(f"Frage {n}", message_id=f"<p{n}@x>",
                                                   sender=f"k{n}@example.org"))
            for n in range(count)]


async def test_pipeline_keeps_uid_order_and_commits_before_each_server_action(
    imap: LoopbackImap, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain_module, "FETCH_BATCH", 3)
    config = make_config(accounts=[account("support", imap.port)])
    uids = await fill(imap, 8)
    committed: list[int] = []
    fetched: list[list[int]] = []
    events: list[str] = []

    async def after_commit(env: Envelope, outcome: Outcome) -> None:
        committed.append(env.uid)
        events.append(f"commit {env.uid}")
        # The server action comes after the commit: the mail is still in the INBOX.
        assert env.uid in await imap.uids("support")
        assert await InboundReceipt.filter(uid=env.uid, server_action_done=False).exists()

    original = AccountPoller._fetch_and_prepare

    async def spy(self: AccountPoller, session: Any, lock: Any, batch: list[int],
                  *args: Any, **kwargs: Any) -> Any:
        events.append(f"fetch {batch[0]}")
        fetched.append(list(batch))
        return await original(self, session, lock, batch, *args, **kwargs)

    monkeypatch.setattr(AccountPoller, "_fetch_and_prepare", spy)
    async with running(config) as runtime:
        acc = support(config)
        assert await AccountPoller(runtime, acc, asyncio.Event(), after_commit).poll_now() == 8
        assert committed == uids
        assert fetched == [uids[0:3], uids[3:6], uids[6:8]]
        # Pipelined: the second batch was fetched before the first one committed.
        assert events.index(f"fetch {uids[3]}") < events.index(f"commit {uids[0]}")
        tickets = await Ticket.all().order_by("id")
        assert [t.title for t in tickets] == [f"Frage {n}" for n in range(8)]
    assert await imap.uids("support") == []
    assert len(await imap.uids("support", "Imported")) == 8


async def test_pipeline_kill_between_commit_and_server_action(
    imap: LoopbackImap, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain_module, "FETCH_BATCH", 3)
    config = make_config(accounts=[account("support", imap.port)])
    uids = await fill(imap, 8)
    seen: list[int] = []

    async def kill_in_second_batch(env: Envelope, outcome: Outcome) -> None:
        seen.append(env.uid)
        if env.uid == uids[3]:
            raise Killed

    async with running(config) as runtime:
        acc = support(config)
        with pytest.raises(Killed):
            await AccountPoller(runtime, acc, asyncio.Event(), kill_in_second_batch).poll_now()
        # Batch one: committed and moved. Batch two: committed, not moved. Batch three was
        # fetched and parsed meanwhile but nothing of it was written.
        assert await imap.uids("support") == uids[3:]
        receipts = {r.uid: r.server_action_done for r in await InboundReceipt.all()}
        assert receipts == {**dict.fromkeys(uids[:3], True), **dict.fromkeys(uids[3:6], False)}
        assert await Ticket.all().count() == 6
        # "Restart": every mail exactly once, everything moved.
        assert await AccountPoller(runtime, acc, asyncio.Event()).poll_now() == 5
        assert await Ticket.all().count() == 8
        assert await InboundReceipt.filter(server_action_done=True).count() == 8
    assert await imap.uids("support") == []


async def test_pipeline_stop_finishes_the_batch_in_hand_and_drops_the_next(
    imap: LoopbackImap, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain_module, "FETCH_BATCH", 2)
    config = make_config(accounts=[account("support", imap.port)])
    uids = await fill(imap, 9)
    stop = asyncio.Event()

    async def stop_at_first_commit(env: Envelope, outcome: Outcome) -> None:
        stop.set()

    async with running(config) as runtime:
        acc = support(config)
        handled = await AccountPoller(runtime, acc, stop, stop_at_first_commit).poll_now()
        # The batch being stored is finished (commit and server action); the one fetched and
        # parsed behind it is dropped, unwritten, and stays unseen on the server.
        assert handled == 2
        assert await InboundReceipt.filter(server_action_done=True).count() == 2
        assert await InboundReceipt.all().count() == 2
        assert await poll_again(runtime, acc) == 7
    assert await imap.uids("support") == []
    assert len(await imap.uids("support", "Imported")) == len(uids)


async def poll_again(runtime: Runtime, acc: Any) -> int:
    return await AccountPoller(runtime, acc, asyncio.Event()).poll_now()


async def test_pipeline_poison_in_a_later_batch_is_quarantined_in_order(
    imap: LoopbackImap, make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(drain_module, "FETCH_BATCH", 2)
    config = make_config(accounts=[account("support", imap.port)])
    lines = ["From: a@example.org", "Subject: poison", 'Content-Type: multipart/mixed; '
             'boundary="b0"', ""]
    for i in range(80):
        lines += [f"--b{i}", f'Content-Type: multipart/mixed; boundary="b{i + 1}"', ""]
    good = await fill(imap, 3)
    poison = await imap.append("support", "\r\n".join([*lines, "--b80--", ""]).encode())
    last = await imap.append("support", text_mail("Danach", message_id="<after@x>"))
    async with running(config) as runtime:
        acc = support(config)
        assert await AccountPoller(runtime, acc, asyncio.Event()).poll_now() == 5
        assert await Ticket.all().count() == 4
        outcomes = {r.uid: r.outcome for r in await InboundReceipt.all()}
        assert outcomes == {**dict.fromkeys([*good, last], "imported"), poison: "quarantined"}
    assert await imap.uids("support") == [poison]
    assert {"\\Flagged", "\\Seen"} <= await imap.flags("support", poison)
