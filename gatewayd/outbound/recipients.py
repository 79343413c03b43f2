"""Who a mail goes to: the manual's recipient sources and fallback chains as pure functions.

`RecipientFacts` is plain data loaded once per ticket (`load_recipient_facts`); `resolve` turns a
configured recipient (`customer`, `order_billing`, ..., `owners` or a literal address) into
addresses, and says why when there is nobody.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from gatewayd.config import Config, is_address
from gatewayd.store import sql
from gatewayd.store.models import Message, Ticket

# Recipient sources that reach the customer: never used for confidential tickets or comments.
CUSTOMER_SOURCES = frozenset({
    "customer", "order_billing", "order_delivery", "contact_private", "contact_business",
    "contact_paypal",
})


@dataclass(frozen=True)
class AddressFacts:
    id: int
    kind: str  # billing | delivery
    primary: bool
    email: str | None


@dataclass(frozen=True)
class ContactFacts:
    private: str | None = None
    business: str | None = None
    paypal: str | None = None
    addresses: tuple[AddressFacts, ...] = ()


@dataclass(frozen=True)
class OrderFacts:
    billing: str | None = None
    delivery: str | None = None
    contact: ContactFacts | None = None


@dataclass(frozen=True)
class RecipientFacts:
    """Everything the recipient rules look at, as plain values."""

    sender: str | None = None  # the address the ticket's mails came from first
    contact: ContactFacts | None = None
    order: OrderFacts | None = None
    owners: tuple[str, ...] = ()  # owner e-mail addresses, in ticket order
    owner_names_without_email: tuple[str, ...] = ()


@dataclass(frozen=True)
class Resolution:
    addresses: tuple[str, ...]
    via: str  # which step of which chain gave the address(es), or why there is none
    reason: str | None = None  # set when `addresses` is empty


def _clean(value: str | None) -> str | None:
    if not value:
        return None
    value = value.strip().lower()
    return value if is_address(value) else None


def contact_chain(contact: ContactFacts) -> list[tuple[str, str | None]]:
    """The contact's fallback order as (step, address) pairs, first non-empty wins.

    private → business → primary billing address → primary delivery address → other billing
    addresses (highest id first) → other delivery addresses (highest id first).
    """
    def primary(kind: str) -> str | None:
        for item in sorted(contact.addresses, key=lambda a: a.id):
            if item.kind == kind and item.primary and _clean(item.email):
                return item.email
        return None

    steps: list[tuple[str, str | None]] = [
        ("contact_private", contact.private),
        ("contact_business", contact.business),
        ("contact_primary_billing", primary("billing")),
        ("contact_primary_delivery", primary("delivery")),
    ]
    for kind in ("billing", "delivery"):
        others = [a for a in contact.addresses if a.kind == kind and not a.primary]
        for item in sorted(others, key=lambda a: a.id, reverse=True):
            steps.append((f"contact_{kind}_address_{item.id}", item.email))
    return steps


def first_of_contact(contact: ContactFacts | None) -> tuple[str, str] | None:
    if contact is None:
        return None
    for step, value in contact_chain(contact):
        address = _clean(value)
        if address:
            return step, address
    return None


def first_of_order(order: OrderFacts | None) -> tuple[str, str] | None:
    """The order's fallback order: billing address → delivery address → the contact's chain."""
    if order is None:
        return None
    for step, value in (("order_billing", order.billing), ("order_delivery", order.delivery)):
        address = _clean(value)
        if address:
            return step, address
    found = first_of_contact(order.contact)
    return ("order_" + found[0], found[1]) if found else None


def resolve(recipient: str, facts: RecipientFacts) -> Resolution:
    """Addresses for one configured recipient. Pure; never raises for missing data."""
    if recipient == "customer":
        sender = _clean(facts.sender)
        if sender:
            return Resolution((sender,), "sender")
        found = first_of_contact(facts.contact) or first_of_order(facts.order)
        if found:
            return Resolution((found[1],), found[0])
        return Resolution((), "customer", "the ticket has no sender address, no contact address "
                          "and no order address")
    if recipient in ("contact_private", "contact_business", "contact_paypal"):
        field_name = recipient.removeprefix("contact_")
        if facts.contact is None:
            return Resolution((), recipient, "the ticket has no contact")
        address = _clean(getattr(facts.contact, field_name))
        if address:
            return Resolution((address,), recipient)
        return Resolution((), recipient, f"the contact has no {field_name} e-mail address")
    if recipient in ("order_billing", "order_delivery"):
        if facts.order is None:
            return Resolution((), recipient, "the ticket has no order")
        address = _clean(getattr(facts.order, recipient.removeprefix("order_")))
        if address:
            return Resolution((address,), recipient)
        return Resolution((), recipient, f"the order has no {recipient.removeprefix('order_')} "
                          "e-mail address")
    if recipient == "owners":
        owners = tuple(dict.fromkeys(a for a in (_clean(o) for o in facts.owners) if a))
        if owners:
            return Resolution(owners, "owners")
        missing = ", ".join(facts.owner_names_without_email)
        reason = "the ticket has no owner" if not missing else (
            f"no owner of the ticket has an e-mail address ({missing})")
        return Resolution((), "owners", reason)
    address = _clean(recipient)
    if address:
        return Resolution((address,), "address")
    return Resolution((), "address", f"{recipient!r} is not an e-mail address")


# ---------------------------------------------------------------------- loading (I/O edge)


# Plain SQL, not the ORM: tortoise's `get_or_none` and `filter` cost ~0.3 ms of CPU each, these
# queries ~0.07 ms (event actions run them inside the ticket's transaction).
_CONTACT_SQL = ("SELECT email_private, email_business, email_paypal FROM contact "
                "WHERE id = ?")
_ADDRESSES_SQL = ('SELECT id, kind, "primary", email FROM contact_address WHERE contact_id = ? '
                  "ORDER BY id")
_ORDER_SQL = "SELECT contact_id, billing_email, delivery_email FROM shop_order WHERE id = ?"


async def _load_contact(contact_id: int | None) -> ContactFacts | None:
    if contact_id is None:
        return None
    found = await sql.rows(_CONTACT_SQL, (contact_id,))
    if not found:
        return None
    contact = found[0]
    addresses = await sql.rows(_ADDRESSES_SQL, (contact_id,))
    return ContactFacts(
        private=contact["email_private"], business=contact["email_business"],
        paypal=contact["email_paypal"],
        addresses=tuple(AddressFacts(a["id"], a["kind"], bool(a["primary"]), a["email"])
                        for a in addresses),
    )


async def load_recipient_facts(config: Config, ticket: Ticket,
                               owner_names: Sequence[str] | None = None) -> RecipientFacts:
    """Read what the recipient rules need for one ticket (inside the caller's transaction).
    `owner_names`: the ticket's owners, oldest first, when the caller has read them."""
    sender = ticket.reply_address
    if not sender:
        first_in = await Message.filter(
            ticket_id=ticket.id, kind="message", direction="in", from_address__isnull=False
        ).order_by("id").first()
        sender = first_in.from_address if first_in else None
    contact = await _load_contact(ticket.contact_id)  # type: ignore[attr-defined]
    order_facts = None
    order_id = ticket.order_id  # type: ignore[attr-defined]
    if order_id is not None:
        orders = await sql.rows(_ORDER_SQL, (order_id,))
        if orders:
            order = orders[0]
            order_contact_id = order["contact_id"]
            same = order_contact_id == ticket.contact_id  # type: ignore[attr-defined]
            order_contact = contact if same else await _load_contact(order_contact_id)
            order_facts = OrderFacts(order["billing_email"], order["delivery_email"],
                                     order_contact)
    if owner_names is None:
        owner_names = [str(r["owner"]) for r in await sql.rows(
            "SELECT owner FROM ticket_owner WHERE ticket_id = ? ORDER BY id", (ticket.id,))]
    emails: list[str] = []
    without: list[str] = []
    for name in owner_names:
        owner = config.owner(name)
        if owner and owner.email:
            emails.append(owner.email)
        else:
            without.append(name)
    return RecipientFacts(sender=sender, contact=contact, order=order_facts,
                          owners=tuple(emails), owner_names_without_email=tuple(without))
