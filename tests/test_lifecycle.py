"""`gatewayd run` under a listening NOTIFY_SOCKET: READY, STATUS, WATCHDOG, SIGHUP, SIGTERM.

The daemon runs as a real subprocess; the test plays systemd's side of the notify protocol.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.cli import main as cli_main
from gatewayd.config import load_config
from gatewayd.loopback.ports import free_port
from gatewayd.ops.instance import InstanceLocked, single_instance
from gatewayd.ops.lifecycle import Lifecycle, reload_decision, status_line, wedged_accounts
from gatewayd.ops.notify import Notifier
from gatewayd.runtime import AccountHealth, Runtime, StorageHealth
from gatewayd.store.tickets import TicketStore

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _init(directory: Path, port: int) -> Path:
    """`gatewayd init` (in a thread: it runs its own event loop) with the HTTP port set."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        assert pool.submit(cli_main, ["init", str(directory)]).result() == 0
    config = directory / "gatewayd.toml"
    text = config.read_text("utf-8").replace('listen = "127.0.0.1:8080"',
                                            f'listen = "127.0.0.1:{port}"')
    config.write_text(text, "utf-8")
    return config


class NotifyListener:
    """systemd's end of $NOTIFY_SOCKET: collects every datagram the daemon sends."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.messages: list[dict[str, str]] = []

    def drain(self) -> None:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return
            fields = dict(line.split("=", 1) for line in data.decode().splitlines() if "=" in line)
            self.messages.append(fields)

    async def wait_for(self, key: str, value: str | None = None, *, after: int = 0,
                       within: float = 30) -> dict[str, str]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            self.drain()
            for message in self.messages[after:]:
                if key in message and (value is None or message[key] == value):
                    return message
            await asyncio.sleep(0.05)
        raise AssertionError(f"no {key}={value or '*'} from the daemon; got {self.messages}")

    def close(self) -> None:
        self.sock.close()


@contextlib.asynccontextmanager
async def daemon(config: Path, notify: Path, watchdog_usec: int = 400_000
                 ) -> AsyncIterator[tuple[asyncio.subprocess.Process, list[str]]]:
    env = dict(os.environ, NOTIFY_SOCKET=str(notify), WATCHDOG_USEC=str(watchdog_usec))
    env.pop("WATCHDOG_PID", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "gatewayd", "--config", str(config), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        start_new_session=True,  # its own process group, like a service's cgroup
    )
    lines: list[str] = []

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace"))

    reader = asyncio.create_task(read())
    try:
        yield proc, lines
    finally:
        # Everything the daemon started (e.g. parser worker processes) goes with it, as with
        # systemd's KillMode; they would otherwise keep the output pipe open.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        await reader


def kill_service(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the daemon and every process it started (a dead node, or systemd's kill)."""
    os.killpg(proc.pid, signal.SIGKILL)


async def _wait_log(lines: list[str], text: str, within: float = 20) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while loop.time() < deadline:
        for line in lines:
            if text in line:
                return line
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not logged; log was:\n{''.join(lines)}")


