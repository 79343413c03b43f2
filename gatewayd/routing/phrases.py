"""What customers really write before a number, beside the manual's keywords (table 14).

"Bestellnummer 90210", "Bestell-Nr. 90210", "Auftragsnummer 90210", "Order #90210", the shop's
own words from `[routing] *_aliases`: such a phrase names a number that links the order (or
contact, invoice's order, ticket) only when it exists, and adds no note when it does not. Table
14's spellings keep the manual's behaviour (see `keywords`).

The built-in phrases are chosen against false positives: a phrase needs a word that says
"number" (Nummer, Nr, No, ID, #), except "Bestellung 90210" / "Auftrag 90210", which need five
digits or more (no count, year or day) that are not a decimal, a date, an amount or a postcode
followed by its town. English "order" without "number"/"#" is a verb ("order 20000 units"), so
it needs them. Pure functions over text.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from gatewayd.config import Routing

SEP = r"[\s\-_.:#]*"  # between a word and its qualifier, and before the number (table 14's)
_START = r"(?<![^\W\d_])"  # not inside a word
# The number: not part of a decimal number or a date ("12.03.", "49,90").
_NUMBER = r"(\d{1,18})(?!\d|[.,]\d)"
# A bare "Bestellung 90210": five digits or more, not an amount, count or a postcode + town.
_BARE_NUMBER = (r"(\d{5,18})(?!\d|[.,]\d|\s*(?:€|%|eur\b|euro\b|stück|stk\b|x\b|mal\b|tage?\b))"
                r"(?![ \t]+(?-i:[A-ZÄÖÜ][a-zäöüß]+))")

_ORDER = [
    # Bestellnummer, Bestell-Nr., Bestellnr, Bestellungsnummer, Bestellung Nr. / Nummer / ID
    rf"bestell(?:ungs?)?{SEP}(?:nummer|nr|no|id)\b{SEP}{_NUMBER}",
    # Bestellung #90210, Bestellung mit der Nummer 90210
    rf"bestellung\s*#\s*{_NUMBER}",
    rf"bestellung\s+mit\s+der\s+(?:nummer|nr\.?)\s*:?\s*{_NUMBER}",
    # Auftragsnummer, Auftrags-Nummer, Auftrag Nummer (the manual's order keyword has no Nummer)
    rf"auftrags?{SEP}nummer\b{SEP}{_NUMBER}",
    rf"auftrag\s*#\s*{_NUMBER}",
    # Order number 90210, Order #90210, order-number: 90210
    rf"order{SEP}(?:number|num)\b{SEP}{_NUMBER}",
    rf"order\s*#\s*{_NUMBER}",
    # Bestellung 90210, Auftrag: 90210 (five digits or more, see above)
    rf"(?:bestellung|auftrag)(?:\s*:\s*|\s+){_BARE_NUMBER}",
]
_CUSTOMER = [
    rf"kd{SEP}(?:nr|nummer|no)\b{SEP}{_NUMBER}",  # Kd.-Nr. 4711, KdNr 4711
    rf"customer\s*#\s*{_NUMBER}",
]
_INVOICE = [
    rf"rg{SEP}(?:nr|nummer|no)\b{SEP}{_NUMBER}",  # Rg.-Nr. 2024
    rf"(?:rechnung|invoice)\s*#\s*{_NUMBER}",
]
KINDS = ("ticket", "customer", "order", "invoice")
BUILT_IN: dict[str, list[str]] = {"ticket": [], "customer": _CUSTOMER, "order": _ORDER,
                                  "invoice": _INVOICE}
MAX_PER_KIND = 5  # numbers of one kind a mail's phrases name that are looked up
# Characters re.IGNORECASE folds onto ASCII letters but str.lower does not map to them.
_FOLDS_SPECIALLY = re.compile("[\u0130\u0131\u017f\u212a]")


def alias_parts(alias: str) -> list[str]:
    return [re.escape(p) for p in re.split(r"[\s\-_.:#]+", alias.strip().lower()) if p]


def alias_source(alias: str) -> str:
    """A configured word as a pattern: its parts may be joined by blanks, "-" or "." as the
    customer likes ("Vorgangs-Nr." also finds "Vorgangsnr 5"), then the number."""
    return _START + SEP.join(alias_parts(alias)) + rf"{SEP}{_NUMBER}"


@dataclass(frozen=True)
class Phrasebook:
    """The compiled phrases of each kind, and the words they start with (`trigger`): the
    phrases are tried only where one of those words is, so a long mail without them costs one
    quick search (the phrase patterns themselves are slow to run over a whole text)."""

    patterns: dict[str, re.Pattern[str]]
    trigger: re.Pattern[str] | None  # None: no phrase at all
    lower_trigger: re.Pattern[str] | None  # the same, case-sensitive, for lower-cased text

    def starts(self, text: str) -> list[int]:
        """Where a phrase may start: the trigger words' positions. On the lower-cased text
        (five times faster than ignoring case) when lowering keeps every position and no
        character folds specially under re.IGNORECASE."""
        if self.trigger is None or self.lower_trigger is None:
            return []
        lowered = text.lower()
        if len(lowered) == len(text) and _FOLDS_SPECIALLY.search(text) is None:
            return [m.start() for m in self.lower_trigger.finditer(lowered)]
        return [m.start() for m in self.trigger.finditer(text)]

    def find(self, texts: Sequence[str]) -> dict[str, tuple[str, ...]]:
        """The numbers the phrases of each kind name, first found first, without repeats."""
        found: dict[str, dict[str, None]] = {kind: {} for kind in self.patterns}
        for text in texts:
            for start in self.starts(text):
                for kind, pattern in self.patterns.items():
                    match = pattern.match(text, start)
                    if match is not None and len(found[kind]) < MAX_PER_KIND:
                        number = next(g for g in match.groups() if g is not None)
                        found[kind].setdefault(number, None)
        return {kind: tuple(numbers) for kind, numbers in found.items() if numbers}

    def numbers(self, kind: str, texts: Sequence[str]) -> tuple[str, ...]:
        return self.find(texts).get(kind, ())


_FIRST_WORDS = {"ticket": [], "customer": ["kd", "customer"],
                "order": ["bestell", "auftrag", "order"],
                "invoice": ["rg", "rechnung", "invoice"]}


@lru_cache(maxsize=16)
def phrasebook(ticket: tuple[str, ...] = (), customer: tuple[str, ...] = (),
               order: tuple[str, ...] = (), invoice: tuple[str, ...] = ()) -> Phrasebook:
    """The built-in phrases plus the configured aliases, compiled once per set of aliases."""
    aliases = {"ticket": ticket, "customer": customer, "order": order, "invoice": invoice}
    patterns: dict[str, re.Pattern[str]] = {}
    words: list[str] = []
    for kind in KINDS:
        kind_sources = [_START + s for s in BUILT_IN[kind]]
        kind_sources += [alias_source(a) for a in aliases[kind] if a.strip()]
        if kind_sources:
            joined = "|".join(f"(?:{s})" for s in kind_sources)
            patterns[kind] = re.compile(joined, re.IGNORECASE)
            words += [re.escape(w) for w in _FIRST_WORDS[kind]]
            words += [alias_parts(a)[0] for a in aliases[kind] if alias_parts(a)]
    source = "|".join(dict.fromkeys(words))
    if not source:
        return Phrasebook(patterns, None, None)
    return Phrasebook(patterns, re.compile(source, re.IGNORECASE), re.compile(source))


def phrasebook_for(routing: Routing) -> Phrasebook:
    """The phrasebook of a configuration's `[routing]` aliases (compiled once per set)."""
    return phrasebook(tuple(routing.ticket_aliases), tuple(routing.customer_aliases),
                      tuple(routing.order_aliases), tuple(routing.invoice_aliases))
