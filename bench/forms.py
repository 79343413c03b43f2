"""Form submissions per second, latency and confirmation latency, beside floors from the same run.

    python -m bench.forms [--seconds 8] [--rounds 3] [--concurrency 16] [--database URL]

Servers run one after the other, each in its own process on loopback (the load generator's CPU
never counts against them), taking turns for a few rounds so background load hits all alike:

- bare (for information): FastAPI reads the same body, parses and validates it with the same
  form definition and answers 201, touching no database;
- durable floor: the same, plus one INSERT and COMMIT per request into SQLite (WAL,
  synchronous=FULL) with plain aiosqlite — the least any server that keeps each submission
  durably must do. Each request commits on its own (a lock around INSERT + COMMIT: two requests'
  rows never share a commit);
- gatewayd: the real daemon (`daemon.start`) in live mode with SQLite (or the PostgreSQL URL
  given): every submission becomes a ticket, first message, status history, event log, the
  merchant's info mail and the `ticket_created` confirmation mail in the outbox, in one
  transaction; the daemon's sender sends both mails to an SMTP sink (aiosmtpd, its own process)
  while the load runs.

Printed per server: submissions per second, p50/p99 latency, server CPU ms per submission (from
/proc: on a shared machine it moves far less than rates). For gatewayd also the confirmation
mail's latency from outbox row to sent (queue → sent, p50/p95/max) for the confirmations queued
during the measured load, and how many of them left while the load still ran. Rate limit and
per-address cap are off (one client address sends everything); every submission comes from a
new address, so each one gets its confirmation; every other check runs.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import logging
import socket
import sys
import tempfile
import time
import urllib.parse
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from bench.httpload import (
    Figures,
    Server,
    load,
    machine,
    merge,
    percentile,
    post,
    serve_until_stopped,
)
from bench.httpload import server as start_server
from bench.smtpsink import serve_sink

FORM: dict[str, Any] = {
    "name": "contact",
    "ticket": {"type": "Kundenanfrage", "status": "Neu"},
    "rate_limit": 0,  # one client address sends everything
    "recipient_daily_cap": 0,
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


def submission(port: int) -> bytes:
    """One POST as a browser sends it, from a new customer each time (as in a shop)."""
    body = urllib.parse.urlencode(
        {**PAYLOAD, "email": f"kunde{next(_CUSTOMERS)}@example.org"}).encode()
    return post("/forms/contact", port, body)


def _config(work: Path, database_url: str, smtp_port: int, events: bool = True,
            connections: int | None = None) -> Any:
    import tomllib
    from importlib import resources

    from gatewayd.config import config_from_dict

    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    data = tomllib.loads(text)
    account = data["accounts"][0]
    account.pop("imap")
    account.update({"active": True, "smtp": {
        "host": "127.0.0.1", "port": smtp_port, "security": "none",
        "sender_name": "Shop Kundenservice", "reply_to": account["address"]}})
    data.update({
        "mode": "live",
        "database_url": database_url,
        "data_dir": str(work / "data"),
        "templates_dir": str(Path(str(resources.files("gatewayd") / "skeleton" / "templates"))),
        "http": {"listen": "127.0.0.1:0", "api_tokens": ["bench-token-0123456789abcdef"]},
        "forms": [FORM],
        "outbound": {**data.get("outbound", {}),
                     **({"connections_per_account": connections} if connections else {})},
        **({} if events else {"events": []}),
    })
    return config_from_dict(data, work / "gatewayd.toml")


def _listening_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # NODELAY
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # listening now: connections queue until uvicorn accepts them
    return sock


def _form_app(store: Any = None) -> FastAPI:
    """The bare / floor server: parse and validate like gatewayd; `store(result)` if given."""
    from gatewayd.config import Form
    from gatewayd.ingest import form_body
    from gatewayd.ingest import forms as logic

    form = Form.model_validate(FORM)
    app = FastAPI()

    @app.post("/forms/{name}")
    async def submit(name: str, request: Request) -> JSONResponse:
        body = await request.body()
        posted = form_body.parse_body(body, request.headers.get("content-type", ""))
        result = logic.validate(form, posted)
        if isinstance(result, list):
            return JSONResponse({"error": "invalid form"}, status_code=422)
        ticket_id = await store(result) if store else 0
        return JSONResponse({"ticket_id": ticket_id}, status_code=201)

    return app


def _run_app(app: FastAPI, ready: Any, control: Any) -> None:
    import uvicorn

    async def main() -> None:
        server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_config=None,
                                               access_log=False, lifespan="off"))
        sock = _listening_socket()
        task = asyncio.create_task(server.serve(sockets=[sock]))
        ready.put(sock.getsockname()[1])
        await serve_until_stopped(control)
        server.should_exit = True
        await task

    asyncio.run(main())


def _serve_bare(ready: Any, control: Any) -> None:
    _run_app(_form_app(), ready, control)


def _serve_floor(ready: Any, control: Any, path: str) -> None:
    """FastAPI + one INSERT + COMMIT per request into SQLite (WAL, synchronous=FULL)."""
    import aiosqlite

    state: dict[str, Any] = {}
    lock = asyncio.Lock()

    async def store(result: Any) -> int:
        async with lock:  # one commit per request, never two requests' rows in one
            db = state.get("db")
            if db is None:
                db = state["db"] = await aiosqlite.connect(path)
                await db.execute("PRAGMA journal_mode=WAL")
                await db.execute("PRAGMA synchronous=FULL")
                await db.execute("CREATE TABLE IF NOT EXISTS submission (id INTEGER PRIMARY "
                                 "KEY, email TEXT, name TEXT, subject TEXT, message TEXT, "
                                 "created_at TEXT)")
            cursor = await db.execute(
                "INSERT INTO submission (email, name, subject, message, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (result.email, result.name, result.title, result.message,
                 dt.datetime.now(dt.UTC).isoformat()))
            await db.commit()
            return int(cursor.lastrowid or 0)

    _run_app(_form_app(store), ready, control)


def _serve_gatewayd(ready: Any, control: Any, work: str, database_url: str | None,
                    smtp_port: int, events: bool, connections: int | None = None) -> None:
    from gatewayd import daemon
    from gatewayd.logs import configure
    from gatewayd.store import sql

    configure("WARNING", json=True)
    logging.getLogger().setLevel(logging.WARNING)

    async def confirmations(question: str, start: float, end: float) -> dict[str, Any]:
        """The confirmations queued in [start, end] (wall clock): once the outbox is empty,
        each one's queue → sent latency, and how many were sent by `end`."""
        for _ in range(600):
            left = await sql.rows("SELECT COUNT(*) AS n FROM outbox "
                                  "WHERE status IN ('queued', 'sending')")
            if not left[0]["n"]:
                break
            await asyncio.sleep(0.1)
        since, until = (dt.datetime.fromtimestamp(t, dt.UTC) for t in (start, end))
        found = await sql.rows(
            "SELECT template, status, created_at, sent_at FROM outbox "
            "WHERE created_at >= ? AND created_at <= ?", (since, until))

        def when(value: Any) -> dt.datetime:
            return value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value)

        confirmation = [r for r in found if r["template"] == "ticket_received"]
        latencies = [(when(r["sent_at"]) - when(r["created_at"])).total_seconds()
                     for r in confirmation if r["status"] == "sent"]
        stats = runtime.store.group_stats
        groups = ({"groups": stats.groups, "jobs": stats.jobs, "urgent": stats.urgent,
                   "largest": stats.largest, "broken": stats.broken} if stats else None)
        return {"queued": len(confirmation), "latencies": latencies, "groups": groups,
                "unsent": sum(r["status"] != "sent" for r in confirmation),
                "sent_during_load": sum(r["status"] == "sent" and when(r["sent_at"]) <= until
                                        for r in confirmation),
                "info_mails": sum(r["template"] is None for r in found)}

    runtime: Any = None

    async def main() -> None:
        nonlocal runtime
        path = Path(work)
        url = database_url or f"sqlite://{path / 'gatewayd.sqlite3'}"
        config = _config(path, url, smtp_port, events, connections)
        async with daemon.start(config) as runtime:
            daemon.freeze_startup_objects()  # as `gatewayd run` does
            ready.put(runtime.http_port)
            await serve_until_stopped(control, confirmations)

    asyncio.run(main())


