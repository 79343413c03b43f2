"""Raw mail bytes → one frozen `InboundMail` value. Pure: no I/O, no database.

The standard library reads the MIME tree once (`email.message_from_bytes`, compat32 policy: it
never raises on broken input, keeps raw 8-bit header bytes so they can be repaired, and is the
fastest policy); the decisions that make the result safe for the store are ours: every text part
in order (Apple's text / image / text layout keeps the text after the image), HTML turned into
text when there is no plain part, iso-8859-1 read as cp1252, undeclared or bogus charsets
detected, 8-bit headers repaired, no lone surrogates or NULs, attachments decoded once and
checked against the manual's list of allowed types, and the newest reply separated from the
quoted history. Any exception while parsing becomes a ParseError: the mail's quarantine reason.
"""

from __future__ import annotations

import datetime as dt
import email
import email.utils
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message as StdMessage

import html2text

from gatewayd.ingest import replies
from gatewayd.ingest.bounces import AUTOMATIC_HEADERS, bounced, may_be_bounce, report_kind
from gatewayd.ingest.text import (
    MAX_HEADER_CHARS,
    clean_text,
    decode_bytes,
    decode_header_value,
    raw_header,
    raw_headers,
)
from gatewayd.mail import InboundMail, MailAttachment, RejectedAttachment
from gatewayd.store.attachments import safe_filename

MAX_PARTS = 500  # a mail with more MIME parts is refused (quarantined) as pathological
MAX_TEXT_CHARS = 2_000_000

# The manual's "Zulässige Dateitypen für den Upload" (COMMA, CSS, CSV, DOC, DOCX, EXCEL, GIF,
# GZIP, HTML, JPEG, MSWORD, OpenDocument ODC…OXT, PNG, PDF, RICHTEXT, RTF, SWF, StarOffice SDA…STW,
# TEXT, X_EXCEL, X_LATEX, X_TAR, XLS, X_XLS, XML, TIFF, ZIP) as MIME types and file extensions.
ALLOWED_CONTENT_TYPES = frozenset({
    "text/comma-separated-values", "text/csv", "text/css", "application/msword",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "application/excel", "application/vnd.ms-excel", "application/x-excel",
    "application/x-msexcel", "application/xls", "application/x-xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    "image/gif", "application/gzip", "application/x-gzip", "text/html", "image/jpeg",
    "image/jpg", "image/pjpeg", "image/png", "application/pdf", "text/richtext",
    "application/rtf", "text/rtf", "application/x-shockwave-flash",
    "application/vnd.oasis.opendocument.chart", "application/vnd.oasis.opendocument.formula",
    "application/vnd.oasis.opendocument.graphics",
    "application/vnd.oasis.opendocument.text-master",
    "application/vnd.oasis.opendocument.spreadsheet", "application/vnd.oasis.opendocument.text",
    "application/vnd.oasis.opendocument.graphics-template",
    "application/vnd.oasis.opendocument.text-web",
    "application/vnd.oasis.opendocument.spreadsheet-template",
    "application/vnd.oasis.opendocument.text-template", "application/vnd.openofficeorg.extension",
    "application/vnd.stardivision.draw", "application/vnd.stardivision.calc",
    "application/vnd.stardivision.writer", "application/vnd.sun.xml.writer",
    "application/vnd.sun.xml.writer.template", "text/plain", "application/x-latex",
    "application/x-tar", "application/xml", "text/xml", "image/tiff", "application/zip",
    "application/x-zip-compressed",
})
ALLOWED_EXTENSIONS = frozenset({
    "csv", "css", "doc", "docx", "xls", "xlsx", "gif", "gz", "gzip", "htm", "html", "jpg",
    "jpeg", "png", "pdf", "rtf", "rtx", "swf", "odc", "odf", "odg", "odm", "ods", "odt", "otg",
    "oth", "ots", "ott", "oxt", "sda", "sdc", "sdw", "sxw", "stw", "txt", "text", "latex",
    "tar", "xml", "tif", "tiff", "zip",
})
_GENERIC_TYPES = frozenset({"application/octet-stream", "application/unknown", ""})

_MSGID = re.compile(r"<[^<>\s]+>")
# A media type as RFC 6838 writes its names; anything else in a Content-Type (a NUL, 8-bit or
# undecodable bytes, spaces) is syntactically invalid.
_MEDIA_TYPE = re.compile(r"[a-z0-9][a-z0-9!#$&^_.+-]{0,126}/[a-z0-9][a-z0-9!#$&^_.+-]{0,126}")


class ParseError(Exception):
    """The mail cannot be turned into an InboundMail; the message is the quarantine reason."""


# ------------------------------------------------------------------------------ text helpers


