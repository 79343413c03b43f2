"""SQLite stays single-instance: a second gatewayd on the same database file refuses to start.

An exclusive `flock` on `<database>.lock` held for the daemon's life; the kernel drops it when the
process dies, so a crashed instance never leaves a stale lock behind. PostgreSQL needs no such lock:
there several instances share the work through account leases (`ops.leases`).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from gatewayd.store.db import engine


class InstanceLocked(OSError):
    """Another gatewayd holds the SQLite database; the message says which and what to do."""


def sqlite_path(database_url: str) -> Path | None:
    """The database file of a sqlite:// URL, or None for :memory: and other engines."""
    if engine(database_url) != "sqlite" or ":memory:" in database_url:
        return None
    return Path(database_url[len("sqlite://"):].partition("?")[0]).resolve()


@contextlib.contextmanager
def single_instance(database_url: str) -> Iterator[Path | None]:
    """Hold the instance lock of a SQLite database (no-op for PostgreSQL)."""
    path = sqlite_path(database_url)
    if path is None:
        yield None
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise InstanceLocked(
                f"{path}: another gatewayd instance (pid {holder}) is already running on this "
                "SQLite database — SQLite is single-instance: stop the other instance, or use "
                "PostgreSQL (database_url = \"postgres://...\") to run several"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock_path
    finally:
        os.close(fd)  # closing the descriptor releases the flock
