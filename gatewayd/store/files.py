"""Durable file writes: a file is replaced whole or not at all, for attachment blobs and the
OAuth2 token store alike. Standard library only (the parser's worker processes import the
attachment helpers)."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def write_atomic(path: Path, data: bytes, *, mode: int | None = None,
                 prepare: Callable[[int], None] | None = None,
                 sync_folder: bool = False) -> None:
    """Write `data` to `path` so that a crash leaves the old file or the new one, never part of
    either: a temporary file in the same folder (created with the folder's parents), written
    and fsynced, then renamed over `path`.

    `mode` is set on the temporary file before any byte is written (a secret is never readable
    by others, not even for a moment); `prepare(fd)` may adjust it further (its owner, say).
    `sync_folder` also fsyncs the folder, so the rename itself survives a power cut; content
    named by its hash needs no such care (a lost rename only means writing it again)."""
    folder = path.parent
    folder.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)
            if prepare is not None:
                prepare(handle.fileno())
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if sync_folder:
        fsync_folder(folder)


def fsync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable (best effort: some file systems refuse it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
