"""Reading tickets: the search behind `GET /api/tickets` and the contract's ticket object as
plain data (API, templates, personal-data export). Changes are in `gatewayd.store.tickets`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from tortoise.expressions import Q, Subquery

from gatewayd.config import Config
from gatewayd.store import sql
from gatewayd.store.db import unicode_upper
from gatewayd.store.models import Message, StatusChange, Ticket, TicketOwner, TicketTag
from gatewayd.store.tickets import id_in_range


@dataclass(frozen=True)
class TicketQuery:
    status: str | None = None
    type: str | None = None
    status_group: str | None = None
    contact_id: int | None = None
    order_id: int | None = None
    owner: str | None = None
    priority: int | None = None
    tag: str | None = None
    q: str | None = None
    folder: str | None = None
    source: str | None = None
    account: str | None = None
    limit: int = 50
    offset: int = 0


def status_pairs_of_group(config: Config, group: str) -> list[tuple[str, str]]:
    return [(t.name, s.name) for t in config.ticket_types for s in t.statuses if s.group == group]


async def search_tickets(config: Config, query: TicketQuery) -> list[Ticket]:
    qs = Ticket.all()
    for key in ("contact_id", "order_id"):
        value = getattr(query, key)
        if value is not None and not id_in_range(value):
            return []
    for key in ("status", "type", "contact_id", "order_id", "priority", "folder", "source",
                "account"):
        value = getattr(query, key)
        if value is not None:
            qs = qs.filter(**{key: value})
    if query.status_group is not None:
        pairs = status_pairs_of_group(config, query.status_group)
        if not pairs:
            return []
        cond = Q()
        for type_name, status_name in pairs:
            cond |= Q(type=type_name, status=status_name)
        qs = qs.filter(cond)
    if query.owner is not None:
        qs = qs.filter(id__in=Subquery(TicketOwner.filter(owner=query.owner).values("ticket_id")))
    if query.tag is not None:
        qs = qs.filter(id__in=Subquery(TicketTag.filter(tag=query.tag).values("ticket_id")))
    if query.q:
        await unicode_upper()
        text = query.q.strip()
        qs = qs.filter(
            Q(title__icontains=text)
            | Q(id__in=Subquery(Message.filter(text__icontains=text).values("ticket_id")))
        )
    return await qs.order_by("-id").offset(query.offset).limit(query.limit)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


async def ticket_view(config: Config, ticket: Ticket, *, full: bool = False,
                      extra: Sequence[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The contract's ticket object as plain data (API, templates). `extra`: the ticket's
    owners and tags as `{"kind": "o"|"t", "name", "role"}` rows, oldest first, when the
    caller has read them already (event actions read them with the messages in one query)."""
    status = config.status(ticket.type, ticket.status)
    if extra is None:
        # Owners and tags in one plain query (see store.sql).
        extra = await sql.rows(
            "SELECT 'o' AS kind, owner AS name, role, id FROM ticket_owner WHERE ticket_id = ? "
            "UNION ALL SELECT 't' AS kind, tag AS name, NULL AS role, id FROM ticket_tag "
            "WHERE ticket_id = ? ORDER BY kind, id", (ticket.id, ticket.id))
    view: dict[str, Any] = {
        "id": ticket.id,
        "title": ticket.title,
        "type": ticket.type,
        "status": ticket.status,
        "status_group": status.group if status else None,
        "progress": status.progress if status else None,
        "priority": ticket.priority,
        "contact_id": ticket.contact_id,  # type: ignore[attr-defined]
        "order_id": ticket.order_id,  # type: ignore[attr-defined]
        "account": ticket.account,
        "source": ticket.source,
        "language": ticket.language,
        "confidential": ticket.confidential,
        "parent_id": ticket.parent_id,  # type: ignore[attr-defined]
        "owners": [{"name": r["name"], "role": r["role"]} for r in extra if r["kind"] == "o"],
        "tags": [r["name"] for r in extra if r["kind"] == "t"],
        "folder": ticket.folder,
        "reply_address": ticket.reply_address,
        "due_at": _iso(ticket.due_at),
        "follow_up_at": _iso(ticket.follow_up_at),
        "last_status_change_at": _iso(ticket.last_status_change_at),
        "created_at": _iso(ticket.created_at),
        "updated_at": _iso(ticket.updated_at),
    }
    if full:
        view["messages"] = await messages_view(ticket.id)
        view["status_history"] = [
            {"from_type": h.from_type, "from_status": h.from_status, "type": h.to_type,
             "status": h.to_status, "progress": h.progress, "status_group": h.status_group,
             "actor": h.actor, "changed_at": _iso(h.changed_at)}
            for h in await StatusChange.filter(ticket_id=ticket.id).order_by("id")
        ]
        view["children"] = [
            {"id": c.id, "title": c.title, "status": c.status}
            for c in await Ticket.filter(parent_id=ticket.id).order_by("id")
        ]
    return view


async def messages_view(ticket_id: int) -> list[dict[str, Any]]:
    messages = await Message.filter(ticket_id=ticket_id).order_by("id").prefetch_related(
        "attachments"
    )
    return [
        {
            "id": m.id, "kind": m.kind, "direction": m.direction,
            "from_address": m.from_address, "from_name": m.from_name, "author": m.author,
            "subject": m.subject, "text": m.text, "reply_text": m.reply_text, "html": m.html,
            "topic": m.topic, "auto_reply": m.auto_reply, "message_id": m.message_id,
            "routed_by": m.routed_by, "notes": m.notes,
            "attachments": [
                {"id": a.id, "filename": a.filename, "content_type": a.content_type,
                 "size": a.size}
                for a in m.attachments
            ],
            "created_at": _iso(m.created_at),
        }
        for m in messages
    ]
