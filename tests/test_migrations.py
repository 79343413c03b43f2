"""The migration files describe the models exactly: a model change without its migration fails.

Runs tortoise's own autodetector (what `python -m gatewayd.store.makemigrations` runs) and
expects no changes.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
from pathlib import Path

from tortoise.cli.cli import tortoise_cli_context
from tortoise.migrations.autodetector import MigrationAutodetector

from gatewayd.store.db import APP_LABEL, MIGRATIONS_MODULE, migrate, tortoise_config


async def test_models_and_migrations_agree() -> None:
    config = tortoise_config("sqlite://:memory:")
    apps = {APP_LABEL: {**config["apps"][APP_LABEL], "migrations": MIGRATIONS_MODULE}}
    async with tortoise_cli_context(config) as ctx:
        assert ctx.apps is not None
        writers = await MigrationAutodetector(ctx.apps, apps).changes()
        pending = [(w.name, [type(op).__name__ for op in w.operations]) for w in writers]
    assert pending == [], (f"models changed without a migration: {pending}; run "
                           "`python -m gatewayd.store.makemigrations NAME`")


async def test_every_index_names_real_columns_and_foreign_keys_are_indexed(
        tmp_path: Path) -> None:
    """SQLite takes `CREATE INDEX ... ("ticket")` on a table without such a column as an index
    on a constant string; every index must name real columns. And the look-ups by ticket that
    every event action makes must use an index, not scan every stored mail."""
    url = f"sqlite://{tmp_path / 'idx.sqlite3'}"
    await migrate(url)
    with sqlite3.connect(tmp_path / "idx.sqlite3") as db:
        names = [r[0] for r in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL")]
        assert names
        for name in names:
            columns = [r for r in db.execute(f'PRAGMA index_info("{name}")')]
            assert columns and all(cid >= 0 for _seq, cid, _col in columns), name
        for table, column in [("message", "ticket_id"), ("outbox", "ticket_id"),
                              ("attachment", "message_id"), ("ticket_event", "ticket_id"),
                              ("status_change", "ticket_id"), ("ticket", "contact_id"),
                              ("inbound_receipt", "ticket_id")]:
            plan = " ".join(str(r[-1]) for r in db.execute(
                f"EXPLAIN QUERY PLAN SELECT * FROM {table} WHERE {column} = 1"))
            assert "USING INDEX" in plan, f"{table}.{column}: {plan}"


async def test_an_upgrade_keeps_the_rows_written_before_it(empty_db_url: str) -> None:
    """A database of the first release, with mail in its outbox, migrates to the current
    schema: a column added later gets its value on the old rows (no NOT NULL failure), and
    a plain insert that does not name it still works."""
    from tortoise import connections
    from tortoise.migrations.api.migrate import migrate as tortoise_migrate

    from gatewayd.store import sql
    from gatewayd.store.db import open_database

    config = tortoise_config(empty_db_url)
    try:
        await tortoise_migrate(config=config, target=f"{APP_LABEL}.0001_initial")
    finally:
        await connections.close_all(discard=True)
    async with open_database(empty_db_url, run_migrations=False):
        await sql.execute(
            "INSERT INTO outbox (intended_to, envelope_to, recipient_results, status, attempts,"
            " subject, content, created_at) VALUES ('[]', '[]', '{}', 'queued', 0, '', '', ?)",
            [dt.datetime.now(dt.UTC)])
    async with open_database(empty_db_url):  # migrates to the newest
        rows = await sql.rows("SELECT status, internal FROM outbox")
        assert [(r["status"], bool(r["internal"])) for r in rows] == [("queued", False)]