async def test_run_notifies_reloads_and_stops(tmp_path: Path) -> None:
    port = free_port()
    config = _init(tmp_path / "site", port)
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        async with daemon(config, listener.path) as (proc, lines):
            ready = await listener.wait_for("READY", "1")
            # READY comes only when HTTP is bound and the database answers.
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as http:
                health = (await http.get("/healthz")).json()
                assert health["database"] is True and health["mode"] == "test"
                assert ready["STATUS"].startswith("0/0 accounts healthy")
                assert int(ready["MAINPID"]) == proc.pid
                await listener.wait_for("WATCHDOG", "1")

                # SIGHUP with a good new config: applied in place, same process, same port.
                text = config.read_text("utf-8")
                config.write_text(text.replace('mode = "test"', 'mode = "live"'), "utf-8")
                mark = len(listener.messages)
                proc.send_signal(signal.SIGHUP)
                await listener.wait_for("RELOADING", "1", after=mark)
                await _wait_log(lines, "configuration reloaded")
                assert (await http.get("/healthz")).json()["mode"] == "live"

                # SIGHUP with a broken config: rejected with the reason, the old one keeps going.
                config.write_text(text.replace('mode = "test"', 'mode = "sometimes"'), "utf-8")
                proc.send_signal(signal.SIGHUP)
                rejected = await _wait_log(lines, "reload rejected")
                assert "old configuration keeps running" in rejected and "mode" in rejected
                assert (await http.get("/healthz")).json()["mode"] == "live"
                mark = len(listener.messages)
                await listener.wait_for("WATCHDOG", "1", after=mark)

            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
            await listener.wait_for("STOPPING", "1")
            assert any('"stopped"' in line for line in lines)
    finally:
        listener.close()


async def test_second_instance_on_one_sqlite_file_refuses(tmp_path: Path) -> None:
    port = free_port()
    config = _init(tmp_path / "site", port)
    listener = NotifyListener(tmp_path / "notify.sock")
    try:
        async with daemon(config, listener.path) as (proc, _lines):
            await listener.wait_for("READY", "1")
            second = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "gatewayd", "--config", str(config), "run",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            _out, err = await asyncio.wait_for(second.communicate(), 30)
            assert second.returncode == 1
            message = err.decode()
            assert "SQLite is single-instance" in message and str(proc.pid) in message
            proc.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        listener.close()


def test_notify_never_blocks_when_nobody_reads(tmp_path: Path) -> None:
    """A notify socket whose queue is full (systemd busy, or a harness reading late) must not
    stop the daemon: a blocking send here once wedged the event loop, SIGTERM included."""
    listener = NotifyListener(tmp_path / "notify.sock")  # never drained
    notifier = Notifier(str(listener.path))
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(notifier.watchdog()
                                                            for _ in range(200)), daemon=True)
    try:
        sender.start()
        sender.join(20)  # a hang check, not a speed limit: 200 sends take microseconds
        assert not sender.is_alive(), "sd_notify blocked on a full notify socket"
        assert results[0] is True and results[-1] is False  # queued, then dropped
        listener.drain()
        assert notifier.watchdog() is True  # room again: messages flow again
    finally:
        notifier.close()
        listener.close()


def test_single_instance_lock_is_released_with_its_holder(tmp_path: Path) -> None:
    url = f"sqlite://{tmp_path / 'db.sqlite3'}"
    with single_instance(url):
        with pytest.raises(InstanceLocked, match="single-instance"), single_instance(url):
            pass
    with single_instance(url) as lock:
        assert lock is not None and lock.read_text() == str(os.getpid())
    with single_instance("postgres://x@127.0.0.1/db") as none:
        assert none is None


