"""Shop forms as plain values: validating fields, rendering the submission readably, and
linking contact and order.

Everything here is pure (config and posted values in, frozen values out). The posted body is
read in `form_body`, the protections are in `form_guards`, the HTML pages in `form_pages`, the
texts per language in `form_texts`, the look-ups and the ticket in `form_ticket`; the HTTP door
(`gatewayd.api.forms`) does the reading.
"""

from __future__ import annotations

import dataclasses
import mimetypes
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from email_validator import EmailNotValidError, validate_email

from gatewayd.config import Form, FormField, in_language, is_address
from gatewayd.ingest.parse import ALLOWED_CONTENT_TYPES, ALLOWED_EXTENSIONS
from gatewayd.store.attachments import safe_filename

# Length limits for fields without their own `max_length` (characters).
DEFAULT_MAX_LENGTH = {
    "email": 254, "order_id": 32, "subject": 200, "name": 200, "phone": 64, "text": 1000,
    "textarea": 20_000, "message": 20_000, "attachment": 255,
}
_GENERIC_TYPES = frozenset({"application/octet-stream", "application/unknown", ""})
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_ORDER_ID = re.compile(r"^\s*#?\s*(\d+)\s*$")
MAX_ORDER_DIGITS = 64  # far beyond any row id; keeps int() away from huge digit strings


