"""Attachment files: stored once per content under data_dir/attachments/, named by SHA-256."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path

from gatewayd.store.models import Attachment


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
    if target.exists():
        return digest
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return digest



async def remove_unused_blobs(data_dir: Path, digests: set[str]) -> int:
    """Delete the files of `digests` that no attachment row uses any more; call after the
    commit that removed rows (files are shared by content, and a rolled-back delete must still
    find its file). Returns the number of files removed."""
    if not digests:
        return 0
    used = {str(d) for d in await Attachment.filter(sha256__in=sorted(digests)).values_list(
        "sha256", flat=True)}
    removed = 0
    for digest in digests - used:
        with contextlib.suppress(FileNotFoundError, ValueError):
            blob_path(data_dir, digest).unlink()
            removed += 1
    return removed
