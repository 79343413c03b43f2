"""Mails per second delivered over LMTP, beside a baseline measured in the same run.

    python -m bench.lmtp [--seconds 5] [--rounds 3] [--concurrency 8] [--no-events]
                         [--database postgres://...]

Three servers, each in its own process (the load generator's CPU does not count against them),
on loopback, taking turns for a few rounds so background load hits them alike:

- baseline: aiosmtpd's LMTP class on its own event loop, accepting every recipient and
  discarding every mail (one 250 per recipient after DATA);
- durable baseline: the same, but each mail is first written to SQLite (aiosqlite, WAL,
  synchronous=FULL) in one fsync'd commit of its own, the least a server that answers 250
  only for a stored mail must do;
- gatewayd: the real daemon (`daemon.start`, SQLite unless a PostgreSQL URL is given) with its
  LMTP listener: each mail is parsed (in the parser worker processes), routed and committed as
  a ticket with its first message, receipt, history and event log, and (unless --no-events)
  the acknowledgement action renders and queues its mail, all before the 250 goes out.

The load generator keeps `concurrency` LMTP sessions open, as an MTA's lmtp processes do, each
delivering one new mail after the other (plain and HTML mails of 2-9 KB, one recipient). It
prints mails per second, the latency from MAIL FROM to the final reply (for gatewayd that is
mail handed over → ticket committed), and the CPU time the server spent per mail: the server
process and every process below it (gatewayd's parser workers), from /proc on Linux.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.loopback.lmtp import LmtpClient

_SERIAL = itertools.count(1)
TEXT = ("Guten Tag,\n\nich habe vor einer Woche die Bestellung aufgegeben und noch keine "
        "Versandbestätigung bekommen. Können Sie nachsehen, wo das Paket ist?\n\n")


def make_mail(n: int) -> bytes:
    """A new customer mail: every third one HTML with a plain part, the rest plain text."""
    head = (f"From: Kunde {n} <kunde{n}@kunde.example>\r\nTo: support@shop.example\r\n"
            f"Subject: Frage zur Lieferung {n}\r\nMessage-ID: <bench-{os.getpid()}-{n}"
            f"@kunde.example>\r\nDate: Wed, 02 Dec 2026 10:00:00 +0100\r\nMIME-Version: 1.0\r\n")
    text = TEXT * (1 + n % 12) + "Viele Grüße\nErika Muster\n"
    if n % 3:
        return (head + "Content-Type: text/plain; charset=utf-8\r\n"
                "Content-Transfer-Encoding: 8bit\r\n\r\n" + text.replace("\n", "\r\n")).encode()
    html = "<html><body>\r\n" + "".join(f"<p>{p}</p>\r\n" for p in text.split("\n\n") if p)
    html += "</body></html>"
    return (head + 'Content-Type: multipart/alternative; boundary="b"\r\n\r\n--b\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text.replace("\n", "\r\n")
            + "\r\n--b\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html
            + "\r\n--b--\r\n").encode()


# ------------------------------------------------------------------------------ the servers


def _serve_baseline(ready: Any, stop: Any) -> None:
    from aiosmtpd.lmtp import LMTP

    class Discard:
        async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,
                              options: list[str]) -> str:
            envelope.rcpt_tos.append(address)
            return "250 2.1.5 OK"

        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            return "\r\n".join("250 2.0.0 OK" for _ in envelope.rcpt_tos)

    async def run() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: LMTP(Discard(), hostname="bench", enable_SMTPUTF8=True), "127.0.0.1", 0)
        ready.put(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
        await asyncio.to_thread(stop.wait)  # the multiprocessing Event the bench sets
        server.close()

    asyncio.run(run())


def _serve_durable(ready: Any, stop: Any) -> None:
    import aiosqlite
    from aiosmtpd.lmtp import LMTP

    async def run() -> None:
        with tempfile.TemporaryDirectory(prefix="bench-lmtp-durable-") as work:
            await serve(Path(work) / "mail.sqlite3")

    async def serve(path: Path) -> None:
        async with aiosqlite.connect(path) as db:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute("CREATE TABLE mail (id INTEGER PRIMARY KEY, raw BLOB)")
            await db.commit()

            class Store:
                async def handle_RCPT(self, server: Any, session: Any, envelope: Any,
                                      address: str, options: list[str]) -> str:
                    envelope.rcpt_tos.append(address)
                    return "250 2.1.5 OK"

                async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
                    await db.execute("INSERT INTO mail (raw) VALUES (?)",
                                     (envelope.original_content,))
                    await db.commit()
                    return "\r\n".join("250 2.0.0 OK" for _ in envelope.rcpt_tos)

            loop = asyncio.get_running_loop()
            server = await loop.create_server(
                lambda: LMTP(Store(), hostname="bench", enable_SMTPUTF8=True), "127.0.0.1", 0)
            ready.put(f"127.0.0.1:{server.sockets[0].getsockname()[1]}")
            await asyncio.to_thread(stop.wait)
            server.close()

    asyncio.run(run())


def _serve_gatewayd(ready: Any, stop: Any, database: str | None, events: bool) -> None:
    import logging
    from importlib import resources

    from gatewayd import daemon, logs
    from gatewayd.config import config_from_dict

    logs.configure("WARNING", json=True)
    logging.getLogger("gatewayd").setLevel(logging.ERROR)
    scratch = tempfile.TemporaryDirectory(prefix="bench-lmtp-")
    work = Path(scratch.name)
    data = {
        "mode": "test", "test_recipient": "qa@shop.example",
        "database_url": database or f"sqlite://{work / 'gatewayd.sqlite3'}",
        "data_dir": str(work / "data"),
        "templates_dir": str(Path(str(resources.files("gatewayd") / "skeleton" / "templates"))),
        "message_id_domain": "bench.example",
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789"]},
        "status_groups": [{"name": "Offen"}],
        "ticket_types": [{"name": "Kundenanfrage",
                          "statuses": [{"name": "Neu", "progress": 0, "group": "Offen"}]}],
        "accounts": [{"name": "support", "address": "support@shop.example", "language": "de",
                      "new_ticket": {"type": "Kundenanfrage", "status": "Neu"}}],
        "events": [{"name": "ack", "on": "ticket_created", "filter": {"sources": ["mail"]},
                    "actions": [{"send_template": "ticket_received", "to": "customer"}]}]
        if events else [],
        "outbound": {"auto_reply_window_hours": 0, "daily_cap": 1_000_000},
        "lmtp": {"listen": "127.0.0.1:0", "max_sessions": 100},
    }
    config = config_from_dict(data, work / "gatewayd.toml")

    async def run() -> None:
        async with daemon.start(config) as runtime:
            daemon.freeze_startup_objects()  # as `gatewayd run` does
            ready.put(runtime.lmtp.address if runtime.lmtp else "")
            await asyncio.to_thread(stop.wait)
            runtime.request_stop()

    try:
        asyncio.run(run())
    finally:
        scratch.cleanup()


@contextlib.contextmanager
def _server(target: Any, args: tuple[Any, ...]) -> Iterator[tuple[str, int]]:
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    process = context.Process(target=target, args=(ready, stop, *args), daemon=False)
    process.start()
    try:
        address = ready.get(timeout=120)
        assert process.pid is not None
        yield address, process.pid
    finally:
        stop.set()
        process.join(timeout=30)
        with contextlib.suppress(Exception):
            process.kill()


# ------------------------------------------------------------------------------ measuring


def _tree_cpu_seconds(root: int) -> float:
    """User + system CPU of a process and every process below it (Linux /proc)."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as handle:
                fields = handle.read().rpartition(")")[2].split()
        except OSError:
            continue
        parents[int(entry)] = int(fields[1])
        times[int(entry)] = (int(fields[11]) + int(fields[12])) / tick
    total = 0.0
    for pid in times:
        walk = pid
        while walk in parents and walk != root and walk > 1:
            walk = parents[walk]
        if walk == root:
            total += times[pid]
    return total


