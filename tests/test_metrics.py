"""GET /metrics: Prometheus text derived from the database, over a real uvicorn server."""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from gatewayd.api.metrics import Metric, poll_lag, render
from gatewayd.config import Config
from gatewayd.store.models import AccountState, InboundReceipt, Outbox, Quarantine
from gatewayd.store.tickets import NewTicket
from tests.conftest import Api, skeleton_data

_SAMPLE = re.compile(r'^([a-z_]+)(\{[^}]*\})? (-?[0-9.e+]+)$')


def _parse(text: str) -> dict[str, float]:
    """Every sample line as `name{labels}` → value; fails on a line that is not valid."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            assert re.match(r"^# (HELP|TYPE) [a-z_]+ .+$", line), line
            continue
        match = _SAMPLE.match(line)
        assert match, f"not a Prometheus sample line: {line!r}"
        values[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return values


def test_render_escapes_labels_and_formats_numbers() -> None:
    text = render([
        Metric("x_total", "counter", "help\ntext", [((("a", 'q"b\\c\nd'),), 3.0)]),
        Metric("y", "gauge", "h", [((), 1.5)]),
    ])
    assert text == (
        '# HELP x_total help text\n# TYPE x_total counter\nx_total{a="q\\"b\\\\c\\nd"} 3\n'
        "# HELP y h\n# TYPE y gauge\ny 1.5\n"
    )


def test_poll_lag_only_for_active_polled_accounts(tmp_path: Path) -> None:
    from gatewayd.config import config_from_dict

    data = skeleton_data()
    data["http"] = {"api_tokens": ["t" * 20]}
    second = dict(data["accounts"][0], name="shop", active=False)
    data["accounts"][0]["active"] = True
    data["accounts"][0]["imap"]["password"] = "x"
    data["accounts"][0]["smtp"]["password"] = "x"
    data["accounts"].append(second)
    config = config_from_dict(data, tmp_path / "gatewayd.toml")
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    last = {"support": now - dt.timedelta(seconds=42), "shop": now}
    assert poll_lag(config, last, now) == [((("account", "support"),), 42.0)]
    assert poll_lag(config, {}, now) == []


async def test_metrics_count_from_the_database(api: Api) -> None:
    store = api.runtime.store
    await store.create_ticket(NewTicket(title="a", source="mail", account="support"))
    await store.create_ticket(NewTicket(title="b", source="mail", account="support"))
    await store.create_ticket(NewTicket(title="c", source="form"))
    for uid in (101, 102, 103):
        await InboundReceipt.create(account="support", folder="INBOX", uidvalidity=4294967295,
                                    uid=uid, content_hash="0" * 64)
    for status in ("sent", "sent", "failed", "queued"):
        await Outbox.create(status=status, subject="s")
    await Quarantine.create(sha256="0" * 64, reason="poison", status="held")
    await Quarantine.create(sha256="1" * 64, reason="done", status="released")
    await AccountState.create(account="support", state="idle",
                              last_poll_at=dt.datetime.now(dt.UTC) - dt.timedelta(seconds=30))

    async with httpx.AsyncClient(base_url=api.base_url) as anonymous:  # no token needed
        response = await anonymous.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    values = _parse(response.text)
    assert values['gatewayd_mails_fetched_total{account="support"}'] == 3
    assert values['gatewayd_tickets_created_total{source="mail"}'] == 2
    assert values['gatewayd_tickets_created_total{source="form"}'] == 1
    assert values['gatewayd_tickets_created_total{source="api"}'] == 0
    assert values["gatewayd_mails_sent_total"] == 2
    assert values["gatewayd_mails_failed_total"] == 1
    assert values['gatewayd_outbox{status="queued"}'] == 1
    assert values["gatewayd_quarantine_size"] == 1
    assert values["gatewayd_database_up"] == 1
    # The skeleton's account is inactive: no lag sample for it.
    assert not any(k.startswith("gatewayd_poll_lag_seconds") for k in values)


@pytest.fixture
def active_config(make_config: Callable[..., Config]) -> Config:
    data = skeleton_data()
    account = data["accounts"][0]
    account["active"] = True
    account["imap"]["password"] = "imap-secret"
    account["smtp"]["password"] = "smtp-secret"
    return make_config(accounts=[account])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_poll_lag_of_an_active_account(active_config: Config) -> None:
    from gatewayd.daemon import serve_http
    from gatewayd.runtime import Runtime
    from gatewayd.store.db import open_database
    from gatewayd.store.tickets import TicketStore

    # Database and HTTP only: no poller writes the account's state behind the test's back.
    runtime = Runtime(config=active_config, store=TicketStore(active_config))
    async with open_database(active_config.database_url), serve_http(runtime):
        base = f"http://127.0.0.1:{runtime.http_port}"
        async with httpx.AsyncClient(base_url=base) as client:
            before = _parse((await client.get("/metrics")).text)
            assert before['gatewayd_account_polled{account="support"}'] == 0
            await AccountState.create(
                account="support", last_poll_at=dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
            )
            after = _parse((await client.get("/metrics")).text)
    assert after['gatewayd_account_polled{account="support"}'] == 1
    assert 3600 <= after['gatewayd_poll_lag_seconds{account="support"}'] < 7200


async def test_database_down_is_503_on_healthz_and_database_up_0(tmp_path: Path) -> None:
    """Nothing listens on port 1: /healthz says 503, /metrics still answers (the alert)."""
    from gatewayd.config import config_from_dict
    from gatewayd.daemon import serve_http
    from gatewayd.runtime import Runtime
    from gatewayd.store.db import open_database
    from gatewayd.store.tickets import TicketStore

    data = skeleton_data()
    data.update(database_url="postgres://gatewayd@127.0.0.1:1/gatewayd",
                http={"listen": "127.0.0.1:0", "api_tokens": ["t" * 20]})
    config = config_from_dict(data, tmp_path / "gatewayd.toml")
    runtime = Runtime(config=config, store=TicketStore(config))
    async with open_database(config.database_url, run_migrations=False), serve_http(runtime):
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}") as client:
            health = await client.get("/healthz")
            metrics = await client.get("/metrics")
    assert health.status_code == 503 and health.json()["database"] is False
    assert metrics.status_code == 200
    values = _parse(metrics.text)
    assert values["gatewayd_database_up"] == 0
    assert 'gatewayd_info{version="0.1.0",mode="test"}' in values


def test_live_gauges_show_backlog_rate_and_storage_of_this_instance(
    make_config: Callable[..., Config],
) -> None:
    from gatewayd.api.metrics import live
    from gatewayd.runtime import AccountHealth, Runtime
    from gatewayd.store.tickets import TicketStore

    config = make_config()
    runtime = Runtime(config=config, store=TicketStore(config))
    draining = AccountHealth("support", state="polling")
    draining.found_unseen(1200)
    draining.handled(200)
    runtime.health = {"support": draining, "info": AccountHealth("info", state="idle")}
    runtime.storage.report("http", "database", "database or disk is full")
    values = _parse(render(live(runtime)))
    assert values['gatewayd_account_backlog{account="support"}'] == 1000
    assert values['gatewayd_account_backlog{account="info"}'] == 0
    assert values['gatewayd_account_import_rate{account="support"}'] > 0
    assert values["gatewayd_storage_ok"] == 0
    runtime.storage.clear("http")
    assert _parse(render(live(runtime)))["gatewayd_storage_ok"] == 1
