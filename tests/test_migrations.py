"""The migration files describe the models exactly: a model change without its migration fails.

Runs tortoise's own autodetector (what `python -m gatewayd.store.makemigrations` runs) and
expects no changes.
"""

from __future__ import annotations

from tortoise.cli.cli import tortoise_cli_context
from tortoise.migrations.autodetector import MigrationAutodetector

from gatewayd.store.db import APP_LABEL, MIGRATIONS_MODULE, tortoise_config


async def test_models_and_migrations_agree() -> None:
    config = tortoise_config("sqlite://:memory:")
    apps = {APP_LABEL: {**config["apps"][APP_LABEL], "migrations": MIGRATIONS_MODULE}}
    async with tortoise_cli_context(config) as ctx:
        writers = await MigrationAutodetector(ctx.apps, apps).changes()
        pending = [(w.name, [type(op).__name__ for op in w.operations]) for w in writers]
    assert pending == [], (f"models changed without a migration: {pending}; run "
                           "`python -m gatewayd.store.makemigrations NAME`")
