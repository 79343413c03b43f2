"""Building the RFC 5322 message from a rendered template: headers that thread and cannot be bent.

Pure: rendered parts and plain facts in, the finished mail text out (`compose_mail`). No
rendered or customer-supplied value can add a header or a recipient: control characters (CR/LF
included) are removed from every header value, and addresses must be single, plain addresses.
"""

from __future__ import annotations

import base64
import binascii
import email
import email.utils
import functools
import re
import secrets
import time
from collections.abc import Sequence
from dataclasses import dataclass
from email.message import EmailMessage
from email.policy import SMTP

from gatewayd.config import is_address

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
_BODY_CONTROL = bytes([*range(0x09), 0x0b, 0x0c, *range(0x0e, 0x20), 0x7f])  # dropped
_TICKET_KEYWORD = re.compile(r"\[Ticket-ID\s+(\d+)\]", re.IGNORECASE)
MAX_REFERENCES = 20


class MailError(Exception):
    """The mail cannot be built safely; the outbox row fails with this reason."""


def header_value(value: str, *, limit: int = 900) -> str:
    """A header value with every control character (CR, LF, NUL, ...) replaced by a space."""
    if value.isascii() and value.isprintable():
        # The common case without the regex: no control character, and " " is the only space.
        return (" ".join(value.split()) if "  " in value else value.strip(" "))[:limit]
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


@dataclass(frozen=True)
class ComposedMail:
    """A finished mail as the outbox stores it: RFC 5322 text with CRLF line ends."""

    message_id: str
    subject: str  # decoded, for the outbox row and logs
    content: str


def compose_mail(envelope: Envelope, text: str, html: str | None = None) -> ComposedMail:
    """A text mail, or multipart/alternative when there is HTML, written out directly.

    Every header value is cleaned of control characters first (`header_value`), addresses are
    checked to be single plain addresses, non-ASCII words become RFC 2047 encoded-words and
    long lines are folded at spaces; bodies are UTF-8 quoted-printable. The standard library's
    `EmailMessage` does the same at about 5 ms a mail (its header registry parses every value
    back); this takes a tenth of that. `build_message` parses the result for callers that want
    an object.
    """
    from_address = checked_address(envelope.from_address)
    to = [checked_address(a) for a in envelope.to]
    message_id = _msg_id(envelope.message_id)
    if message_id is None:
        raise MailError(f"{envelope.message_id!r} is not a Message-ID")
    subject = subject_with_ticket_id(envelope.subject, envelope.ticket_id)
    headers = [
        _address_header("From", header_value(envelope.from_name, limit=200), from_address),
        _header("To", ", ".join(to) if to else "undisclosed-recipients:;"),
        _header("Subject", subject),
        _header("Date", _date()),
        _header("Message-ID", message_id),
    ]
    if envelope.reply_to:
        headers.append(_header("Reply-To", checked_address(envelope.reply_to)))
    refs = [r for r in (_msg_id(x) for x in envelope.references) if r]
    answer = _msg_id(envelope.in_reply_to) if envelope.in_reply_to else None
    if answer:
        headers.append(_header("In-Reply-To", answer))
        if answer not in refs:
            refs.append(answer)
    if refs:
        # The first and the newest ones: RFC 5322 threading needs the root and the parent.
        kept = refs if len(refs) <= MAX_REFERENCES else [refs[0], *refs[-(MAX_REFERENCES - 1):]]
        headers.append(_header("References", " ".join(kept)))
    if envelope.auto_submitted:
        headers.append(_header("Auto-Submitted", header_value(envelope.auto_submitted)))
        headers.append("X-Auto-Response-Suppress: All")
        headers.append("Precedence: auto_reply")
    if envelope.loop_marker:
        headers.append(_header("X-Loop", checked_address(envelope.loop_marker)))
    if envelope.language:
        headers.append(_header("Content-Language", header_value(envelope.language, limit=16)))
    headers.append("MIME-Version: 1.0")
    if html is None:
        body = _text_part("plain", text)
    else:
        boundary = f"=_gw_{secrets.token_hex(12)}"  # "=_" never occurs in quoted-printable
        headers.append(f'Content-Type: multipart/alternative;\r\n boundary="{boundary}"')
        body = (f"\r\n--{boundary}\r\n{_text_part('plain', text)}"
                f"\r\n--{boundary}\r\n{_text_part('html', html)}\r\n--{boundary}--\r\n")
    return ComposedMail(message_id, subject, "\r\n".join(headers) + "\r\n" + body)


