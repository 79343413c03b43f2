"""A shop form's posted body → `PostedForm`: urlencoded or multipart, strict UTF-8, bounded
numbers of fields and header sizes. Pure; the protections and validation come after."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from python_multipart.exceptions import FormParserError
from python_multipart.multipart import MultipartParser, parse_options_header

from gatewayd.ingest.forms import FormRejected, PostedForm, UploadedFile

MAX_FIELDS = 100  # more parts or pairs than this is not a shop form
MAX_MULTIPART_HEADER_BYTES = 8 * 1024


def _strict_utf8(data: bytes, what: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise FormRejected(400, "form data is not UTF-8",
                           f"{what} is not valid UTF-8; send the form with accept-charset=UTF-8"
                           ) from None


def parse_urlencoded(body: bytes) -> PostedForm:
    """application/x-www-form-urlencoded, strictly UTF-8 (a clear 400 instead of mojibake)."""
    text = _strict_utf8(body, "the body")
    try:
        pairs = urllib.parse.parse_qsl(text, keep_blank_values=True, encoding="utf-8",
                                       errors="strict", max_num_fields=MAX_FIELDS)
    except UnicodeDecodeError:
        raise FormRejected(400, "form data is not UTF-8",
                           "a percent-encoded value is not valid UTF-8; send the form with "
                           "accept-charset=UTF-8") from None
    except ValueError:
        raise FormRejected(400, "too many fields", f"at most {MAX_FIELDS} fields") from None
    values: dict[str, str] = {}
    for name, value in pairs:
        values.setdefault(name, value)
    return PostedForm(values)


@dataclass
class _Part:
    headers: dict[str, bytes] = field(default_factory=dict)
    data: bytearray = field(default_factory=bytearray)


def parse_multipart(body: bytes, content_type: str) -> PostedForm:
    """multipart/form-data from a body already read (and size-checked) into memory."""
    _, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if not boundary:
        raise FormRejected(400, "malformed multipart body",
                           "the Content-Type has no boundary parameter")
    parts: list[_Part] = []
    state: dict[str, Any] = {"field": b"", "value": b"", "ended": False}

    def on_part_begin() -> None:
        if len(parts) >= MAX_FIELDS:
            raise FormRejected(400, "too many fields", f"at most {MAX_FIELDS} parts")
        parts.append(_Part())

    def on_part_data(data: bytes, start: int, end: int) -> None:
        parts[-1].data += data[start:end]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        state["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        state["value"] += data[start:end]

    def on_header_end() -> None:
        parts[-1].headers[state["field"].decode("latin-1").lower()] = state["value"]
        state["field"], state["value"] = b"", b""

    def on_end() -> None:
        state["ended"] = True

    try:
        parser = MultipartParser(boundary, {
            "on_part_begin": on_part_begin, "on_part_data": on_part_data,
            "on_header_field": on_header_field, "on_header_value": on_header_value,
            "on_header_end": on_header_end, "on_end": on_end,
        }, max_header_size=MAX_MULTIPART_HEADER_BYTES)
        parser.write(body)
        parser.finalize()
    except FormParserError as exc:
        raise FormRejected(400, "malformed multipart body", str(exc)[:200]) from None
    if not state["ended"]:
        raise FormRejected(400, "malformed multipart body",
                           "the body ends before the closing boundary")
    values: dict[str, str] = {}
    files: list[UploadedFile] = []
    for part in parts:
        disposition, options = parse_options_header(part.headers.get("content-disposition", b""))
        if disposition != b"form-data" or b"name" not in options:
            raise FormRejected(400, "malformed multipart body",
                               "a part has no Content-Disposition: form-data; name=...")
        name = _strict_utf8(options[b"name"], "a field name")
        if b"filename" in options:
            filename = _strict_utf8(options[b"filename"], f"the file name in {name!r}")
            if not filename and not part.data:
                continue  # a file input left empty
            part_type = part.headers.get("content-type", b"").decode("latin-1")
            files.append(UploadedFile(name, filename, part_type.split(";")[0].strip().lower(),
                                      bytes(part.data)))
        else:
            values.setdefault(name, _strict_utf8(bytes(part.data), f"the field {name!r}"))
    return PostedForm(values, tuple(files))


def parse_body(body: bytes, content_type: str) -> PostedForm:
    kind = content_type.split(";")[0].strip().lower()
    if kind == "application/x-www-form-urlencoded":
        return parse_urlencoded(body)
    if kind == "multipart/form-data":
        return parse_multipart(body, content_type)
    raise FormRejected(415, "unsupported content type",
                       "post application/x-www-form-urlencoded or multipart/form-data")
