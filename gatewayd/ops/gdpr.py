"""Personal data of contacts: merge duplicates, anonymise (irreversible), export as JSON.

Anonymising follows the shop platform's rule: the names are anonymised; addresses, contact
options (e-mail addresses, phone), order links, the company link and bank data are removed. The
contact's tickets stay with their whole history (status changes, events, messages) but lose the
personal data in it: sender and recipient addresses and names, the reply address, every
occurrence of the person's names and addresses in subjects and texts, and the attachments (the
message notes how many were removed; a file is deleted once no other message uses it); queued
mails to the person are suppressed and sent ones keep no content. gatewayd stores no bank data.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from typing import Any, overload

from gatewayd.store.attachments import remove_unused_blobs
from gatewayd.store.contacts import contact_view, get_contact, order_view
from gatewayd.store.models import (
    Attachment,
    AutoMailLog,
    Contact,
    ContactAddress,
    Message,
    Order,
    Outbox,
    Ticket,
)
from gatewayd.store.ticket_views import ticket_view
from gatewayd.store.tickets import Conflict, InvalidChange, TicketPatch, TicketStore

ANONYMOUS_FIRST = "Anonymisiert"
REDACTED = "[anonymisiert]"
REDACTED_ADDRESS = "anonymised@invalid"
EMAIL_FIELDS = ("email_private", "email_business", "email_paypal")


def anonymous_last_name(contact_id: int) -> str:
    return f"#{contact_id}"


# ------------------------------------------------------------------------------ decisions


def identifying_terms(contact: Contact, addresses: list[ContactAddress]) -> list[str]:
    """The strings that name the person: names (3+ letters), e-mail addresses, phone numbers.

    Longest first, so "anna.berg@example.org" is replaced before "Anna".
    """
    terms: set[str] = set()
    for value in (contact.first_name, contact.last_name, contact.company,
                  *(getattr(contact, f) for f in EMAIL_FIELDS)):
        if value and len(value.strip()) >= 3:
            terms.add(value.strip())
    full = f"{contact.first_name} {contact.last_name}".strip()
    if len(full) >= 3:
        terms.add(full)
    for address in addresses:
        for value in (address.email, address.name, address.company, address.phone,
                      address.street):
            if value and len(value.strip()) >= 3:
                terms.add(value.strip())
    return sorted(terms, key=lambda t: (-len(t), t))


@overload
def redact(text: str, terms: list[str]) -> str: ...
@overload
def redact(text: None, terms: list[str]) -> None: ...
def redact(text: str | None, terms: list[str]) -> str | None:
    """Replace every identifying term (case-insensitive) by a marker."""
    if not text or not terms:
        return text
    pattern = re.compile("|".join(re.escape(t) for t in terms), re.IGNORECASE)
    return pattern.sub(REDACTED, text)


def duplicate_groups(rows: list[tuple[int, list[str | None]]]) -> list[list[int]]:
    """Contacts that share an e-mail address, grouped (transitively); ids ascending."""
    parent: dict[int, int] = {}

    def find(x: int) -> int:
        while parent.setdefault(x, x) != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    by_email: dict[str, int] = {}
    for contact_id, emails in rows:
        find(contact_id)
        for email in emails:
            if not email:
                continue
            if email in by_email:
                a, b = find(by_email[email]), find(contact_id)
                if a != b:
                    parent[max(a, b)] = min(a, b)
            else:
                by_email[email] = contact_id
    groups: dict[int, list[int]] = defaultdict(list)
    for contact_id in parent:
        groups[find(contact_id)].append(contact_id)
    return sorted(sorted(g) for g in groups.values() if len(g) > 1)


# ------------------------------------------------------------------------------ merge


async def find_duplicates() -> list[list[int]]:
    contacts = await Contact.filter(anonymized_at__isnull=True).order_by("id")
    addresses: dict[int, list[str | None]] = defaultdict(list)
    for row in await ContactAddress.filter(email__isnull=False).values("contact_id", "email"):
        addresses[row["contact_id"]].append(row["email"])
    rows = [(c.id, [c.email_private, c.email_business, c.email_paypal, *addresses[c.id]])
            for c in contacts]
    return duplicate_groups(rows)


async def merge_contacts(store: TicketStore, keep_id: int, other_ids: list[int],
                         actor: str = "merge") -> dict[str, Any]:
    """Fold other contacts into `keep_id`: their tickets, orders and addresses move over, empty
    fields of the kept contact are filled from them, and they are deleted. Nothing is lost."""
    others = [i for i in dict.fromkeys(other_ids) if i != keep_id]
    if not others:
        raise InvalidChange("name at least one other contact to merge", {"field": "from"})
    moved = {"tickets": 0, "orders": 0, "addresses": 0}
    async with store.transaction():
        keep = await get_contact(keep_id)
        if keep.anonymized_at is not None:
            raise Conflict(f"contact {keep_id} is anonymised; merge into another contact")
        for other_id in others:
            other = await get_contact(other_id)
            if other.anonymized_at is not None:
                raise Conflict(f"contact {other_id} is anonymised and cannot be merged")
            for ticket_id in await Ticket.filter(contact_id=other_id).values_list("id", flat=True):
                await store.update_ticket(int(ticket_id),  # type: ignore[call-overload]
                                          TicketPatch(contact_id=keep_id), actor=actor)
                moved["tickets"] += 1
            moved["orders"] += await Order.filter(contact_id=other_id).update(contact_id=keep_id)
            moved["addresses"] += await ContactAddress.filter(contact_id=other_id).update(
                contact_id=keep_id)
            updates: list[str] = []
            for key in ("first_name", "last_name", "company", "language", "registered_at",
                        *EMAIL_FIELDS):
                if not getattr(keep, key) and getattr(other, key):
                    setattr(keep, key, getattr(other, key))
                    updates.append(key)
            number = other.number
            keep.active = keep.active or other.active
            await other.delete()
            if number and not keep.number:
                keep.number = number
                updates.append("number")
            await keep.save(update_fields=[*updates, "active"])
    return {"id": keep_id, "merged": others, **moved}


# ------------------------------------------------------------------------------ anonymise


async def anonymize_contact(store: TicketStore, contact_id: int,
                            actor: str = "gdpr") -> dict[str, Any]:
    """Irreversibly remove the person from the contact and from its tickets' history."""
    now = dt.datetime.now(dt.UTC)
    async with store.transaction():
        contact = await Contact.select_for_update().get_or_none(id=contact_id)
        if contact is None:
            await get_contact(contact_id)  # raises NotFound
            raise AssertionError("unreachable")
        if contact.anonymized_at is not None:
            raise Conflict(f"contact {contact_id} was anonymised on "
                           f"{contact.anonymized_at.date().isoformat()}")
        addresses = await ContactAddress.filter(contact_id=contact_id)
        terms = identifying_terms(contact, addresses)
        emails = {e.lower() for e in terms if "@" in e}
        ticket_ids = [t.id for t in await Ticket.filter(contact_id=contact_id).only("id")]
        counts = {"tickets": len(ticket_ids), "messages": 0, "outbox": 0,
                  "addresses": len(addresses), "attachments": 0}
        files = await Attachment.filter(message__ticket_id__in=ticket_ids).values_list(
            "id", "message_id", "sha256") if ticket_ids else []
        removed_per_message: dict[int, int] = defaultdict(int)
        for _id, message_id, _digest in files:
            removed_per_message[int(message_id)] += 1
        digests = {str(digest) for _id, _m, digest in files}
        if files:
            await Attachment.filter(id__in=[int(i) for i, _m, _d in files]).delete()
            counts["attachments"] = len(files)

        for message in await Message.filter(ticket_id__in=ticket_ids):
            message.from_address = REDACTED_ADDRESS if message.from_address else None
            message.from_name = None
            message.to_addresses = [REDACTED_ADDRESS for _ in message.to_addresses]
            message.cc_addresses = [REDACTED_ADDRESS for _ in message.cc_addresses]
            message.subject = redact(message.subject, terms)
            message.text = redact(message.text, terms) or ""
            message.html = redact(message.html, terms)
            message.reply_text = redact(message.reply_text, terms)
            if removed_per_message.get(message.id):
                message.notes = [*(message.notes or []), {"note": (
                    f"{removed_per_message[message.id]} attachment(s) removed when the contact "
                    "was anonymised")}]
            await message.save()
            counts["messages"] += 1
        for ticket in await Ticket.filter(id__in=ticket_ids):
            title = redact(ticket.title, terms) or ticket.title
            await Ticket.filter(id=ticket.id).update(reply_address=None, title=title)
            await store.log_event(ticket.id, "contact_anonymized", {"contact_id": contact_id},
                                  actor)
        for row in await Outbox.filter(ticket_id__in=ticket_ids) if ticket_ids else []:
            if row.status in ("queued", "sending"):
                row.status = "suppressed"
                row.last_error = "contact anonymised before sending"
            row.content = ""
            row.subject = redact(row.subject, terms) or ""
            row.intended_to = [REDACTED_ADDRESS for _ in row.intended_to]
            row.envelope_to = [REDACTED_ADDRESS for _ in row.envelope_to]
            row.recipient_results = {}
            await row.save()
            counts["outbox"] += 1
        if emails:
            await AutoMailLog.filter(address__in=sorted(emails)).update(address=REDACTED_ADDRESS)

        await ContactAddress.filter(contact_id=contact_id).delete()
        await Order.filter(contact_id=contact_id).update(contact_id=None)
        contact.first_name = ANONYMOUS_FIRST
        contact.last_name = anonymous_last_name(contact_id)
        contact.company = None
        contact.email_private = contact.email_business = contact.email_paypal = None
        contact.language = None
        contact.active = False
        contact.registered_at = None
        contact.anonymized_at = now
        await contact.save()
    await remove_unused_blobs(store.data_dir, digests)  # after the commit: files are shared
    return {"id": contact_id, "anonymized_at": now.isoformat(), **counts}