def test_status_line_backlog_stall_and_watchdog_decisions(tmp_path: Path) -> None:
    config_path = _init(tmp_path / "site", 8080)
    text = config_path.read_text("utf-8").replace("active = false", "active = true")
    (tmp_path / "site" / "support-imap.password").write_text("x\n")
    (tmp_path / "site" / "support-smtp.password").write_text("x\n")
    config_path.write_text(text.replace("idle = true", "idle = false"), "utf-8")
    config = load_config(config_path)
    now = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC)
    health = {"support": AccountHealth("support", state="polling",
                                       last_poll_at=now - dt.timedelta(seconds=30))}
    assert status_line(config, health) == "1/1 accounts healthy, mode test"
    # A backlog being drained shows with its size and rate.
    health["support"].found_unseen(20_000)
    health["support"].handled(500, now=100.0)
    health["support"].handled(500, now=110.0)
    assert health["support"].import_rate(now=110.0) == 100.0
    assert "draining: support 19,000 unseen" in status_line(config, health)
    # A stall is shown with its start; the supervisor reconnects, the watchdog keeps pinging.
    health["support"].state = "stalled"
    health["support"].stalled_since = now
    line = status_line(config, health)
    assert line.startswith("0/1 accounts healthy")
    assert "support (stalled, stalled since 12:00:00 UTC)" in line
    assert wedged_accounts(health) == []
    # Reconnected but no progress yet: still not healthy until a batch commits.
    health["support"].state = "polling"
    assert not health["support"].healthy
    health["support"].stalled_since = None
    assert health["support"].healthy
    # Only a session that ignores its cancellation withholds the watchdog ping.
    health["support"].state = "wedged"
    assert wedged_accounts(health) == ["support"]
    health["support"].state = "backoff"  # backing off is reported, not hidden
    assert status_line(config, health).startswith("0/1 accounts healthy")
    assert "support (backoff)" in status_line(config, health)
    storage = StorageHealth()
    storage.report("account support", "database", "database or disk is full")
    assert "storage full: database" in status_line(config, health, storage)

    moved = config.model_copy(update={"database_url": "sqlite:///elsewhere.db"})
    decision = reload_decision(config, moved)
    assert decision.accept and decision.restart_needed == ["database_url"]
    assert json.dumps(reload_decision(config, config).restart_needed) == "[]"


async def test_watchdog_keeps_pinging_for_a_stalled_account_and_stops_for_a_wedged_one(
    tmp_path: Path,
) -> None:
    """A stalled account is its supervisor's to reconnect: the service is not restarted for it.
    Only an account whose session does not end when cancelled withholds the ping."""
    config = load_config(_init(tmp_path / "site", 8080))
    runtime = Runtime(config=config, store=TicketStore(config))
    runtime.health["support"] = AccountHealth("support", state="stalled",
                                              stalled_since=dt.datetime.now(dt.UTC))
    listener = NotifyListener(tmp_path / "notify.sock")
    lifecycle = Lifecycle(runtime, Notifier(str(listener.path)), interval=0.05)
    task = asyncio.create_task(lifecycle._watchdog())
    try:
        await listener.wait_for("WATCHDOG", "1", within=5)
        mark = len(listener.messages)
        await listener.wait_for("WATCHDOG", "1", after=mark, within=5)  # still pinging
        runtime.health["support"].state = "wedged"
        await listener.wait_for("STATUS", "wedged: support", within=5)
        await asyncio.sleep(0.3)  # six intervals
        listener.drain()
        after = listener.messages[-1:]
        mark = len(listener.messages)
        await asyncio.sleep(0.3)
        listener.drain()
        assert not any("WATCHDOG" in m for m in listener.messages[mark:]), after
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        listener.close()


async def test_parser_workers_stop_with_the_daemon(make_config: Any) -> None:
    """The parser processes are a part of the daemon like any worker: stopping the daemon
    stops them (they do not wait for the process to end)."""
    from gatewayd import daemon as daemon_module
    from gatewayd.ingest.parsers import POOL
    from gatewayd.loopback.imap import start_imap_server
    from gatewayd.store.models import Ticket
    from tests.test_ingest_imap import text_mail

    async with start_imap_server({"support": "secret-1"}) as imap:
        await imap.append("support", text_mail("Frage", message_id="<w1@x>"))
        config = make_config(accounts=[{
            "name": "support", "address": "support@shop.example",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": imap.port, "security": "none",
                     "username": "support", "password": "secret-1", "poll_seconds": 1}}])
        async with daemon_module.start(config):
            for _ in range(600):
                if await Ticket.all().count():
                    break
                await asyncio.sleep(0.05)
            pids = POOL.pids()
            assert pids, "the mail was parsed in worker processes"
        assert POOL.pids() == []
    assert _alive(pids) == [], "parser workers outlived the daemon"


def _alive(pids: list[int]) -> list[int]:
    """The processes that still exist, zombies included."""
    return [pid for pid in pids if os.path.exists(f"/proc/{pid}")]
