"""The ticket store on SQLite and PostgreSQL: one transaction per change, events, hooks, search."""

from __future__ import annotations

import datetime as dt
from email.message import EmailMessage
from typing import Any

import pytest
from tortoise import connections
from tortoise.exceptions import IntegrityError

from gatewayd.outbound.outbox import enqueue_mail
from gatewayd.store.attachments import blob_path
from gatewayd.store.changes import (
    DomainEvent,
    InvalidChange,
    NewAttachment,
    NewMessage,
    NewTicket,
    NotFound,
    TicketPatch,
)
from gatewayd.store.contacts import NewAddress, NewContact, NewOrder, create_contact, create_order
from gatewayd.store.db import migrate, open_database
from gatewayd.store.models import (
    Attachment,
    ContactAddress,
    InboundReceipt,
    Message,
    Outbox,
    StatusChange,
    Ticket,
    TicketEvent,
)
from gatewayd.store.ticket_views import TicketQuery, search_tickets, ticket_view
from gatewayd.store.tickets import MAX_HOOK_ROUNDS, TicketStore


class Boom(Exception):
    pass


async def _counts() -> dict[str, int]:
    return {
        "tickets": await Ticket.all().count(),
        "messages": await Message.all().count(),
        "history": await StatusChange.all().count(),
        "events": await TicketEvent.all().count(),
        "outbox": await Outbox.all().count(),
    }


def _mail(subject: str = "Ihre Anfrage") -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = "support@shop.example"
    message.set_content("Danke.")
    return message


# ------------------------------------------------------------------ change, history, events


async def test_create_writes_ticket_history_message_and_event(store: TicketStore) -> None:
    seen: list[tuple[str, int, int]] = []

    async def hook(s: TicketStore, event: DomainEvent) -> None:
        # Inside the transaction: the hook already sees the new rows.
        seen.append((event.kind, await Ticket.filter(id=event.ticket_id).count(),
                     await StatusChange.filter(ticket_id=event.ticket_id).count()))

    store.hooks.append(hook)
    ticket = await store.create_ticket(
        NewTicket(title="  Wo bleibt mein Paket?  ", source="mail", account="support",
                  owners=[("anna", "Support")], tags=["paket", "paket", " "]),
        first_message=NewMessage(text="Hallo", from_address="kunde@example.org"),
        actor="ingest",
    )
    assert seen == [("ticket_created", 1, 1)]
    assert ticket.title == "Wo bleibt mein Paket?"
    assert (ticket.type, ticket.status) == ("Kundenanfrage", "Neu")  # the first configured
    view = await ticket_view(store.config, ticket, full=True)
    assert view["owners"] == [{"name": "anna", "role": "Support"}]
    assert view["tags"] == ["paket"]
    assert view["status_history"][0] | {"changed_at": None} == {
        "from_type": None, "from_status": None, "type": "Kundenanfrage", "status": "Neu",
        "progress": 0, "status_group": "Offen", "actor": "ingest", "changed_at": None,
    }
    assert [m["text"] for m in view["messages"]] == ["Hallo"]
    (event,) = await TicketEvent.filter(ticket_id=ticket.id)
    assert event.kind == "ticket_created" and event.actor == "ingest"
    assert event.data["source"] == "mail" and event.data["account"] == "support"


