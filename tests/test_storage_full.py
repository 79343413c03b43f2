"""A full disk is the machine's fault, never the mail's: /healthz answers 503 with the reason, no
mail is counted as failing or quarantined, the account backs off and resumes when space is back.

The disk is really full: the database or the data directory lives on a small tmpfs mounted for
the test and filled to the last byte with a file, which is removed to give the space back (root
can mount here; elsewhere these tests skip, saying so). The classification test needs no root: it
takes SQLite's real "database or disk is full" from a database held small with PRAGMA
max_page_count, and a real ENOSPC from writing to /dev/full.
"""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Callable, Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs
from tortoise import connections
from tortoise.exceptions import IntegrityError

from gatewayd import daemon
from gatewayd.config import Config
from gatewayd.loopback.imap import LoopbackImap, start_imap_server
from gatewayd.store.db import open_database
from gatewayd.store.faults import storage_fault
from gatewayd.store.models import InboundReceipt, Quarantine, Ticket
from tests.conftest import until
from tests.test_ingest_imap import text_mail

POISON_LINES = ["From: a@example.org", "Subject: poison",
                'Content-Type: multipart/mixed; boundary="b0"', ""]
for _i in range(80):  # nested too deep to parse: quarantined once space is back
    POISON_LINES += [f"--b{_i}", f'Content-Type: multipart/mixed; boundary="b{_i + 1}"', ""]
POISON = "\r\n".join([*POISON_LINES, "--b80--", ""]).encode()


def with_attachment(subject: str, message_id: str) -> bytes:
    return (f"From: Kunde <kunde@example.org>\r\nTo: support@shop.example\r\nSubject: {subject}"
            f"\r\nMessage-ID: {message_id}\r\nMIME-Version: 1.0\r\n"
            'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\nAnbei die Rechnung.\r\n--m\r\n"
            'Content-Type: application/pdf; name="rechnung.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n"
            + "JVBERi0xLjQK" * 400 + "\r\n--m--\r\n").encode()


