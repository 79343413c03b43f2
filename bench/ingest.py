"""Inbound mail benchmark: 2,000 mails of mixed size over 20 accounts on a loopback IMAP server.

Prints, side by side with a floor measured in the same run:
- end-to-end throughput (IMAP fetch → parse → route → SQLite commit → server move), mails/s;
- the floor: the same mails fetched with aioimaplib alone (`UID FETCH ... BODY.PEEK[]` in chunks
  of 25, one connection per account, 20 at once) and parsed with plain
  `mailparser.parse_from_bytes`, no gatewayd code at all;
- CPU ms per mail of the import (user + system time of the process and, for gatewayd, of its
  parser worker processes; the IMAP server runs in a process of its own and is not counted);
- mail-arrival-to-ticket latency with IDLE (p50 / p95): a mail is APPENDed while the account
  sits in IDLE, and the clock stops when its ticket is committed;
- peak RSS of each measured process including its parser worker processes.

Run: `python bench/ingest.py [--mails 2000] [--accounts 20] [--latency-mails 200] [--runs 3]`
(mail-parser comes with the test extras). Several runs print each run and the medians.
Targets: end-to-end ≥ 0.5 of the floor (stretch 0.7), ≤ 4 ms CPU per mail, IDLE arrival → ticket
p95 < 1 s, peak RSS < 300 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import json
import logging
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aioimaplib

PASSWORD = "bench-password"
ROOT = Path(__file__).resolve().parents[1]
WORDS = ("Hallo Bestellung Lieferung Paket Rechnung Rücksendung bitte danke Frage Artikel Größe "
         "Farbe Versand gestern heute morgen leider schnell Kundenservice Problem defekt "
         "Umtausch Grüße order delivery parcel invoice thanks question").split()


# ------------------------------------------------------------------------------ mails


def _text(rng: random.Random, size: int) -> str:
    out: list[str] = []
    length = 0
    while length < size:
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 14)))
        out.append(line)
        length += len(line) + 1
    return "\n".join(out)


def make_mail(i: int, rng: random.Random) -> bytes:
    """One realistic mail: 60 % plain, 25 % HTML, 15 % with a PDF attachment."""
    kind = rng.random()
    sender = f"kunde{rng.randint(1, 400)}@example.org"
    subject = rng.choice(["Frage zu meiner Bestellung", "Lieferung verspätet",
                          "Rücksendung", "Re: Ihre Anfrage", "Rechnung fehlt",
                          f"Auftrags-ID {rng.randint(1, 50)}"])
    head = (f"From: Kunde {i} <{sender}>\r\nTo: support@shop.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: <bench-{i}-{rng.random():.8f}@example.org>\r\n"
            f"Date: Mon, 23 Nov 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n")
    if kind < 0.60:
        body = _text(rng, rng.randint(500, 4000))
        return (head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + body + "\r\n").encode()
    if kind < 0.85:
        paragraphs = "".join(f"<p>{_text(rng, 300)}</p>\n" for _ in range(rng.randint(5, 40)))
        html = f"<html><body><div style='font-family:Arial'>{paragraphs}</div></body></html>"
        plain = _text(rng, 800)
        return (head + 'Content-Type: multipart/alternative; boundary="alt"\r\n\r\n'
                "--alt\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + plain +
                "\r\n--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html +
                "\r\n--alt--\r\n").encode()
    payload = base64.encodebytes(b"%PDF-1.4\n" + rng.randbytes(rng.randint(20_000, 300_000)))
    return (head + 'Content-Type: multipart/mixed; boundary="mix"\r\n\r\n'
            "--mix\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n" + _text(rng, 1000) +
            "\r\n--mix\r\nContent-Type: application/pdf; name=\"beleg.pdf\"\r\n"
            "Content-Disposition: attachment; filename=\"beleg.pdf\"\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + payload + b"\r\n--mix--\r\n"


# ------------------------------------------------------------------------------ IMAP helpers


_APPENDUID = re.compile(rb"APPENDUID (\d+) (\d+)")


class Appender:
    """An IMAP client that APPENDs mails as a mail server's delivery would."""

    def __init__(self, port: int, user: str) -> None:
        self.port, self.user = port, user
        self.client: aioimaplib.IMAP4 | None = None

    async def __aenter__(self) -> Appender:
        self.client = aioimaplib.IMAP4(host="127.0.0.1", port=self.port, timeout=60)
        await self.client.wait_hello_from_server()
        await self.client.login(self.user, PASSWORD)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.client is not None:
            await self.client.logout()

    async def append(self, raw: bytes) -> int:
        assert self.client is not None
        response = await self.client.append(raw, mailbox="INBOX")
        for line in response.lines:
            match = _APPENDUID.search(bytes(line))
            if match:
                return int(match.group(2))
        raise RuntimeError(f"APPEND gave no APPENDUID: {response}")


