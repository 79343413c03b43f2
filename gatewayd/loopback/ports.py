"""Loopback ports for servers started on this machine (`init --loopback`, tests, benchmarks): a
port nothing listens on, and waiting until a started server listens on one."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Callable


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def wait_listening(port: int, seconds: float, failed: Callable[[], str],
                   host: str = "127.0.0.1") -> None:
    """Return once something accepts connections on `port`; after `seconds` raise
    RuntimeError with `failed()` (say, the server's log), so a server that does not come up
    fails its caller instead of hanging it."""
    deadline = time.monotonic() + seconds
    while True:
        with contextlib.suppress(OSError), socket.create_connection((host, port), 1):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(failed())
        time.sleep(0.05)
