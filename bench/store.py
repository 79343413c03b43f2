"""The ticket store: creating tickets and text search, each beside a baseline from the same run.

    python -m bench.store [--tickets 3000] [--database sqlite|postgres://...]

- create: `TicketStore.create_ticket` with a first message (ticket, owner, tag, message, status
  history and event log in one transaction, hooks called) against the baseline of a bare
  `Ticket.create` plus `Message.create` in one transaction.
- search: `search_tickets(q=...)` over title and message text, case-insensitive (on SQLite
  through gatewayd's Unicode-aware UPPER(), so "überweisung" finds "Überweisung"); the baseline
  is the same query without case folding (plain LIKE on title and message text).

Each figure is the median of several rounds; the two sides take turns so background load hits
both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
import tomllib
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path

from tortoise.expressions import Q, Subquery
from tortoise.transactions import in_transaction

from gatewayd.config import Config, config_from_dict
from gatewayd.store.db import open_database
from gatewayd.store.models import Message, Ticket
from gatewayd.store.ticket_views import TicketQuery, search_tickets
from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore

WORDS = ("Lieferung", "Rücksendung", "Überweisung", "Rechnung", "Größe", "Paket", "Gutschein")


def _config(database_url: str, data_dir: Path) -> Config:
    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    data = tomllib.loads(text)
    data.update(database_url=database_url, data_dir=str(data_dir),
                http={"api_tokens": ["bench-token-0123456789"]})
    return config_from_dict(data, data_dir / "gatewayd.toml")


async def _timed(action: Callable[[], Awaitable[object]], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        await action()
    return (time.perf_counter() - start) / repeat


async def _baseline_search(text: str) -> list[Ticket]:
    """search_tickets(q=text) without the case folding: LIKE on title and message text."""
    messages = Subquery(Message.filter(text__contains=text).values("ticket_id"))
    return await Ticket.filter(Q(title__contains=text) | Q(id__in=messages)).order_by(
        "-id").limit(100)


async def bench(database_url: str, tickets: int, rounds: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = _config(database_url, Path(tmp))
        sqlite = database_url.startswith("sqlite")
        async with open_database(config.database_url):
            store = TicketStore(config)

            async def create(i: int) -> None:
                await store.create_ticket(
                    NewTicket(title=f"{WORDS[i % len(WORDS)]} Nr. {i}", owners=[("anna", None)],
                              tags=["bench"], source="mail", account="support"),
                    NewMessage(text=f"Guten Tag, es geht um {WORDS[(i * 3) % len(WORDS)]} "
                                    f"{i}. {'ÄNDERUNG der Zahlung. ' if i % 500 == 0 else ''}"
                                    "Viele Grüße", from_address=f"k{i}@example.org"),
                )

            async def baseline_create(i: int) -> None:
                async with in_transaction():
                    ticket = await Ticket.create(title=f"Nr. {i}", type="Kundenanfrage",
                                                 status="Neu")
                    await Message.create(ticket_id=ticket.id, text=f"Text {i}")

            counter = iter(range(10**9))
            per_round = max(1, tickets // rounds)
            create_times, base_times = [], []
            for _ in range(rounds):
                create_times.append(await _timed(lambda: create(next(counter)), per_round))
                base_times.append(await _timed(lambda: baseline_create(next(counter)), per_round))
            created = await Ticket.all().count()

            # A rare word: the whole table is scanned (a frequent one stops at the limit).
            query = TicketQuery(q="änderung der zahlung", limit=100)
            search_times, search_base = [], []
            for _ in range(rounds):
                search_times.append(await _timed(lambda: search_tickets(config, query), 5))
                search_base.append(await _timed(
                    lambda: _baseline_search("ÄNDERUNG der Zahlung"), 5))
            found = len(await search_tickets(config, query))
            found_base = len(await _baseline_search("änderung der zahlung"))

    engine = "SQLite" if sqlite else "PostgreSQL"
    print(f"engine: {engine}, {created} tickets in the store")
    med = statistics.median
    print(f"create_ticket + first message : {1000 * med(create_times):7.2f} ms each "
          f"({1 / med(create_times):6.0f}/s)")
    print(f"  baseline bare insert        : {1000 * med(base_times):7.2f} ms each "
          f"({1 / med(base_times):6.0f}/s)")
    print(f"text search (rare word)       : {1000 * med(search_times):7.2f} ms "
          f"({found} hits, limit 100)")
    print(f"  baseline without case folding: {1000 * med(search_base):7.2f} ms "
          f"(lower case finds {found_base})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tickets", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--database", default="sqlite",
                        help="'sqlite' (a temporary file) or a postgres:// URL; a temporary "
                        "database is created beside the one named and dropped afterwards")
    args = parser.parse_args()
    if args.database == "sqlite":
        url = f"sqlite://{tempfile.mkdtemp()}/bench.sqlite3"
        asyncio.run(bench(url, args.tickets, args.rounds))
    else:
        asyncio.run(_on_scratch_database(args.database, args.tickets, args.rounds))


async def _on_scratch_database(url: str, tickets: int, rounds: int) -> None:
    import uuid

    import asyncpg

    admin_url = url.replace("postgres://", "postgresql://", 1)
    name = f"gw_bench_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(admin_url)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        await bench(f"{url.rpartition('/')[0]}/{name}", tickets, rounds)
    finally:
        admin = await asyncpg.connect(admin_url)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


if __name__ == "__main__":
    main()
