"""Attachment files: stored once per content under data_dir/attachments/, named by SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import re
from pathlib import Path

from gatewayd.store.files import write_atomic

MAX_FILENAME_CHARS = 255  # Attachment.filename
_UNSAFE = re.compile("[\x00-\x1f\x7f\u2028\u2029\ufeff]")  # controls, line separators, BOM
_SURROGATES = re.compile("[\ud800-\udfff]")


def safe_filename(name: str, default: str = "attachment") -> str:
    """The one sanitiser of attachment names, for mail attachments and form uploads alike.

    A stored name is offered back as a download name, so it must never carry a path: `/` and
    `\\` become `_` (`../../x` turns into the harmless `_.._x`), control characters and lone
    surrogates go, leading dots and blanks go (no hidden or parent-directory names), and the
    name is cut to the column's 255 characters keeping its extension. An empty result is
    `default`."""
    name = name.replace("/", "_").replace("\\", "_")
    name = _SURROGATES.sub("\ufffd", _UNSAFE.sub("", name))
    name = name.strip().lstrip(". ").rstrip(" ")
    if len(name) > MAX_FILENAME_CHARS:
        stem, dot, extension = name.rpartition(".")
        if dot and stem and 0 < len(extension) <= 16:
            name = stem[:MAX_FILENAME_CHARS - len(extension) - 1].rstrip() + "." + extension
        else:
            name = name[:MAX_FILENAME_CHARS]
    return name or default


def blob_path(data_dir: Path, digest: str) -> Path:
    if len(digest) != 64 or not all(c in "0123456789abcdef" for c in digest):
        raise ValueError("not a SHA-256 hex digest")
    return data_dir / "attachments" / digest[:2] / digest[2:]


def save_blob(data_dir: Path, content: bytes) -> str:
    """Write content durably (temp file, fsync, rename) unless it is already there; return its hash.

    Called inside the database transaction: if that rolls back, an unreferenced file stays behind,
    which is harmless (the same content reuses it) and never the other way round.
    """
    digest = hashlib.sha256(content).hexdigest()
    target = blob_path(data_dir, digest)
    if not target.exists():
        write_atomic(target, content)
    return digest


async def remove_unused_blobs(data_dir: Path, digests: set[str]) -> int:
    """Delete the files of `digests` that no attachment row uses any more; call after the
    commit that removed rows (files are shared by content, and a rolled-back delete must still
    find its file). Returns the number of files removed."""
    if not digests:
        return 0
    # Imported here: the parser's worker processes use safe_filename and need no ORM.
    from gatewayd.store.models import Attachment

    used = {str(d) for d in await Attachment.filter(sha256__in=sorted(digests)).values_list(
        "sha256", flat=True)}
    removed = 0
    for digest in digests - used:
        with contextlib.suppress(FileNotFoundError, ValueError):
            blob_path(data_dir, digest).unlink()
            removed += 1
    return removed
