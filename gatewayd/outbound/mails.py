"""Building the RFC 5322 message from a rendered template: headers that thread and cannot be bent.

Pure: rendered parts and plain facts in, an `EmailMessage` out. No rendered or customer-supplied
value can add a header or a recipient: control characters (CR/LF included) are removed from
every header value, and addresses must be single, plain addresses.
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from dataclasses import dataclass
from email.headerregistry import Address
from email.message import EmailMessage
from email.policy import SMTP

from gatewayd.config import is_address

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_TICKET_KEYWORD = re.compile(r"\[Ticket-ID\s+(\d+)\]", re.IGNORECASE)
MAX_REFERENCES = 20


class MailError(Exception):
    """The mail cannot be built safely; the outbox row fails with this reason."""


def header_value(value: str, *, limit: int = 900) -> str:
    """A header value with every control character (CR, LF, NUL, ...) replaced by a space."""
    return " ".join(_CONTROL.sub(" ", value).split())[:limit]


def subject_with_ticket_id(subject: str, ticket_id: int | None) -> str:
    """`[Ticket-ID N]` in front, once: a reply from any mail program finds the ticket again."""
    subject = header_value(subject)
    if ticket_id is None:
        return subject
    found = _TICKET_KEYWORD.search(subject)
    if found and found.group(1) == str(ticket_id):
        return subject
    return f"[Ticket-ID {ticket_id}] {subject}".strip()


def checked_address(value: str) -> str:
    value = value.strip()
    if _CONTROL.search(value) or not is_address(value):
        raise MailError(f"{value!r} is not a single plain e-mail address")
    return value


@dataclass(frozen=True)
class Envelope:
    """Everything about a mail except its body, as plain values."""

    from_address: str
    from_name: str
    to: Sequence[str]
    subject: str
    message_id: str
    ticket_id: int | None = None
    reply_to: str | None = None
    in_reply_to: str | None = None
    references: Sequence[str] = ()
    auto_submitted: str | None = None  # auto-replied | auto-generated | None (a person's mail)
    loop_marker: str | None = None  # X-Loop value
    language: str | None = None


def _msg_id(value: str) -> str | None:
    value = header_value(value)
    return value if re.fullmatch(r"<[^<>\s]+@[^<>\s]+>", value) else None


def build_message(envelope: Envelope, text: str, html: str | None = None) -> EmailMessage:
    """A text mail, or multipart/alternative when there is HTML."""
    message = EmailMessage(policy=SMTP)
    message["From"] = Address(display_name=header_value(envelope.from_name, limit=200),
                              addr_spec=checked_address(envelope.from_address))
    to = [checked_address(a) for a in envelope.to]
    if to:
        message["To"] = ", ".join(to)
    else:
        message["To"] = "undisclosed-recipients:;"
    message["Subject"] = subject_with_ticket_id(envelope.subject, envelope.ticket_id)
    message["Date"] = email.utils.formatdate(localtime=False, usegmt=True)
    message_id = _msg_id(envelope.message_id)
    if message_id is None:
        raise MailError(f"{envelope.message_id!r} is not a Message-ID")
    message["Message-ID"] = message_id
    if envelope.reply_to:
        message["Reply-To"] = checked_address(envelope.reply_to)
    refs = [r for r in (_msg_id(x) for x in envelope.references) if r]
    answer = _msg_id(envelope.in_reply_to) if envelope.in_reply_to else None
    if answer:
        message["In-Reply-To"] = answer
        if answer not in refs:
            refs.append(answer)
    if refs:
        # The first and the newest ones: RFC 5322 threading needs the root and the parent.
        kept = refs if len(refs) <= MAX_REFERENCES else [refs[0], *refs[-(MAX_REFERENCES - 1):]]
        message["References"] = " ".join(kept)
    if envelope.auto_submitted:
        message["Auto-Submitted"] = envelope.auto_submitted
        message["X-Auto-Response-Suppress"] = "All"
        message["Precedence"] = "auto_reply"
    if envelope.loop_marker:
        message["X-Loop"] = checked_address(envelope.loop_marker)
    if envelope.language:
        message["Content-Language"] = header_value(envelope.language, limit=16)
    message.set_content(_clean_body(text), subtype="plain", charset="utf-8", cte="quoted-printable")
    if html is not None:
        message.add_alternative(_clean_body(html), subtype="html", charset="utf-8",
                                cte="quoted-printable")
    return message


def _clean_body(text: str) -> str:
    """Body text keeps newlines and tabs; other control characters go."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return re.sub(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", "", text)
