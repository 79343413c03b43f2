"""LMTP through systemd socket activation: `gatewayd run` started by systemd's own
`systemd-socket-activate` (the protocol a .socket unit speaks: LISTEN_PID, LISTEN_FDS,
LISTEN_FDNAMES) serves LMTP on the socket it is given, not on lmtp.listen. The example
systemd/gatewayd.socket names its socket `lmtp` (its `systemd-analyze verify` is in
test_systemd.py, through systemd/verify). About 5 s: a real daemon process starts."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import sqlite3
import sys
from pathlib import Path

import pytest

from gatewayd.ingest.lmtp_socket import inherited_socket
from gatewayd.loopback.lmtp import deliver
from gatewayd.loopback.ports import free_port
from tests.test_lifecycle import _init
from tests.test_lmtp import mail

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"


def test_inherited_socket_only_for_this_process_and_name() -> None:
    pid = str(os.getpid())
    assert inherited_socket(environ={}) is None
    assert inherited_socket(environ={"LISTEN_PID": "1", "LISTEN_FDS": "1"}) is None
    assert inherited_socket(environ={"LISTEN_PID": pid, "LISTEN_FDS": "2",
                                     "LISTEN_FDNAMES": "http:other"}) is None
    assert inherited_socket(environ={"LISTEN_PID": pid, "LISTEN_FDS": "x"}) is None


def test_example_socket_unit_hands_gatewayd_a_socket_named_lmtp() -> None:
    values: dict[str, str] = {}
    for line in (SYSTEMD / "gatewayd.socket").read_text("utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values[key] = value
    assert values["FileDescriptorName"] == "lmtp"
    assert values["Service"] == "gatewayd.service"
    assert values["ListenStream"] == "/var/spool/postfix/private/gatewayd-lmtp"
    assert values["SocketUser"] == "postfix" and values["SocketMode"] == "0600"


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is not installed (Debian: package systemd)")
async def test_gatewayd_run_serves_lmtp_on_the_socket_systemd_passes(tmp_path: Path) -> None:
    config = _init(tmp_path / "site", free_port())
    unused = free_port()
    config.write_text(config.read_text("utf-8") + (
        # listen is not bound when systemd passes a socket named lmtp
        f'\n[lmtp]\nlisten = "127.0.0.1:{unused}"\n\n'
        '[[accounts]]\nname = "shop"\naddress = "shop@shop.example"\n'
        'new_ticket = { type = "Kundenanfrage", status = "Neu" }\n'), "utf-8")
    port = free_port()
    gatewayd = Path(sys.executable).with_name("gatewayd")
    proc = await asyncio.create_subprocess_exec(
        "systemd-socket-activate", "-l", f"127.0.0.1:{port}", "--fdname=lmtp",
        str(gatewayd), "--config", str(config), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        start_new_session=True)
    output = b""
    try:
        # systemd-socket-activate listens first and starts gatewayd on the first connection;
        # the connection waits in the socket's backlog until gatewayd serves it.
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            await asyncio.sleep(0.05)
        replies = await deliver(f"127.0.0.1:{port}", "kunde@kunde.example",
                                ["shop@shop.example"], mail(), reply_seconds=60)
        assert replies["shop@shop.example"].code == 250, replies
        with pytest.raises(OSError):  # lmtp.listen was not bound
            socket.create_connection(("127.0.0.1", unused), 1).close()
        os.killpg(proc.pid, signal.SIGTERM)
        output, _ = await asyncio.wait_for(proc.communicate(), 30)
        assert proc.returncode == 0, output.decode()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
    assert b"lmtp listening on the socket systemd passed" in output
    db = tmp_path / "site" / "var" / "gatewayd.sqlite3"
    with contextlib.closing(sqlite3.connect(db)) as conn:
        assert conn.execute("SELECT account, source FROM ticket").fetchall() == [("shop", "mail")]