async def test_status_change_records_history_with_progress_and_group(store: TicketStore) -> None:
    kinds: list[str] = []

    async def hook(s: TicketStore, event: DomainEvent) -> None:
        kinds.append(event.kind)

    store.hooks.append(hook)
    ticket = await store.create_ticket(NewTicket(title="t"))
    before = ticket.last_status_change_at
    await store.update_ticket(ticket.id, TicketPatch(status="In Bearbeitung"), actor="anna")
    await store.update_ticket(ticket.id, TicketPatch(priority=5, folder="Retouren"))
    await store.update_ticket(ticket.id, TicketPatch(type="Beschwerde"))  # → its first status
    updated = await Ticket.get(id=ticket.id)
    assert (updated.type, updated.status, updated.priority) == ("Beschwerde", "Eingegangen", 5)
    assert updated.last_status_change_at is not None and before is not None
    assert updated.last_status_change_at >= before
    history = await StatusChange.filter(ticket_id=ticket.id).order_by("id")
    assert [(h.from_status, h.to_status, h.progress, h.status_group, h.actor)
            for h in history] == [
        (None, "Neu", 0, "Offen", None),
        ("Neu", "In Bearbeitung", 50, "Offen", "anna"),
        ("In Bearbeitung", "Eingegangen", 0, "Offen", None),
    ]
    # Hooks get the events configured actions react to; the log also has the other changes.
    assert kinds == ["ticket_created", "status_changed", "status_changed"]
    logged = await TicketEvent.filter(ticket_id=ticket.id).order_by("id").values_list(
        "kind", flat=True)
    assert logged == ["ticket_created", "status_changed", "ticket_updated", "status_changed"]
    updated_event = await TicketEvent.get(ticket_id=ticket.id, kind="ticket_updated")
    assert updated_event.data == {"fields": ["folder", "priority"]}


async def test_each_message_kind_fires_its_event(store: TicketStore) -> None:
    fired: list[tuple[str, int | None]] = []

    async def hook(s: TicketStore, event: DomainEvent) -> None:
        fired.append((event.kind, event.message_id))

    store.hooks.append(hook)
    ticket = await store.create_ticket(NewTicket(title="t"))
    incoming = await store.add_message(ticket.id, NewMessage(text="Frage", direction="in"))
    outgoing = await store.add_message(ticket.id, NewMessage(text="Antwort", direction="out",
                                                             author="anna"))
    comment = await store.add_message(ticket.id, NewMessage(text="intern", kind="comment",
                                                            direction="out"))
    assert fired == [("ticket_created", None), ("customer_message", incoming.id),
                     ("staff_message", outgoing.id), ("comment_added", comment.id)]
    staff = await TicketEvent.get(ticket_id=ticket.id, kind="staff_message")
    assert staff.actor == "anna"
    with pytest.raises(InvalidChange):
        await store.add_message(ticket.id, NewMessage(text="x", kind="note"))
    with pytest.raises(NotFound):
        await store.add_message(999999, NewMessage(text="x"))


async def test_invalid_changes_write_nothing(store: TicketStore) -> None:
    ticket = await store.create_ticket(NewTicket(title="t"))
    before = await _counts()
    for patch in (TicketPatch(status="Gelöst"),  # a status of another type
                  TicketPatch(type="Lob"), TicketPatch(priority=6), TicketPatch(title=" "),
                  TicketPatch(owners=[("niemand", None)]), TicketPatch(parent_id=ticket.id),
                  TicketPatch(contact_id=424242)):
        with pytest.raises(InvalidChange):
            await store.update_ticket(ticket.id, patch)
    for new in (NewTicket(title="x", type="Lob"), NewTicket(title="x", status="Gelöst"),
                NewTicket(title="x", priority=-1), NewTicket(title="x", order_id=7)):
        with pytest.raises(InvalidChange):
            await store.create_ticket(new)
    assert await _counts() == before
    assert (await Ticket.get(id=ticket.id)).status == "Neu"


# ------------------------------------------------------------------ one transaction


async def test_a_failing_hook_rolls_back_everything_including_outbox(store: TicketStore) -> None:
    async def hook(s: TicketStore, event: DomainEvent) -> None:
        await enqueue_mail(s.config, _mail(), ["kunde@example.org"], ticket_id=event.ticket_id,
                           event=event.kind)
        if event.kind in ("ticket_created", "status_changed", "customer_message"):
            raise Boom(event.kind)

    ticket = await store.create_ticket(NewTicket(title="bleibt"))  # no hook yet
    await store.add_message(ticket.id, NewMessage(text="erste"))
    before = await _counts()
    store.hooks.append(hook)

    with pytest.raises(Boom):
        await store.create_ticket(NewTicket(title="neu"), NewMessage(text="m"))
    with pytest.raises(Boom):
        await store.update_ticket(ticket.id, TicketPatch(status="Erledigt", priority=1))
    with pytest.raises(Boom):
        await store.add_message(ticket.id, NewMessage(text="zweite"))
    assert await _counts() == before
    unchanged = await Ticket.get(id=ticket.id)
    assert (unchanged.status, unchanged.priority) == ("Neu", 3)

    # The same hook commits its outbox row with a change it does not refuse.
    await store.add_message(ticket.id, NewMessage(text="intern", kind="comment"))
    (row,) = await Outbox.filter(ticket_id=ticket.id)
    assert row.event == "comment_added" and row.envelope_to == ["qa@shop.example"]