class FormRejected(Exception):
    """The request cannot be turned into a submission; `status` is the HTTP answer (4xx).
    `code` names the text the visitor reads (`form_texts`; default: one per status)."""

    def __init__(self, status: int, error: str, detail: Any = None, code: str | None = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail
        self.code = code


@dataclass(frozen=True)
class UploadedFile:
    field: str
    filename: str
    content_type: str
    content: bytes


@dataclass(frozen=True)
class PostedForm:
    """The body as posted: text values by field name (first value wins) and the files."""

    values: Mapping[str, str]
    files: tuple[UploadedFile, ...] = ()


@dataclass(frozen=True)
class FieldError:
    """A field's problem: `message` in English; `code` and `params` name the text of the
    form's language (`templates_dir/_form_messages/<lang>.txt`, see `form_texts`)."""

    field: str
    message: str
    code: str = dataclasses.field(default="check_field", compare=False)
    params: Mapping[str, Any] = dataclasses.field(default_factory=dict, compare=False,
                                                  hash=False)

    def view(self, message: str | None = None) -> dict[str, str]:
        return {"field": self.field, "code": self.code, "message": message or self.message}


@dataclass(frozen=True)
class Submission:
    """A validated submission: what the ticket and the info mail are made of."""

    form: str
    email: str  # normalised (trimmed, lower-case): the one address used for matching and answers
    name: str | None
    subject: str | None
    message: str | None
    order_id: int | None
    fields: tuple[tuple[str, str, str], ...]  # (name, label, value) in the form's order
    files: tuple[UploadedFile, ...] = ()

    @property
    def title(self) -> str:
        """The ticket title: the subject field, else the message's first line, else the form."""
        if self.subject:
            return self.subject
        first = next((line.strip() for line in (self.message or "").splitlines() if line.strip()),
                     "")
        if first:
            return first if len(first) <= 80 else first[:79].rstrip() + "…"
        return f"Form {self.form}"


# ------------------------------------------------------------------------------ validation


def attachment_issue(filename: str, content_type: str) -> tuple[str, dict[str, Any]] | None:
    """The manual's allowed-types rule for uploads: the extension must be on the list, and the
    declared type must be an allowed one or a generic one (browsers send octet-stream for
    types they do not know). None when allowed, else the reason's code and values."""
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if extension not in ALLOWED_EXTENSIONS:
        return "file_type", {"extension": extension,
                             "allowed": ", ".join(sorted(ALLOWED_EXTENSIONS))}
    if content_type not in ALLOWED_CONTENT_TYPES and content_type not in _GENERIC_TYPES:
        return "file_content_type", {"content_type": content_type}
    return None


def attachment_problem(filename: str, content_type: str) -> str | None:
    """`attachment_issue` in English words, or None when the file is allowed."""
    issue = attachment_issue(filename, content_type)
    if issue is None:
        return None
    code, params = issue
    if code == "file_type":
        shown = f".{params['extension']}" if params["extension"] else "without an extension"
        return f"files {shown} are not accepted; allowed: {params['allowed']}"
    return f"the file type {params['content_type']} is not accepted"


def stored_content_type(filename: str, content_type: str) -> str:
    if content_type in ALLOWED_CONTENT_TYPES:
        return content_type
    guessed, _ = mimetypes.guess_type(filename, strict=False)
    return guessed or "application/octet-stream"


def form_address(value: str) -> str | None:
    """The reply address typed into a form, normalised (Unicode NFC, IDN domain in its Unicode
    form, lower-case), or None when it is no address a customer can be answered at.

    email-validator checks the syntax of RFC 5321/5322 and the domain rules of IDNA 2008
    (no `..`, no `%`, no CR/LF, no domain literal, no reserved names such as .test or
    localhost) offline: check_deliverability=False makes no DNS look-up, so a slow resolver
    never slows the form down. The answer goes back through our own SMTP account, so the
    address must be plain: quoted local parts and domain literals are refused, and (strict) a
    local part longer than RFC 5321's 64 octets too. What the outbound mail builder refuses
    (`is_address`) is refused here as well, so a form never accepts an address it cannot
    answer."""
    try:
        checked = validate_email(value, check_deliverability=False, strict=True,
                                 allow_quoted_local=False, allow_domain_literal=False,
                                 allow_display_name=False)
    except EmailNotValidError:
        return None
    address = checked.normalized.lower()
    return address if len(address) <= 254 and is_address(address) else None


def max_length(spec: FormField) -> int:
    return spec.max_length or DEFAULT_MAX_LENGTH.get(spec.type, 1000)


def _clean(value: str, multiline: bool) -> str:
    value = value.replace("\r\n", "\n").replace("\r", "\n")
    if not multiline:
        value = " ".join(value.split())
    return _CONTROL.sub("", value).strip()


def validate(form: Form, posted: PostedForm,
             label_languages: Sequence[str] = ()) -> Submission | list[FieldError]:
    """Check every field of the form's definition; unknown posted fields are ignored. The
    submission's labels are in the first of `label_languages` a label has (the ticket's text
    and the merchant's info mail are read by the shop's staff)."""
    errors: list[FieldError] = []
    rendered: list[tuple[str, str, str]] = []
    by_type: dict[str, str] = {}
    order_id: int | None = None
    files: list[UploadedFile] = []
    for spec in form.fields:
        label = in_language(spec.label, list(label_languages)) or spec.name
        if spec.type == "attachment":
            mine = [f for f in posted.files if f.field == spec.name]
            if spec.required and not mine:
                errors.append(FieldError(spec.name, "please attach a file", "attach_required"))
            for upload in mine:
                reason = attachment_problem(upload.filename, upload.content_type)
                issue = attachment_issue(upload.filename, upload.content_type)
                if len(upload.content) > form.max_attachment_bytes:
                    max_kib = form.max_attachment_bytes // 1024
                    reason = f"{upload.filename} is larger than {max_kib} KiB"
                    issue = "file_too_large", {"filename": upload.filename, "max_kib": max_kib}
                elif len(upload.filename) > max_length(spec):
                    reason = "the file name is too long"
                    issue = "file_name_too_long", {}
                if reason and issue:
                    errors.append(FieldError(spec.name, reason, *issue))
                else:
                    files.append(UploadedFile(
                        spec.name, safe_filename(_clean(upload.filename, False)),
                        stored_content_type(upload.filename, upload.content_type),
                        upload.content))
            continue
        raw = posted.values.get(spec.name, "")
        if len(raw) > max_length(spec):
            errors.append(FieldError(spec.name, f"at most {max_length(spec)} characters",
                                     "too_long", {"max": max_length(spec)}))
            continue
        value = _clean(raw, spec.type in ("message", "textarea"))
        if not value:
            if spec.required:
                errors.append(FieldError(spec.name, "this field is required", "required"))
            continue
        if spec.type == "email":
            address = form_address(value)
            if address is None:
                errors.append(FieldError(spec.name, "not a valid e-mail address",
                                         "invalid_email"))
                continue
            value = address
        elif spec.type == "order_id":
            match = _ORDER_ID.match(value)
            if not match:
                errors.append(FieldError(spec.name, "an order number has only digits",
                                         "order_digits"))
                continue
            if len(match.group(1)) > MAX_ORDER_DIGITS:
                errors.append(FieldError(
                    spec.name, f"an order number has at most {MAX_ORDER_DIGITS} digits",
                    "order_too_long", {"max": MAX_ORDER_DIGITS}))
                continue
            order_id = int(match.group(1))
            value = str(order_id)
        by_type.setdefault(spec.type, value)
        rendered.append((spec.name, label, value))
    if len(files) > form.max_attachments:
        errors.append(FieldError(
            next(f.name for f in form.fields if f.type == "attachment"),
            f"at most {form.max_attachments} files", "too_many_files",
            {"max": form.max_attachments}))
    if errors:
        return errors
    return Submission(
        form=form.name, email=by_type["email"], name=by_type.get("name"),
        subject=by_type.get("subject"), message=by_type.get("message") or by_type.get("textarea"),
        order_id=order_id, fields=tuple(rendered), files=tuple(files),
    )


def honeypot_filled(form: Form, posted: PostedForm) -> bool:
    return bool(form.honeypot) and bool(posted.values.get(form.honeypot, "").strip())


# ------------------------------------------------------------------------------ rendering


def render_submission(form: Form, submission: Submission, notes: Sequence[str] = ()) -> str:
    """The first message of the ticket: every field as `Label: value`, long text below."""
    lines = [f"Form: {form.name}"]
    long_values: list[tuple[str, str]] = []
    for _name, label, value in submission.fields:
        if "\n" in value or len(value) > 100:
            long_values.append((label, value))
        else:
            lines.append(f"{label}: {value}")
    for upload in submission.files:
        lines.append(f"Attachment: {upload.filename} ({len(upload.content)} bytes)")
    for label, value in long_values:
        lines += ["", f"{label}:", value]
    if notes:
        lines += ["", *[f"Note: {note}" for note in notes]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------ linking


@dataclass(frozen=True)
class ContactFacts:
    id: int
    own_address: bool  # matched by the contact's own e-mail (not only an address-book entry)


@dataclass(frozen=True)
class OrderFacts:
    id: int
    contact_id: int | None
    billing_email: str | None
    delivery_email: str | None


@dataclass(frozen=True)
class Links:
    contact_id: int | None
    order_id: int | None
    notes: tuple[str, ...] = ()
    # Why the order the form names is not linked: "missing" (no such order) or "foreign".
    order_problem: str | None = None


def decide_links(email: str, contacts: Sequence[ContactFacts], order: OrderFacts | None,
                 order_requested: int | None) -> Links:
    """Which contact and order the ticket shows. Only the form's email field counts.

    An order is linked when it belongs to that address: its billing or delivery e-mail is the
    address, or its contact is one of the contacts using it. The order's contact then wins over
    other contacts with the same address; otherwise a contact's own address beats an
    address-book entry, and the oldest contact wins a tie.
    """
    notes: list[str] = []
    matched = {c.id for c in contacts}
    order_id: int | None = None
    contact_id: int | None = None
    problem: str | None = None
    if order_requested is not None:
        if order is None:
            notes.append(f"order {order_requested} does not exist (not linked)")
            problem = "missing"
        elif (email in (order.billing_email, order.delivery_email)
              or (order.contact_id is not None and order.contact_id in matched)):
            order_id = order.id
            if order.contact_id is not None and (order.contact_id in matched or not matched):
                contact_id = order.contact_id
        else:
            notes.append(f"order {order_requested} belongs to another address (not linked)")
            problem = "foreign"
    if contact_id is None and contacts:
        best = sorted(contacts, key=lambda c: (not c.own_address, c.id))[0]
        contact_id = best.id
    return Links(contact_id, order_id, tuple(notes), problem)