# ------------------------------------------------------------------------------ export


async def export_personal_data(store: TicketStore, contact_id: int) -> dict[str, Any]:
    """Everything gatewayd holds about a contact, as one JSON-ready document (GDPR Art. 15)."""
    contact = await get_contact(contact_id)
    orders = await Order.filter(contact_id=contact_id).order_by("id")
    tickets = await Ticket.filter(contact_id=contact_id).order_by("id")
    emails = sorted({e for e in (contact.email_private, contact.email_business,
                                 contact.email_paypal) if e})
    mails = []
    for row in await Outbox.filter(ticket_id__in=[t.id for t in tickets]).order_by("id") \
            if tickets else []:
        mails.append({
            "id": row.id, "ticket_id": row.ticket_id,  # type: ignore[attr-defined]
            "subject": row.subject, "to": row.intended_to, "status": row.status,
            "created_at": row.created_at.isoformat() if row.created_at else None,
            "sent_at": row.sent_at.isoformat() if row.sent_at else None,
        })
    return {
        "exported_at": dt.datetime.now(dt.UTC).isoformat(),
        "contact": await contact_view(contact),
        "email_addresses": emails,
        "orders": [order_view(o) for o in orders],
        "tickets": [await ticket_view(store.config, t, full=True) for t in tickets],
        "mails": mails,
    }