async def test_nested_transactions_join_and_fire_at_the_end(store: TicketStore) -> None:
    order: list[str] = []

    async def hook(s: TicketStore, event: DomainEvent) -> None:
        order.append(f"hook:{event.kind}")

    store.hooks.append(hook)
    async with store.transaction() as fired:
        ticket = await store.create_ticket(NewTicket(title="a"))
        order.append("created")
        async with store.transaction():  # joins
            await store.add_message(ticket.id, NewMessage(text="m"))
            order.append("message")
        assert fired == []  # nothing fired before the outer block ends
    assert order == ["created", "message", "hook:ticket_created", "hook:customer_message"]
    assert [e.kind for e in fired] == ["ticket_created", "customer_message"]

    before = await _counts()
    with pytest.raises(Boom):
        async with store.transaction():
            ticket = await store.create_ticket(NewTicket(title="b"))
            async with store.transaction():
                await store.update_ticket(ticket.id, TicketPatch(status="Erledigt"))
            raise Boom
    assert await _counts() == before  # the inner "commit" was part of the outer rollback
    assert not await Ticket.filter(title="b").exists()


async def test_hooks_that_change_the_ticket_fire_further_events(store: TicketStore) -> None:
    """Like the example's "Wieder öffnen" action: a customer message re-opens a closed ticket."""
    fired: list[str] = []

    async def reopen(s: TicketStore, event: DomainEvent) -> None:
        fired.append(event.kind)
        if event.kind == "customer_message":
            ticket = await Ticket.get(id=event.ticket_id)
            if ticket.status == "Erledigt":
                await s.update_ticket(event.ticket_id, TicketPatch(status="Neu"), actor="rule")

    ticket = await store.create_ticket(NewTicket(title="t", status="Erledigt"))
    store.hooks.append(reopen)
    await store.add_message(ticket.id, NewMessage(text="doch noch eine Frage"))
    assert fired == ["customer_message", "status_changed"]
    assert (await Ticket.get(id=ticket.id)).status == "Neu"
    last = await StatusChange.filter(ticket_id=ticket.id).order_by("-id").first()
    assert last is not None and (last.from_status, last.to_status, last.actor) == (
        "Erledigt", "Neu", "rule")


async def test_hooks_that_keep_firing_each_other_are_stopped(store: TicketStore) -> None:
    async def ping_pong(s: TicketStore, event: DomainEvent) -> None:
        if event.kind == "status_changed":
            ticket = await Ticket.get(id=event.ticket_id)
            other = "Neu" if ticket.status == "Erledigt" else "Erledigt"
            await s.update_ticket(event.ticket_id, TicketPatch(status=other))

    ticket = await store.create_ticket(NewTicket(title="t"))
    store.hooks.append(ping_pong)
    await store.update_ticket(ticket.id, TicketPatch(status="Erledigt"))
    changes = await StatusChange.filter(ticket_id=ticket.id).count()
    assert changes == 1 + MAX_HOOK_ROUNDS + 1  # creation, the rounds, and the last pending one
    stopped = await TicketEvent.get(ticket_id=ticket.id, kind="event_loop_stopped")
    assert stopped.data == {"pending": ["status_changed"]}


# ------------------------------------------------------------------ attachments, receipts


