"""Parsing raw mail into InboundMail: layouts, charsets, attachments, reply separation."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.ingest.parse import MAX_PARTS, ParseError, parse_mail
from gatewayd.ingest.text import clean_text, decode_header_value

MAILS = Path(__file__).parent / "mails"


def load(name: str) -> bytes:
    return (MAILS / name).read_bytes()


def test_apple_layout_keeps_text_after_the_image() -> None:
    mail = parse_mail(load("apple_layout.eml"))
    assert "Hallo, hier ist das Foto" in mail.text
    assert "Und hier der Text nach dem Bild" in mail.text
    assert mail.text.index("Hallo") < mail.text.index("Und hier")
    assert "Grüße, Jane" in mail.text
    assert [a.filename for a in mail.attachments] == ["schaden.png"]
    assert mail.attachments[0].content.startswith(b"\x89PNG")


def test_attachment_type_not_in_the_manuals_list_is_rejected_with_reason() -> None:
    mail = parse_mail(load("apple_layout.eml"))
    assert [r.filename for r in mail.rejected] == ["virus.exe"]
    assert "not in the allowed attachment types" in mail.rejected[0].reason
    assert mail.rejected[0].size > 0


def test_html_only_becomes_text_and_keeps_html_and_reads_latin1_as_cp1252() -> None:
    mail = parse_mail(load("html_only.eml"))
    assert mail.html is not None and "<p>" in mail.html
    assert "wann kommt meine Bestellung?" in mail.text
    assert "<p>" not in mail.text
    assert "€ 50" in mail.text  # 0x80 declared iso-8859-1 is cp1252's euro sign
    assert "Grüße" in mail.text
    assert mail.subject == "Frage zur Lieferung"


def test_raw_8bit_headers_are_repaired_without_surrogates() -> None:
    mail = parse_mail(load("8bit_headers.eml"))
    assert mail.from_name == "Müller"
    assert mail.subject == "Prüfung der Rücksendung"
    assert "Rücksendung ist unterwegs" in mail.text
    for value in (mail.from_name, mail.subject, mail.text):
        value.encode("utf-8")  # would raise on a lone surrogate


def test_broken_mime_truncated_base64_does_not_raise() -> None:
    mail = parse_mail(load("broken_mime.eml"))
    assert "Der Text vor dem kaputten Anhang." in mail.text
    assert [a.filename for a in mail.attachments] == ["rechnung.pdf"]


def test_headers_and_thread_ids() -> None:
    raw = (b"From: a@b.example\r\nTo: Support <support@shop.example>, x@y.example\r\n"
           b"Cc: c@d.example\r\nSubject: Re: hi\r\nMessage-ID: <m2@b.example>\r\n"
           b"In-Reply-To: <m1@shop.example>\r\nReferences: <m0@b.example>\r\n <m1@shop.example>\r\n"
           b"\r\nok\r\n")
    mail = parse_mail(raw)
    assert mail.message_id == "<m2@b.example>"
    assert mail.in_reply_to == "<m1@shop.example>"
    assert mail.references == ("<m0@b.example>", "<m1@shop.example>")
    assert mail.to == ("support@shop.example", "x@y.example")
    assert mail.cc == ("c@d.example",)
    assert len(mail.content_hash) == 64


def test_latest_reply_is_separated_and_full_text_kept() -> None:
    raw = (b"From: a@b.example\r\nSubject: Re: Ihre Anfrage\r\nContent-Type: text/plain; "
           b"charset=utf-8\r\n\r\nDanke, das hilft mir.\r\n\r\n"
           b"Am 20.11.2026 um 10:00 schrieb Shop Support <support@shop.example>:\r\n"
           b"> Bitte senden Sie uns die Auftragsnummer.\r\n")
    mail = parse_mail(raw)
    assert mail.reply_text is not None
    assert "Danke, das hilft mir." in mail.reply_text
    assert "Bitte senden Sie" not in mail.reply_text
    assert "Bitte senden Sie" in mail.text


def test_huge_encoded_word_header_is_cut_not_hung() -> None:
    word = "=?utf-8?b?" + "QUFB" * 50 + "?= "
    raw = ("From: a@b.example\r\nSubject: " + word * 20000 + "\r\n\r\nbody\r\n").encode()
    mail = parse_mail(raw)
    assert len(mail.subject) <= 1000


def test_thousands_of_nested_parts_raise_parse_error() -> None:
    depth = MAX_PARTS + 10
    lines = ["From: a@b.example", "Subject: nested", "MIME-Version: 1.0",
             'Content-Type: multipart/mixed; boundary="b0"', ""]
    for i in range(depth):
        lines += [f"--b{i}", f'Content-Type: multipart/mixed; boundary="b{i + 1}"', ""]
    lines += [f"--b{depth}", "Content-Type: text/plain", "", "x"]
    for i in range(depth, -1, -1):
        lines.append(f"--b{i}--")
    with pytest.raises(ParseError, match="pathological"):
        parse_mail("\r\n".join(lines).encode())


def test_clean_text_removes_surrogates_and_nul() -> None:
    assert clean_text("a\x00b\udcfcc") == "ab\ufffdc"
    assert decode_header_value("=?iso-8859-1?q?Gr=FC=DFe?=") == "Grüße"


def test_headers_only_mail_has_no_body() -> None:
    mail = parse_mail(load("apple_layout.eml"), headers_only=True)
    assert mail.headers_only and mail.text == "" and mail.attachments == ()
    assert mail.subject == "Foto vom Schaden"


async def test_parse_time_limit_kills_the_worker_and_the_pool_recovers() -> None:
    from gatewayd.ingest.parsers import ParseTimeout, parse_in_worker

    slow = b"From: a@b.example\r\nSubject: big\r\n\r\n" + b"x" * 30_000_000
    with pytest.raises(ParseTimeout):
        await parse_in_worker(slow, headers_only=False, limit=0.001)
    mail = await parse_in_worker(load("apple_layout.eml"), headers_only=False, limit=30)
    assert mail.subject == "Foto vom Schaden"


async def test_a_mail_whose_worker_dies_twice_fails_alone_and_the_batch_goes_on() -> None:
    """A worker killed under a mail (a crash, the OOM killer) gets the mail one more try in a
    fresh worker; the second death fails that mail (WorkerCrashed, quarantined by the
    pipeline), and the mails handed over with it (in the same worker's share too) are parsed."""
    import signal

    from gatewayd.ingest.parsers import POOL, WORKERS, WorkerCrashed, parse_in_worker

    slow = b"From: a@b.example\r\nSubject: big\r\n\r\n" + b"x" * 30_000_000
    good = load("apple_layout.eml")
    raws = [slow, *[good] * (2 * WORKERS - 1)]  # the slow mail shares its worker with a good one
    tasks = [asyncio.create_task(parse_in_worker(raw, headers_only=False, limit=120))
             for raw in raws]
    killed: set[int] = set()
    async with asyncio.timeout(120):  # a bound for a slow machine, not a speed figure
        while len(killed) < 2 and not tasks[0].done():
            await asyncio.sleep(0.01)
            for worker in POOL._workers:
                process, job = worker.process, worker.current
                if process is not None and job is not None and job.raw is slow and (
                        process.pid not in killed):
                    os.kill(process.pid, signal.SIGKILL)
                    killed.add(process.pid)
        with pytest.raises(WorkerCrashed):
            await tasks[0]
        for task in tasks[1:]:
            assert (await task).subject == "Foto vom Schaden"
    assert len(killed) == 2


async def test_shutdown_stops_a_long_parse_and_blames_no_mail() -> None:
    """Stopping the daemon ends a parse in progress at once; the mail is not quarantined (it
    stays unseen on the server for the next start), and the pool starts anew afterwards."""
    from gatewayd.ingest.parsers import POOL, ParserStopped
    from gatewayd.ingest.pipeline import parse_off_loop

    slow = b"From: a@b.example\r\nSubject: big\r\n\r\n" + b"x" * 30_000_000
    task = asyncio.create_task(parse_off_loop(slow, headers_only=False, limit=120))
    async with asyncio.timeout(120):  # a bound for a slow machine, not a speed figure
        for _ in range(6000):
            if POOL.pids(busy=True):
                break
            await asyncio.sleep(0.02)
        await asyncio.to_thread(POOL.shutdown)
        with pytest.raises(ParserStopped):
            await task
    mail = await parse_off_loop(load("apple_layout.eml"), headers_only=False, limit=30)
    assert mail.subject == "Foto vom Schaden"


DAEMON = """
from gatewayd.ingest import parsers

if __name__ == "__main__":
    parsers.POOL.start()
    print(parsers.POOL.pids()[0], flush=True)  # a worker's pid
    input()  # wait to be killed
"""


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for its reaper."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            return handle.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_parser_workers_end_when_the_daemon_is_killed(tmp_path: Path) -> None:
    """A SIGKILLed daemon (no systemd to kill its control group) leaves no parser behind."""
    import signal
    import subprocess
    import sys
    import time

    script = tmp_path / "daemon.py"
    script.write_text(DAEMON, encoding="utf-8")
    daemon = subprocess.Popen([sys.executable, str(script)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert daemon.stdout is not None
    worker = int(daemon.stdout.readline())
    assert _alive(worker)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait(timeout=30)
    deadline = time.monotonic() + 30  # a bound for a slow machine, not a speed figure
    while _alive(worker) and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = _alive(worker)
    if survived:
        os.kill(worker, signal.SIGKILL)  # leave nothing behind for the next test
    assert not survived, "the parser worker outlived its daemon"


async def test_a_fetched_batch_goes_to_the_workers_together(
    make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The poller hands each mail of a batch over on its own; they reach the workers as one
    hand-over per batch (one write of their raw bytes per worker), not one per mail."""
    from gatewayd.ingest import parsers
    from gatewayd.loopback.imap import start_imap_server
    from gatewayd.store.models import InboundReceipt
    from tests.test_ingest_imap import USERS, account, poll, running, text_mail

    handed: list[int] = []
    submit = parsers.POOL.submit

    def counting(items: list[tuple[bytes, bool]], limit: float) -> list[Any]:
        handed.append(len(items))
        return submit(items, limit)

    monkeypatch.setattr(parsers.POOL, "submit", counting)
    async with start_imap_server(USERS) as imap, running(
            make_config(accounts=[account("support", imap.port)])) as runtime:
        for n in range(30):
            await imap.append("support", text_mail(f"Frage {n}", message_id=f"<q{n}@x>"))
        assert await poll(runtime, "support") == 30
        assert await InboundReceipt.filter(outcome="imported").count() == 30
    assert sum(handed) == 30
    assert len(handed) <= 3, handed  # two fetched batches (25 + 5), not thirty hand-overs