@dataclass
class Figures:
    name: str
    mails: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float

    @property
    def rate(self) -> float:
        return self.mails / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        return self.cpu_seconds / self.mails * 1000 if self.mails else float("nan")

    def percentile(self, p: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p / 100))] * 1000


async def _load(name: str, server: tuple[str, int], seconds: float,
                concurrency: int) -> Figures:
    address, pid = server
    latencies: list[float] = []
    errors = 0

    async def session(until: float, record: bool) -> None:
        nonlocal errors
        client = await LmtpClient.connect(address, reply_seconds=120)
        try:
            while time.perf_counter() < until:
                raw = make_mail(next(_SERIAL))
                started = time.perf_counter()
                replies = await client.send("kunde@kunde.example", ["support@shop.example"],
                                            raw)
                if record:
                    if all(r.code == 250 for r in replies.values()):
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
        finally:
            await client.close()

    warm = time.perf_counter() + min(2.0, seconds / 3)
    await asyncio.gather(*(session(warm, False) for _ in range(concurrency)))
    cpu_before = _tree_cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(session(started + seconds, True) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = _tree_cpu_seconds(pid) - cpu_before
    return Figures(name, len(latencies), errors, elapsed, latencies, cpu)


def _merge(name: str, rounds: list[Figures]) -> Figures:
    return Figures(name, sum(r.mails for r in rounds), sum(r.errors for r in rounds),
                   sum(r.seconds for r in rounds), [x for r in rounds for x in r.latencies],
                   sum(r.cpu_seconds for r in rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and server")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8,
                        help="LMTP sessions at once (an MTA's lmtp processes)")
    parser.add_argument("--no-events", action="store_true",
                        help="no acknowledgement action: parse, route and store only")
    parser.add_argument("--database", default=None,
                        help="a postgres:// URL (an empty database); default: a new SQLite file")
    args = parser.parse_args(argv)
    runs: dict[str, list[Figures]] = {"baseline": [], "durable": [], "gatewayd": []}
    with _server(_serve_baseline, ()) as base_at, _server(_serve_durable, ()) as durable_at, \
            _server(_serve_gatewayd, (args.database, not args.no_events)) as gatewayd_at:
        for number in range(1, args.rounds + 1):
            for name, server in (("baseline", base_at), ("durable", durable_at),
                                 ("gatewayd", gatewayd_at)):
                figures = asyncio.run(_load(name, server, args.seconds, args.concurrency))
                runs[name].append(figures)
                print(f"round {number} {name:9} {figures.rate:7.1f} mails/s, "
                      f"p95 {figures.percentile(95):6.1f} ms, {figures.cpu_ms:5.2f} ms CPU/mail",
                      file=sys.stderr)
    baseline = _merge("baseline (accept+discard)", runs["baseline"])
    durable = _merge("baseline (1 commit/mail)", runs["durable"])
    gatewayd = _merge("gatewayd (ticket committed)", runs["gatewayd"])
    engine = "PostgreSQL" if args.database else "SQLite"
    events = "without [[events]]" if args.no_events else "with the acknowledgement action"
    print(f"LMTP delivery {events}, {args.concurrency} sessions, {args.rounds} rounds of "
          f"{args.seconds:g} s each, loopback, {engine}; {time.strftime('%Y-%m-%d')}, "
          f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'':28} {'mails/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7} "
          f"{'CPU ms/mail':>12}")
    for figures in (baseline, durable, gatewayd):
        print(f"{figures.name:28} {figures.rate:8.1f} {figures.percentile(50):8.1f} "
              f"{figures.percentile(95):8.1f} {figures.percentile(99):8.1f} "
              f"{figures.errors:7d} {figures.cpu_ms:12.2f}")
    share = gatewayd.rate / baseline.rate if baseline.rate else 0.0
    share_durable = gatewayd.rate / durable.rate if durable.rate else 0.0
    mean = statistics.fmean(gatewayd.latencies) * 1000 if gatewayd.latencies else float("nan")
    print(f"gatewayd delivers {share:.0%} of the baseline's rate and {share_durable:.0%} of the "
          f"durable baseline's; mail-to-ticket p95 "
          f"{gatewayd.percentile(95):.1f} ms (mean {mean:.1f} ms); "
          f"{gatewayd.cpu_ms / baseline.cpu_ms:.1f}x the baseline's CPU per mail")
    return 0 if gatewayd.errors == baseline.errors == durable.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
