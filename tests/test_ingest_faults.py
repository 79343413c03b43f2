"""Ingest under faults, against real servers: a backlog past the old 1,000-line failure point
drains chunk by chunk on Dovecot while /healthz and `gatewayd status` show its size and rate; a
kicked connection, a Dovecot restart and a server that stops answering in the middle of an
import are recovered from with nothing lost or doubled. (The account's supervisor, which finds
a stall outside IMAP: tests/test_ingest_supervisor.py.)

The daemon runs in-process (`daemon.start`: uvicorn, leases, pollers) so /healthz is read over
HTTP while the fault is on. Recovery times are printed (`pytest -s`) for docs/reliability.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd import daemon
from gatewayd.config import load_config
from gatewayd.ingest import drain as drain_module
from gatewayd.ingest.imap_protocol import GatewayImapProtocol
from gatewayd.loopback.dovecot import DovecotServer, dovecot_server
from gatewayd.loopback.ports import free_port
from gatewayd.runtime import Runtime
from gatewayd.store.models import InboundReceipt, Message, Ticket
from tests.conftest import TOKEN, fresh_user, skeleton_data, until
from tests.test_config import to_toml
from tests.test_ingest_imap import text_mail


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def dove_account(user: str, port: int, **imap: Any) -> dict[str, Any]:
    settings = {"host": "127.0.0.1", "port": port, "security": "none", "username": user,
                "password": "dove-secret", "poll_seconds": 300, **imap}
    return {"name": user, "address": f"{user}@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"}, "imap": settings}


def backlog_mails(count: int, tag: str) -> list[bytes]:
    return [text_mail(f"Frage {n}", f"Wo bleibt Bestellung {n}?", sender=f"k{n % 97}@example.org",
                      message_id=f"<{tag}-{n}@example.org>") for n in range(count)]


async def receipts(account: str) -> int:
    return await InboundReceipt.filter(account=account).count()


async def assert_each_mail_once(account: str, count: int, tag: str) -> None:
    """Nothing lost, nothing doubled: one receipt, one message, one ticket per mail. (Not every
    receipt need say its server action was done: a MOVE the server carried out just before the
    connection broke cannot be confirmed; the folder counts show where the mail is.)"""
    assert await InboundReceipt.filter(account=account).count() == count
    ids = await Message.filter(direction="in", message_id__startswith=f"<{tag}-").values_list(
        "message_id", flat=True)
    assert len(ids) == count and len(set(ids)) == count
    assert await Ticket.filter(account=account).count() == count


def folder_count(dovecot: DovecotServer, user: str, folder: str) -> int:
    root = dovecot.maildir(user, folder)
    return sum(len(list((root / sub).iterdir())) for sub in ("cur", "new")
               if (root / sub).exists())


def dovecot_site(directory: Path, db_url: str, user: str, port: int, **imap: Any) -> Path:
    """A config file for one Dovecot account, HTTP on a free port (for `status` and daemons
    run as a process)."""
    data = skeleton_data()
    data.update(
        database_url=db_url, data_dir=str(directory / "data"),
        templates_dir=str(Path(str(resources.files("gatewayd") / "skeleton" / "templates"))),
        http={"listen": f"127.0.0.1:{free_port()}", "api_tokens": [TOKEN]},
        accounts=[dove_account(user, port, **imap)],
    )
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "gatewayd.toml"
    path.write_text(to_toml(data), "utf-8")
    return path


@pytest.fixture
def site(tmp_path: Path, db_url: str) -> Callable[..., Any]:
    """`async with site(user, port, **imap) as (runtime, http)`: the whole daemon in-process
    for one Dovecot account, from a config file (so `gatewayd status` can read it too)."""

    @contextlib.asynccontextmanager
    async def start(user: str, port: int, **imap: Any) -> AsyncIterator[
            tuple[Runtime, httpx.AsyncClient]]:
        path = dovecot_site(tmp_path, db_url, user, port, **imap)
        async with daemon.start(load_config(path)) as runtime, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10
        ) as http:
            yield runtime, http

    return start


async def account_view(http: httpx.AsyncClient, name: str) -> dict[str, Any]:
    body = (await http.get("/healthz")).json()
    return next(a for a in body["accounts"] if a["account"] == name)


class HealthWatch:
    """Samples one account's /healthz view every 50 ms while a fault is on."""

    def __init__(self, http: httpx.AsyncClient, name: str) -> None:
        self.http, self.name = http, name
        self.seen: list[dict[str, Any]] = []
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            self.seen.append(await account_view(self.http, self.name))
            await asyncio.sleep(0.05)

    async def __aenter__(self) -> HealthWatch:
        self._task = asyncio.create_task(self._run())
        return self

    async def __aexit__(self, *exc: Any) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def states(self) -> list[str]:
        return [v["state"] for v in self.seen]