_dates: dict[int, str] = {}


def _date() -> str:
    """`formatdate(usegmt=True)` of now, made once a second (it has a resolution of one)."""
    now = int(time.time())
    found = _dates.get(now)
    if found is None:
        _dates.clear()
        found = _dates[now] = email.utils.formatdate(now, localtime=False, usegmt=True)
    return found


def build_message(envelope: Envelope, text: str, html: str | None = None) -> EmailMessage:
    """`compose_mail` as a parsed `EmailMessage` (for tests and callers that want headers)."""
    content = compose_mail(envelope, text, html).content.replace("\r\n", "\n")
    parsed = email.message_from_string(content, policy=SMTP)
    assert isinstance(parsed, EmailMessage)
    return parsed


_MAX_LINE = 78
_WORD_BYTES = 45  # 60 base64 characters: an encoded-word stays within 75 characters


def _encoded_words(text: str) -> list[str]:
    """RFC 2047 `B` encoded-words for `text`, split between characters, each <= 75 chars."""
    words: list[str] = []
    chunk = b""
    for char in text:
        data = char.encode("utf-8")
        if len(chunk) + len(data) > _WORD_BYTES:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
            chunk = b""
        chunk += data
    if chunk:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode('ascii')}?=")
    return words


def _tokens(value: str) -> list[str]:
    """ASCII words stay readable; each run of words with non-ASCII becomes encoded-words.

    The space between two words of one run goes inside the encoded text, because the
    whitespace between two adjacent encoded-words is dropped when they are decoded.
    """
    tokens: list[str] = []
    run: list[str] = []
    for word in value.split(" "):
        if word.isascii() and not (word.startswith("=?") or "?=" in word):
            if run:
                tokens += _encoded_words(" ".join(run))
                run = []
            tokens.append(word)
        else:
            run.append(word)
    if run:
        tokens += _encoded_words(" ".join(run))
    return tokens


def _fold(name: str, tokens: list[str]) -> str:
    """`Name: tokens` with lines folded at spaces before 78 characters where possible."""
    lines: list[str] = []
    line = f"{name}:"
    for token in tokens:
        if len(line) + 1 + len(token) > _MAX_LINE and line.strip() and line != f"{name}:":
            lines.append(line)
            line = ""
        line += " " + token
    lines.append(line)
    return "\r\n".join(lines)


def _header(name: str, value: str) -> str:
    """One header line (or folded lines); `value` must already be free of control characters."""
    value = header_value(value)
    if value.isascii() and "=?" not in value and len(name) + 2 + len(value) <= _MAX_LINE:
        return f"{name}: {value}"
    return _fold(name, _tokens(value))


@functools.lru_cache(maxsize=64)  # an account's From: the same for each of its mails
def _address_header(name: str, display_name: str, address: str) -> str:
    if not display_name:
        return f"{name}: {address}"
    if display_name.isascii():
        return _fold(name, [email.utils.formataddr((display_name, address))])
    return _fold(name, [*_encoded_words(display_name), f"<{address}>"])


def _text_part(subtype: str, text: str) -> str:
    """A UTF-8 quoted-printable part (its headers, a blank line and the body, CRLF ends)."""
    data = _clean_body(text)
    encoded = binascii.b2a_qp(data, quotetabs=False, istext=True).decode("ascii")
    if not encoded.endswith("\n"):
        encoded += "\n"
    return (f'Content-Type: text/{subtype}; charset="utf-8"\r\n'
            "Content-Transfer-Encoding: quoted-printable\r\n\r\n"
            + encoded.replace("\n", "\r\n"))


def _clean_body(text: str) -> bytes:
    """Body text as UTF-8; it keeps newlines and tabs, other control characters go. (Done on
    the bytes: in UTF-8 a byte below 0x80 is always that ASCII character.)"""
    data = text.encode("utf-8")
    if b"\r" in data:
        data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
    return data.translate(None, _BODY_CONTROL)
