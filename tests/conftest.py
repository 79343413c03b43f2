"""Shared fixtures: a real database per test (SQLite, and PostgreSQL when configured), a config,
and the daemon's HTTP side served by uvicorn on a free loopback port."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import gc
import logging
import os
import sqlite3
import tomllib
import uuid
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from gatewayd.config import Config, config_from_dict
from gatewayd.loopback.dovecot import DovecotServer, dovecot_server
from gatewayd.loopback.dovecot import unavailable as dovecot_unavailable
from gatewayd.runtime import Runtime
from gatewayd.store.db import migrate, open_database
from gatewayd.store.tickets import TicketStore

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


def _pg(url: str) -> str:
    return url.replace("postgres://", "postgresql://", 1)


async def _admin(url: str, statement: str) -> None:
    """One statement on the server's maintenance connection (CREATE/DROP DATABASE)."""
    admin = await asyncpg.connect(_pg(url))
    try:
        await admin.execute(statement)
    finally:
        await admin.close()


async def _create_pg_database(url: str, prefix: str, template: str | None = None) -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    from_template = f' TEMPLATE "{template}"' if template else ""
    await _admin(url, f'CREATE DATABASE "{name}"{from_template}')
    return name


async def _drop_pg_database(url: str, name: str) -> None:
    await _admin(url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.asynccontextmanager
async def _pg_database(url: str, prefix: str, template: str | None = None) -> AsyncIterator[str]:
    """A new PostgreSQL database (a copy of `template` if given) for one test; its URL."""
    name = await _create_pg_database(url, prefix, template)
    try:
        yield _with_database(url, name)
    finally:
        await _drop_pg_database(url, name)


def _run_aside(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run a coroutine to its end on a loop of its own (session fixtures are first requested
    from inside a test's running loop)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(lambda: asyncio.run(make())).result()


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One migrated SQLite database per test session, copied for each test: tortoise takes
    ~0.5 s to migrate a fresh database and a second to check a migrated one takes 0.01 s."""
    path = tmp_path_factory.mktemp("template") / "template.sqlite3"
    _run_aside(lambda: migrate(f"sqlite://{path}"))
    return path


@pytest.fixture(scope="session")
def pg_template() -> Iterator[str | None]:
    """The PostgreSQL counterpart: a migrated database each test's database is created from."""
    url = os.environ.get(PG_ENV)
    if not url:
        yield None
        return

    async def create() -> str:
        name = await _create_pg_database(url, "gw_template")
        await migrate(_with_database(url, name))  # closes its connections: usable as template
        return name

    name: str = _run_aside(create)
    try:
        yield name
    finally:
        _run_aside(lambda: _drop_pg_database(url, name))


@pytest.fixture
def sqlite_url(tmp_path: Path, sqlite_template: Path) -> str:
    """A fresh SQLite database, already migrated (a copy of the session's template). Tests that
    run on SQLite only take it as their `db_url`."""
    path = tmp_path / "gatewayd.sqlite3"
    with sqlite3.connect(sqlite_template) as source, sqlite3.connect(path) as target:
        source.backup(target)
    return f"sqlite://{path}"


@pytest.fixture(params=["sqlite", "postgres"])
async def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh database on each engine, already migrated (a copy of the session's template): a
    SQLite file, or a new PostgreSQL database. Migrating from nothing: `empty_db_url`."""
    if request.param == "sqlite":
        yield request.getfixturevalue("sqlite_url")
        return
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(f"{PG_ENV} is not set; PostgreSQL tests need it "
                    "(e.g. postgres://postgres@127.0.0.1:5432/test)")
    async with _pg_database(url, "gw_test", request.getfixturevalue("pg_template")) as test_url:
        yield test_url


@pytest.fixture
async def empty_db_url(db_url: str, tmp_path: Path) -> AsyncIterator[str]:
    """A database with no tables on the same engine as `db_url`, for migrating from nothing."""
    if db_url.startswith("sqlite://"):
        yield f"sqlite://{tmp_path / 'empty.sqlite3'}"
        return
    async with _pg_database(os.environ[PG_ENV], "gw_empty") as url:
        yield url


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


@pytest.fixture
async def store(config: Config) -> AsyncIterator[TicketStore]:
    """The ticket store on `config`'s database, opened (no event hooks)."""
    async with open_database(config.database_url):
        yield TicketStore(config)


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


@pytest.fixture(scope="session")
def dovecot() -> Iterator[DovecotServer]:
    """One private Dovecot for the test session (any user name logs in with its password and
    gets an empty mailbox: tests take a fresh name each). Tests that restart Dovecot start
    their own with `dovecot_server()`."""
    reason = dovecot_unavailable()
    if reason:
        pytest.skip(f"{reason}; .ci/run installs it")
    with dovecot_server() as server:
        yield server


async def until(predicate: Callable[[], Any], limit: float, what: str) -> None:
    """Wait until the predicate holds; a bound so a broken test fails instead of hanging."""
    try:
        async with asyncio.timeout(limit):
            while True:
                if await predicate():
                    return
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"not within {limit:g} s: {what}") from None


def fresh_user(prefix: str = "u") -> str:
    """A mailbox name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


# --------------------------------------------------------------- failures nobody read

class _Unread(logging.Handler):
    """Collects asyncio's "exception was never retrieved" lines: a task whose failure nobody
    reads is a leak in the code under test (its caller went away), and the log line, written
    from inside the garbage collector, can break whatever the collection interrupted (Python
    3.11 formats its traceback with ast.parse)."""

    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.test = "(between tests)"
        self.seen: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if "never retrieved" in record.getMessage():
            exc = record.exc_info[1] if record.exc_info else None
            self.seen.append(f"{self.test}: {record.getMessage().splitlines()[0]} "
                             f"{type(exc).__name__ if exc else ''}: {exc}")


_UNREAD = _Unread()


def pytest_configure(config: pytest.Config) -> None:
    logging.getLogger("asyncio").addHandler(_UNREAD)


def pytest_runtest_setup(item: pytest.Item) -> None:
    _UNREAD.test = item.nodeid


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    gc.collect()
    if _UNREAD.seen:
        print("\nasyncio: task failures nobody read (the test named is the one running when "
              "the task was collected, which may be later than the one that left it):")
        for line in _UNREAD.seen:
            print(f"  {line}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
