"""Form submissions per second and latency, beside a baseline measured in the same run.

    python -m bench.forms [--seconds 10] [--concurrency 16] [--database sqlite|postgres URL]

Two servers run one after the other, each in its own process (so the load generator's CPU does
not count against them), on loopback:

- baseline: a bare FastAPI endpoint that reads the same body, parses and validates it with the
  same form definition, and answers 201 without touching the database;
- gatewayd: the real daemon (`daemon.start`) with SQLite (or the PostgreSQL URL given): every
  submission becomes a ticket, a first message, the status history, the event log, the merchant
  info mail and the confirmation mail in the outbox, in one transaction.

The two take turns for a few rounds so background load on the machine hits both alike. The load
generator (plain HTTP/1.1 on asyncio streams, light enough not to be what it measures) keeps
`concurrency` requests in flight for `seconds` after a short warm-up and prints requests per
second and the p50/p99 latency of each, and the CPU time each server process spent per answered
request (read from /proc on Linux): on a shared machine that figure moves far less with the
background load than the rates do. Rate limit and per-address cap are switched off for gatewayd
(one client address sends everything); every submission comes from a new e-mail address, so each
one also gets its confirmation mail rendered; every other check runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import multiprocessing
import os
import socket
import statistics
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

FORM: dict[str, Any] = {
    "name": "contact",
    "ticket": {"type": "Kundenanfrage", "status": "Neu"},
    "rate_limit": 0,  # one client address sends everything
    "fields": [
        {"name": "email", "type": "email", "required": True, "label": "E-Mail"},
        {"name": "name", "type": "name", "label": "Name"},
        {"name": "subject", "type": "subject", "label": "Betreff"},
        {"name": "message", "type": "message", "required": True, "label": "Nachricht"},
        {"name": "order", "type": "order_id", "label": "Auftragsnummer"},
    ],
}
_CUSTOMERS = itertools.count(1)
PAYLOAD = {
    "email": "erika.muster@example.org",
    "name": "Erika Muster",
    "subject": "Frage zur Lieferung",
    "message": ("Guten Tag,\n\nich habe vor einer Woche bestellt und noch keine Versand"
                "bestätigung erhalten. Können Sie mir sagen, wann das Paket kommt?\n\n" * 3
                + "Viele Grüße\nErika Muster"),
    "order": "",
}


def _config(work: Path, database_url: str, events: bool = True) -> Any:
    import tomllib
    from importlib import resources

    from gatewayd.config import config_from_dict

    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    data = tomllib.loads(text)
    data.update({
        "database_url": database_url,
        "data_dir": str(work / "data"),
        "templates_dir": str(Path(str(resources.files("gatewayd") / "skeleton" / "templates"))),
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789abcdef"]},
        "forms": [FORM],
        **({} if events else {"events": []}),
    })
    return config_from_dict(data, work / "gatewayd.toml")


def _serve_baseline(ready: Any, stop: Any) -> None:
    import uvicorn

    from gatewayd.config import Form
    from gatewayd.ingest import forms as logic

    form = Form.model_validate(FORM)
    app = FastAPI()

    @app.post("/forms/{name}")
    async def submit(name: str, request: Request) -> JSONResponse:
        body = await request.body()
        posted = logic.parse_body(body, request.headers.get("content-type", ""))
        result = logic.validate(form, posted)
        if isinstance(result, list):
            return JSONResponse({"error": "invalid form"}, status_code=422)
        return JSONResponse({"ticket_id": 0}, status_code=201)

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                               access_log=False, lifespan="off"))
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # NODELAY
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)  # listening now: connections queue until uvicorn accepts them
        task = asyncio.create_task(server.serve(sockets=[sock]))
        ready.put(sock.getsockname()[1])
        await asyncio.to_thread(stop.wait)
        server.should_exit = True
        await task

    asyncio.run(main())


def _serve_gatewayd(ready: Any, stop: Any, database_url: str | None, events: bool) -> None:
    import logging

    from gatewayd import daemon
    from gatewayd.logs import configure

    configure("WARNING", json=True)
    logging.getLogger().setLevel(logging.WARNING)

    async def main() -> None:
        with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp:
            work = Path(tmp)
            url = database_url or f"sqlite://{work / 'gatewayd.sqlite3'}"
            async with daemon.start(_config(work, url, events)) as runtime:
                daemon.freeze_startup_objects()  # as `gatewayd run` does
                ready.put(runtime.http_port)
                await asyncio.to_thread(stop.wait)

    asyncio.run(main())


@dataclass
class Figures:
    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = float("nan")  # the server process's CPU time during the round

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        """Server CPU per answered request (all of it: HTTP, database client, background)."""
        return self.cpu_seconds / (self.requests + self.errors) * 1000 if self.requests else 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        if not ordered:
            return float("nan")
        return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def _request(port: int) -> bytes:
    """One POST as a browser sends it, from a new customer each time (as in a shop, and under
    the per-address daily cap)."""
    body = urllib.parse.urlencode(
        {**PAYLOAD, "email": f"kunde{next(_CUSTOMERS)}@example.org"}).encode()
    return (f"POST /forms/contact HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> int:
    """Send one request on a kept-alive connection and read the whole answer; its status."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1])