class SmallDisk:
    """A tmpfs of a few MB; `fill()` takes every free byte, `free()` gives it back."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.filler = path / "filler"

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as handle:
            try:
                while True:
                    handle.write(b"\0" * 4096)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC

    def free(self) -> None:
        self.filler.unlink()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (a really full disk); the classification "
                    "test covers the errors without it")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount)],
                          capture_output=True, check=False)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield SmallDisk(mount)
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)


@pytest.fixture
async def imap() -> AsyncIterator[LoopbackImap]:
    async with start_imap_server({"support": "secret-1"}) as server:
        yield server


def account(port: int) -> dict[str, Any]:
    # max_attempts = 1: a failure counted against a mail would quarantine it at once.
    return {"name": "support", "address": "support@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": port, "security": "none",
                     "username": "support", "password": "secret-1", "poll_seconds": 1,
                     "max_attempts": 1}}


async def _full_disk_run(config: Config, imap: LoopbackImap, disk: SmallDisk,
                         kind: str) -> tuple[dict[str, Any], list[MutableMapping[str, Any]]]:
    """Start the daemon, fill the disk, deliver the mails; wait for /healthz 503 and two
    retries; give the space back; wait until everything is in. Returns the 503 body and the
    log events."""
    with capture_logs() as logs:
        async with daemon.start(config) as runtime, httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10
        ) as http:

            async def idle() -> bool:
                health = runtime.health.get("support")
                return health is not None and health.state == "idle"

            await until(idle, 30, "the account connected and idle")
            disk.fill()
            await _fill_inbox(imap)  # pushed to the account in IDLE

            async def unhealthy() -> bool:
                response = await http.get("/healthz")
                retries = [e for e in logs if e["event"].startswith("storage full")]
                return response.status_code == 503 and len(retries) >= 2

            await until(unhealthy, 30, "/healthz 503 and two retries")
            full = (await http.get("/healthz")).json()
            # Not the mails' fault: nothing quarantined, every mail still unseen on the server.
            assert await Quarantine.all().count() == 0
            assert len(await imap.uids("support")) == 4
            for uid in await imap.uids("support"):
                assert "\\Seen" not in await imap.flags("support", uid)
            while_full = list(logs)
            disk.free()

            async def recovered() -> bool:
                response = await http.get("/healthz")
                return (response.status_code == 200 and await imap.uids("support") != []
                        and await Ticket.all().count() == 3
                        and await Quarantine.all().count() == 1)

            await until(recovered, 60, "import resumed once space was back")
            assert (await http.get("/healthz")).json()["storage"] == []
            assert await InboundReceipt.all().count() == 4
    assert full["status"] == "storage full"
    assert [p["kind"] for p in full["storage"]] == [kind]
    view = next(a for a in full["accounts"] if a["account"] == "support")
    assert view["state"] == "storage_full" and not view["healthy"]
    # While the disk was full, no log line called a mail failing or quarantined; after, the
    # account said it resumed.
    events = [e["event"] for e in while_full]
    assert not [e for e in events if "quarantined" in e or e.startswith("mail failed")], events
    assert any(e["event"].startswith("storage writable again") for e in logs[len(while_full):])
    return full, logs


async def _fill_inbox(imap: LoopbackImap) -> None:
    await imap.append("support", text_mail("Frage 1", message_id="<f1@x>"))
    await imap.append("support", with_attachment("Rechnung", "<f2@x>"))
    await imap.append("support", POISON)
    await imap.append("support", text_mail("Frage 3", message_id="<f3@x>"))


async def test_full_database_disk_is_503_and_never_the_mails_fault(
    small_disk: SmallDisk, imap: LoopbackImap, make_config: Callable[..., Config],
    sqlite_template: Path, tmp_path: Path,
) -> None:
    db = small_disk.path / "gatewayd.sqlite3"
    with sqlite3.connect(sqlite_template) as source, sqlite3.connect(db) as target:
        source.backup(target)
    config = make_config(database_url=f"sqlite://{db}", data_dir=str(tmp_path / "data"),
                         accounts=[account(imap.port)])
    full, _ = await _full_disk_run(config, imap, small_disk, "database")
    assert "database or disk is full" in full["storage"][0]["reason"]


async def test_full_data_dir_is_503_and_never_the_mails_fault(
    small_disk: SmallDisk, imap: LoopbackImap, make_config: Callable[..., Config],
    tmp_path: Path,
) -> None:
    data_dir = small_disk.path / "data"
    data_dir.mkdir()
    config = make_config(database_url=f"sqlite://{tmp_path / 'gw.sqlite3'}",
                         data_dir=str(data_dir), accounts=[account(imap.port)])
    full, _ = await _full_disk_run(config, imap, small_disk, "data_dir")
    assert "No space left on device" in full["storage"][0]["reason"]
    assert any(data_dir.rglob("*.eml")), "the poison mail's copy is in the quarantine folder"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _dev_full_error() -> OSError:
    try:
        with open("/dev/full", "wb", buffering=0) as handle:
            handle.write(b"x")
    except OSError as exc:
        return exc
    raise AssertionError("/dev/full took a write")


async def test_storage_faults_are_told_from_mail_faults(tmp_path: Path) -> None:
    """Real errors: SQLite's "database or disk is full" through tortoise (the database held to
    a few pages with PRAGMA max_page_count) and ENOSPC from /dev/full."""
    async with open_database(f"sqlite://{tmp_path / 'small.sqlite3'}"):
        client = connections.get("default")
        pages = (await client.execute_query("PRAGMA page_count"))[1][0][0]
        await client.execute_script(f"PRAGMA max_page_count = {pages + 1}")
        with pytest.raises(Exception) as full:
            for n in range(500):
                await Quarantine.create(account="a", folder="f", uidvalidity=1, uid=n,
                                        sha256="0" * 64, size=1, reason="x" * 4000, attempts=1)
        with pytest.raises(IntegrityError) as duplicate:
            await InboundReceipt.create(account="a", folder="f", uidvalidity=1, uid=1,
                                        content_hash="h", outcome="imported")
            await InboundReceipt.create(account="a", folder="f", uidvalidity=1, uid=1,
                                        content_hash="h", outcome="imported")
    fault = storage_fault(full.value)
    assert fault is not None and fault.kind == "database", repr(full.value)
    assert "database or disk is full" in fault.reason
    assert storage_fault(duplicate.value) is None

    fault = storage_fault(_dev_full_error())
    assert fault is not None and fault.kind == "data_dir"
    # A mail's own errors are no storage fault.
    assert storage_fault(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "bad")) is None
    assert storage_fault(ValueError("no such charset")) is None
    assert storage_fault(FileNotFoundError(errno.ENOENT, "gone")) is None
    assert shutil.disk_usage(tmp_path).free > 0


async def test_a_form_post_on_a_full_disk_is_503_and_healthz_says_so(
    small_disk: SmallDisk, make_config: Callable[..., Config], sqlite_template: Path,
    tmp_path: Path,
) -> None:
    """A shop form posted while the database's disk is full: 503 with Retry-After (the shop
    or browser tries again), never a 500 or a dropped connection; /healthz is 503 "storage
    full" until a post succeeds again once there is room."""
    db = small_disk.path / "gatewayd.sqlite3"
    with sqlite3.connect(sqlite_template) as source, sqlite3.connect(db) as target:
        source.backup(target)
    config = make_config(database_url=f"sqlite://{db}", data_dir=str(tmp_path / "data"))
    form = {"email": "kunde@example.org", "name": "Kunde", "subject": "Frage",
            "message": "Wo bleibt meine Bestellung? " * 200}
    async with daemon.start(config) as runtime, httpx.AsyncClient(
        base_url=f"http://127.0.0.1:{runtime.http_port}", timeout=10,
        headers={"Accept": "application/json"},
    ) as http:
        small_disk.fill()
        refused = await http.post("/forms/contact", data=form)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "storage full"
        assert refused.headers["retry-after"] == "60"
        health = await http.get("/healthz")
        assert health.status_code == 503 and health.json()["status"] == "storage full"
        assert [p["source"] for p in health.json()["storage"]] == ["http"]
        small_disk.free()
        accepted = await http.post("/forms/contact", data=form)
        assert accepted.status_code == 201, accepted.text
        assert (await http.get("/healthz")).status_code == 200
    assert ticket_count(db) == 1


def ticket_count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM ticket").fetchone()[0])
