"""The database look-ups routing needs, gathered into one `Facts` value before the pure decision.

Ingest stores mails a fetched batch at a time, so the look-ups are made for the whole batch at
once (`lookup_batch`: a handful of queries however many mails, and none for what no mail names),
and each mail's `Facts` are then put together in memory (`facts_for`). What the batch itself adds
while it is stored (Message-IDs of the mails stored before, tickets they opened) is passed in as
`InBatch`, so a mail answering an earlier mail of the same batch is threaded as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tortoise.expressions import Q

from gatewayd.mail import InboundMail
from gatewayd.routing.keywords import Keywords
from gatewayd.routing.rules import Facts, referenced_ids
from gatewayd.store.contacts import normalise_email
from gatewayd.store.models import Contact, ContactAddress, Message, Order, Outbox, Ticket

MAX_REFERENCES = 100  # Message-IDs of one mail looked up (nearest first)
_CHUNK = 500  # values per IN (...) list


@dataclass
class InBatch:
    """What the mails of a batch stored so far added (visible to the later ones)."""

    message_tickets: dict[str, int] = field(default_factory=dict)  # Message-ID → ticket
    tickets: set[int] = field(default_factory=set)  # tickets opened in the batch

    def add(self, message_id: str | None, ticket_id: int, *, opened: bool) -> None:
        if message_id:
            self.message_tickets.setdefault(message_id, ticket_id)
        if opened:
            self.tickets.add(ticket_id)


@dataclass(frozen=True)
class _ContactRow:
    id: int
    number: str | None
    language: str | None


@dataclass(frozen=True)
class _OrderRow:
    id: int
    contact_id: int | None
    language: str | None


@dataclass
class Lookups:
    """The database's answers for the keys a batch of mails names."""

    # Message-ID → ticket, Outbox (mail we sent) before Message (mail we received), oldest row
    known_ids: dict[str, int] = field(default_factory=dict)
    tickets: set[int] = field(default_factory=set)  # which of the named ticket ids exist
    customers: dict[str, _ContactRow | None] = field(default_factory=dict)  # keyword → contact
    orders: dict[int, _OrderRow] = field(default_factory=dict)  # by order id
    invoices: dict[str, _OrderRow] = field(default_factory=dict)  # invoice → newest order
    senders: dict[str, _ContactRow] = field(default_factory=dict)  # address → first contact
    languages: dict[int, str | None] = field(default_factory=dict)  # contact → language


def _chunks(values: Sequence[object]) -> list[list[object]]:
    items = list(dict.fromkeys(values))
    return [items[i:i + _CHUNK] for i in range(0, len(items), _CHUNK)]


def _customer_matches(value: str, contact: Contact) -> bool:
    return contact.number == value or (len(value) < 10 and contact.id == int(value))


