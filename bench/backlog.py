"""Backlog benchmark: one Dovecot account with 20,000 unseen mails drained by gatewayd.

Prints, beside a baseline measured in the same run:
- the baseline: plain aioimaplib 2.0.3 (no gatewayd code) searching the same 20,000 mails and
  fetching their bodies 25 at a time with BODY.PEEK (no parsing, no database, no server action);
  and the same with each mail written to SQLite in a commit of its own (the durable baseline);
- gatewayd's drain (`AccountPoller.poll_now`: UID SEARCH, sizes 500 UIDs at a time, fetch,
  parse in the worker pool, route, one SQLite commit per batch, UID MOVE), on the same 20,000;
- the same drain on a 2,000-mail backlog: peak memory should not grow with the backlog;
- mails/s, CPU ms per mail (the process and its parser workers) and peak RSS (the process plus
  each parser worker's peak; Dovecot is not counted), and the most UIDs any command named.

The mails are written straight into the Dovecot Maildir (seconds for 20,000; APPEND would take
one round trip each). Needs root and Debian's dovecot-imapd (gatewayd.loopback.dovecot).
Run: `python bench/backlog.py [--mails 20000] [--small 2000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import platform
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
WORDS = ("Hallo Bestellung Lieferung Paket Rechnung Rücksendung bitte danke Frage Artikel Größe "
         "Farbe Versand gestern heute leider Kundenservice Problem defekt Umtausch Grüße "
         "order delivery parcel invoice thanks question").split()


def make_mail(n: int, rng: random.Random) -> bytes:
    """Mostly short plain text, some HTML, one in twenty with a small PDF."""
    head = (f"From: Kunde {n} <kunde{rng.randint(1, 500)}@example.org>\r\n"
            f"To: support@shop.example\r\nSubject: Frage {n} zur Bestellung\r\n"
            f"Message-ID: <backlog-{n}@example.org>\r\n"
            "Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n")
    text = "\r\n".join(" ".join(rng.choice(WORDS) for _ in range(12))
                       for _ in range(rng.randint(5, 40)))
    kind = rng.random()
    if kind < 0.75:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text).encode()
    if kind < 0.95:
        return (head + "Content-Type: text/html; charset=utf-8\r\n\r\n<html><body><p>"
                + text.replace("\r\n", "</p><p>") + "</p></body></html>").encode()
    pdf = "JVBERi0xLjQK" * rng.randint(500, 3000)
    return (head + 'Content-Type: multipart/mixed; boundary="m"\r\n\r\n--m\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n--m\r\n"
            'Content-Type: application/pdf; name="beleg.pdf"\r\n'
            "Content-Transfer-Encoding: base64\r\n\r\n" + pdf + "\r\n--m--\r\n").encode()


def _vm_hwm_kib(pid: int) -> int:
    with contextlib.suppress(OSError, AttributeError):
        status = Path(f"/proc/{pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return 0


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


# ------------------------------------------------------------------------------ phases


async def phase_baseline(port: int, user: str, password: str,
                         durable: Path | None = None) -> dict[str, Any]:
    """Plain aioimaplib: search, then BODY.PEEK[] 25 at a time (mails stay unseen). With
    `durable`, each mail is also written to SQLite in a commit of its own (fsync'd): the
    baseline for durable work."""
    import sqlite3

    import aioimaplib

    db = None
    if durable is not None:
        db = sqlite3.connect(durable / "durable.sqlite3", isolation_level=None)
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("CREATE TABLE mail (uid INTEGER PRIMARY KEY, raw BLOB)")
    cpu0, started = _cpu_seconds(), time.perf_counter()
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=60)
    await client.wait_hello_from_server()
    await client.login(user, password)
    await client.select("INBOX")
    response = await client.uid_search("UNSEEN", charset=None)
    uids = [int(u) for line in response.lines for u in bytes(line).split() if u.isdigit()]
    fetched = size = 0
    for start in range(0, len(uids), 25):
        batch = uids[start:start + 25]
        response = await client.uid("fetch", f"{batch[0]}:{batch[-1]}", "(UID BODY.PEEK[])")
        literals = [line for line in response.lines if isinstance(line, bytearray)]
        fetched += len(literals)
        size += sum(len(x) for x in literals)
        if db is not None:
            for uid, raw in zip(batch, literals, strict=False):
                db.execute("BEGIN")
                db.execute("INSERT INTO mail VALUES (?, ?)", (uid, bytes(raw)))
                db.execute("COMMIT")
    await client.logout()
    elapsed = time.perf_counter() - started
    return {"mails": fetched, "bytes": size, "seconds": elapsed,
            "cpu_seconds": _cpu_seconds() - cpu0, "largest_uid_set": 25,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


async def phase_drain(port: int, user: str, password: str, workdir: Path) -> dict[str, Any]:
    """gatewayd's drain into a fresh SQLite database, with the `gatewayd init` configuration."""
    from gatewayd.config import config_from_dict
    from gatewayd.daemon import event_hooks
    from gatewayd.ingest.imap_protocol import GatewayImapProtocol
    from gatewayd.ingest.parsers import POOL
    from gatewayd.ingest.poller import AccountPoller
    from gatewayd.runtime import Runtime
    from gatewayd.store.db import open_database
    from gatewayd.store.models import InboundReceipt
    from gatewayd.store.tickets import TicketStore

    sys.path.insert(0, str(ROOT))
    from tests.conftest import skeleton_data

    data = skeleton_data()
    data.update({
        "database_url": f"sqlite://{workdir / 'bench.sqlite3'}",
        "data_dir": str(workdir / "data"),
        "templates_dir": str(ROOT / "gatewayd" / "skeleton" / "templates"),
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789abcdef"]},
        "accounts": [{
            "name": "support", "address": "support@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": port, "security": "none", "username": user,
                     "password": password},
        }],
    })
    config = config_from_dict(data, workdir / "gatewayd.toml")
    largest = 0
    original = GatewayImapProtocol.send

    def counting(self: Any, line: str, scrub: str | None = None) -> None:
        nonlocal largest
        match = re.match(r"\S+ UID \w+ ([\d:,]+)", line)
        if match:
            named = sum(int(b or a) - int(a) + 1 for a, _, b in
                        (part.partition(":") for part in match.group(1).split(",")))
            largest = max(largest, named)
        original(self, line, scrub)

    GatewayImapProtocol.send = counting  # type: ignore[method-assign]
    peak_workers = 0
    async with open_database(config.database_url):
        runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
        account = config.account("support")
        assert account is not None
        cpu0, started = _cpu_seconds(), time.perf_counter()
        handled = await AccountPoller(runtime, account, asyncio.Event()).poll_now()
        elapsed = time.perf_counter() - started
        imported = await InboundReceipt.all().count()
        for pid in POOL.pids():
            peak_workers += _vm_hwm_kib(pid)
    POOL.shutdown()  # reaps the workers: their CPU time shows in RUSAGE_CHILDREN
    return {"mails": imported, "handled": handled, "seconds": elapsed,
            "cpu_seconds": _cpu_seconds() - cpu0, "largest_uid_set": largest,
            "peak_rss_mb": (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
                            + peak_workers) / 1024}


