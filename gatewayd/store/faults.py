"""Tell a full or failing disk from a bad mail: `storage_fault(exc)` (pure, no I/O).

A write that fails because the database or the data directory has no room is the machine's
fault, never the mail's: the mail must not be counted as failing, let alone quarantined. The
caller pauses, reports the fault (/healthz answers 503) and tries again later.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from typing import Literal

StorageKind = Literal["database", "data_dir"]

# OSError numbers that mean "the disk cannot take this write", whatever the mail.
_DISK_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO}
# SQLite (SQLITE_FULL, SQLITE_IOERR) and PostgreSQL (SQLSTATE 53100 disk_full) say it in words.
_DATABASE_TEXTS = ("database or disk is full", "disk i/o error", "no space left on device",
                   "could not extend file", "could not write to file")
_DATABASE_SQLSTATES = {"53100"}


@dataclass(frozen=True)
class StorageFault:
    kind: StorageKind
    reason: str


def exception_chain(exc: BaseException) -> list[BaseException]:
    """The exception, its causes and contexts, and exceptions wrapped in its args (tortoise
    wraps sqlite3's error that way), each once."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo and len(seen) < 20:
        current = todo.pop()
        if any(current is s for s in seen):
            continue
        seen.append(current)
        todo += [a for a in current.args if isinstance(a, BaseException)]
        todo += [e for e in (current.__cause__, current.__context__) if e is not None]
    return seen


def storage_fault(exc: BaseException) -> StorageFault | None:
    """What storage failed, and why, when `exc` means a full or failing disk; else None."""
    for link in exception_chain(exc):
        if isinstance(link, OSError) and link.errno in _DISK_ERRNOS:
            where = f" ({link.filename})" if link.filename else ""
            return StorageFault("data_dir", f"{link.strerror or link}{where}")
        text = str(link).lower()
        sqlstate = getattr(link, "sqlstate", None)
        if sqlstate in _DATABASE_SQLSTATES or any(t in text for t in _DATABASE_TEXTS):
            return StorageFault("database", str(link)[:300] or type(link).__name__)
    return None
