"""Text from mail bytes and headers: charsets decoded with sensible fallbacks, RFC 2047 words,
raw 8-bit headers repaired, and every value made safe for the database. Pure functions."""

from __future__ import annotations

import codecs
import email.header
import functools
import re
from email.message import Message as StdMessage

import charset_normalizer

MAX_HEADER_CHARS = 16_000  # longer header values are cut before decoding (pathological mails)
# Charsets that are declared but mean something wider in practice.
_CHARSET_ALIASES = {
    "iso-8859-1": "cp1252", "iso8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252",
    "us-ascii": "cp1252", "ascii": "cp1252", "gb2312": "gb18030", "gbk": "gb18030",
    "ks_c_5601-1987": "cp949",
}
# Codecs Python knows that name no text charset a mail can be written in: "replace" is not
# supported (idna, undefined), or the bytes are an escape language (unicode-escape reads
# "\N{...}" out of the text), or the codec is a bytes-to-bytes or text-to-text transform (base64,
# zlib, rot13: str.decode refuses them). Such a label is read as no label at all.
_NOT_MAIL_CHARSETS = frozenset({"idna", "punycode", "undefined", "unicode-escape",
                                "raw-unicode-escape"})
_SURROGATES = re.compile("[\ud800-\udfff]")
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_HIGH_BYTES = bytes(range(0x80, 0x100))
_NOT_ASCII_LETTERS = bytes(b for b in range(0x100) if not chr(b).isascii() or not chr(b).isalpha())
_ISO_2022_ESCAPES = (b"\x1b$", b"\x1b(", b"\x1b.", b"\x1bN")
# Below this many bytes outside ASCII a detector's guess is a coin toss (charset-normalizer
# takes a cp1252 "Müller" for UTF-16): such text is read as cp1252, the common Western case.
_DETECT_MIN_HIGH_BYTES = 16
_MAIL_CHARSETS = ("cp1251", "koi8_r", "koi8_u", "iso8859_5", "cp1250", "iso8859_2", "cp1253",
                  "iso8859_7", "cp1254", "iso8859_9", "cp1255", "iso8859_8", "cp1256",
                  "iso8859_6", "cp1257", "iso8859_13", "cp874", "tis_620", "shift_jis",
                  "cp932", "euc_jp", "gb18030", "gb2312", "big5", "cp949", "euc_kr")


def clean_text(value: str) -> str:
    """Make text safe for every database: no lone surrogates, no NUL or other C0 controls."""
    if _SURROGATES.search(value):
        value = value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        value = _SURROGATES.sub("\ufffd", value)
    return _CONTROL.sub("", value)


@functools.lru_cache(maxsize=512)
def codec_for(charset: str | None) -> str | None:
    """The Python codec a declared charset is read with, or None: undeclared, unknown to Python,
    or a label no mail text can be in (idna, undefined, x-user-defined, unknown-8bit, …)."""
    name = (charset or "").strip().strip('"').strip("'").lower()
    name = _CHARSET_ALIASES.get(name, name)
    if not name:
        return None
    try:
        info = codecs.lookup(name)
    except (LookupError, ValueError, TypeError):
        return None
    if not getattr(info, "_is_text_encoding", True) or info.name in _NOT_MAIL_CHARSETS:
        return None
    return info.name


def detect_text(data: bytes) -> str:
    """Bytes of no (usable) declared charset → text, by what they look like.

    7-bit ISO-2022 (Japanese mail without a label) by its escape sequences; then UTF-8 when the
    bytes are valid UTF-8; then, for text that is mostly outside ASCII (Cyrillic, Greek, CJK),
    charset-normalizer's best guess; otherwise cp1252, which reads every byte."""
    if b"\x1b" in data and any(escape in data for escape in _ISO_2022_ESCAPES):
        for codec in ("iso2022_jp_2", "iso2022_jp_ext", "iso2022_kr"):
            try:
                return data.decode(codec)
            except (UnicodeError, LookupError):
                continue
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    high = len(data) - len(data.translate(None, _HIGH_BYTES))
    letters = len(data.translate(None, _NOT_ASCII_LETTERS))
    if high >= _DETECT_MIN_HIGH_BYTES and high > letters:
        try:
            guess = _guess(data)
        except Exception:  # a detector's failure only means we fall back to cp1252
            guess = None
        if guess is not None:
            return guess
    return data.decode("cp1252", "replace")


def _guess(data: bytes) -> str | None:
    """charset-normalizer's reading with the least chaos; of equally clean ones the charset mail
    is usually written in (it ranks mac_cyrillic beside cp1251 for Russian)."""
    candidates = [match for match in charset_normalizer.from_bytes(data)
                  if match.encoding and not match.encoding.startswith("utf_")]
    if not candidates:
        return None
    least = min(match.chaos for match in candidates)
    clean = [match for match in candidates if match.chaos <= least + 0.01]
    clean.sort(key=lambda match: _MAIL_CHARSETS.index(match.encoding)
               if match.encoding in _MAIL_CHARSETS else len(_MAIL_CHARSETS))
    return str(clean[0])


def decode_bytes(data: bytes, charset: str | None) -> str:
    """Bytes in a declared charset → text. Never raises: an undeclared, unknown or unusable
    charset falls back to detection, and "latin-1"/"us-ascii" mean UTF-8 or cp1252."""
    codec = codec_for(charset)
    if codec is None:
        return detect_text(data)
    if codec == "cp1252":
        # Declared "latin-1" or "us-ascii": UTF-8 if it is valid UTF-8, else cp1252.
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data.decode("cp1252", "replace")
    try:
        return data.decode(codec, "replace")
    except Exception:  # a codec that fails even with "replace": read the bytes by detection
        return detect_text(data)


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
