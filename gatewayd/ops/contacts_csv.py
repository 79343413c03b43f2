"""Contact lists as CSV: export every contact, import new ones and update known ones.

The file is UTF-8 (a BOM is accepted) with a header row. Columns, in export order:
number, first_name, last_name, company, email_private, email_business, email_paypal, language,
active (1/0), registered (YYYY-MM-DD). German headers (Kundennummer, Vorname, Nachname, Firma,
E-Mail, Sprache, Aktiv, Registriert) and `;` as separator (spreadsheets set to German) are read too,
and the names other shop systems export (Shopware's customer_number and email, WooCommerce's
customer_id, user_email, user_registered and locale, plentymarkets' E-Mail PayPal). Columns gatewayd
does not use (Telefon, billing_street, ...) are skipped and named once in the report; `strict`
refuses such a file instead.

Import is parse → plan → apply: `parse_csv` is pure and reports bad rows by line number; good rows
are applied one by one, so a bad row never costs the good ones. A row updates the contact with the
same customer number, else the one with the same e-mail address, else it creates one — importing
an exported file again changes nothing and duplicates nothing.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from tortoise.expressions import Q
from tortoise.transactions import in_transaction

from gatewayd.config import is_address
from gatewayd.store.contacts import insert_row, normalise_email
from gatewayd.store.models import Contact

COLUMNS = ("number", "first_name", "last_name", "company", "email_private", "email_business",
           "email_paypal", "language", "active", "registered")
HEADER_ALIASES = {
    "number": "number", "customer_number": "number", "kundennummer": "number",
    "kunden-nr": "number", "kundennr": "number",
    "first_name": "first_name", "vorname": "first_name",
    "last_name": "last_name", "nachname": "last_name", "name": "last_name",
    "company": "company", "firma": "company", "email": "email_private", "e-mail": "email_private",
    "email_private": "email_private", "e-mail privat": "email_private",
    "email_business": "email_business", "e-mail geschäftlich": "email_business",
    "email_paypal": "email_paypal", "language": "language", "sprache": "language",
    "active": "active", "aktiv": "active", "registered": "registered",
    "registered_at": "registered", "registriert": "registered",
    # other shop systems' exports: WooCommerce, plentymarkets
    "customer_id": "number", "user_email": "email_private", "user_registered": "registered",
    "locale": "language", "e-mail paypal": "email_paypal", "paypal e-mail": "email_paypal",
    "paypal-e-mail": "email_paypal", "email paypal": "email_paypal",
    "paypal email": "email_paypal", "paypal_email": "email_paypal",
}
_TRUE = {"1", "true", "yes", "ja", "y", "j"}
_FALSE = {"0", "false", "no", "nein", "n"}
_LANGUAGE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # not tab, LF or CR (quoted cells)
EMAIL_FIELDS = ("email_private", "email_business", "email_paypal")
TEXT_FIELDS = ("first_name", "last_name", "company", "language")


@dataclass(frozen=True)
class RowError:
    line: int
    message: str

    def format(self, file: str) -> str:
        return f"{file}:{self.line}: {self.message}"


@dataclass(frozen=True)
class ContactRow:
    """One valid row: only the columns the file has are set (others stay as they are)."""

    line: int
    values: dict[str, Any]

    @property
    def emails(self) -> list[str]:
        return [self.values[k] for k in EMAIL_FIELDS if self.values.get(k)]


@dataclass(frozen=True)
class ParsedCsv:
    """A contact list read: its valid rows, every bad row's line and reason, and the header
    names of the columns skipped because gatewayd does not use them."""

    rows: list[ContactRow]
    errors: list[RowError]
    ignored: list[str] = field(default_factory=list)

    def __iter__(self) -> Iterator[Any]:  # rows, errors, ignored = parse_csv(...)
        return iter((self.rows, self.errors, self.ignored))


@dataclass
class ImportReport:
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    ignored: list[str] = field(default_factory=list)  # columns skipped (names as in the file)

    @property
    def rows_ok(self) -> int:
        return self.created + self.updated + self.unchanged


# ------------------------------------------------------------------------------ pure parsing


def _parse_date(value: str) -> dt.datetime:
    for fmt in ("%Y-%m-%d", "%d.%m.%Y", "%Y-%m-%dT%H:%M:%S%z", "%Y-%m-%d %H:%M:%S",
                "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M"):
        try:
            parsed = dt.datetime.strptime(value, fmt)
        except ValueError:
            continue
        parsed = parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)
        try:
            return parsed.astimezone(dt.UTC)  # stored in UTC: 0001-01-01+01:00 is not
        except OverflowError:
            raise ValueError(f"registered date {_shown(value)} is out of range in UTC — "
                             "give a date between the years 1 and 9999") from None
    raise ValueError(f"registered date {_shown(value)} is not YYYY-MM-DD (or DD.MM.YYYY)")


def _shown(cell: str) -> str:
    """A cell as an error message quotes it: at most 60 characters."""
    return repr(cell if len(cell) <= 60 else cell[:59] + "…")


def _row_values(raw: dict[str, str]) -> dict[str, Any]:
    """Check and convert one row's cells; raise ValueError with what is wrong and the fix."""
    values: dict[str, Any] = {}
    for key, cell in raw.items():
        cell = (cell or "").strip()
        if _CONTROL.search(cell):
            raise ValueError(f"{key} holds a control character (such as NUL) — remove it")
        if key == "number":
            if len(cell) > 64:
                raise ValueError("customer number is longer than 64 characters")
            values[key] = cell or None
        elif key in EMAIL_FIELDS:
            if len(cell) > 320:
                raise ValueError(f"{key} is longer than 320 characters")
            if cell and not is_address(cell):
                raise ValueError(f"{key} {_shown(cell)} is not an e-mail address")
            values[key] = normalise_email(cell)
        elif key == "active":
            if cell.lower() in _TRUE:
                values[key] = True
            elif cell.lower() in _FALSE:
                values[key] = False
            elif cell == "":
                continue  # unchanged / default
            else:
                raise ValueError(f"active must be 1 or 0, not {_shown(cell)}")
        elif key == "registered":
            values["registered_at"] = _parse_date(cell) if cell else None
        elif key == "language":
            cell = cell.replace("_", "-").lower()  # WooCommerce writes locales as de_DE
            if cell and not _LANGUAGE.match(cell):
                raise ValueError(f"language {_shown(cell)} is not a language code like de or en")
            values[key] = cell or None
        else:
            if len(cell) > 255:
                raise ValueError(f"{key} is longer than 255 characters")
            values[key] = cell if key in ("first_name", "last_name") else (cell or None)
    if not values.get("number") and not any(values.get(k) for k in EMAIL_FIELDS):
        raise ValueError("a row needs a customer number or an e-mail address to identify it")
    return values