# ------------------------------------------------------------------------------ orchestration


def run_phase(*args: str) -> dict[str, Any]:
    done = subprocess.run([sys.executable, __file__, *args], check=False, capture_output=True,
                          text=True, cwd=ROOT)
    if done.returncode != 0:
        raise SystemExit(f"phase {args[1]} failed:\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def _machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    import os

    load = os.getloadavg()[0]
    return (f"{model}, {os.cpu_count()} cores (load {load:.1f} at start), "
            f"Python {platform.python_version()}")


def _dovecot_version() -> str:
    from gatewayd.loopback.dovecot import DOVECOT

    done = subprocess.run([DOVECOT, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=20_000)
    parser.add_argument("--small", type=int, default=2_000)
    parser.add_argument("--phase", choices=["baseline", "durable", "drain"],
                        help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--user", help=argparse.SUPPRESS)
    parser.add_argument("--password", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase in ("baseline", "durable"):
        durable = Path(args.workdir) if args.phase == "durable" else None
        print(json.dumps(asyncio.run(phase_baseline(args.port, args.user, args.password,
                                                    durable))))
        return
    if args.phase == "drain":
        print(json.dumps(asyncio.run(phase_drain(args.port, args.user, args.password,
                                                 Path(args.workdir)))))
        return

    from gatewayd.loopback.dovecot import dovecot_server, unavailable

    reason = unavailable()
    if reason:
        raise SystemExit(f"bench/backlog.py {reason}")
    print(f"backlog bench, {time.strftime('%Y-%m-%d %H:%M')}, {_machine()}, "
          f"Dovecot {_dovecot_version()}")
    rows: list[tuple[str, dict[str, Any]]] = []
    with dovecot_server() as dovecot:
        started = time.perf_counter()
        rng = random.Random(11)
        dovecot.deliver_files("big", (make_mail(n, rng) for n in range(args.mails)))
        dovecot.deliver_files("small", (make_mail(n, rng) for n in range(args.small)))
        print(f"wrote {args.mails:,} + {args.small:,} mails into the Maildirs in "
              f"{time.perf_counter() - started:.1f} s")
        common = ["--port", str(dovecot.port), "--password", dovecot.password]
        rows.append((f"baseline: plain aioimaplib, {args.mails:,}",
                     run_phase("--phase", "baseline", "--user", "big", *common)))
        with tempfile.TemporaryDirectory() as workdir:
            rows.append((f"baseline + 1 fsync'd commit/mail, {args.mails:,}",
                         run_phase("--phase", "durable", "--user", "big", "--workdir",
                                   workdir, *common)))
        for user, count in (("big", args.mails), ("small", args.small)):
            with tempfile.TemporaryDirectory() as workdir:
                rows.append((f"gatewayd drain, {count:,}",
                             run_phase("--phase", "drain", "--user", user, "--workdir",
                                       workdir, *common)))
    print()
    print(f"{'':<40} {'mails':>7} {'seconds':>8} {'mails/s':>8} {'CPU ms/mail':>12} "
          f"{'peak RSS MB':>12} {'max UIDs/cmd':>13}")
    for name, r in rows:
        print(f"{name:<40} {r['mails']:>7,} {r['seconds']:>8.1f} {r['mails'] / r['seconds']:>8.0f}"
              f" {r['cpu_seconds'] * 1000 / max(r['mails'], 1):>12.2f} "
              f"{r['peak_rss_mb']:>12.0f} {r['largest_uid_set']:>13}")
    big = rows[2][1]
    if big["mails"] != args.mails:
        raise SystemExit(f"gatewayd imported {big['mails']} of {args.mails} mails")


if __name__ == "__main__":
    main()
