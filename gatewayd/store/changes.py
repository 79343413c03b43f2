"""The plain values a ticket change is made of: what to create (`NewTicket`, `NewMessage`,
`NewAttachment`), what to change (`TicketPatch`), what happened (`DomainEvent`), and the errors
the store refuses a change with. No I/O; `store.tickets` applies them.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# Row ids are 32-bit (PostgreSQL `integer`): a larger number cannot name a row, and asyncpg would
# refuse to even send it. Such ids are "does not exist", on SQLite and PostgreSQL alike.
MAX_ID = 2**31 - 1


def id_in_range(value: int) -> bool:
    return 1 <= value <= MAX_ID


class StoreError(Exception):
    """A change the store refuses; `status` is the HTTP status the API answers with."""

    status = 400

    def __init__(self, message: str, detail: Any = None):
        super().__init__(message)
        self.detail = detail


class NotFound(StoreError):
    status = 404


class InvalidChange(StoreError):
    status = 422


class Conflict(StoreError):
    status = 409


@dataclass(frozen=True)
class DomainEvent:
    kind: str
    ticket_id: int
    message_id: int | None = None
    actor: str | None = None
    data: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class NewAttachment:
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class NewMessage:
    text: str
    kind: str = "message"  # message | comment
    direction: str = "in"  # in (from the customer) | out (from staff)
    from_address: str | None = None
    from_name: str | None = None
    to_addresses: Sequence[str] = ()
    cc_addresses: Sequence[str] = ()
    author: str | None = None
    subject: str | None = None
    html: str | None = None
    reply_text: str | None = None
    topic: str | None = None
    auto_reply: bool = False
    message_id: str | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    routed_by: str | None = None
    notes: Sequence[dict[str, Any]] = ()
    attachments: Sequence[NewAttachment] = ()


@dataclass(frozen=True)
class NewTicket:
    title: str
    type: str | None = None
    status: str | None = None
    priority: int = 3
    contact_id: int | None = None
    order_id: int | None = None
    account: str | None = None
    source: str = "api"
    language: str | None = None
    confidential: bool = False
    parent_id: int | None = None
    owners: Sequence[tuple[str, str | None]] = ()  # (owner, role)
    tags: Sequence[str] = ()
    folder: str | None = None
    reply_address: str | None = None
    due_at: dt.datetime | None = None
    follow_up_at: dt.datetime | None = None


UNSET: Any = object()


@dataclass(frozen=True)
class TicketPatch:
    """Fields left UNSET stay as they are."""

    title: Any = UNSET
    type: Any = UNSET
    status: Any = UNSET
    priority: Any = UNSET
    owners: Any = UNSET  # list[(owner, role)]
    tags: Any = UNSET
    folder: Any = UNSET
    confidential: Any = UNSET
    parent_id: Any = UNSET
    contact_id: Any = UNSET
    order_id: Any = UNSET
    language: Any = UNSET
    due_at: Any = UNSET
    follow_up_at: Any = UNSET

    def changed(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if v is not UNSET}