def _header_key(name: str) -> str | None:
    """The column a header name means, or None ("E-Mail  PayPal" = "e-mail paypal")."""
    return HEADER_ALIASES.get(" ".join(name.split()).lower())


def parse_csv(text: str, *, strict: bool = False) -> ParsedCsv:
    """Read a contact list: the valid rows, every bad row's line number and reason, and the
    columns skipped. Shop exports always carry columns gatewayd does not use (phone, street,
    customer group): they are skipped, or with `strict` the file is refused for them."""
    # No cell is longer than the file. The csv module's own limit (128 KiB) ended the reading
    # at an oversized cell and skipped every row after it; lengths are checked per cell.
    limit = csv.field_size_limit()
    csv.field_size_limit(max(limit, len(text) + 1))
    try:
        return _parse_csv(text, strict=strict)
    finally:
        csv.field_size_limit(limit)


def _parse_csv(text: str, *, strict: bool) -> ParsedCsv:
    text = text.removeprefix("\ufeff")
    first = text.split("\n", 1)[0]
    delimiter = ";" if first.count(";") > first.count(",") else ","
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    try:
        header = next(reader)
    except StopIteration:
        return ParsedCsv([], [RowError(1, "the file is empty — it needs a header row: "
                                          + ",".join(COLUMNS))])
    except csv.Error as exc:
        return ParsedCsv([], [RowError(1, f"the header row cannot be read ({exc})")])
    keys: list[str | None] = [_header_key(name) for name in header]
    unknown = list(dict.fromkeys(name.strip() for name, key in zip(header, keys, strict=True)
                                 if key is None and name.strip()))
    if unknown and strict:
        return ParsedCsv([], [RowError(1, f"unknown column {name!r} — use the columns "
                                          + ",".join(COLUMNS) + " (or import without --strict "
                                          "to skip it)") for name in unknown])
    known = [k for k in keys if k]
    if len(set(known)) != len(known):
        twice = next(k for k in known if known.count(k) > 1)
        names = [n.strip() for n, k in zip(header, keys, strict=True) if k == twice]
        return ParsedCsv([], [RowError(1, f"the columns {', '.join(map(repr, names))} both "
                                          f"mean {twice} — keep one of them")], unknown)
    if "number" not in known and not any(k in known for k in EMAIL_FIELDS):
        return ParsedCsv([], [RowError(1, "the header needs a number or an e-mail column to "
                                          "match contacts")], unknown)
    errors: list[RowError] = []

    rows: list[ContactRow] = []
    seen_numbers: dict[str, int] = {}
    seen_emails: dict[str, int] = {}
    line = 1
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            errors.append(RowError(start, f"cannot read the row ({exc}); the rows after it "
                                          "were not read"))
            break
        line = start
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(keys):
            errors.append(RowError(line, f"{len(cells)} cells, the header has {len(keys)} — "
                                         "check separators and quotes"))
            continue
        raw = {k: c for k, c in zip(keys, cells, strict=True) if k}
        try:
            values = _row_values(raw)
        except ValueError as exc:
            errors.append(RowError(line, str(exc)))
            continue
        number = values.get("number")
        if number and number in seen_numbers:
            errors.append(RowError(line, f"customer number {number!r} is already on line "
                                         f"{seen_numbers[number]}"))
            continue
        row = ContactRow(line, values)
        dupes = [e for e in row.emails if e in seen_emails]
        if dupes and not number:
            errors.append(RowError(line, f"e-mail {dupes[0]} is already on line "
                                         f"{seen_emails[dupes[0]]}"))
            continue
        if number:
            seen_numbers[number] = line
        for email in row.emails:
            seen_emails.setdefault(email, line)
        rows.append(row)
    return ParsedCsv(rows, errors, unknown)


