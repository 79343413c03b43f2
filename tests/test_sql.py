"""store.sql: plain reads with `?` parameters on both engines, inside the caller's transaction."""

from __future__ import annotations

import datetime as dt

import pytest

from gatewayd.config import Config
from gatewayd.store import sql
from gatewayd.store.db import open_database
from gatewayd.store.tickets import NewTicket, TicketPatch, TicketStore


def test_placeholders_are_numbered_for_postgres_only() -> None:
    assert sql._for_dialect("a = ? AND b = ?", "postgres") == "a = $1 AND b = $2"
    assert sql._for_dialect("a = ? AND b = ?", "sqlite") == "a = ? AND b = ?"


async def test_rows_see_the_uncommitted_change_of_their_transaction(config: Config) -> None:
    store = TicketStore(config)
    async with open_database(config.database_url):
        ticket = await store.create_ticket(NewTicket(title="Probe", source="api"))
        with pytest.raises(RuntimeError):
            async with store.transaction():
                await store.update_ticket(ticket.id, TicketPatch(tags=["eilig"]))
                inside = await sql.rows("SELECT tag FROM ticket_tag WHERE ticket_id = ?",
                                        (ticket.id,))
                assert inside == [{"tag": "eilig"}]
                raise RuntimeError("roll back")
        assert await sql.rows("SELECT tag FROM ticket_tag WHERE ticket_id = ?",
                              (ticket.id,)) == []


async def test_datetime_parameters_compare_like_stored_values(config: Config) -> None:
    store = TicketStore(config)
    async with open_database(config.database_url):
        ticket = await store.create_ticket(NewTicket(title="Zeit", source="api"))
        created = ticket.created_at
        query = "SELECT id FROM ticket WHERE created_at >= ? AND created_at < ?"
        second = dt.timedelta(seconds=1)
        assert await sql.rows(query, (created - second, created + second)) == [{"id": ticket.id}]
        assert await sql.rows(query, (created + second, created + 2 * second)) == []
        berlin = dt.timezone(dt.timedelta(hours=1))  # same instant, other offset
        assert await sql.rows(query, ((created - second).astimezone(berlin),
                                      (created + second).astimezone(berlin))) == [
            {"id": ticket.id}]
        with pytest.raises(ValueError):
            sql._param(dt.datetime(2026, 1, 1), "sqlite")


async def test_insert_and_execute_write_what_tortoise_reads_back(config: Config) -> None:
    """The hot paths insert outbox, event-log and status rows as plain SQL: tortoise must read
    them back with the same values (JSON, aware datetimes, NULLs) on both engines."""
    from gatewayd.store.models import Outbox, TicketEvent

    store = TicketStore(config)
    async with open_database(config.database_url):
        ticket = await store.create_ticket(NewTicket(title="Roh", source="api"))
        at = dt.datetime(2026, 12, 1, 18, 30, 5, 123456, tzinfo=dt.UTC)
        first = await sql.insert("ticket_event", {
            "ticket_id": ticket.id, "kind": "probe", "data": sql.json_text({"ä": [1, None]}),
            "actor": None, "created_at": at})
        second = await sql.insert("ticket_event", {
            "ticket_id": ticket.id, "kind": "probe", "data": "{}", "actor": "x",
            "created_at": at})
        assert second == first + 1
        event = await TicketEvent.get(id=first)
        assert (event.kind, event.data, event.actor, event.created_at) == (
            "probe", {"ä": [1, None]}, None, at)

        row_id = await sql.insert("outbox", {
            "ticket_id": ticket.id, "intended_to": sql.json_text(["a@example.org"]),
            "envelope_to": "[]", "recipient_results": "{}", "status": "queued",
            "attempts": 0, "subject": "", "content": "", "created_at": at})
        changed = await sql.execute("UPDATE outbox SET status = ?, sent_at = ? WHERE id = ?",
                                    ["sent", at, row_id])
        assert changed == 1
        assert await sql.execute("UPDATE outbox SET status = ? WHERE id = ?",
                                 ["sent", row_id + 1000]) == 0
        row = await Outbox.get(id=row_id)
        assert (row.status, row.sent_at, row.intended_to, row.recipient_results) == (
            "sent", at, ["a@example.org"], {})
