"""The refresh-token store: `data_dir/oauth/<account>.json` (mode 0600, replaced atomically),
and beside it `<account>.status.json` with what `gatewayd oauth status` shows (no token).

A rotated refresh token is written the same way as the first one: a temporary file in the same
folder, fsync, rename, fsync of the folder — a crash leaves the old token or the new one,
never half of either. The daemon reads the file at every refresh, so a new `oauth login` is
picked up without a restart.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.store.files import write_atomic


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class StoredGrant:
    """A stored refresh token (never printed: repr hides it)."""

    refresh_token: str
    scope: str
    obtained_at: str
    rotated_at: str | None = None

    def __repr__(self) -> str:
        return f"StoredGrant(scope={self.scope!r}, obtained_at={self.obtained_at!r})"


class TokenStore:
    """One account's files under `data_dir/oauth/`."""

    def __init__(self, data_dir: Path, account: str) -> None:
        self.folder = data_dir / "oauth"
        self.account = account
        self.path = self.folder / f"{account}.json"
        self.status_path = self.folder / f"{account}.status.json"

    # ------------------------------------------------------------------ refresh token

    def load(self) -> StoredGrant | None:
        """The stored grant, or None when there is none (never logged in)."""
        data = _read_json(self.path) or {}
        token = data.get("refresh_token")
        if not isinstance(token, str) or not token:
            return None
        return StoredGrant(token, str(data.get("scope", "")), str(data.get("obtained_at", "")),
                           data.get("rotated_at"))

    def save(self, refresh_token: str, scope: str, *, rotated: bool = False) -> None:
        previous = _read_json(self.path) or {}
        data = {
            "account": self.account,
            "refresh_token": refresh_token,
            "scope": scope,
            "obtained_at": previous.get("obtained_at") if rotated else _now_iso(),
            "rotated_at": _now_iso() if rotated else None,
        }
        if not data["obtained_at"]:
            data["obtained_at"] = _now_iso()
        self._write(self.path, data)

    def identity(self) -> tuple[int, int] | None:
        """What changes when the file is replaced (a new login): inode and mtime."""
        try:
            st = self.path.stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    # ------------------------------------------------------------------ status (no secrets)

    def status(self) -> dict[str, Any]:
        return _read_json(self.status_path) or {}

    def record(self, **values: Any) -> None:
        """Merge values into the status file (best effort: bookkeeping never stops a login)."""
        data = self.status()
        data.update(values)
        with contextlib.suppress(OSError):
            self._write(self.status_path, data)

    # ------------------------------------------------------------------ files

    def _write(self, path: Path, data: dict[str, Any]) -> None:
        self.folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        text = json.dumps(data, indent=2) + "\n"
        write_atomic(path, text.encode("utf-8"), mode=0o600,
                     prepare=lambda fd: _match_owner(fd, self.folder), sync_folder=True)


def _match_owner(fd: int, folder: Path) -> None:
    """When root writes (e.g. `sudo gatewayd oauth login`), the file belongs to the folder's
    owner, so the daemon's user can still read it."""
    if os.geteuid() != 0:
        return
    st = folder.stat()
    with contextlib.suppress(OSError):
        os.fchown(fd, st.st_uid, st.st_gid)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None