async def _load(name: str, server: tuple[int, int], seconds: float,
                concurrency: int) -> Figures:
    """Keep `concurrency` requests in flight, one kept-alive connection each.

    The client writes plain HTTP/1.1 on asyncio streams: an HTTP client library (httpx) spent
    about 4 ms of CPU per request here and, on two cores, capped the baseline at 200-550 req/s
    while the baseline server could answer ~1,300; the shares were then shares of the client.
    """
    port, pid = server
    latencies: list[float] = []
    errors = 0

    async def worker(until: float, record: bool) -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # One write per request, but keep the kernel from holding a small segment back.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while time.perf_counter() < until:
                request = _request(port)
                started = time.perf_counter()
                status = await _exchange(reader, writer, request)
                if record:
                    if status == 201:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
        finally:
            writer.close()

    warm_until = time.perf_counter() + min(2.0, seconds / 4)
    await asyncio.gather(*(worker(warm_until, False) for _ in range(concurrency)))
    cpu_before = _cpu_seconds(pid)
    started = time.perf_counter()
    await asyncio.gather(*(worker(started + seconds, True) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = _cpu_seconds(pid) - cpu_before
    return Figures(name, len(latencies), errors, elapsed, latencies, cpu)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def _server(target: Any, args: tuple[Any, ...]) -> Iterator[tuple[int, int]]:
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Queue(), context.Event()
    process = context.Process(target=target, args=(ready, stop, *args), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=60)
        assert process.pid is not None
        yield port, process.pid
    finally:
        stop.set()
        process.join(timeout=30)
        with contextlib.suppress(Exception):
            process.kill()


def _merge(name: str, rounds: list[Figures]) -> Figures:
    return Figures(name, sum(r.requests for r in rounds), sum(r.errors for r in rounds),
                   sum(r.seconds for r in rounds), [x for r in rounds for x in r.latencies],
                   sum(r.cpu_seconds for r in rounds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round and server")
    parser.add_argument("--rounds", type=int, default=3,
                        help="baseline and gatewayd take turns, so background load hits both")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-events", action="store_true",
                        help="no [[events]]: the form path without the confirmation mail's "
                             "event action (to see where the time goes)")
    parser.add_argument("--database", default=None,
                        help="a postgres:// URL (an empty database); default: a new SQLite file")
    args = parser.parse_args(argv)
    runs: dict[str, list[Figures]] = {"baseline": [], "gatewayd": []}
    with _server(_serve_baseline, ()) as base, \
            _server(_serve_gatewayd, (args.database, not args.no_events)) as gw:
        for number in range(1, args.rounds + 1):
            for name, server in (("baseline", base), ("gatewayd", gw)):
                figures = asyncio.run(_load(name, server, args.seconds, args.concurrency))
                runs[name].append(figures)
                print(f"round {number} {name:9} {figures.rate:7.1f} req/s, "
                      f"p99 {figures.percentile(99):6.1f} ms, {figures.cpu_ms:5.2f} ms CPU/req",
                      file=sys.stderr)
    baseline = _merge("baseline (parse only)", runs["baseline"])
    gatewayd = _merge("gatewayd POST /forms", runs["gatewayd"])
    engine = "PostgreSQL" if args.database else "SQLite"
    events = "without [[events]]" if args.no_events else "with the confirmation event action"
    print(f"form submissions ({events}), concurrency {args.concurrency}, {args.rounds} rounds of "
          f"{args.seconds:.0f} s each, loopback, {engine}")
    print(f"{'':24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/req':>11}")
    for figures in (baseline, gatewayd):
        print(f"{figures.name:24} {figures.rate:9.1f} {figures.percentile(50):8.1f} "
              f"{figures.percentile(99):8.1f} {figures.errors:7d} {figures.cpu_ms:11.2f}")
    share = gatewayd.rate / baseline.rate if baseline.rate else 0.0
    mean = statistics.fmean(gatewayd.latencies) * 1000 if gatewayd.latencies else float("nan")
    print(f"gatewayd reaches {share:.0%} of the baseline's rate (target >= 40%), "
          f"p99 {gatewayd.percentile(99):.1f} ms (target < 100 ms); mean {mean:.1f} ms; "
          f"{gatewayd.cpu_ms / baseline.cpu_ms:.1f}x the baseline's CPU per request")
    return 0 if gatewayd.errors == 0 and baseline.errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