async def lookup_batch(items: Sequence[tuple[InboundMail, Keywords]]) -> Lookups:
    """Everything `facts_for` needs for these mails, in few queries (none for unnamed keys)."""
    found = Lookups()
    refs = [mid for mail, _ in items for mid in referenced_ids(mail)[:MAX_REFERENCES]]
    customers = [k.customer for _, k in items if k.customer is not None]
    customers += [c for _, k in items for c in k.customer_phrases]
    order_ids = [k.order_id for _, k in items if k.order_id is not None]
    order_ids += [o for _, k in items for o in k.order_phrases]
    invoices = [k.invoice for _, k in items if k.invoice is not None]
    invoices += [i for _, k in items for i in k.invoice_phrases]
    addresses = [a for a in (normalise_email(m.from_address) for m, _ in items) if a]

    for chunk in _chunks(refs):
        for mid, ticket_id in await Outbox.filter(
            message_id__in=chunk, ticket_id__isnull=False
        ).order_by("id").values_list("message_id", "ticket_id"):
            found.known_ids.setdefault(str(mid), int(ticket_id))
    for chunk in _chunks(refs):
        for mid, ticket_id in await Message.filter(message_id__in=chunk).order_by(
            "id"
        ).values_list("message_id", "ticket_id"):
            found.known_ids.setdefault(str(mid), int(ticket_id))
    named_tickets = list(found.known_ids.values()) + [
        k.ticket_id for _, k in items if k.ticket_id is not None] + [
        t for _, k in items for t in k.ticket_phrases]
    for chunk in _chunks(named_tickets):
        ids = await Ticket.filter(id__in=chunk).values_list("id", flat=True)
        found.tickets.update(int(i) for i in ids)  # type: ignore[call-overload]

    if customers:
        cond = Q(number__in=list(dict.fromkeys(customers)))
        short = sorted({int(c) for c in customers if len(c) < 10})
        if short:
            cond |= Q(id__in=short)
        matches = await Contact.filter(cond).order_by("id")
        for value in dict.fromkeys(customers):
            candidates = [c for c in matches if _customer_matches(value, c)]
            # A matching customer number wins over a matching id.
            chosen = next((c for c in candidates if c.number == value),
                          candidates[0] if candidates else None)
            found.customers[value] = (None if chosen is None else
                                      _ContactRow(chosen.id, chosen.number, chosen.language))

    for chunk in _chunks(order_ids):
        for order in await Order.filter(id__in=chunk):
            found.orders[order.id] = _OrderRow(order.id, order.contact_id,  # type: ignore[attr-defined]
                                               order.language)
    for chunk in _chunks(invoices):
        for order in await Order.filter(invoice_number__in=chunk).order_by("id"):
            # Ordered by id: the last one written is the newest, as `order_by("-id").first()`.
            found.invoices[str(order.invoice_number)] = _OrderRow(
                order.id, order.contact_id, order.language)  # type: ignore[attr-defined]

    if addresses:
        unique = list(dict.fromkeys(addresses))
        via: dict[int, set[str]] = {}
        for chunk in _chunks(unique):
            for email, contact_id in await ContactAddress.filter(email__in=chunk).values_list(
                "email", "contact_id"
            ):
                via.setdefault(int(contact_id), set()).add(str(email))
        for chunk in _chunks(unique):
            cond = (Q(email_private__in=chunk) | Q(email_business__in=chunk)
                    | Q(email_paypal__in=chunk))
            linked = [i for i in via if any(a in chunk for a in via[i])]
            if linked:
                cond |= Q(id__in=linked)
            for contact in await Contact.filter(cond).order_by("id"):
                own = {contact.email_private, contact.email_business, contact.email_paypal}
                for address in chunk:
                    if address in own or address in via.get(contact.id, ()):
                        # Ordered by id: the first contact using the address wins.
                        found.senders.setdefault(str(address), _ContactRow(
                            contact.id, contact.number, contact.language))

    # Languages of the contacts an order links to (the others came with their rows).
    wanted = {o.contact_id for o in (*found.orders.values(), *found.invoices.values())
              if o.contact_id is not None}
    known = {c.id: c.language for c in (*found.senders.values(), *(
        c for c in found.customers.values() if c is not None))}
    found.languages.update(known)
    missing = [i for i in wanted if i not in known]
    for chunk in _chunks(missing):
        for contact_id, language in await Contact.filter(id__in=chunk).values_list(
            "id", "language"
        ):
            found.languages[int(contact_id)] = language
    return found


def facts_for(mail: InboundMail, keys: Keywords, found: Lookups,
              in_batch: InBatch | None = None) -> Facts:
    """One mail's Facts from a batch's look-ups and what the batch stored before it. Pure."""
    in_batch = in_batch or InBatch()
    thread_id: int | None = None
    thread_mid: str | None = None
    for mid in referenced_ids(mail)[:MAX_REFERENCES]:
        ticket_id = found.known_ids.get(mid)
        if ticket_id is None:
            ticket_id = in_batch.message_tickets.get(mid)
            exists = ticket_id is not None
        else:
            exists = ticket_id in found.tickets or ticket_id in in_batch.tickets
        if ticket_id is not None and exists:
            thread_id, thread_mid = ticket_id, mid
            break
    ticket_exists = keys.ticket_id is not None and (
        keys.ticket_id in found.tickets or keys.ticket_id in in_batch.tickets)
    phrase_ticket = next((t for t in keys.ticket_phrases
                          if t in found.tickets or t in in_batch.tickets), None)

    # Table 14's keywords first; a phrase's number only when it names something that exists.
    customer = found.customers.get(keys.customer) if keys.customer is not None else None
    customer_via = "customer_keyword" if customer else None
    if customer is None:
        customer = next((c for n in keys.customer_phrases
                         if (c := found.customers.get(n)) is not None), None)
        customer_via = "customer_phrase" if customer else None
    order = found.orders.get(keys.order_id) if keys.order_id is not None else None
    order_via = "order_keyword" if order else None
    if order is None and keys.invoice is not None:
        order = found.invoices.get(keys.invoice)
        order_via = "invoice_keyword" if order else None
    if order is None:
        order = next((o for n in keys.order_phrases if (o := found.orders.get(n))), None)
        order_via = "order_phrase" if order else None
    if order is None:
        order = next((o for n in keys.invoice_phrases if (o := found.invoices.get(n))), None)
        order_via = "invoice_phrase" if order else None
    address = normalise_email(mail.from_address)
    sender = found.senders.get(address) if address else None

    order_contact_id = order.contact_id if order else None
    chosen_id = (customer.id if customer else None) or order_contact_id or (
        sender.id if sender else None)
    language = None
    if chosen_id is not None:
        for candidate in (customer, sender):
            if candidate is not None and candidate.id == chosen_id:
                language = candidate.language
        if language is None:
            language = found.languages.get(chosen_id)
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
        phrase_ticket_id=phrase_ticket,
        order_via=order_via,
        customer_via=customer_via,
    )


async def gather_facts(mail: InboundMail, keys: Keywords) -> Facts:
    """One mail's Facts (a batch of one)."""
    return facts_for(mail, keys, await lookup_batch([(mail, keys)]))
