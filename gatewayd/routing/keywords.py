"""The manual's mail assignment keywords (table 14): ticket, customer, order and invoice numbers,
and beside them the phrases customers really write (`phrases`: "Bestellnummer 90210", ...).

Case-insensitive; the subject is searched before the body. Pure functions over text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from gatewayd.routing.phrases import Phrasebook, phrasebook

# Between the word and the qualifier and before the number: nothing, blanks, "-", ".", ":", "#".
_SEP = r"[\s\-_.:#]*"
_NUMBER = r"(\d{1,18})\b"


def _source(words: str, qualifiers: str) -> str:
    return rf"(?<![^\W\d_])(?:{words}){_SEP}(?:{qualifiers})\b{_SEP}{_NUMBER}"


def _pattern(words: str, qualifiers: str) -> re.Pattern[str]:
    return re.compile(_source(words, qualifiers), re.IGNORECASE)


# Ticket + ID / Nr / No / Nummer / number + Zahl ("Ticket-ID 1", "Ticket Nr. 1", "Ticketnummer 1")
_TICKET = (r"ticket", r"id|nr|no|nummer|number")
# Kunde(n) / Customer + ID / Nr / No / Nummer / number + Zahl ("Kunden-Nr. 7", "Kundennummer 7")
_CUSTOMER = (r"kunden|kunde|customer", r"id|nr|no|nummer|number")
# Auftrag(s) / Order + ID / Nr / No + Zahl ("Auftrags-ID 5", "Order No. 5")
_ORDER = (r"auftrags|auftrag|order", r"id|nr|no")
# Rechnung(s) / Invoice + ID / Nr / No / Nummer / number + Zahl ("Rechnungsnummer 2024")
_INVOICE = (r"rechnungs|rechnung|invoice", r"id|nr|no|nummer|number")
TICKET, CUSTOMER, ORDER, INVOICE = (_pattern(*spec) for spec in (_TICKET, _CUSTOMER, _ORDER,
                                                                  _INVOICE))


# A quick test that a text cannot hold any keyword, so the case-insensitive patterns above (slow
# on long bodies) run only on texts that might. Exact: every keyword needs a digit, and on the
# lower-cased text the same patterns, case-sensitive, find at least what they would find on the
# original ignoring case; the few characters that `re.IGNORECASE` folds onto ASCII letters but
# `str.lower` does not (İ ı ſ K) skip the test.
_DIGIT = re.compile(r"\d")
_FOLDS_SPECIALLY = re.compile("[\u0130\u0131\u017f\u212a]")
_ANY_LOWER = re.compile("|".join(f"(?:{_source(*spec)})" for spec in (_TICKET, _CUSTOMER,
                                                                       _ORDER, _INVOICE)))


def may_name_keywords(text: str, book: Phrasebook | None = None) -> bool:
    """False when `text` certainly names no ticket, customer, order or invoice number by a
    keyword of table 14 (or, given `book`, by one of its phrases)."""
    if not text or _DIGIT.search(text) is None:
        return False
    if book is not None and book.trigger is not None and book.trigger.search(text):
        return True
    if _FOLDS_SPECIALLY.search(text) is not None:
        return True
    return _ANY_LOWER.search(text.lower()) is not None


@dataclass(frozen=True)
class Keywords:
    """The numbers a mail names, each the first found (subject before body).

    The first five fields are table 14's keywords; the `*_phrases` are the numbers named by
    the phrases customers write (`phrases`), all of them, first found first: one links only
    when it exists (the rules take the first that does)."""

    ticket_id: int | None = None
    ticket_in: str | None = None  # "subject" | "body"
    customer: str | None = None
    order_id: int | None = None
    invoice: str | None = None
    ticket_phrases: tuple[int, ...] = ()
    customer_phrases: tuple[str, ...] = ()
    order_phrases: tuple[int, ...] = ()
    invoice_phrases: tuple[str, ...] = ()


def _first(pattern: re.Pattern[str], subject: str, body: str) -> tuple[str | None, str | None]:
    for where, text in (("subject", subject), ("body", body)):
        if not text:
            continue
        match = pattern.search(text)
        if match:
            return match.group(1), where
    return None, None


def _row_id(number: str | None) -> int | None:
    """A number as a row id, or None when no row can have it."""
    return int(number) if number is not None and int(number) < 2**31 else None


DEFAULT_BOOK = phrasebook()


def find_keywords(subject: str, body: str, book: Phrasebook | None = None) -> Keywords:
    """The numbers a mail names. `book`: the phrases (built-in and the configured aliases);
    None means the built-in ones."""
    book = book or DEFAULT_BOOK
    texts = [t for t in (subject, body) if t and _DIGIT.search(t) is not None]
    if not texts:
        return Keywords()
    phrases = book.find(texts)  # its own quick test of each text
    subject = subject if may_name_keywords(subject) else ""
    body = body if may_name_keywords(body) else ""
    ticket, ticket_in = _first(TICKET, subject, body)
    customer, _ = _first(CUSTOMER, subject, body)
    order, _ = _first(ORDER, subject, body)
    invoice, _ = _first(INVOICE, subject, body)
    return Keywords(
        ticket_id=_row_id(ticket),
        ticket_in=ticket_in,
        customer=customer,
        order_id=_row_id(order),
        invoice=invoice,
        ticket_phrases=tuple(i for n in phrases.get("ticket", ())
                             if (i := _row_id(n)) is not None),
        customer_phrases=phrases.get("customer", ()),
        order_phrases=tuple(i for n in phrases.get("order", ())
                            if (i := _row_id(n)) is not None),
        invoice_phrases=phrases.get("invoice", ()),
    )
