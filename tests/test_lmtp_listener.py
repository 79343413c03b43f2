"""The LMTP listener itself, against the real daemon: the session cap, the silence timeout
(idle clients dropped; slow senders and clients waiting for their reply not), the unix socket
with its mode, and a stop that lets the mail being stored commit and answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.ingest.lmtp_socket import unix_listener
from gatewayd.loopback.lmtp import LmtpClient, deliver
from tests.test_lmtp import SQLITE, address, gateway, mail


@SQLITE
async def test_a_client_waiting_for_its_reply_is_not_idle(
        make_config: Callable[..., Config]) -> None:
    """Storing takes longer than the silence timeout: the session waits for us, not we for
    it, so it is not dropped."""
    async with gateway(make_config, lmtp={"timeout_seconds": 0.3}) as runtime:

        async def hook(store: Any, event: Any) -> None:
            await asyncio.sleep(1.0)

        runtime.store.hooks.append(hook)
        replies = await deliver(address(runtime), "k@kunde.example", ["support@shop.example"],
                                mail())
        assert replies["support@shop.example"].code == 250


@SQLITE
async def test_session_cap_and_idle_timeout(make_config: Callable[..., Config]) -> None:
    async with gateway(make_config, lmtp={"max_sessions": 2,
                                          "timeout_seconds": 0.5}) as runtime:
        first = await LmtpClient.connect(address(runtime))
        second = await LmtpClient.connect(address(runtime))
        third = await LmtpClient.connect(address(runtime))
        assert third.greeting is not None and third.greeting.code == 421
        await third.close()
        # Silence is dropped: the server closes both idle sessions by itself.
        for client in (first, second):
            assert await asyncio.wait_for(client.reader.read(), 10) == b""
            client.writer.close()
        fourth = await LmtpClient.connect(address(runtime))  # room again
        assert fourth.greeting is not None and fourth.greeting.code == 220
        # A client that keeps sending is not idle, however long its mail takes to arrive.
        assert (await fourth.command("MAIL FROM:<k@kunde.example>")).code == 250
        assert (await fourth.command("RCPT TO:<support@shop.example>")).code == 250
        assert (await fourth.command("DATA")).code == 354
        for line in mail().split(b"\r\n")[:-1]:
            fourth.writer.write(line + b"\r\n")
            await asyncio.sleep(0.2)  # 7 lines: 1.4 s, well past the 0.5 s timeout
        fourth.writer.write(b".\r\n")
        assert (await fourth.reply()).code == 250
        await fourth.close()


@SQLITE
async def test_unix_socket_with_its_mode_and_a_stale_socket_replaced(
        make_config: Callable[..., Config], tmp_path: Path) -> None:
    path = tmp_path / "run" / "lmtp.sock"
    path.parent.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # a socket file nobody listens on, as a crash leaves it
    async with gateway(make_config, lmtp={"listen": f"unix:{path}",
                                          "socket_mode": 0o600}) as runtime:
        assert address(runtime) == f"unix:{path}"
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        replies = await deliver(f"unix:{path}", "k@kunde.example", ["support@shop.example"],
                                mail())
        assert replies["support@shop.example"].code == 250
        with pytest.raises(OSError, match="another process listens"):
            unix_listener(path, 0o600)
    assert not path.exists()  # removed at stop


@SQLITE
async def test_stop_lets_a_delivery_in_progress_commit_and_answer(
        make_config: Callable[..., Config], db_url: str) -> None:
    """SIGTERM: no new sessions at once; the mail being stored commits and gets its 250
    before the listener closes."""
    entered, release = asyncio.Event(), asyncio.Event()
    async with gateway(make_config) as runtime:

        async def slow_hook(store: Any, event: Any) -> None:
            entered.set()
            await release.wait()

        runtime.store.hooks.append(slow_hook)
        sending = asyncio.create_task(deliver(address(runtime), "k@kunde.example",
                                              ["support@shop.example"], mail()))
        await asyncio.wait_for(entered.wait(), 30)
        runtime.request_stop()
        with pytest.raises(OSError):
            await LmtpClient.connect(address(runtime), reply_seconds=5)
        asyncio.get_running_loop().call_later(0.3, release.set)
    replies = await asyncio.wait_for(sending, 5)
    assert replies["support@shop.example"].code == 250
    with contextlib.closing(sqlite3.connect(db_url[len("sqlite://"):])) as db:
        assert db.execute("SELECT count(*) FROM ticket").fetchone() == (1,)
