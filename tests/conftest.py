"""Shared fixtures: a real database per test (SQLite, and PostgreSQL when configured), a config,
and the daemon's HTTP side served by uvicorn on a free loopback port."""

from __future__ import annotations

import os
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gatewayd.config import Config, config_from_dict
from gatewayd.runtime import Runtime

PG_ENV = "GATEWAYD_TEST_POSTGRES_URL"
TOKEN = "test-token-0123456789abcdef"
SHARED = Path(__file__).resolve().parents[2] / "shared"


def skeleton_data() -> dict[str, Any]:
    """The `gatewayd init` configuration as a dict, for tests to adjust."""
    text = (resources.files("gatewayd") / "skeleton" / "gatewayd.toml").read_text("utf-8")
    return tomllib.loads(text)


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh, empty database on each engine: a SQLite file, or a new PostgreSQL database."""
    if request.param == "sqlite":
        yield f"sqlite://{tmp_path / 'gatewayd.sqlite3'}"
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set; PostgreSQL tests need it "
                    "(e.g. postgres://postgres@127.0.0.1:5432/test)")
    name = f"gw_test_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield _with_database(url, name)
    finally:
        admin = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()


@pytest.fixture
def make_config(tmp_path: Path, db_url: str) -> Callable[..., Config]:
    """Build a validated Config from the init skeleton plus overrides (top-level keys)."""

    def build(**overrides: Any) -> Config:
        data = skeleton_data()
        data["database_url"] = db_url
        data["data_dir"] = str(tmp_path / "data")
        data["templates_dir"] = str(
            Path(str(resources.files("gatewayd") / "skeleton" / "templates"))
        )
        data["http"] = {"listen": "127.0.0.1:0", "api_tokens": [TOKEN]}
        data.update(overrides)
        return config_from_dict(data, tmp_path / "gatewayd.toml")

    return build


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return make_config()


@dataclass
class Api:
    runtime: Runtime
    client: httpx.AsyncClient
    base_url: str


@pytest.fixture
async def api(config: Config) -> AsyncIterator[Api]:
    """The daemon started for real (database, migrations, uvicorn) with an authorised client."""
    from gatewayd import daemon

    async with daemon.start(config) as runtime:
        base = f"http://127.0.0.1:{runtime.http_port}"
        async with httpx.AsyncClient(
            base_url=base, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30
        ) as client:
            yield Api(runtime, client, base)
