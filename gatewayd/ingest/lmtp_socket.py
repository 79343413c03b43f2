"""The LMTP listener's sockets: one systemd passed (socket activation), a unix socket gatewayd
makes itself, and how a bound address is written."""

from __future__ import annotations

import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SD_LISTEN_FDS_START = 3
FD_NAME = "lmtp"


def inherited_socket(name: str = FD_NAME, environ: Mapping[str, str] | None = None
                     ) -> socket.socket | None:
    """The listening socket systemd passed for `name` (sd_listen_fds: LISTEN_PID, LISTEN_FDS,
    LISTEN_FDNAMES), or None. Without names, a single passed socket is taken."""
    env = os.environ if environ is None else environ
    if env.get("LISTEN_PID") != str(os.getpid()):
        return None
    try:
        count = int(env.get("LISTEN_FDS", "0"))
    except ValueError:
        return None
    names = env["LISTEN_FDNAMES"].split(":") if env.get("LISTEN_FDNAMES") else []
    for index in range(count):
        if (names[index] if index < len(names) else "") == name or (not names and count == 1):
            sock = socket.socket(fileno=SD_LISTEN_FDS_START + index)
            sock.set_inheritable(False)
            return sock
    return None


def host_port(name: Any) -> str:
    host, port = name[0], name[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def unix_listener(path: Path, mode: int) -> socket.socket:
    """A listening unix socket at `path` with `mode`; a stale socket file is replaced, a live
    one (another process listens) is an error, as is any other file there."""
    if path.exists() or path.is_symlink():
        if not stat.S_ISSOCK(path.lstat().st_mode):
            raise OSError(f"cannot listen on unix:{path}: a file that is not a socket is in "
                          "the way — remove it or change lmtp.listen")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(path))
        except OSError:
            path.unlink()  # nobody listens: left over from a crash
        else:
            raise OSError(f"cannot listen on unix:{path}: another process listens there — "
                          "stop it or change lmtp.listen")
        finally:
            probe.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, mode)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on unix:{path} ({exc.strerror}) — "
                      "check the directory's permissions or change lmtp.listen") from None
    return sock
