"""sd_notify: tell systemd READY, STATUS, WATCHDOG, RELOADING and STOPPING over $NOTIFY_SOCKET.

A tiny datagram client instead of a library so the abstract-namespace form (`@name`) and the
watchdog interval ($WATCHDOG_USEC, $WATCHDOG_PID) are handled in one place. Without
$NOTIFY_SOCKET (not under systemd) every call is a no-op.
"""

from __future__ import annotations

import os
import socket

from gatewayd.logs import get_logger

log = get_logger("gatewayd.notify")


class Notifier:
    """One connected datagram socket to systemd's notify socket, or nothing."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        self._sock: socket.socket | None = None
        self._address: str | bytes | None = None
        if address:
            # "@name" is Linux's abstract namespace: a leading NUL byte on the wire.
            self._address = "\0" + address[1:] if address.startswith("@") else address
            # Non-blocking: when the receiver's queue is full (systemd busy, or a test harness
            # that reads late), a blocking send would stop the whole event loop, SIGTERM
            # included. A ping that cannot be queued is dropped; a truly stuck daemon still
            # misses its pings and systemd acts on it.
            self._sock = socket.socket(
                socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK)
        self._full = False  # the receiver's queue was full at the last send (logged once)

    @property
    def enabled(self) -> bool:
        return self._sock is not None

    def send(self, *lines: str) -> bool:
        """Send `KEY=VALUE` lines in one datagram; False (logged once per call) when it fails."""
        if self._sock is None or self._address is None:
            return False
        try:
            self._sock.sendto("\n".join(lines).encode(), self._address)
        except BlockingIOError:
            if not self._full:
                log.warning("sd_notify: the notify socket's queue is full, dropping messages")
            self._full = True
            return False
        except OSError as exc:
            log.warning("sd_notify failed", error=str(exc))
            return False
        self._full = False
        return True

    def ready(self, status: str) -> bool:
        return self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def status(self, status: str) -> bool:
        return self.send(f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.send("WATCHDOG=1")

    def reloading(self) -> bool:
        return self.send("RELOADING=1")

    def stopping(self) -> bool:
        return self.send("STOPPING=1")

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_interval() -> float | None:
    """Seconds between pings: half of $WATCHDOG_USEC; None when the watchdog is off or not ours."""
    usec = os.environ.get("WATCHDOG_USEC")
    pid = os.environ.get("WATCHDOG_PID")
    if not usec or not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000 / 2
