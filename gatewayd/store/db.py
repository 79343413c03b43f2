"""Opening the database: tortoise configuration, migrations at start, and clean shutdown."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tortoise import Tortoise, connections
from tortoise.backends.base.config_generator import expand_db_url
from tortoise.backends.base.executor import EXECUTOR_CACHE
from tortoise.migrations.api.migrate import migrate as tortoise_migrate

MODELS_MODULE = "gatewayd.store.models"
MIGRATIONS_MODULE = "gatewayd.store.migrations"
APP_LABEL = "gatewayd"


def normalise_url(url: str) -> str:
    """Tortoise spells PostgreSQL `postgres://`; accept the common `postgresql://` too."""
    if url.startswith("postgresql://"):
        return "postgres://" + url[len("postgresql://"):]
    return url


def connection_config(database_url: str) -> dict[str, Any]:
    """tortoise's settings for the URL; SQLite gets gatewayd's client (`store.sqlite_backend`:
    transactions that send their statements in fewer round trips)."""
    settings = expand_db_url(normalise_url(database_url))
    if settings["engine"] == "tortoise.backends.sqlite":
        settings["engine"] = "gatewayd.store.sqlite_backend"
    return settings


def tortoise_config(database_url: str) -> dict[str, Any]:
    return {
        "connections": {"default": connection_config(database_url)},
        "apps": {
            APP_LABEL: {
                "models": [MODELS_MODULE],
                "default_connection": "default",
                "migrations": MIGRATIONS_MODULE,
            }
        },
        "use_tz": True,
        "timezone": "UTC",
    }


def engine(database_url: str) -> str:
    return "sqlite" if database_url.startswith("sqlite://") else "postgres"


def _ensure_sqlite_dir(database_url: str) -> None:
    if database_url.startswith("sqlite://") and ":memory:" not in database_url:
        path = Path(database_url[len("sqlite://"):].partition("?")[0])
        path.parent.mkdir(parents=True, exist_ok=True)


async def migrate(database_url: str) -> None:
    """Apply every migration that is not applied yet (idempotent)."""
    _ensure_sqlite_dir(database_url)
    try:
        await tortoise_migrate(config=tortoise_config(database_url))
    finally:
        # migrate() opens connections of its own; a left-open SQLite thread keeps the process alive.
        await connections.close_all(discard=True)


@contextlib.asynccontextmanager
async def open_database(database_url: str, *, run_migrations: bool = True) -> AsyncIterator[None]:
    """Initialise tortoise for the current context, migrate, and close connections on exit."""
    _ensure_sqlite_dir(database_url)
    if run_migrations:
        await migrate(database_url)
    # The global fallback lets tasks started before or outside this context (uvicorn's, test
    # fixtures') reach the database; tortoise 1.x otherwise keeps its state per context.
    # tortoise caches prepared INSERT statements per connection *name*, not per engine: after a
    # SQLite database in this process, a PostgreSQL one would get `?` placeholders.
    EXECUTOR_CACHE.clear()
    ctx = await Tortoise.init(config=tortoise_config(database_url), _enable_global_fallback=True)
    await unicode_upper()
    try:
        yield
    finally:
        await ctx.close_connections()


def _upper(value: Any) -> Any:
    return value.upper() if isinstance(value, str) else value


async def unicode_upper() -> None:
    """Make SQLite's UPPER() Unicode-aware on the current connection (PostgreSQL's already is).

    tortoise's `icontains` is `UPPER(col) LIKE UPPER(?)`, and SQLite's own UPPER() and LIKE fold
    ASCII only: "überweisung" would not find "Überweisung". Idempotent, cheap: call it before a
    case-insensitive query in case the connection was re-opened.
    """
    conn = connections.get("default")
    if conn.capabilities.dialect != "sqlite":
        return
    await conn.create_connection(with_db=True)
    raw = getattr(conn, "_connection", None)
    if raw is None or getattr(raw, "_gatewayd_upper", False):
        return
    await raw.create_function("upper", 1, _upper, deterministic=True)
    raw._gatewayd_upper = True


async def ping() -> bool:
    """True when the database answers a trivial query."""
    try:
        await connections.get("default").execute_query("SELECT 1")
    except Exception:
        return False
    return True