def _addresses(values: Iterable[str]) -> list[tuple[str, str]]:
    pairs = email.utils.getaddresses([str(v)[:MAX_HEADER_CHARS] for v in values])
    result = []
    for name, address in pairs:
        address = address.strip().strip("<>").lower()
        if "@" not in address:
            continue
        result.append((decode_header_value(name), clean_text(address)[:320]))
    return result


def _message_ids(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    found = _MSGID.findall(value[:MAX_HEADER_CHARS])
    return tuple(dict.fromkeys(clean_text(m)[:998] for m in found))


def html_to_text(html: str) -> str:
    converter = html2text.HTML2Text()
    converter.body_width = 0
    converter.ignore_images = True
    converter.unicode_snob = True
    return converter.handle(html).strip()


def latest_reply(text: str) -> str | None:
    """The newest reply above the quoted history (German and English markers), or None."""
    if not text.strip():
        return None
    reply = replies.latest_reply(text)
    return clean_text(reply) if reply and reply != text.strip() else None


# ------------------------------------------------------------------------------ MIME walk


def _is_allowed(content_type: str, filename: str) -> bool:
    extension = filename.rsplit(".", 1)[-1].lower() if "." in filename else ""
    if content_type in ALLOWED_CONTENT_TYPES:
        return True
    return content_type in _GENERIC_TYPES and extension in ALLOWED_EXTENSIONS


def _part_payload(part: StdMessage) -> bytes:
    try:
        payload = part.get_payload(decode=True)
    except Exception:  # a truncated base64 payload: keep what the raw text is
        payload = None
    if isinstance(payload, bytes):
        return payload
    raw = part.get_payload()
    return raw.encode("utf-8", "surrogateescape") if isinstance(raw, str) else b""


def _filename(message: StdMessage) -> str:
    try:
        name = message.get_filename()
    except Exception:
        name = None
    if name and "\ufffd" in str(name):
        # A raw 8-bit (usually UTF-8) file name: re-read it from the repaired header text.
        for header_name in ("Content-Disposition", "Content-Type"):
            raw = raw_header(message, header_name)
            if raw is None:
                continue
            probe = StdMessage()
            probe[header_name] = decode_header_value(raw)
            repaired = probe.get_filename()
            if repaired and "\ufffd" not in repaired:
                name = repaired
                break
    return decode_header_value(str(name)) if name else ""


@dataclass
class _Walk:
    texts: list[str] = field(default_factory=list)
    htmls: list[str] = field(default_factory=list)
    attachments: list[MailAttachment] = field(default_factory=list)
    rejected: list[RejectedAttachment] = field(default_factory=list)
    parts: int = 0


def content_type_of(message: StdMessage) -> str:
    """The part's media type, lower-case. A syntactically invalid one is taken as the part's
    default type (text/plain, or message/rfc822 in a digest), as RFC 2045 5.2 recommends and
    as the standard library already does for a type without a slash: no NUL or undecodable
    byte from a Content-Type reaches the store (PostgreSQL refuses them)."""
    content_type = message.get_content_type().lower()
    if _MEDIA_TYPE.fullmatch(content_type):
        return content_type
    return message.get_default_type()


def _walk(message: StdMessage, state: _Walk, depth: int = 0) -> None:
    state.parts += 1
    if state.parts > MAX_PARTS or depth > 50:
        raise ParseError(f"more than {MAX_PARTS} MIME parts or nesting deeper than 50 levels "
                         "(pathological structure)")
    content_type = content_type_of(message)
    if content_type == "message/rfc822" and (
        message.get_content_disposition() == "attachment" or _filename(message)
    ):
        # An attached mail (.eml) is a file, not part of this mail's text.
        payload = message.get_payload()
        inner = payload[0] if isinstance(payload, list) and payload else None
        content = inner.as_bytes() if isinstance(inner, StdMessage) else _part_payload(message)
        name = _filename(message) or "attached-mail.eml"
        state.rejected.append(RejectedAttachment(
            name, content_type, len(content),
            "attached mails (message/rfc822) are not in the allowed attachment types"))
        return
    if message.is_multipart():
        payload = message.get_payload()
        if isinstance(payload, list):
            for child in payload:
                if isinstance(child, StdMessage):
                    _walk(child, state, depth + 1)
        return
    disposition = (message.get_content_disposition() or "").lower()
    filename = _filename(message)
    is_text = content_type in ("text/plain", "text/html")
    # Text without a file name is body text, wherever it sits (Apple: text, image, text).
    if is_text and disposition != "attachment" and not filename:
        text = decode_bytes(_part_payload(message), message.get_content_charset())
        text = clean_text(text.replace("\r\n", "\n").replace("\r", "\n"))
        (state.texts if content_type == "text/plain" else state.htmls).append(text)
        return
    if not filename and not disposition and content_type.startswith(("multipart/", "text/")):
        return
    content = _part_payload(message)
    if not filename:
        extension = {"image/png": "png", "image/jpeg": "jpg", "image/gif": "gif",
                     "application/pdf": "pdf", "text/plain": "txt", "text/html": "html",
                     "message/rfc822": "eml", "message/delivery-status": "txt"}.get(
            content_type, "bin")
        filename = f"attachment-{len(state.attachments) + len(state.rejected) + 1}.{extension}"
    filename = safe_filename(filename)
    if content_type.startswith("message/"):
        # Delivery reports and forwarded mails are text: keep them readable as .txt/.eml.
        state.attachments.append(MailAttachment(filename, content_type, content))
        return
    if not _is_allowed(content_type, filename):
        state.rejected.append(RejectedAttachment(
            filename, content_type, len(content),
            f"type {content_type} is not in the allowed attachment types",
        ))
        return
    state.attachments.append(MailAttachment(filename, content_type, content,
                                            inline=disposition == "inline"))


_KEPT_HEADERS = (*AUTOMATIC_HEADERS, "x-gatewayd-ticket", "x-mailer", "content-type")


def parse_mail(raw: bytes, *, headers_only: bool = False) -> InboundMail:
    """Turn raw RFC 822 bytes into an InboundMail. Raises ParseError (the quarantine reason)
    for a pathological mail and for any exception while parsing it: one mail's content never
    stops the mails behind it."""
    try:
        return _parse(bytes(raw), headers_only)
    except ParseError:
        raise
    except RecursionError as exc:
        raise ParseError("nesting too deep to parse (pathological structure)") from exc
    except Exception as exc:
        raise ParseError(f"the parser failed: {type(exc).__name__}: {exc}"[:500]) from exc


def _parse(raw: bytes, headers_only: bool) -> InboundMail:
    digest = hashlib.sha256(raw).hexdigest()
    # The default policy is compat32 (email.policy, which would name it, costs 0.1 s to import
    # in every worker): no header objects built, raw 8-bit header bytes kept for the repair.
    message: StdMessage = email.message_from_bytes(raw)

    def header(name: str) -> str | None:
        return raw_header(message, name)

    from_raw = decode_header_value(header("From"))
    from_pairs = _addresses([header("From") or ""])
    if not from_pairs:
        sender = header("Sender") or header("Return-Path") or ""
        from_pairs = _addresses([sender])
    from_name, from_address = from_pairs[0] if from_pairs else (None, None)
    reply_to_pairs = _addresses([header("Reply-To") or ""])
    to = tuple(a for _, a in _addresses(raw_headers(message, "To")))
    cc = tuple(a for _, a in _addresses(raw_headers(message, "Cc")))
    date: dt.datetime | None = None
    try:
        date_value = header("Date")
        date = email.utils.parsedate_to_datetime(date_value) if date_value else None
        if date is not None and date.tzinfo is None:
            date = date.replace(tzinfo=dt.UTC)
    except Exception:
        date = None
    message_ids = _message_ids(header("Message-ID"))
    in_reply_to = _message_ids(header("In-Reply-To"))
    references = _message_ids(" ".join(raw_headers(message, "References")))

    walk = _Walk()
    if not headers_only:
        _walk(message, walk)
    text = "\n\n".join(t.strip("\n") for t in walk.texts if t.strip())
    html = "\n".join(walk.htmls) if walk.htmls else None
    if not text and html:
        text = html_to_text(html)
    text = text[:MAX_TEXT_CHARS]
    kept = []
    for name in _KEPT_HEADERS:
        for value in raw_headers(message, name):
            kept.append((name, decode_header_value(value)))
    content_type = content_type_of(message)
    defects = tuple(dict.fromkeys(type(d).__name__ for d in message.defects))
    return InboundMail(
        content_hash=digest,
        size=len(raw),
        message_id=message_ids[0] if message_ids else None,
        in_reply_to=in_reply_to[0] if in_reply_to else None,
        references=references,
        subject=decode_header_value(header("Subject"))[:1000],
        from_address=from_address,
        from_name=(from_name or None) and from_name[:255],
        from_raw=from_raw[:1000],
        reply_to=reply_to_pairs[0][1] if reply_to_pairs else None,
        to=to,
        cc=cc,
        date=date,
        text=text,
        html=html,
        reply_text=latest_reply(text) if text else None,
        attachments=tuple(walk.attachments),
        rejected=tuple(walk.rejected),
        headers=tuple(kept),
        content_type=content_type,
        report_type=report_kind(message),
        defects=defects,
        headers_only=headers_only,
        bounced=bounced(message) if not headers_only and may_be_bounce(
            message, content_type, from_address, header("Return-Path"), header("Subject")) else (),
    )
