"""The manual's mail assignment keywords (table 14): ticket, customer, order and invoice numbers.

Case-insensitive; the subject is searched before the body. Pure functions over text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Between the word and the qualifier and before the number: nothing, blanks, "-", ".", ":", "#".
_SEP = r"[\s\-_.:#]*"
_NUMBER = r"(\d{1,18})\b"


def _pattern(words: str, qualifiers: str) -> re.Pattern[str]:
    return re.compile(
        rf"(?<![^\W\d_])(?:{words}){_SEP}(?:{qualifiers})\b{_SEP}{_NUMBER}",
        re.IGNORECASE,
    )


# Ticket + ID / Nr / No / Nummer / number + Zahl ("Ticket-ID 1", "Ticket Nr. 1", "Ticketnummer 1")
TICKET = _pattern(r"ticket", r"id|nr|no|nummer|number")
# Kunde(n) / Customer + ID / Nr / No / Nummer / number + Zahl ("Kunden-Nr. 7", "Kundennummer 7")
CUSTOMER = _pattern(r"kunden|kunde|customer", r"id|nr|no|nummer|number")
# Auftrag(s) / Order + ID / Nr / No + Zahl ("Auftrags-ID 5", "Order No. 5")
ORDER = _pattern(r"auftrags|auftrag|order", r"id|nr|no")
# Rechnung(s) / Invoice + ID / Nr / No / Nummer / number + Zahl ("Rechnungsnummer 2024")
INVOICE = _pattern(r"rechnungs|rechnung|invoice", r"id|nr|no|nummer|number")


@dataclass(frozen=True)
class Keywords:
    """The numbers a mail names, each the first found (subject before body)."""

    ticket_id: int | None = None
    ticket_in: str | None = None  # "subject" | "body"
    customer: str | None = None
    order_id: int | None = None
    invoice: str | None = None


def _first(pattern: re.Pattern[str], subject: str, body: str) -> tuple[str | None, str | None]:
    for where, text in (("subject", subject), ("body", body)):
        match = pattern.search(text)
        if match:
            return match.group(1), where
    return None, None


def find_keywords(subject: str, body: str) -> Keywords:
    ticket, ticket_in = _first(TICKET, subject, body)
    customer, _ = _first(CUSTOMER, subject, body)
    order, _ = _first(ORDER, subject, body)
    invoice, _ = _first(INVOICE, subject, body)
    return Keywords(
        ticket_id=int(ticket) if ticket is not None and int(ticket) < 2**31 else None,
        ticket_in=ticket_in,
        customer=customer,
        order_id=int(order) if order is not None and int(order) < 2**31 else None,
        invoice=invoice,
    )
