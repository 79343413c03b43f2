"""Templates written plentymarkets-style: the manual's `$TicketID`, `$TicketTitle`, ... are read
as the Jinja variables of the same name, so a merchant's templates move over unchanged.

The translation runs when a template file is loaded (`translate`): in text `$TicketID` becomes
`{{ TicketID }}`; inside `{{ }}` and `{% %}` a `$` before one of the names is dropped
(`{% if $TicketURL %}`). Only the manual's exact names are translated, never any other `$`:
prices ("$5"), shell snippets and string literals (`{{ "$TicketID" }}`), comments and
`{% raw %}` blocks stay as written. `suspicious` finds what looks like a plentymarkets variable
but is none (`$TicketId`, `$TicketNumber`): `gatewayd check` refuses it with the fix, since it
would reach the customer as it is. Pure functions over text.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass

# The manual's table of template variables (ticket system, e-mail templates).
NAMES = ("TicketID", "TicketTitle", "TicketStatus", "TicketPriority", "TicketBackendURL",
         "TicketURL", "TicketLastMessage", "TicketLastComment", "TicketLastText", "Signature",
         "Greeting")
_NAME = re.compile(r"\$(" + "|".join(sorted(NAMES, key=len, reverse=True))
                   + r")(?![A-Za-z0-9_])")
_DOLLAR_WORD = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")
_RAW = re.compile(r"\{%[-+]?\s*raw\s*[-+]?%\}")
_ENDRAW = re.compile(r"\{%[-+]?\s*endraw\s*[-+]?%\}")
_LOOKS_PLENTY = ("ticket", "signatur", "greet")


@dataclass(frozen=True)
class _Segment:
    kind: str  # text | code | verbatim
    text: str


def _code_end(source: str, start: int, closer: str) -> int:
    """Where a `{{ ... }}` / `{% ... %}` that starts at `start` ends (after its closer), string
    literals skipped; the end of the source when it never closes (Jinja reports that)."""
    i = start + 2
    quote = ""
    while i < len(source):
        ch = source[i]
        if quote:
            if ch == "\\":
                i += 2
                continue
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif source.startswith(closer, i):
            return i + len(closer)
        i += 1
    return len(source)


def _segments(source: str) -> list[_Segment]:
    """The source cut into text, Jinja code and verbatim parts (comments, raw blocks)."""
    out: list[_Segment] = []
    i = 0
    text_start = 0
    while True:
        i = source.find("{", i)
        if i < 0 or i + 1 >= len(source):
            break
        opener = source[i:i + 2]
        if opener not in ("{{", "{%", "{#"):
            i += 1
            continue
        if text_start < i:
            out.append(_Segment("text", source[text_start:i]))
        if opener == "{#":
            end = source.find("#}", i + 2)
            end = len(source) if end < 0 else end + 2
            out.append(_Segment("verbatim", source[i:end]))
        elif opener == "{%" and _RAW.match(source, i):
            closing = _ENDRAW.search(source, i)
            end = closing.end() if closing else len(source)
            out.append(_Segment("verbatim", source[i:end]))
        else:
            end = _code_end(source, i, "}}" if opener == "{{" else "%}")
            out.append(_Segment("code", source[i:end]))
        i = text_start = end
    if text_start < len(source):
        out.append(_Segment("text", source[text_start:]))
    return out


def _strip_in_code(code: str) -> str:
    """`$Name` → `Name` inside a Jinja tag, outside its string literals."""
    out: list[str] = []
    i = 0
    quote = ""
    while i < len(code):
        ch = code[i]
        if quote:
            out.append(ch)
            if ch == "\\" and i + 1 < len(code):
                out.append(code[i + 1])
                i += 2
                continue
            if ch == quote:
                quote = ""
            i += 1
            continue
        if ch in "'\"":
            quote = ch
        elif ch == "$":
            match = _NAME.match(code, i)
            if match:
                out.append(match.group(1))
                i = match.end()
                continue
        out.append(ch)
        i += 1
    return "".join(out)


def translate(source: str) -> str:
    """The template with the manual's `$Name` variables written as Jinja. Keeps every line
    where it was (error messages name the merchant's line numbers)."""
    if "$" not in source:
        return source
    parts = []
    for segment in _segments(source):
        if segment.kind == "text":
            parts.append(_NAME.sub(r"{{ \1 }}", segment.text))
        elif segment.kind == "code":
            parts.append(_strip_in_code(segment.text))
        else:
            parts.append(segment.text)
    return "".join(parts)


@dataclass(frozen=True)
class Suspicious:
    line: int
    found: str  # as written, e.g. "$TicketId"
    name: str | None  # the variable meant, when one is close


def suspicious(source: str) -> list[Suspicious]:
    """`$Words` in the text that look like plentymarkets variables but are none of the
    manual's names (those are translated): they would be mailed as written."""
    if "$" not in source:
        return []
    found: list[Suspicious] = []
    offset = 0
    for segment in _segments(source):
        if segment.kind == "text":
            for match in _DOLLAR_WORD.finditer(segment.text):
                word = match.group(1)
                if _NAME.match(match.group(0)) and word in NAMES:
                    continue
                lowered = word.lower()
                same_case = [n for n in NAMES if n.lower() == lowered]
                if not same_case and not lowered.startswith(_LOOKS_PLENTY):
                    continue  # "$Shop", "$HOME": not the manual's kind of name
                close = same_case or difflib.get_close_matches(word, NAMES, n=1, cutoff=0.6)
                line = source.count("\n", 0, offset + match.start()) + 1
                found.append(Suspicious(line, match.group(0), close[0] if close else None))
        offset += len(segment.text)
    return found
