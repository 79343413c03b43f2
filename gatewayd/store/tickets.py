"""Ticket changes: every change, its status history and its domain events in one transaction.

Everything that changes a ticket (API, mail ingest, forms, event actions, scheduled actions) calls
these functions. Each domain event is written to the event log and handed to the registered hooks
*inside* the same transaction, so an event action's outbox rows commit or roll back with the change
that fired them. A store function called from a hook joins the running transaction.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from tortoise import connections
from tortoise.backends.base.client import TransactionalDBClient
from tortoise.transactions import in_transaction

from gatewayd.config import Config
from gatewayd.store import groups, sql
from gatewayd.store.attachments import save_blob
from gatewayd.store.changes import (
    MAX_ID,
    UNSET,
    Conflict,
    DomainEvent,
    InvalidChange,
    NewAttachment,
    NewMessage,
    NewTicket,
    NotFound,
    StoreError,
    TicketPatch,
    id_in_range,
)
from gatewayd.store.models import (
    Attachment,
    Contact,
    Message,
    Order,
    Ticket,
    TicketEvent,
    TicketOwner,
    TicketTag,
)

# The change values are defined in store.changes and still imported from here by most callers.
__all__ = [
    "ACTION_EVENTS", "MAX_ID", "UNSET", "Conflict", "DomainEvent", "EventHook", "InvalidChange",
    "NewAttachment", "NewMessage", "NewTicket", "NotFound", "StoreError", "TicketPatch",
    "TicketStore", "id_in_range",
]

# Events that configured event actions can react to (the contract's `on` values).
ACTION_EVENTS = frozenset(
    {"ticket_created", "customer_message", "staff_message", "comment_added", "status_changed"}
)
MAX_HOOK_ROUNDS = 8  # event actions that keep firing each other stop here
T = TypeVar("T")

EventHook = Callable[["TicketStore", DomainEvent], Awaitable[None]]


@dataclass
class _Transaction:
    pending: list[DomainEvent] = field(default_factory=list)
    fired: list[DomainEvent] = field(default_factory=list)
    # Each ticket as this transaction last wrote it: the hooks read it from here, not again
    # from the database (one query less per event action).
    tickets: dict[int, Ticket] = field(default_factory=dict)


_current: contextvars.ContextVar[_Transaction | None] = contextvars.ContextVar(
    "gatewayd_store_tx", default=None
)


def _one_role_each(owners: Sequence[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """Each owner once (a ticket has one row per owner): the first role given wins. Pure."""
    first: dict[str, tuple[str, str | None]] = {}
    for owner, role in owners:
        first.setdefault(owner, (owner, role))
    return list(first.values())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TicketStore:
    """The one way to change tickets. Holds the configuration and the event hooks."""

    def __init__(self, config: Config, hooks: Sequence[EventHook] = ()):
        self.config = config
        self.hooks: list[EventHook] = list(hooks)

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    # ------------------------------------------------------------------ transactions

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[list[DomainEvent]]:
        """Run a block in one transaction; events raised inside go through the hooks before commit.

        Nested use joins the outer transaction. Yields the list of events fired so far.
        """
        if _current.get() is not None:
            tx = _current.get()
            assert tx is not None
            yield tx.fired
            return
        tx = _Transaction()
        token = _current.set(tx)
        try:
            async with in_transaction():
                yield tx.fired
                await self._drain(tx)
        finally:
            _current.reset(token)

    async def run_grouped(self, job: Callable[[], Awaitable[T]]) -> T:
        """Run `job` (ticket changes) in a transaction of its own, and return its result once
        committed. On SQLite, changes that wait for the connection together share one
        transaction and one COMMIT, each in a savepoint of its own (`store.groups`): what holds
        for `job` is what would hold in a transaction of its own."""
        async def atomic() -> T:
            async with self.transaction():
                return await job()

        if sql.dialect() != "sqlite" or isinstance(connections.get("default"),
                                                   TransactionalDBClient):
            # Inside a transaction already (which holds SQLite's connection: waiting for the
            # group would wait for ourselves), or PostgreSQL: a transaction of its own.
            return await atomic()
        return await groups.shared().run(atomic)

    @property
    def group_stats(self) -> groups.GroupStats | None:
        """The group committer's counts (None before its first group)."""
        committer = groups.existing()
        return committer.stats if committer else None

    async def _drain(self, tx: _Transaction) -> None:
        rounds = 0
        while tx.pending:
            rounds += 1
            if rounds > MAX_HOOK_ROUNDS:
                await TicketEvent.create(
                    ticket_id=tx.pending[0].ticket_id, kind="event_loop_stopped",
                    data={"pending": [e.kind for e in tx.pending]},
                )
                tx.pending.clear()
                break
            batch, tx.pending = tx.pending, []
            for event in batch:
                tx.fired.append(event)
                for hook in self.hooks:
                    await hook(self, event)

    @staticmethod
    def _remember(ticket: Ticket) -> None:
        tx = _current.get()
        if tx is not None:
            tx.tickets[ticket.id] = ticket

    async def current_ticket(self, ticket_id: int) -> Ticket | None:
        """The ticket as the running transaction last wrote it through this store (no query),
        else as the database has it; None if there is no such ticket."""
        tx = _current.get()
        if tx is not None and ticket_id in tx.tickets:
            return tx.tickets[ticket_id]
        return await Ticket.get_or_none(id=ticket_id) if id_in_range(ticket_id) else None

    async def _emit(self, event: DomainEvent) -> None:
        await self.log_event(event.ticket_id, event.kind, event.data, event.actor)
        tx = _current.get()
        assert tx is not None, "events are emitted inside a transaction"
        if event.kind in ACTION_EVENTS:
            tx.pending.append(event)

    async def log_event(self, ticket_id: int, kind: str, data: dict[str, Any],
                        actor: str | None = None) -> None:
        """Write an informational entry to a ticket's event log (no hooks fire)."""
        # Plain SQL: every change writes one, and a tortoise insert costs ~0.1 ms more CPU;
        # on SQLite it goes with the transaction's next statement (`sql.add`).
        await sql.add("ticket_event", {
            "ticket_id": ticket_id, "kind": kind, "data": sql.json_text(data), "actor": actor,
            "created_at": _now()})

    # ------------------------------------------------------------------ validation

    def _resolve_type_status(
        self, type_name: str | None, status_name: str | None
    ) -> tuple[str, str]:
        config = self.config
        if not config.ticket_types:
            raise InvalidChange("no ticket types are configured")
        type_name = type_name or config.default_ticket.type
        ticket_type = config.ticket_type(type_name)
        if ticket_type is None:
            raise InvalidChange(
                f"unknown ticket type {type_name!r}",
                {"field": "type", "allowed": [t.name for t in config.ticket_types]},
            )
        status_name = status_name or ticket_type.statuses[0].name
        if ticket_type.status(status_name) is None:
            raise InvalidChange(
                f"ticket type {type_name!r} has no status {status_name!r}",
                {"field": "status", "allowed": [s.name for s in ticket_type.statuses]},
            )
        return type_name, status_name

    def _check_owners(self, owners: Sequence[tuple[str, str | None]]) -> None:
        known = {o.name for o in self.config.owners}
        roles = {r.name for r in self.config.roles}
        for owner, role in owners:
            if owner not in known:
                raise InvalidChange(f"unknown owner {owner!r}",
                                    {"field": "owners", "allowed": sorted(known)})
            if role is not None and role not in roles:
                raise InvalidChange(f"unknown role {role!r}",
                                    {"field": "owners", "allowed": sorted(roles)})

    @staticmethod
    def _check_priority(priority: int) -> None:
        if not isinstance(priority, int) or not 0 <= priority <= 5:
            raise InvalidChange("priority must be a whole number from 0 to 5",
                                {"field": "priority"})

    async def _check_links(self, contact_id: int | None, order_id: int | None,
                           parent_id: int | None, ticket_id: int | None = None) -> None:
        if contact_id is not None and not (
            id_in_range(contact_id) and await Contact.exists(id=contact_id)
        ):
            raise InvalidChange(f"contact {contact_id} does not exist", {"field": "contact_id"})
        if order_id is not None and not (id_in_range(order_id) and await Order.exists(id=order_id)):
            raise InvalidChange(f"order {order_id} does not exist", {"field": "order_id"})
        if parent_id is not None:
            if parent_id == ticket_id:
                raise InvalidChange("a ticket cannot be its own parent", {"field": "parent_id"})
            if not (id_in_range(parent_id) and await Ticket.exists(id=parent_id)):
                raise InvalidChange(f"ticket {parent_id} does not exist", {"field": "parent_id"})
            # Refuse cycles: walk up from the new parent.
            cursor: int | None = parent_id
            seen = 0
            while cursor is not None and seen < 1000:
                if cursor == ticket_id:
                    raise InvalidChange("that parent would make a cycle", {"field": "parent_id"})
                parents = await Ticket.filter(id=cursor).values_list("parent_id", flat=True)
                cursor = parents[0] if parents else None  # type: ignore[assignment]
                seen += 1

    # ------------------------------------------------------------------ changes

    async def create_ticket(
        self, new: NewTicket, first_message: NewMessage | None = None, actor: str | None = None
    ) -> Ticket:
        type_name, status_name = self._resolve_type_status(new.type, new.status)
        self._check_priority(new.priority)
        self._check_owners(new.owners)
        title = (new.title or "").strip() or "(no subject)"
        async with self.transaction():
            await self._check_links(new.contact_id, new.order_id, new.parent_id)
            now = _now()
            ticket = await Ticket.create(
                title=title[:500], type=type_name, status=status_name, priority=new.priority,
                contact_id=new.contact_id, order_id=new.order_id, account=new.account,
                source=new.source, language=new.language, confidential=new.confidential,
                parent_id=new.parent_id, folder=new.folder, reply_address=new.reply_address,
                due_at=new.due_at, follow_up_at=new.follow_up_at, last_status_change_at=now,
            )
            for owner, role in _one_role_each(new.owners):
                await TicketOwner.create(ticket_id=ticket.id, owner=owner, role=role)
            for tag in dict.fromkeys(t.strip() for t in new.tags if t.strip()):
                await TicketTag.create(ticket_id=ticket.id, tag=tag)
            self._remember(ticket)
            await self._record_status(ticket, None, None, actor)
            message = None
            if first_message is not None:
                message = await self._store_message(ticket, first_message)
            await self._emit(DomainEvent(
                "ticket_created", ticket.id, message.id if message else None, actor,
                {"source": new.source, "type": type_name, "status": status_name,
                 "account": new.account},
            ))
        return ticket

    async def _record_status(self, ticket: Ticket, from_type: str | None,
                             from_status: str | None, actor: str | None) -> None:
        status = self.config.status(ticket.type, ticket.status)
        await sql.add("status_change", {
            "ticket_id": ticket.id, "from_type": from_type, "from_status": from_status,
            "to_type": ticket.type, "to_status": ticket.status,
            "progress": status.progress if status else 0,
            "status_group": status.group if status else None, "actor": actor,
            "changed_at": _now()})

    async def get_ticket(self, ticket_id: int, *, for_update: bool = False) -> Ticket:
        """The ticket, or NotFound. `for_update` (inside a transaction) locks its row on
        PostgreSQL until commit, so two instances changing one ticket never lose an update."""
        ticket = None
        if id_in_range(ticket_id):
            query = Ticket.filter(id=ticket_id)
            if for_update:
                query = query.select_for_update()
            ticket = await query.first()
        if ticket is None:
            raise NotFound(f"ticket {ticket_id} does not exist")
        return ticket

    async def update_ticket(self, ticket_id: int, patch: TicketPatch,
                            actor: str | None = None) -> Ticket:
        changes = patch.changed()
        async with self.transaction():
            ticket = await self.get_ticket(ticket_id, for_update=True)
            old_type, old_status = ticket.type, ticket.status
            if "type" in changes or "status" in changes:
                new_type = changes.get("type") or ticket.type
                new_status = changes.get("status")
                type_def = self.config.ticket_type(new_type)
                if new_status is None and type_def is not None:
                    # Changing the type keeps the status when the new type has it, else its first.
                    new_status = (ticket.status if type_def.status(ticket.status)
                                  else type_def.statuses[0].name)
                ticket.type, ticket.status = self._resolve_type_status(new_type, new_status)
            if "priority" in changes:
                self._check_priority(changes["priority"])
                ticket.priority = changes["priority"]
            if "title" in changes:
                title = (changes["title"] or "").strip()
                if not title:
                    raise InvalidChange("the title must not be empty", {"field": "title"})
                ticket.title = title[:500]
            for key in ("folder", "confidential", "language", "due_at", "follow_up_at"):
                if key in changes:
                    setattr(ticket, key, changes[key])
            await self._check_links(changes.get("contact_id"), changes.get("order_id"),
                                    changes.get("parent_id"), ticket.id)
            # Every check before the first write: a caller that joined this transaction and
            # catches InvalidChange must not commit half a change.
            owners = [(o, r) for o, r in changes.get("owners") or []]
            self._check_owners(owners)
            for key in ("contact_id", "order_id", "parent_id"):
                if key in changes:
                    setattr(ticket, key, changes[key])
            status_changed = (ticket.type, ticket.status) != (old_type, old_status)
            if status_changed:
                ticket.last_status_change_at = _now()
            await ticket.save()
            self._remember(ticket)
            if "owners" in changes:
                await TicketOwner.filter(ticket_id=ticket.id).delete()
                for owner, role in _one_role_each(owners):
                    await TicketOwner.create(ticket_id=ticket.id, owner=owner, role=role)
            if "tags" in changes:
                await TicketTag.filter(ticket_id=ticket.id).delete()
                for tag in dict.fromkeys(t.strip() for t in changes["tags"] if t.strip()):
                    await TicketTag.create(ticket_id=ticket.id, tag=tag)
            if status_changed:
                await self._record_status(ticket, old_type, old_status, actor)
                await self._emit(DomainEvent(
                    "status_changed", ticket.id, None, actor,
                    {"from_type": old_type, "from_status": old_status,
                     "to_type": ticket.type, "to_status": ticket.status},
                ))
            other = sorted(k for k in changes if k not in ("type", "status"))
            if other:
                await self._emit(DomainEvent("ticket_updated", ticket.id, None, actor,
                                             {"fields": other}))
        return ticket

    async def add_message(self, ticket_id: int, new: NewMessage,
                          actor: str | None = None) -> Message:
        """A customer-visible message (in: from the customer, out: from staff) or a comment."""
        if new.kind not in ("message", "comment") or new.direction not in ("in", "out"):
            raise InvalidChange("kind must be message/comment and direction in/out")
        async with self.transaction():
            ticket = await self.get_ticket(ticket_id)
            message = await self._store_message(ticket, new)
            if new.kind == "comment":
                kind = "comment_added"
            else:
                kind = "customer_message" if new.direction == "in" else "staff_message"
            ticket.updated_at = _now()
            await Ticket.filter(id=ticket.id).update(updated_at=ticket.updated_at)
            self._remember(ticket)
            await self._emit(DomainEvent(kind, ticket.id, message.id, actor or new.author,
                                         {"auto_reply": new.auto_reply}))
        return message

    async def _store_message(self, ticket: Ticket, new: NewMessage) -> Message:
        message = await Message.create(
            ticket_id=ticket.id, kind=new.kind, direction=new.direction,
            from_address=new.from_address, from_name=new.from_name,
            to_addresses=list(new.to_addresses), cc_addresses=list(new.cc_addresses),
            author=new.author, subject=(new.subject or None) and new.subject[:1000],
            text=new.text, html=new.html, reply_text=new.reply_text, topic=new.topic,
            auto_reply=new.auto_reply, message_id=new.message_id, in_reply_to=new.in_reply_to,
            references=list(new.references), routed_by=new.routed_by, notes=list(new.notes),
        )
        for item in new.attachments:
            digest = save_blob(self.data_dir, item.content)
            await Attachment.create(
                message_id=message.id, filename=item.filename[:255] or "attachment",
                content_type=item.content_type[:255] or "application/octet-stream",
                size=len(item.content), sha256=digest,
            )
        return message

    async def delete_ticket(self, ticket_id: int, actor: str | None = None) -> None:
        """Delete a ticket with its messages and attachment rows (files are shared by hash)."""
        async with self.transaction():
            ticket = await self.get_ticket(ticket_id)
            await Ticket.filter(parent_id=ticket.id).update(parent_id=None)
            await ticket.delete()