def contact_row(contact: Contact) -> list[str]:
    registered = contact.registered_at.date().isoformat() if contact.registered_at else ""
    return [contact.number or "", contact.first_name, contact.last_name, contact.company or "",
            contact.email_private or "", contact.email_business or "",
            contact.email_paypal or "", contact.language or "",
            "1" if contact.active else "0", registered]


# ------------------------------------------------------------------------------ database


async def _match(row: ContactRow) -> Contact | None:
    """The contact a row means: same customer number first, else same e-mail address."""
    number = row.values.get("number")
    if number:
        found = await Contact.get_or_none(number=number)
        if found is not None:
            return found
    emails = row.emails
    if not emails:
        return None
    cond = Q()
    for email in emails:
        cond |= Q(email_private=email) | Q(email_business=email) | Q(email_paypal=email)
    candidates = await Contact.filter(cond, anonymized_at__isnull=True).order_by("id")
    if number:  # a row with a new number never takes over a contact that has another number
        candidates = [c for c in candidates if not c.number]
    return candidates[0] if candidates else None


async def apply_row(row: ContactRow) -> str:
    """Create or update one contact; returns created / updated / unchanged."""
    async with in_transaction():
        contact = await _match(row)
        values = dict(row.values)
        if contact is None:
            await insert_row(Contact, {k: v for k, v in values.items() if v is not None},
                             "contact")
            return "created"
        if contact.anonymized_at is not None:
            raise ValueError(f"contact {contact.id} is anonymised and cannot be updated")
        changed = [k for k, v in values.items() if getattr(contact, k) != v]
        if "registered_at" in changed and values["registered_at"] and contact.registered_at \
                and values["registered_at"].date() == contact.registered_at.date():
            changed.remove("registered_at")  # the file carries the day only
        if not changed:
            return "unchanged"
        for key in changed:
            setattr(contact, key, values[key])
        await contact.save(update_fields=changed)
        return "updated"


async def import_contacts(text: str, progress: Callable[[int, int], None] | None = None, *,
                          strict: bool = False) -> ImportReport:
    parsed = parse_csv(text, strict=strict)
    rows = parsed.rows
    report = ImportReport(errors=list(parsed.errors), ignored=list(parsed.ignored))
    for index, row in enumerate(rows, 1):
        try:
            outcome = await apply_row(row)
        except Exception as exc:  # e.g. a number taken by a different contact: report the line
            report.errors.append(RowError(row.line, f"not saved: {exc}"))
        else:
            setattr(report, outcome, getattr(report, outcome) + 1)
        if progress is not None:
            progress(index, len(rows))
    report.errors.sort(key=lambda e: e.line)
    return report


async def export_contacts(out: io.TextIOBase | Any, *, batch: int = 500) -> int:
    """Write every contact (active and inactive) as CSV; returns the number of rows."""
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    count = 0
    last_id = 0
    while True:
        chunk = await Contact.filter(id__gt=last_id).order_by("id").limit(batch)
        if not chunk:
            return count
        for contact in chunk:
            writer.writerow(contact_row(contact))
        count += len(chunk)
        last_id = chunk[-1].id

