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