async def test_attachments_are_stored_once_per_content(store: TicketStore) -> None:
    pdf = b"%PDF-1.4 Rechnung " * 100
    ticket = await store.create_ticket(NewTicket(title="t"), NewMessage(
        text="a", attachments=[NewAttachment("rechnung.pdf", "application/pdf", pdf)]))
    await store.add_message(ticket.id, NewMessage(text="b", attachments=[
        NewAttachment("kopie.pdf", "application/pdf", pdf),
        NewAttachment("", "", b"anderes"),
    ]))
    rows = await Attachment.all().order_by("id")
    assert [(a.filename, a.content_type, a.size) for a in rows] == [
        ("rechnung.pdf", "application/pdf", len(pdf)), ("kopie.pdf", "application/pdf", len(pdf)),
        ("attachment", "application/octet-stream", 7)]
    assert rows[0].sha256 == rows[1].sha256 != rows[2].sha256
    files = [p for p in (store.data_dir / "attachments").rglob("*") if p.is_file()]
    assert sorted(files) == sorted({blob_path(store.data_dir, a.sha256) for a in rows})
    assert blob_path(store.data_dir, rows[0].sha256).read_bytes() == pdf


@pytest.mark.parametrize("value", [1, 2**31, 4294967295])
async def test_inbound_receipts_hold_32_bit_unsigned_uids(store: TicketStore, value: int) -> None:
    await InboundReceipt.create(account="support", folder="INBOX", uidvalidity=value, uid=value,
                                message_id="<a@b>", content_hash="0" * 64)
    receipt = await InboundReceipt.get(account="support", uid=value)
    assert (receipt.uidvalidity, receipt.uid) == (value, value)
    # The same UID under another UIDVALIDITY (the mailbox was re-created) is another mail.
    await InboundReceipt.create(account="support", folder="INBOX", uidvalidity=value - 1,
                                uid=value, content_hash="1" * 64)
    with pytest.raises(IntegrityError):
        await InboundReceipt.create(account="support", folder="INBOX", uidvalidity=value,
                                    uid=value, content_hash="2" * 64)
    assert await InboundReceipt.filter(uid=value).count() == 2


# ------------------------------------------------------------------ search


async def test_search_by_every_filter(store: TicketStore) -> None:
    contact = await create_contact(NewContact(first_name="Erika", email_private="e@example.org"))
    order = await create_order(NewOrder(contact_id=contact.id, invoice_number="RE-1"))
    a = await store.create_ticket(
        NewTicket(title="Rücksendung Jacke", contact_id=contact.id, order_id=order.id,
                  priority=5, owners=[("anna", None)], tags=["retoure"], folder="Retouren",
                  source="mail", account="support"),
        NewMessage(text="Die Jacke ist zu klein"))
    b = await store.create_ticket(NewTicket(title="Rechnung fehlt", type="Beschwerde",
                                            source="form"))
    await store.add_message(b.id, NewMessage(text="Bitte die RECHNUNG schicken, ÜBERWEISUNG ok"))
    await store.add_message(b.id, NewMessage(text="Rechnung nochmal", kind="comment"))
    c = await store.create_ticket(NewTicket(title="Danke", status="Erledigt", priority=0))
    config = store.config

    async def ids(**filters: object) -> list[int]:
        return [t.id for t in await search_tickets(config, TicketQuery(**filters))]  # type: ignore[arg-type]

    assert await ids() == [c.id, b.id, a.id]  # newest first
    assert await ids(status="Neu") == [a.id]
    assert await ids(type="Beschwerde") == [b.id]
    assert await ids(status_group="Offen") == [b.id, a.id]
    assert await ids(status_group="Geschlossen") == [c.id]
    assert await ids(status_group="Unbekannt") == []
    assert await ids(contact_id=contact.id) == [a.id]
    assert await ids(order_id=order.id) == [a.id]
    assert await ids(owner="anna") == [a.id]
    assert await ids(priority=0) == [c.id]
    assert await ids(tag="retoure") == [a.id]
    assert await ids(folder="Retouren") == [a.id]
    assert await ids(source="form") == [b.id]
    assert await ids(account="support") == [a.id]
    # Text search: title and message text, case-insensitive, a ticket once however many match.
    assert await ids(q="jacke") == [a.id]
    assert await ids(q="zu klein") == [a.id]
    assert await ids(q="rechnung") == [b.id]
    assert await ids(q="Rücksendung") == [a.id]
    assert await ids(q="RÜCKSENDUNG") == [a.id]  # non-ASCII case folding, on SQLite too
    assert await ids(q="überweisung") == [b.id]
    assert await ids(q="nirgends") == []
    assert await ids(q="e", status="Neu", priority=5) == [a.id]  # filters combine
    assert await ids(limit=2) == [c.id, b.id]
    assert await ids(limit=2, offset=2) == [a.id]


