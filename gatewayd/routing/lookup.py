"""The database look-ups routing needs, gathered into one `Facts` value before the pure decision."""

from __future__ import annotations

from tortoise.expressions import Q

from gatewayd.ingest.parse import InboundMail
from gatewayd.routing.keywords import Keywords
from gatewayd.routing.rules import Facts, referenced_ids
from gatewayd.store.contacts import find_contacts_by_email
from gatewayd.store.models import Contact, Message, Order, Outbox, Ticket


async def thread_ticket(message_ids: list[str]) -> tuple[int | None, str | None]:
    """The ticket of the nearest Message-ID gatewayd received (Message) or sent (Outbox)."""
    if not message_ids:
        return None, None
    ids = message_ids[:100]
    known: dict[str, int] = {}
    for mid, ticket_id in await Outbox.filter(
        message_id__in=ids, ticket_id__isnull=False
    ).order_by("id").values_list("message_id", "ticket_id"):
        known.setdefault(str(mid), int(ticket_id))
    for mid, ticket_id in await Message.filter(message_id__in=ids).order_by("id").values_list(
        "message_id", "ticket_id"
    ):
        known.setdefault(str(mid), int(ticket_id))
    for mid in ids:
        if mid in known and await Ticket.exists(id=known[mid]):
            return known[mid], mid
    return None, None


async def gather_facts(mail: InboundMail, keys: Keywords) -> Facts:
    thread_id, thread_mid = await thread_ticket(referenced_ids(mail))
    ticket_exists = keys.ticket_id is not None and await Ticket.exists(id=keys.ticket_id)

    customer: Contact | None = None
    if keys.customer is not None:
        cond = Q(number=keys.customer)
        if len(keys.customer) < 10:
            cond |= Q(id=int(keys.customer))
        matches = await Contact.filter(cond).order_by("id")
        # A matching customer number wins over a matching id.
        customer = next((c for c in matches if c.number == keys.customer),
                        matches[0] if matches else None)

    order: Order | None = None
    if keys.order_id is not None:
        order = await Order.get_or_none(id=keys.order_id)
    if order is None and keys.invoice is not None:
        order = await Order.filter(invoice_number=keys.invoice).order_by("-id").first()

    sender: Contact | None = None
    if mail.from_address:
        found = await find_contacts_by_email(mail.from_address)
        sender = found[0] if found else None

    order_contact_id = order.contact_id if order else None  # type: ignore[attr-defined]
    chosen_id = (customer.id if customer else None) or order_contact_id or (
        sender.id if sender else None)
    language = None
    if chosen_id is not None:
        for candidate in (customer, sender):
            if candidate is not None and candidate.id == chosen_id:
                language = candidate.language
        if language is None:
            languages = await Contact.filter(id=chosen_id).values_list("language", flat=True)
            language = languages[0] if languages else None  # type: ignore[assignment]
    return Facts(
        thread_ticket_id=thread_id,
        thread_message_id=thread_mid,
        ticket_exists=bool(ticket_exists),
        customer_contact_id=customer.id if customer else None,
        order_id=order.id if order else None,
        order_contact_id=order_contact_id,
        order_language=order.language if order else None,
        sender_contact_id=sender.id if sender else None,
        contact_language=language,
    )