def _report_confirmations(rounds: list[Figures]) -> tuple[str, float]:
    queued = sum(r.extra["confirmations"]["queued"] for r in rounds)
    latencies = [x for r in rounds for x in r.extra["confirmations"]["latencies"]]
    unsent = sum(r.extra["confirmations"]["unsent"] for r in rounds)
    during = sum(r.extra["confirmations"]["sent_during_load"] for r in rounds)
    # An unsent confirmation counts as infinitely late.
    p95 = percentile(latencies + [float("inf")] * unsent, 95)
    return (f"confirmation mail, queue → sent: {queued} queued during the load, {during} sent "
            f"while it ran, {unsent} unsent; p50 {percentile(latencies, 50) * 1000:.0f} ms, "
            f"p95 {p95 * 1000:.0f} ms, max {max(latencies, default=0) * 1000:.0f} ms "
            "(target p95 < 2 s)"), p95


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="per round and server")
    parser.add_argument("--rounds", type=int, default=3,
                        help="the servers take turns, so background load hits all alike")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--no-events", action="store_true",
                        help="no [[events]]: the form path without the confirmation mail")
    parser.add_argument("--connections", type=int, default=None,
                        help="[outbound] connections_per_account (default: gatewayd's, 2)")
    parser.add_argument("--database", default=None,
                        help="a postgres:// URL (an empty database); default: a new SQLite file")
    args = parser.parse_args(argv)
    names = ("bare", "floor", "gatewayd")
    runs: dict[str, list[Figures]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="gatewayd-bench-") as tmp, \
            start_server(serve_sink) as sink, \
            start_server(_serve_bare) as bare, \
            start_server(_serve_floor, str(Path(tmp) / "floor.sqlite3")) as floor, \
            start_server(_serve_gatewayd, tmp, args.database, sink.port,
                         not args.no_events, args.connections) as gw:
        servers: dict[str, Server] = {"bare": bare, "floor": floor, "gatewayd": gw}
        for number in range(1, args.rounds + 1):
            for name in names:
                figures = asyncio.run(load(name, servers[name].address, args.seconds,
                                           args.concurrency, submission))
                line = (f"round {number} {name:9} {figures.rate:7.1f} req/s, "
                        f"p99 {figures.percentile(99):6.1f} ms, {figures.cpu_ms:5.2f} ms CPU/req")
                if name == "gatewayd":
                    figures.extra["confirmations"] = found = gw.ask(
                        "confirmations", *figures.extra["window"])
                    p95 = percentile(found["latencies"] + [float("inf")] * found["unsent"], 95)
                    line += (f", confirmations {found['sent_during_load']}/{found['queued']} "
                             f"sent during the load, p95 {p95 * 1000:.0f} ms")
                    if found["groups"]:
                        g = found["groups"]
                        line += (f"; group commit so far: {g['jobs'] - g['urgent']} "
                                 f"submissions and {g['urgent']} outcome commits in "
                                 f"{g['groups']} transactions (largest {g['largest']}, "
                                 f"broken {g['broken']})")
                runs[name].append(figures)
                print(line, file=sys.stderr)
        mails = sink.ask("received")
    titles = {"bare": "bare (parse only)", "floor": "durable floor",
              "gatewayd": "gatewayd POST /forms"}
    merged = {name: merge(titles[name], runs[name]) for name in names}
    engine = "PostgreSQL" if args.database else "SQLite"
    events = "without [[events]]" if args.no_events else "live, confirmation + info mail"
    events += f", {args.connections or 2} SMTP connections"
    print(f"form submissions ({events}), concurrency {args.concurrency}, {args.rounds} rounds of "
          f"{args.seconds:.0f} s each, loopback, {engine}; {time.strftime('%Y-%m-%d %H:%M')}, "
          f"{machine()}")
    print(f"{'':24} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'CPU ms/req':>11}")
    for figures in merged.values():
        print(f"{figures.name:24} {figures.rate:9.1f} {figures.percentile(50):8.1f} "
              f"{figures.percentile(99):8.1f} {figures.errors:7d} {figures.cpu_ms:11.2f}")
    ours, floor_figures = merged["gatewayd"], merged["floor"]
    share = ours.rate / floor_figures.rate if floor_figures.rate else 0.0
    print(f"gatewayd: {share:.2f} of the durable floor's rate (target >= 0.35), p99 "
          f"{ours.percentile(99):.1f} ms (target < 100 ms), "
          f"{ours.cpu_ms / floor_figures.cpu_ms:.1f}x the floor's CPU per submission; "
          f"the sink received {mails} mails")
    if not args.no_events:
        print(_report_confirmations(runs["gatewayd"])[0])
    errors = sum(f.errors for f in merged.values())
    return 0 if errors == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
