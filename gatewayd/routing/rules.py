"""Where a mail belongs: small named rules, pure functions over an InboundMail and looked-up facts.

The order is the manual's and the issue's: 1) thread headers (In-Reply-To / References matching a
Message-ID gatewayd sent or received), 2) the ticket-number keyword, 3) customer / order / invoice
keywords, 4) the sender's address. Numbers named by the phrases customers write (`phrases`:
"Bestellnummer 90210", configured aliases) count in 2) and 3) only when what they name exists,
and never add a note. Separately: `own_mail` (the gateway's own mail coming back) and
`automatic_reason` (auto-replies and bounces, imported but never answered).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from gatewayd.mail import InboundMail
from gatewayd.routing import automatic
from gatewayd.routing.keywords import Keywords, find_keywords
from gatewayd.routing.phrases import Phrasebook


@dataclass(frozen=True)
class Facts:
    """What the database knows about the keys a mail names (looked up before deciding)."""

    thread_ticket_id: int | None = None  # ticket of a Message-ID the mail refers to
    thread_message_id: str | None = None  # which reference matched
    ticket_exists: bool = False  # the keyword's ticket number exists
    customer_contact_id: int | None = None  # contact found by the customer keyword
    order_id: int | None = None  # order found by order id or invoice number
    order_contact_id: int | None = None
    order_language: str | None = None
    sender_contact_id: int | None = None
    contact_language: str | None = None
    # What the phrases found (`Keywords.*_phrases`), and which rule a linked order or contact
    # came from: order_keyword, invoice_keyword, order_phrase, invoice_phrase, customer_...
    phrase_ticket_id: int | None = None  # the first ticket a phrase names that exists
    order_via: str | None = None
    customer_via: str | None = None


@dataclass(frozen=True)
class Decision:
    """One routing outcome: append to a ticket, or open a new one linked as named."""

    action: Literal["append", "new", "skip"]
    rule: str
    ticket_id: int | None = None
    contact_id: int | None = None
    order_id: int | None = None
    language: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)


def referenced_ids(mail: InboundMail) -> list[str]:
    """Message-IDs the mail answers, nearest first (In-Reply-To, then References newest first)."""
    ids = ([mail.in_reply_to] if mail.in_reply_to else []) + list(reversed(mail.references))
    return list(dict.fromkeys(ids))


def _domain(message_id: str) -> str:
    return message_id.strip("<>").rpartition("@")[2].lower()


def own_mail(mail: InboundMail, message_id_domain: str, own_addresses: Sequence[str]) -> str | None:
    """Why a mail is the gateway's own mail coming back (not a customer message), or None."""
    if mail.message_id and _domain(mail.message_id) == message_id_domain.lower():
        return f"its Message-ID is in the gateway's own domain {message_id_domain}"
    own = {a.lower() for a in own_addresses}
    for value in mail.header_all("x-loop"):
        if value.strip().lower() in own or message_id_domain.lower() in value.lower():
            return f"X-Loop names the gateway ({value.strip()[:100]})"
    return None


def automatic_reason(mail: InboundMail, bounced: Sequence[str] = ()) -> str | None:
    """Why a mail is automatic (auto-reply, bounce, report, list or gateway mail), or None for
    a person's mail. The first rule of `automatic.AUTOMATIC_RULES` that fires names the reason."""
    return automatic.reason(mail, bounced)


def keywords_of(mail: InboundMail, book: Phrasebook | None = None) -> Keywords:
    return find_keywords(mail.subject, mail.text, book)


# ---------------------------------------------------------------------------- the rules


def rule_thread_headers(mail: InboundMail, keys: Keywords, facts: Facts) -> Decision | None:
    if facts.thread_ticket_id is None:
        return None
    return Decision("append", "thread_headers", ticket_id=facts.thread_ticket_id)


def rule_ticket_keyword(mail: InboundMail, keys: Keywords, facts: Facts) -> Decision | None:
    if keys.ticket_id is None:
        if facts.phrase_ticket_id is not None:  # a configured alias naming a ticket that exists
            return Decision("append", "ticket_phrase", ticket_id=facts.phrase_ticket_id)
        return None
    if facts.ticket_exists:
        return Decision("append", "ticket_keyword", ticket_id=keys.ticket_id)
    # The number is unknown: open a new ticket (linked by the later rules) that says so.
    linked = (rule_customer_order_keywords(mail, keys, facts)
              or rule_sender_contact(mail, keys, facts) or rule_new_ticket(mail, keys, facts))
    note = (f"the mail names ticket {keys.ticket_id} (in the {keys.ticket_in}), "
            "which does not exist")
    return Decision("new", "ticket_keyword_unknown", contact_id=linked.contact_id,
                    order_id=linked.order_id, language=linked.language,
                    notes=(*linked.notes, note))


def rule_customer_order_keywords(mail: InboundMail, keys: Keywords,
                                 facts: Facts) -> Decision | None:
    notes: list[str] = []
    if keys.customer is not None and facts.customer_contact_id is None:
        notes.append(f"the mail names customer {keys.customer}, who is not known")
    if (keys.order_id is not None or keys.invoice is not None) and facts.order_id is None:
        named = (f"order {keys.order_id}" if keys.order_id is not None
                 else f"invoice {keys.invoice}")
        notes.append(f"the mail names {named}, which is not known")
    if facts.order_id is None and facts.customer_contact_id is None:
        return None
    contact = facts.customer_contact_id or facts.order_contact_id or facts.sender_contact_id
    if facts.order_id is not None:
        rule = facts.order_via or ("order_keyword" if keys.order_id is not None
                                   else "invoice_keyword")
    else:
        rule = facts.customer_via or "customer_keyword"
    return Decision("new", rule, contact_id=contact, order_id=facts.order_id,
                    language=facts.contact_language or facts.order_language,
                    notes=tuple(notes))


def rule_sender_contact(mail: InboundMail, keys: Keywords, facts: Facts) -> Decision | None:
    if facts.sender_contact_id is None:
        return None
    return Decision("new", "sender_contact", contact_id=facts.sender_contact_id,
                    language=facts.contact_language)


def rule_new_ticket(mail: InboundMail, keys: Keywords, facts: Facts) -> Decision:
    notes = []
    if keys.customer is not None:
        notes.append(f"the mail names customer {keys.customer}, who is not known")
    if keys.order_id is not None or keys.invoice is not None:
        named = (f"order {keys.order_id}" if keys.order_id is not None
                 else f"invoice {keys.invoice}")
        notes.append(f"the mail names {named}, which is not known")
    return Decision("new", "new_ticket", notes=tuple(notes))


RULES = (rule_thread_headers, rule_ticket_keyword, rule_customer_order_keywords,
         rule_sender_contact)


def decide(mail: InboundMail, keys: Keywords, facts: Facts) -> Decision:
    """The first rule that decides wins; otherwise a new ticket with no links."""
    for rule in RULES:
        decision = rule(mail, keys, facts)
        if decision is not None:
            return decision
    return rule_new_ticket(mail, keys, facts)