async def test_search_treats_like_wildcards_literally(store: TicketStore) -> None:
    await store.create_ticket(NewTicket(title="100% zufrieden"))
    other = await store.create_ticket(NewTicket(title="1000 Dank"))
    found = await search_tickets(store.config, TicketQuery(q="100%"))
    assert other.id not in [t.id for t in found] and len(found) == 1
    assert await search_tickets(store.config, TicketQuery(q="_")) == []


# ------------------------------------------------------------------ contacts, ids, migrations


async def test_explicit_ids_then_automatic_ids(store: TicketStore) -> None:
    """Shop ids are taken as given; later automatic ids continue after them (PG sequences)."""
    explicit = await create_contact(NewContact(id=5000, last_name="Shop", addresses=[
        NewAddress(kind="billing", primary=True, email="B@Example.org", id=700)]))
    automatic = await create_contact(NewContact(last_name="Neu", addresses=[
        NewAddress(kind="delivery", email="d@example.org")]))
    assert explicit.id == 5000 and automatic.id > 5000
    addresses = await ContactAddress.all().order_by("id")
    assert addresses[0].id == 700 and addresses[0].email == "b@example.org"
    assert addresses[1].id > 700
    first = await create_order(NewOrder(id=90000, contact_id=explicit.id))
    second = await create_order(NewOrder(contact_id=automatic.id))
    assert first.id == 90000 and second.id > 90000


async def test_migrate_is_idempotent(make_config: Any, empty_db_url: str) -> None:
    config = make_config(database_url=empty_db_url)
    await migrate(config.database_url)  # from nothing
    async with open_database(config.database_url):
        store = TicketStore(config)
        ticket = await store.create_ticket(NewTicket(title="überlebt"))
    await migrate(config.database_url)  # nothing to do, nothing lost
    async with open_database(config.database_url):
        assert (await Ticket.get(id=ticket.id)).title == "überlebt"
        conn = connections.get("default")
        applied = await conn.execute_query_dict("SELECT COUNT(*) AS n FROM tortoise_migrations")
        assert applied[0]["n"] >= 1


async def test_delete_ticket_keeps_children_and_removes_messages(store: TicketStore) -> None:
    parent = await store.create_ticket(NewTicket(title="p"), NewMessage(text="m"))
    child = await store.create_ticket(NewTicket(title="c", parent_id=parent.id))
    await store.delete_ticket(parent.id)
    assert not await Ticket.filter(id=parent.id).exists()
    assert (await Ticket.get(id=child.id)).parent_id is None  # type: ignore[attr-defined]
    assert await Message.filter(ticket_id=parent.id).count() == 0
    with pytest.raises(InvalidChange):  # no cycles
        grandchild = await store.create_ticket(NewTicket(title="g", parent_id=child.id))
        await store.update_ticket(child.id, TicketPatch(parent_id=grandchild.id))
    assert (await Ticket.get(id=child.id)).parent_id is None  # type: ignore[attr-defined]


async def test_datetimes_come_back_in_utc(store: TicketStore) -> None:
    due = dt.datetime(2026, 12, 24, 18, 0, tzinfo=dt.timezone(dt.timedelta(hours=1)))
    ticket = await store.create_ticket(NewTicket(title="t", due_at=due))
    stored = await Ticket.get(id=ticket.id)
    assert stored.due_at == due and stored.due_at is not None
    assert stored.due_at.utcoffset() == dt.timedelta(0)


def test_no_semicolon_in_model_comments() -> None:
    """Docstrings and field descriptions become SQL comments; tortoise's SQLite migration splits
    its script on every `;`, so one inside a comment breaks `migrate` on SQLite."""
    from gatewayd.store import models

    for name in dir(models):
        model = getattr(models, name)
        if isinstance(model, type) and issubclass(model, models.Model) and model._meta.db_table:
            assert ";" not in (model.__doc__ or ""), f"{name}: no ';' in the docstring"
            for field_name, field in model._meta.fields_map.items():
                assert ";" not in (field.description or ""), f"{name}.{field_name}: no ';'"