# ------------------------------------------------------------------------------ backlog

BACKLOG = 1_500  # past the old ~1,000-line failure point; three chunks of at most 500 UIDs


async def test_backlog_drains_chunk_by_chunk_oldest_first_and_shows_size_and_rate(
    dovecot: DovecotServer, site: Callable[..., Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """1,500 unseen mails on Dovecot: no command names more than 500 UIDs, sizes are fetched
    chunk by chunk in UID order, /healthz and `gatewayd status` show the backlog and the import
    rate while it drains, and every mail ends in exactly one ticket. (The 20,000-mail run with
    memory figures is bench/backlog.py.)"""
    user = fresh_user("backlog")
    dovecot.deliver_files(user, backlog_mails(BACKLOG, user))
    sent: list[str] = []
    original = GatewayImapProtocol.send

    def spy(self: GatewayImapProtocol, line: str, scrub: str | None = None) -> None:
        sent.append(line)
        original(self, line, scrub)

    monkeypatch.setattr(GatewayImapProtocol, "send", spy)
    async with site(user, dovecot.port) as (runtime, http), HealthWatch(http, user) as watch:
        await until(lambda: _draining(http, user), 60, "/healthz showing a backlog and rate")
        # Hold the drain still (the server stops answering) to read `status` mid-way.
        pids = dovecot.freeze(user)
        try:
            assert runtime.config.source is not None
            status = await asyncio.to_thread(_status_json, runtime.config.source)
        finally:
            dovecot.thaw(pids)
        row = next(a for a in status["accounts"] if a["account"] == user)
        assert status["daemon"] == "answering"
        assert 0 < row["backlog"] < BACKLOG and row["import_rate"] > 0, row
        await until(lambda: _drained(http, user, dovecot), 240, "the backlog drained")
        await assert_each_mail_once(user, BACKLOG, user)
        final = await account_view(http, user)
    assert final["backlog"] == 0 and final["imported"] == BACKLOG and final["healthy"]
    assert any(v["backlog"] > 0 and v["import_rate"] > 0 for v in watch.seen)
    assert folder_count(dovecot, user, "INBOX") == 0
    assert folder_count(dovecot, user, "Imported") == BACKLOG

    named = [_uids_named(line) for line in sent]
    assert max(named) <= 500, max(named)
    size_fetches = [line for line in sent if "RFC822.SIZE" in line]
    assert [re.search(r"FETCH (\S+)", s).group(1) for s in size_fetches] == [  # type: ignore
        "1:500", "501:1000", "1001:1500"]  # oldest first
    body_fetches = [line for line in sent if "BODY.PEEK[]" in line]
    assert max(_uids_named(line) for line in body_fetches) <= drain_module.FETCH_BATCH


def _uids_named(line: str) -> int:
    """How many UIDs a command line names (0 for commands without a UID set)."""
    match = re.match(r"\S+ UID (?:FETCH|MOVE|STORE|COPY|EXPUNGE) ([\d:,]+)", line)
    if not match:
        return 0
    total = 0
    for part in match.group(1).split(","):
        first, _, last = part.partition(":")
        total += int(last or first) - int(first) + 1
    return total


async def _draining(http: httpx.AsyncClient, user: str) -> bool:
    view = await account_view(http, user)
    return bool(view["backlog"] > 0 and view["import_rate"] > 0)


async def _drained(http: httpx.AsyncClient, user: str, dovecot: DovecotServer) -> bool:
    view = await account_view(http, user)
    return bool(view["backlog"] == 0 and view["imported"] >= BACKLOG
                and view["state"] == "idle")


def _status_json(config_path: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "gatewayd", "--config", str(config_path),
                           "status", "--json"], capture_output=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr.decode()
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# ------------------------------------------------------------------------------ lost connections

IMPORT = 600  # enough that the fault lands in the middle of the import


async def _fault_mid_import(dovecot: DovecotServer, site: Callable[..., Any], user: str,
                            fault: Callable[[], None], name: str,
                            **imap: Any) -> tuple[HealthWatch, float]:
    """Import IMPORT mails; apply `fault` after the first ones are in; return what /healthz
    showed meanwhile and the seconds from the fault to the first mail imported after it."""
    dovecot.deliver_files(user, backlog_mails(IMPORT, user))
    async with site(user, dovecot.port, **imap) as (runtime, http), \
            HealthWatch(http, user) as watch:
        await until(lambda: _at_least(user, 50), 60, "the import under way")
        at_fault = time.monotonic()
        await asyncio.to_thread(fault)
        before = await receipts(user)
        assert before < IMPORT, "the import ended before the fault: use more mail"
        health = runtime.health[user]
        await until(lambda: _resumed(health, user, before), 60, "the import resumed")
        recovery = time.monotonic() - at_fault
        print(f"\n{name}: first mail imported {recovery:.1f} s after the fault")
        await until(lambda: _at_least(user, IMPORT), 120, "every mail imported")
        await until(lambda: _idle(http, user), 30, "the account idle again")
        await assert_each_mail_once(user, IMPORT, user)
    assert folder_count(dovecot, user, "INBOX") == 0
    assert folder_count(dovecot, user, "Imported") == IMPORT
    return watch, recovery


async def _at_least(user: str, count: int) -> bool:
    return await receipts(user) >= count


async def _resumed(health: Any, user: str, before: int) -> bool:
    # A new session polls (state went through backoff) and commits mail.
    return health.state == "polling" and await receipts(user) > before + drain_module.FETCH_BATCH


async def _idle(http: httpx.AsyncClient, user: str) -> bool:
    view = await account_view(http, user)
    return bool(view["state"] == "idle" and view["healthy"])


async def test_kicked_connection_mid_import_resumes_and_loses_or_doubles_nothing(
    dovecot: DovecotServer, site: Callable[..., Any]
) -> None:
    user = fresh_user("kick")
    watch, _ = await _fault_mid_import(dovecot, site, user, lambda: dovecot.kick(user),
                                       "doveadm kick")
    lost = [v for v in watch.seen if v["state"] == "backoff"]
    assert lost, f"/healthz never showed the loss: {set(watch.states())}"
    assert any(re.search(r"closed|lost|BYE", v["last_error"] or "") for v in lost), lost[0]
    assert not lost[0]["healthy"]


async def test_dovecot_restart_mid_import_resumes_and_loses_or_doubles_nothing(
    site: Callable[..., Any]
) -> None:
    with dovecot_server() as own:  # this test restarts its server: not the shared one
        user = fresh_user("restart")
        watch, _ = await _fault_mid_import(own, site, user, own.restart, "Dovecot restart")
    errors = [v["last_error"] or "" for v in watch.seen if v["state"] == "backoff"]
    assert errors, f"/healthz never showed the outage: {set(watch.states())}"
    assert any("cannot connect" in e or "closed" in e or "lost" in e for e in errors), errors


async def test_server_that_stops_answering_mid_import_times_out_and_resumes(
    dovecot: DovecotServer, site: Callable[..., Any]
) -> None:
    """The user's imap process is SIGSTOPped: the connection stays open and nothing answers.
    The command in flight fails after timeout_seconds, /healthz says so, the account
    reconnects (Dovecot starts a new process; it is thawed once the timeout has shown)."""
    user = fresh_user("hang")
    dovecot.deliver_files(user, backlog_mails(IMPORT, user))
    async with site(user, dovecot.port, timeout_seconds=1) as (_, http), \
            HealthWatch(http, user) as watch:
        await until(lambda: _at_least(user, 50), 60, "the import under way")
        pids = dovecot.freeze(user)
        at_fault = time.monotonic()
        try:
            await until(lambda: _timed_out(watch), 20, "/healthz showing the timeout")
            shown = time.monotonic() - at_fault
        finally:
            dovecot.thaw(pids)
        print(f"\nserver stopped answering: shown in /healthz after {shown:.1f} s")
        await until(lambda: _at_least(user, IMPORT), 120, "every mail imported")
        await until(lambda: _idle(http, user), 30, "the account idle again")
        await assert_each_mail_once(user, IMPORT, user)
    assert folder_count(dovecot, user, "INBOX") == 0
    assert folder_count(dovecot, user, "Imported") == IMPORT


async def _timed_out(watch: HealthWatch) -> bool:
    return any(v["state"] == "backoff" and "no answer within 1 s" in (v["last_error"] or "")
               for v in watch.seen)
