"""IMAP on the wire, as pure functions: UID sets and chunks, and reading FETCH answers."""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

# No command names more UIDs than this: answers stay a few hundred lines, commands a few KB.
MAX_UIDS_PER_COMMAND = 500

_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")


def uid_set(uids: Sequence[int]) -> str:
    """A compact UID set: runs of consecutive UIDs become ranges (`1:500,502`)."""
    parts: list[str] = []
    ordered = sorted(set(uids))
    start = 0
    for n in range(1, len(ordered) + 1):
        if n == len(ordered) or ordered[n] != ordered[n - 1] + 1:
            first, last = ordered[start], ordered[n - 1]
            parts.append(str(first) if first == last else f"{first}:{last}")
            start = n
    return ",".join(parts)


def chunks(uids: Sequence[int], size: int = MAX_UIDS_PER_COMMAND) -> Iterator[list[int]]:
    """The UIDs in slices of at most `size`, in the order given."""
    for start in range(0, len(uids), size):
        yield list(uids[start:start + size])


def read_sizes(lines: Sequence[object], result: dict[int, tuple[int, frozenset[str]]]) -> None:
    """Add UID → (RFC822.SIZE, flags) from a UID FETCH (UID RFC822.SIZE FLAGS) answer."""
    for line in lines:
        if not isinstance(line, bytes | bytearray):
            continue
        raw = bytes(line)
        uid, size = _FETCH_UID.search(raw), _FETCH_SIZE.search(raw)
        if uid and size:
            flags = _FETCH_FLAGS.search(raw)
            result[int(uid.group(1))] = (
                int(size.group(1)),
                frozenset(flags.group(1).decode().split()) if flags else frozenset(),
            )


def parse_fetch(lines: Sequence[object]) -> dict[int, bytes]:
    """UID → literal bytes from a UID FETCH response (the UID may come before or after)."""
    result: dict[int, bytes] = {}
    pending: bytes | None = None
    uid: int | None = None
    for line in lines:
        if isinstance(line, bytearray):
            pending = bytes(line)
            if uid is not None:
                result[uid] = pending
                pending, uid = None, None
            continue
        raw = bytes(line) if isinstance(line, bytes) else b""
        match = _FETCH_UID.search(raw)
        if b" FETCH " in raw:
            uid = int(match.group(1)) if match else None
            pending = None
        elif match and pending is not None:
            result[int(match.group(1))] = pending
            pending, uid = None, None
    return result


def response_text(lines: Sequence[object]) -> str:
    """An answer's lines as text for an error message (at most 300 characters)."""
    return " ".join(bytes(x).decode("utf-8", "replace") if isinstance(x, bytes | bytearray)
                    else str(x) for x in lines)[:300]
