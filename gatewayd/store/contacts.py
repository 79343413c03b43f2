"""Contacts and orders: creating, finding by address, and their plain-data views."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from tortoise import connections
from tortoise.exceptions import IntegrityError, OperationalError
from tortoise.models import Model
from tortoise.transactions import in_transaction

from gatewayd.store import sql
from gatewayd.store.faults import exception_chain
from gatewayd.store.models import Contact, ContactAddress, Order
from gatewayd.store.tickets import MAX_ID, Conflict, InvalidChange, NotFound, id_in_range

M = TypeVar("M", bound=Model)
_SEQUENCE_EXHAUSTED = "2200H"  # PostgreSQL's sequence_generator_limit_exceeded


@dataclass(frozen=True)
class NewAddress:
    kind: str  # billing | delivery
    primary: bool = False
    email: str | None = None
    id: int | None = None
    name: str | None = None
    company: str | None = None
    street: str | None = None
    postal_code: str | None = None
    city: str | None = None
    country: str | None = None
    phone: str | None = None


@dataclass(frozen=True)
class NewContact:
    first_name: str = ""
    last_name: str = ""
    id: int | None = None
    number: str | None = None
    company: str | None = None
    language: str | None = None
    email_private: str | None = None
    email_business: str | None = None
    email_paypal: str | None = None
    active: bool = True
    registered_at: dt.datetime | None = None
    addresses: Sequence[NewAddress] = field(default_factory=tuple)


@dataclass(frozen=True)
class NewOrder:
    id: int | None = None
    contact_id: int | None = None
    invoice_number: str | None = None
    language: str | None = None
    billing_email: str | None = None
    delivery_email: str | None = None


def normalise_email(value: str | None) -> str | None:
    """Addresses are compared case-insensitively; stored lower-case and trimmed."""
    if value is None:
        return None
    value = value.strip().lower()
    return value or None


async def _advance_sequence(model: type[Model]) -> None:
    """After inserting an explicit id on PostgreSQL, move the id sequence past it."""
    conn = connections.get("default")
    if conn.capabilities.dialect != "postgres":
        return
    table = model._meta.db_table
    await conn.execute_query(
        f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
        f"GREATEST((SELECT COALESCE(MAX(id), 0) FROM {table}), 1))"
    )


def _sequence_exhausted(exc: BaseException) -> bool:
    """Whether PostgreSQL refused the next generated id (tortoise wraps asyncpg's error)."""
    return any(getattr(link, "sqlstate", None) == _SEQUENCE_EXHAUSTED
               for link in exception_chain(exc))


async def insert_row(model: type[M], values: dict[str, Any], what: str, field: str = "id") -> M:
    """`model.create(**values)` inside the caller's transaction. Explicit ids may take the top of
    the id range: a generated id past it (PostgreSQL's sequence ends at MAX_ID, SQLite goes on
    beyond what the API can name) is refused as a Conflict that says what to do, not a
    database error (the caller's transaction rolls the row back)."""
    try:
        row = await model.create(**values)
    except OperationalError as exc:
        if not _sequence_exhausted(exc):
            raise
        row = None
    if row is None or int(row.pk) > MAX_ID:
        raise Conflict(f"no {what} id is left: the highest, {MAX_ID}, was given explicitly; "
                       f"send the new {what} with a free id of its own", {"field": field})
    return row


def _check_new_id(value: int | None, field: str) -> None:
    if value is not None and not id_in_range(value):
        raise InvalidChange(f"{field} {value} is out of range (1 to 2147483647)",
                            {"field": field})


async def create_contact(new: NewContact) -> Contact:
    try:
        return await _create_contact(new)
    except IntegrityError as exc:  # a concurrent insert took the id or number after the check
        raise Conflict("a contact with this id, number or address id already exists",
                       {"field": "id"}) from exc


async def _create_contact(new: NewContact) -> Contact:
    _check_new_id(new.id, "id")
    for address in new.addresses:
        _check_new_id(address.id, "addresses.id")
    if new.id is not None and await Contact.exists(id=new.id):
        raise Conflict(f"contact {new.id} already exists", {"field": "id"})
    if new.number is not None and await Contact.exists(number=new.number):
        raise Conflict(f"a contact with number {new.number!r} already exists", {"field": "number"})
    for address in new.addresses:
        if address.kind not in ("billing", "delivery"):
            raise InvalidChange("an address kind is billing or delivery",
                                {"field": "addresses.kind"})
    async with in_transaction():
        values: dict[str, Any] = {
            "number": new.number, "first_name": new.first_name, "last_name": new.last_name,
            "company": new.company, "language": new.language,
            "email_private": normalise_email(new.email_private),
            "email_business": normalise_email(new.email_business),
            "email_paypal": normalise_email(new.email_paypal),
            "active": new.active, "registered_at": new.registered_at,
        }
        if new.id is not None:
            values["id"] = new.id
        contact = await insert_row(Contact, values, "contact")
        if new.id is not None:
            await _advance_sequence(Contact)
        explicit_address_ids = False
        for address in new.addresses:
            row: dict[str, Any] = {
                "contact_id": contact.id, "kind": address.kind, "primary": address.primary,
                "email": normalise_email(address.email), "name": address.name,
                "company": address.company, "street": address.street,
                "postal_code": address.postal_code, "city": address.city,
                "country": address.country, "phone": address.phone,
            }
            if address.id is not None:
                if await ContactAddress.exists(id=address.id):
                    raise Conflict(f"address {address.id} already exists",
                                   {"field": "addresses.id"})
                row["id"] = address.id
                explicit_address_ids = True
            await insert_row(ContactAddress, row, "address", "addresses.id")
        if explicit_address_ids:
            await _advance_sequence(ContactAddress)
    return contact


async def get_contact(contact_id: int) -> Contact:
    contact = await Contact.get_or_none(id=contact_id) if id_in_range(contact_id) else None
    if contact is None:
        raise NotFound(f"contact {contact_id} does not exist")
    return contact


# Which contacts use an address: one of their own three addresses, or an address-book entry.
# The one definition of that rule, as a plain-SQL condition on `contact` (see `uses_address`).
_USES_ADDRESS = ("(email_private = ? OR email_business = ? OR email_paypal = ? "
                 "OR id IN (SELECT contact_id FROM contact_address WHERE email = ?))")


def uses_address(address: str | None) -> tuple[str, tuple[str | None, ...]]:
    """The WHERE condition on `contact` for "uses this (normalised) address" and its
    parameters, for `store.sql` queries that read more than the contacts in one round trip."""
    return _USES_ADDRESS, (address,) * 4


async def find_contacts_by_email(email: str) -> list[Contact]:
    """Contacts that use this address anywhere: own addresses or an address book entry."""
    address = normalise_email(email)
    if not address:
        return []
    condition, params = uses_address(address)
    ids = [r["id"] for r in await sql.rows(f"SELECT id FROM contact WHERE {condition}", params)]
    return await Contact.filter(id__in=ids).order_by("id") if ids else []


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


async def contact_view(contact: Contact) -> dict[str, Any]:
    addresses = await ContactAddress.filter(contact_id=contact.id).order_by("id")
    return {
        "id": contact.id,
        "number": contact.number,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "company": contact.company,
        "language": contact.language,
        "emails": {
            "private": contact.email_private,
            "business": contact.email_business,
            "paypal": contact.email_paypal,
        },
        "addresses": [
            {"id": a.id, "kind": a.kind, "primary": a.primary, "email": a.email, "name": a.name,
             "company": a.company, "street": a.street, "postal_code": a.postal_code,
             "city": a.city, "country": a.country, "phone": a.phone}
            for a in addresses
        ],
        "active": contact.active,
        "registered_at": _iso(contact.registered_at),
        "anonymized_at": _iso(contact.anonymized_at),
        "created_at": _iso(contact.created_at),
    }


async def create_order(new: NewOrder) -> Order:
    try:
        return await _create_order(new)
    except IntegrityError as exc:  # a concurrent insert took the id after the check
        raise Conflict(f"order {new.id} already exists", {"field": "id"}) from exc


async def _create_order(new: NewOrder) -> Order:
    _check_new_id(new.id, "id")
    if new.id is not None and await Order.exists(id=new.id):
        raise Conflict(f"order {new.id} already exists", {"field": "id"})
    if new.contact_id is not None and not (
        id_in_range(new.contact_id) and await Contact.exists(id=new.contact_id)
    ):
        raise InvalidChange(f"contact {new.contact_id} does not exist", {"field": "contact_id"})
    values: dict[str, Any] = {
        "contact_id": new.contact_id, "invoice_number": new.invoice_number,
        "language": new.language, "billing_email": normalise_email(new.billing_email),
        "delivery_email": normalise_email(new.delivery_email),
    }
    async with in_transaction():
        if new.id is not None:
            values["id"] = new.id
        order = await insert_row(Order, values, "order")
        if new.id is not None:
            await _advance_sequence(Order)
    return order


async def get_order(order_id: int) -> Order:
    order = await Order.get_or_none(id=order_id) if id_in_range(order_id) else None
    if order is None:
        raise NotFound(f"order {order_id} does not exist")
    return order


def order_view(order: Order) -> dict[str, Any]:
    return {
        "id": order.id,
        "contact_id": order.contact_id,  # type: ignore[attr-defined]
        "invoice_number": order.invoice_number,
        "language": order.language,
        "billing_email": order.billing_email,
        "delivery_email": order.delivery_email,
        "created_at": _iso(order.created_at),
    }