async def test_ids_beyond_32_bit_do_not_exist(store: TicketStore) -> None:
    """PostgreSQL ids are `integer`: a larger number is "not found", not a driver error."""
    from gatewayd.store.contacts import get_contact, get_order

    huge = 99_999_999_999
    with pytest.raises(NotFound):
        await store.get_ticket(huge)
    with pytest.raises(NotFound):
        await get_contact(huge)
    with pytest.raises(NotFound):
        await get_order(huge)
    for new in (NewTicket(title="x", contact_id=huge), NewTicket(title="x", order_id=huge),
                NewTicket(title="x", parent_id=huge)):
        with pytest.raises(InvalidChange):
            await store.create_ticket(new)
    with pytest.raises(InvalidChange):
        await create_contact(NewContact(id=huge))
    with pytest.raises(InvalidChange):
        await create_order(NewOrder(id=huge))
    with pytest.raises(InvalidChange):
        await create_order(NewOrder(contact_id=huge))
    assert await search_tickets(store.config, TicketQuery(contact_id=huge)) == []


async def test_concurrent_changes_to_one_ticket_lose_nothing(store: TicketStore) -> None:
    """A change that is still in its transaction (a slow hook) and a second change to another
    field: the second waits for the row and keeps the first's status (no lost update)."""
    import asyncio

    in_hook = asyncio.Event()

    async def slow(s: TicketStore, event: DomainEvent) -> None:
        if event.kind == "status_changed":
            in_hook.set()
            await asyncio.sleep(0.3)  # hold the transaction open; not a timing assertion

    ticket = await store.create_ticket(NewTicket(title="t"))
    store.hooks.append(slow)
    first = asyncio.create_task(store.update_ticket(ticket.id, TicketPatch(status="Erledigt")))
    await in_hook.wait()
    await store.update_ticket(ticket.id, TicketPatch(priority=1))
    await first
    stored = await Ticket.get(id=ticket.id)
    assert (stored.status, stored.priority) == ("Erledigt", 1)


async def test_a_refused_change_inside_a_joined_transaction_writes_nothing(
    store: TicketStore,
) -> None:
    """A hook (or any caller inside a transaction) may catch InvalidChange and go on: the
    refused change must not have written anything before it was refused."""
    ticket = await store.create_ticket(NewTicket(title="t"))
    async with store.transaction():
        with pytest.raises(InvalidChange):
            await store.update_ticket(ticket.id, TicketPatch(status="Erledigt", priority=1,
                                                             owners=[("niemand", None)]))
    stored = await Ticket.get(id=ticket.id)
    assert (stored.status, stored.priority) == ("Neu", 3)
    assert await StatusChange.filter(ticket_id=ticket.id).count() == 1


async def test_concurrent_creates_with_one_id_are_a_conflict(store: TicketStore) -> None:
    import asyncio

    from gatewayd.store.tickets import Conflict

    results = await asyncio.gather(
        *(create_contact(NewContact(id=77, number="K-77")) for _ in range(4)),
        *(create_order(NewOrder(id=88)) for _ in range(4)),
        return_exceptions=True)
    contacts, orders = results[:4], results[4:]
    for group in (contacts, orders):
        assert sum(not isinstance(r, BaseException) for r in group) == 1
        assert all(isinstance(r, Conflict) for r in group if isinstance(r, BaseException))


async def test_an_owner_named_twice_gets_one_row(store: TicketStore) -> None:
    ticket = await store.create_ticket(NewTicket(
        title="t", owners=[("anna", "Support"), ("anna", None)]))
    view = await ticket_view(store.config, ticket)
    assert view["owners"] == [{"name": "anna", "role": "Support"}]
    await store.update_ticket(ticket.id, TicketPatch(owners=[("anna", None), ("anna", "Support")]))
    view = await ticket_view(store.config, await store.get_ticket(ticket.id))
    assert view["owners"] == [{"name": "anna", "role": None}]