def _worker_pids() -> list[int]:
    if "gatewayd.ingest.parsers" not in sys.modules:
        return []
    from gatewayd.ingest.parsers import POOL

    if hasattr(POOL, "pids"):
        return POOL.pids()
    # gatewayd before 2026-12 (a ProcessPoolExecutor), so this bench can measure it too.
    return list(getattr(getattr(POOL, "_executor", None), "_processes", None) or {})


def peak_rss_mb() -> float:
    """Peak RSS (VmHWM) of this process plus that of each parser worker process: the daemon's
    whole footprint apart from the IMAP server."""
    total = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    for pid in _worker_pids():
        with contextlib.suppress(OSError):
            status = Path(f"/proc/{pid}/status").read_text()
            total += int(re.search(r"VmHWM:\s+(\d+)", status).group(1))  # type: ignore[union-attr]
    return total / 1024


def cpu_seconds() -> tuple[float, float]:
    """User + system CPU seconds of (this process, its parser workers): the running workers read
    from /proc, the children this process has reaped from getrusage."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    own = usage.ru_utime + usage.ru_stime
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    workers = usage.ru_utime + usage.ru_stime
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in _worker_pids():
        with contextlib.suppress(OSError, IndexError, ValueError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            workers += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
    return own, workers


def cpu_ms(before: tuple[float, float], mails: int) -> dict[str, float]:
    own, workers = cpu_seconds()
    own, workers = own - before[0], workers - before[1]
    return {"cpu_ms": (own + workers) * 1000 / max(1, mails),
            "cpu_ms_workers": workers * 1000 / max(1, mails)}


# ------------------------------------------------------------------------------ phases

_FETCHED = re.compile(rb"^\* \d+ FETCH .*UID (\d+)")
_LITERAL = re.compile(rb"^\* \d+ FETCH .*\{(\d+)\}$")


async def phase_floor(port: int, users: list[str]) -> dict[str, Any]:
    """The floor: aioimaplib and mail-parser alone, as a plain script would use them."""
    import mailparser

    logging.getLogger("mailparser").setLevel(logging.ERROR)  # its "not handled" warnings

    async def one(user: str) -> int:
        client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=60)
        await client.wait_hello_from_server()
        await client.login(user, PASSWORD)
        await client.select("INBOX")
        found = await client.uid_search("UNSEEN", charset=None)
        uids = [int(u) for line in found.lines[:1] for u in bytes(line).split()]
        parsed = 0
        for start in range(0, len(uids), 25):  # aioimaplib recurses per response line
            chunk = ",".join(str(u) for u in uids[start:start + 25])
            response = await client.uid("fetch", chunk, "(UID BODY.PEEK[])")
            for line in response.lines:
                if isinstance(line, bytearray):  # a literal: one mail's bytes
                    mailparser.parse_from_bytes(bytes(line))
                    parsed += 1
        await client.logout()
        return parsed

    cpu = cpu_seconds()
    started = time.perf_counter()
    counts = await asyncio.gather(*(one(u) for u in users))
    elapsed = time.perf_counter() - started
    return {"mails": sum(counts), "seconds": elapsed, "rate": sum(counts) / elapsed,
            **cpu_ms(cpu, sum(counts)), "peak_rss_mb": peak_rss_mb()}


async def phase_e2e(port: int, users: list[str], expected: int, latency_mails: int,
                    workdir: Path, hooks: bool = True) -> dict[str, Any]:
    """The daemon's pollers on all accounts into SQLite; then arrival-to-ticket latency in IDLE."""
    from gatewayd.config import config_from_dict
    from gatewayd.daemon import event_hooks
    from gatewayd.ingest.pipeline import Envelope, Outcome
    from gatewayd.ingest.poller import run_account
    from gatewayd.runtime import Runtime
    from gatewayd.store.db import open_database
    from gatewayd.store.models import InboundReceipt
    from gatewayd.store.tickets import TicketStore
    sys.path.insert(0, str(ROOT / "tests"))
    from conftest import skeleton_data  # the `gatewayd init` configuration

    data = skeleton_data()
    data.update({
        "database_url": f"sqlite://{workdir / 'bench.sqlite3'}",
        "data_dir": str(workdir / "data"),
        "templates_dir": str(ROOT / "gatewayd" / "skeleton" / "templates"),
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789abcdef"]},
        "accounts": [{
            "name": user, "address": f"{user}@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": port, "security": "none", "username": user,
                     "password": PASSWORD, "poll_seconds": 600, "idle": True},
        } for user in users],
    })
    config = config_from_dict(data, workdir / "gatewayd.toml")
    committed: dict[tuple[str, int], float] = {}
    done = asyncio.Event()
    target = {"count": expected}

    async def after_commit(env: Envelope, outcome: Outcome) -> None:
        committed[(env.account, env.uid)] = time.perf_counter()
        if len(committed) >= target["count"]:
            done.set()

    async with open_database(config.database_url):
        runtime = Runtime(config=config,
                          store=TicketStore(config, event_hooks(config) if hooks else []))
        stop = asyncio.Event()
        cpu = cpu_seconds()
        started = time.perf_counter()
        tasks = [asyncio.create_task(run_account(runtime, account, stop, after_commit))
                 for account in config.accounts]
        await asyncio.wait_for(done.wait(), 1800)
        elapsed = max(committed.values()) - started
        imported = await InboundReceipt.all().count()
        cpu_figures = cpu_ms(cpu, imported)

        # Latency: every account is now in IDLE; deliver one mail at a time, round robin.
        await asyncio.sleep(1.0)
        rng = random.Random(7)
        sent: dict[tuple[str, int], float] = {}
        target["count"] = len(committed) + latency_mails
        done.clear()
        appenders = [Appender(port, u) for u in users]
        for a in appenders:
            await a.__aenter__()
        for i in range(latency_mails):
            appender = appenders[i % len(appenders)]
            raw = make_mail(100_000 + i, rng)
            t0 = time.perf_counter()
            uid = await appender.append(raw)
            sent[(appender.user, uid)] = t0
            await asyncio.sleep(0.05)
        await asyncio.wait_for(done.wait(), 600)
        for a in appenders:
            await a.__aexit__()
        latencies = sorted(committed[k] - t for k, t in sent.items())
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 60)
    quantiles = statistics.quantiles(latencies, n=100)
    return {"mails": imported, "seconds": elapsed, "rate": imported / elapsed,
            **cpu_figures,
            "latency_p50": statistics.median(latencies), "latency_p95": quantiles[94],
            "latency_max": latencies[-1], "latency_mails": len(latencies),
            "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------ orchestration


async def load(port: int, users: list[str], mails: int, seed: int) -> int:
    rng = random.Random(seed)
    total = 0

    async def fill(user: str, count: int, offset: int) -> int:
        local = random.Random(seed * 1000 + offset)
        size = 0
        async with Appender(port, user) as appender:
            for i in range(count):
                raw = make_mail(offset + i, local)
                size += len(raw)
                await appender.append(raw)
        return size

    per = mails // len(users)
    sizes = await asyncio.gather(*(fill(u, per + (1 if n < mails % len(users) else 0), n * 10_000)
                                   for n, u in enumerate(users)))
    total = sum(sizes)
    del rng
    return total


def run_phase(args: list[str], profile: str | None = None) -> dict[str, Any]:
    """One phase in a fresh process; under py-spy (its worker processes too) with `profile`."""
    command = [sys.executable, __file__, *args]
    if profile:
        command = ["py-spy", "record", "--subprocesses", "--rate", "200", "--format", "raw",
                   "--output", profile, "--", *command]
    out = subprocess.run(command, check=False, capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"phase {args[1]} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in reversed(out.stdout.splitlines())
                           if line.startswith("{")))


