"""The newest reply above the quoted history: mail-parser-reply's header split (German and
English), without the signature and disclaimer scans whose results gatewayd never reads.

`latest_reply(text)` gives what `EmailReplyParser(languages=["de", "en"]).read(text)
.latest_reply` gives (mail-parser-reply 1.36): the same normalisation, the same header pattern,
the same walk over its matches, stopping at the first non-empty part. The header pattern is
expensive (about 1 ms on a 4 KB text) and matches only texts that contain one of a few words:
`may_have_header` looks for those words first (a necessary condition of every branch of the
pattern, under the same flags), so a text without them is its own latest reply.

The header pattern and the walk over its matches are mail-parser-reply's (MIT License,
Copyright (c) 2023 RAUSYS, Rau Systemberatung GmbH, https://github.com/alfonsrv/mail-parser-reply);
tests/test_parse_equality.py compares the results with the library's.
"""

from __future__ import annotations

import re

# mail-parser-reply's HEADER_REGEX for languages ["de", "en"], built as its EmailMessage builds
# it: the "wrote" headers, then the "from" header blocks, then the generic separator.
_HEADER = re.compile(
    r"^(?!Am.*Am\s.+?schrieb.*:)((?:> ?)*Am\s(?:.+?\s?)schrieb\s(?:.+?\s?.+?):)$"
    r"|^(?!On[.\s]*On\s(.+?\s?.+?)\swrote:)((?:> ?)*On\s(?:.+?\s?.+?)\s?wrote:)$"
    r"|((?:(?:^|\n|\n(?:> ?)*)[* ]*(?:Von|Gesendet|An|Betreff|Datum|Cc|Organisation):[ *]*"
    r"(?:\s{,2}).*){2,}(?:\n.*){,1})"
    r"|((?:(?:^|\n|\n(?:> ?)*)[* ]*(?:From|Sent|To|Subject|Date|Cc|Organization):[ *]*"
    r"(?:\s{,2}).*){2,}(?:\n.*){,1})"
    r"|(^-{5,} ?Original Message ?-{5,}$)",
    re.MULTILINE | re.IGNORECASE,
)
# Every match of _HEADER contains one of these, under the same case folding: "schrieb" (1st
# branch), "wrote:" (2nd), a line that starts with quote marks, stars or blanks and a header
# name and a colon (3rd, 4th), "Original Message" (5th).
_HEADER_WORDS = ("schrieb", "wrote:", "original message")
_HEADER_LINE = re.compile(
    r"^[>* ]*(?:Von|Gesendet|An|Betreff|Datum|Cc|Organisation"
    r"|From|Sent|To|Subject|Date|Organization):",
    re.MULTILINE | re.IGNORECASE,
)
# The characters outside ASCII that re.IGNORECASE matches with ASCII letters (İ, ı, ſ, the Kelvin
# sign; tests/test_parse_equality.py checks the list against every code point). A text without
# them contains a header word, as re.IGNORECASE would match it, exactly when its str.lower() does.
_FOLDS_TO_ASCII = ("\u0130", "\u0131", "\u017f", "\u212a")
_HEADER_WORDS_FOLDED = re.compile("|".join(_HEADER_WORDS), re.IGNORECASE)


def may_have_header(text: str) -> bool:
    """Whether the header pattern can match the (normalised) text: a necessary condition of each
    of its branches, under the same case folding, at a fraction of its cost."""
    if _HEADER_LINE.search(text):
        return True
    if any(char in text for char in _FOLDS_TO_ASCII):
        return _HEADER_WORDS_FOLDED.search(text) is not None
    lower = text.lower()
    return any(word in lower for word in _HEADER_WORDS)
_OUTLOOK_SEPARATOR = re.compile(r"([^\n])(\n{2,} ?[_-]{32,})")


def normalize(text: str) -> str:
    """mail-parser-reply's normalisation: LF line ends, every line stripped, and the text
    before an Outlook separator line joined to it (the library passes re.MULTILINE where
    re.sub takes its count, so at most 8 of them are joined; kept for equal results)."""
    text = text.replace("\r\n", "\n")
    text = "\n".join(line.strip() for line in text.split("\n"))
    return _OUTLOOK_SEPARATOR.sub("\\1\n", text, 8)


def latest_reply(text: str) -> str:
    """The first non-empty part of the text before a reply header, stripped (the whole text,
    stripped, when it has no reply header)."""
    text = normalize(text)
    current = 0
    if not may_have_header(text):
        return text.strip()
    for match in _HEADER.finditer(text):
        for header in match.groups():
            if not header:
                continue
            position = text.find(header, current + 1 if current > 0 else current)
            content = text[current:position].strip()
            current = position if position >= 0 else 0
            if content:
                return content
    return text[current:].strip()
