"""Text from mail bytes and headers: charsets decoded with sensible fallbacks, RFC 2047 words,
raw 8-bit headers repaired, and every value made safe for the database. Pure functions."""

from __future__ import annotations

import email.header
import re
from email.message import Message as StdMessage

MAX_HEADER_CHARS = 16_000  # longer header values are cut before decoding (pathological mails)
# Charsets that are declared but mean something wider in practice.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "us-ascii": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "ks_c_5601-1987": "cp949", "x-unknown": "utf-8", "unknown-8bit": "utf-8",
}
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


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
