"""Raw mail bytes → one frozen `InboundMail` value. Pure: no I/O, no database.

mail-parser reads the MIME tree (it never raises on broken input); the decisions that make the
result safe for the store are ours: every text part in order (Apple's text / image / text layout
keeps the text after the image), HTML turned into text when there is no plain part, iso-8859-1
read as cp1252, 8-bit headers repaired, no lone surrogates or NULs, attachments checked against
the manual's list of allowed types, and the newest reply separated from the quoted history.
"""

from __future__ import annotations

import datetime as dt
import email.header
import email.utils
import hashlib
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import Message as StdMessage

import html2text
import mailparser
from flufl.bounce import all_failures
from mailparser_reply import EmailReplyParser

MAX_HEADER_CHARS = 16_000  # longer header values are cut before decoding (pathological mails)
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

# Charsets that are declared but mean something wider in practice.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "us-ascii": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "x-unknown": "utf-8", "unknown-8bit": "utf-8",
}
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_MSGID = re.compile(r"<[^<>\s]+>")


class ParseError(Exception):
    """The mail cannot be turned into an InboundMail; the message is the quarantine reason."""


@dataclass(frozen=True)
class MailAttachment:
    filename: str
    content_type: str
    content: bytes
    inline: bool = False

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class RejectedAttachment:
    filename: str
    content_type: str
    size: int
    reason: str


@dataclass(frozen=True)
class InboundMail:
    """Everything downstream needs from one mail; nothing downstream touches raw MIME."""

    content_hash: str  # SHA-256 of the raw bytes
    size: int
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_address: str | None
    from_name: str | None
    from_raw: str
    reply_to: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: dt.datetime | None
    text: str  # every text part in order, or the HTML as text when there is no plain part
    html: str | None
    reply_text: str | None  # the newest reply without the quoted history
    attachments: tuple[MailAttachment, ...] = ()
    rejected: tuple[RejectedAttachment, ...] = ()
    # Header facts the routing rules need (lower-case names, decoded values).
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain"
    report_type: str | None = None
    defects: tuple[str, ...] = ()
    headers_only: bool = False  # an oversized mail: headers kept, body not fetched
    bounced: tuple[str, ...] = ()  # failed recipients when the mail is a bounce (flufl.bounce)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]


# ------------------------------------------------------------------------------ text helpers


def clean_text(value: str) -> str:
    """Make text safe for every database: no lone surrogates, no NUL or other C0 controls."""
    if _SURROGATES.search(value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        value = _SURROGATES.sub("\ufffd", value)
    return _CONTROL.sub("", value)


def _codec(charset: str | None) -> str:
    name = (charset or "").strip().strip('"').lower()
    name = _CHARSET_ALIASES.get(name, name) or "utf-8"
    try:
        "".encode(name)
    except LookupError:
        return "utf-8"
    return name


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset → text; undeclared or wrong charsets fall back sensibly."""
    codec = _codec(charset)
    if not charset or codec == "cp1252":
        # Undeclared or "latin-1": UTF-8 if it is valid UTF-8, else cp1252.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            codec = "cp1252"
    return data.decode(codec, "replace")


def decode_header_value(raw: str | None) -> str:
    """A header value as text: RFC 2047 words decoded, raw 8-bit bytes repaired."""
    if raw is None:
        return ""
    raw = str(raw)[:MAX_HEADER_CHARS]
    if _SURROGATES.search(raw):
        # compat32 keeps undecodable 8-bit bytes as surrogates: get the bytes back.
        raw = decode_bytes(raw.encode("utf-8", "surrogateescape"), None)
    try:
        pieces = email.header.decode_header(raw)
    except Exception:  # broken encoded words: keep the text as it is
        return clean_text(" ".join(raw.split()))
    out: list[str] = []
    for chunk, charset in pieces:
        if isinstance(chunk, bytes):
            out.append(decode_bytes(chunk, charset) if charset else decode_bytes(chunk, None))
        else:
            out.append(chunk)
    text = "".join(out)
    return clean_text(" ".join(text.split()))


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
    try:
        reply = EmailReplyParser(languages=["de", "en"]).read(text).latest_reply
    except Exception:  # the library's heuristics must never cost us the mail
        return None
    reply = (reply or "").strip()
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


def raw_header(message: StdMessage, name: str) -> str | None:
    """A header's value as written (compat32 keeps raw 8-bit bytes as surrogates), or None."""
    lower = name.lower()
    for key, value in message._headers:  # type: ignore[attr-defined]  # raw list: get() would lose 8-bit bytes
        if key.lower() == lower:
            return str(value)
    return None


def raw_headers(message: StdMessage, name: str) -> list[str]:
    lower = name.lower()
    return [str(v) for k, v in message._headers  # type: ignore[attr-defined]
            if k.lower() == lower]


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


def _walk(message: StdMessage, state: _Walk, depth: int = 0) -> None:
    state.parts += 1
    if state.parts > MAX_PARTS or depth > 50:
        raise ParseError(f"more than {MAX_PARTS} MIME parts or nesting deeper than 50 levels "
                         "(pathological structure)")
    content_type = message.get_content_type().lower()
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
    filename = clean_text(filename.replace("/", "_").replace("\\", "_"))[:255]
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


_KEPT_HEADERS = ("auto-submitted", "precedence", "list-id", "list-unsubscribe", "return-path",
                 "x-loop", "x-autoreply", "x-autorespond", "x-auto-response-suppress",
                 "x-failed-recipients", "x-gatewayd-ticket", "x-mailer", "content-type")


def parse_mail(raw: bytes, *, headers_only: bool = False) -> InboundMail:
    """Turn raw RFC 822 bytes into an InboundMail. Raises ParseError for pathological mails."""
    digest = hashlib.sha256(raw).hexdigest()
    try:
        parsed = mailparser.parse_from_bytes(raw)
    except Exception as exc:  # mail-parser is robust, but a bug in it must not escape
        raise ParseError(f"mail-parser failed: {type(exc).__name__}: {exc}"[:500]) from exc
    message: StdMessage = parsed.message
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
    content_type = message.get_content_type().lower()
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
        report_type=str(message.get_param("report-type") or "") or None
        if content_type == "multipart/report" else None,
        defects=defects,
        headers_only=headers_only,
        bounced=_bounced(message) if not headers_only and _may_be_bounce(
            message, content_type, from_address, header("Return-Path"), header("Subject")) else (),
    )


_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "bounce")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|unzustellbar|delivery (status|fail)|returned mail|failure notice|"
    r"nicht zugestellt|mail delivery|non.?delivery|rejected", re.IGNORECASE)
_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def _may_be_bounce(message: StdMessage, content_type: str, sender: str | None,
                   return_path: str | None, subject: str | None) -> bool:
    """Cheap signs of a bounce; only then do the (slow) bounce detectors run."""
    local = (sender or "").partition("@")[0].lower()
    return (content_type == "multipart/report" or local.startswith(_BOUNCE_SENDERS)
            or (return_path is not None and return_path.strip() in ("<>", ""))
            or bool(subject and _BOUNCE_SUBJECT.search(subject))
            or raw_header(message, "X-Failed-Recipients") is not None)


def _bounced(message: StdMessage) -> tuple[str, ...]:
    """Failed recipients as GNU Mailman's bounce detectors read them (empty for normal mail)."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over a broken mail must not cost us the mail
        return ()
    found = {clean_text(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).lower()
             for a in (*permanent, *temporary)}
    return tuple(sorted(a for a in found if _PLAIN_ADDRESS.match(a)))[:50]