def one_run(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Load three equal sets of mails into a fresh IMAP server; measure the floor on one, the
    daemon with and without event actions on the others."""
    base_users = [f"base{n:02d}" for n in range(args.accounts)]
    e2e_users = [f"acct{n:02d}" for n in range(args.accounts)]
    bare_users = [f"bare{n:02d}" for n in range(args.accounts)]
    server = subprocess.Popen(
        [sys.executable, "-m", "gatewayd.loopback.imap",
         *[f"--user={u}:{PASSWORD}" for u in base_users + e2e_users + bare_users]],
        stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().rsplit(":", 1)[1])
        started = time.perf_counter()
        size = asyncio.run(load(port, base_users, args.mails, 1))
        asyncio.run(load(port, e2e_users, args.mails, 1))
        asyncio.run(load(port, bare_users, args.mails, 1))
        took = time.perf_counter() - started
        print(f"loaded 3 × {args.mails} mails ({size / 1e6:.1f} MB each set) into "
              f"3 × {args.accounts} accounts in {took:.1f} s", flush=True)
        floor = run_phase(["--phase", "floor", "--port", str(port),
                           "--users", ",".join(base_users)])
        with tempfile.TemporaryDirectory() as workdir:
            e2e = run_phase(["--phase", "e2e", "--port", str(port), "--users",
                             ",".join(e2e_users), "--mails", str(args.mails),
                             "--latency-mails", str(args.latency_mails), "--workdir", workdir],
                            args.profile)
        with tempfile.TemporaryDirectory() as workdir:
            bare = run_phase(["--phase", "e2e", "--port", str(port), "--users",
                              ",".join(bare_users), "--mails", str(args.mails),
                              "--latency-mails", str(args.latency_mails), "--workdir", workdir,
                              "--no-hooks"])
    finally:
        server.terminate()
        server.wait(10)
    return {"floor": floor, "e2e": e2e, "bare": bare}


def report(run: dict[str, dict[str, Any]], title: str) -> None:
    floor, e2e, bare = run["floor"], run["e2e"], run["bare"]
    ratio, bare_ratio = e2e["rate"] / floor["rate"], bare["rate"] / floor["rate"]
    print(f"\n{title}")
    print(f"{'':30}{'floor':>10}{'end-to-end':>12}{'no event actions':>18}   target")
    print(f"{'mails':30}{floor['mails']:>10}{e2e['mails']:>12}{bare['mails']:>18}")
    print(f"{'throughput, mails/s':30}{floor['rate']:>10.1f}{e2e['rate']:>12.1f}"
          f"{bare['rate']:>18.1f}   ≥ 0.5 of the floor: "
          f"{'ok' if ratio >= 0.5 else 'MISSED'} ({ratio:.2f}; {bare_ratio:.2f} without actions)")
    print(f"{'CPU per mail, ms':30}{floor['cpu_ms']:>10.2f}{e2e['cpu_ms']:>12.2f}"
          f"{bare['cpu_ms']:>18.2f}   ≤ 4: {'ok' if e2e['cpu_ms'] <= 4 else 'MISSED'}")
    print(f"{'  of it parser workers, ms':30}{floor['cpu_ms_workers']:>10.2f}"
          f"{e2e['cpu_ms_workers']:>12.2f}{bare['cpu_ms_workers']:>18.2f}")
    print(f"{'peak RSS, MB':30}{floor['peak_rss_mb']:>10.0f}{e2e['peak_rss_mb']:>12.0f}"
          f"{bare['peak_rss_mb']:>18.0f}   < 300: "
          f"{'ok' if e2e['peak_rss_mb'] < 300 else 'MISSED'}")
    print(f"{'IDLE arrival → ticket p50, s':30}{'':>10}{e2e['latency_p50']:>12.3f}"
          f"{bare['latency_p50']:>18.3f}")
    print(f"{'IDLE arrival → ticket p95, s':30}{'':>10}{e2e['latency_p95']:>12.3f}"
          f"{bare['latency_p95']:>18.3f}   < 1: {'ok' if e2e['latency_p95'] < 1 else 'MISSED'}"
          f" ({e2e['latency_mails']} mails, max {e2e['latency_max']:.3f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mails", type=int, default=2000)
    parser.add_argument("--accounts", type=int, default=20)
    parser.add_argument("--latency-mails", type=int, default=200)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--json", help="also write every run's figures to this file")
    parser.add_argument("--profile", metavar="FILE",
                        help="run the end-to-end phase under py-spy, worker processes included, "
                        "and write its collapsed stacks to FILE (py-spy comes with the bench "
                        "extras; its sampling slows the run, so its figures do not count)")
    parser.add_argument("--phase", choices=["floor", "e2e"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--users", help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    parser.add_argument("--no-hooks", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.phase == "floor":
        print(json.dumps(asyncio.run(phase_floor(args.port, args.users.split(",")))))
        return
    if args.phase == "e2e":
        from gatewayd.logs import configure

        configure("INFO", json=True)  # as `gatewayd run` logs under systemd (JSON lines)
        result = asyncio.run(phase_e2e(args.port, args.users.split(","), args.mails,
                                       args.latency_mails, Path(args.workdir),
                                       hooks=not args.no_hooks))
        print(json.dumps(result))
        return

    print("end-to-end: IMAP fetch, parse, route, SQLite commit (ticket, message, attachments,")
    print("receipt, events, the event actions' outbox rows), UID MOVE. 'no event actions': the")
    print("same without the outbound hooks (ingest's own share). floor: aioimaplib fetch +")
    print("mailparser.parse_from_bytes, no gatewayd code.", flush=True)
    runs = []
    for n in range(args.runs):
        runs.append(one_run(args))
        report(runs[-1], f"run {n + 1} of {args.runs}")
    if args.json:
        Path(args.json).write_text(json.dumps(runs, indent=1), encoding="utf-8")
    if len(runs) > 1:
        median = {phase: {key: statistics.median(r[phase][key] for r in runs)
                          for key in runs[0][phase]} for phase in runs[0]}
        report(median, f"medians of {len(runs)} runs (each figure's own median)")


if __name__ == "__main__":
    main()
