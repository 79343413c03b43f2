"""LMTP's configuration checks (aliases, listen addresses) and its figures in /metrics and
`gatewayd status`, against the real daemon."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from gatewayd.cli import _status
from gatewayd.config import Config, ConfigError, config_from_dict
from gatewayd.loopback.lmtp import LmtpClient, deliver
from gatewayd.ops.lifecycle import status_line
from tests.conftest import skeleton_data
from tests.test_lmtp import SQLITE, accounts, address, gateway, mail

# ------------------------------------------------------------------------------ configuration


def _problems(tmp_path: Path, **overrides: Any) -> list[str]:
    data = skeleton_data()
    data.update({"database_url": f"sqlite://{tmp_path / 'x.sqlite3'}", "accounts": accounts()})
    data.update(overrides)
    try:
        config_from_dict(data, tmp_path / "gatewayd.toml", read_secrets=False)
    except ConfigError as exc:
        return [p.format("gatewayd.toml") for p in exc.problems]
    return []


def test_check_aliases_are_addresses_and_lead_to_one_account(tmp_path: Path) -> None:
    bad = accounts(support={"aliases": ["info@shop.example", "kein-adresse", "SALES@shop.example",
                                        "support@SHOP.example"]},
                   sales={"aliases": ["Info@Shop.Example"]})
    problems = _problems(tmp_path, accounts=bad)
    assert ("gatewayd.toml:accounts[0](support).aliases[1]: 'kein-adresse' is not an e-mail "
            "address — use name@domain.example") in problems
    assert any(p.startswith("gatewayd.toml:accounts[0](support).aliases[2]: 'SALES@shop.example'"
                            " is already an address of account 'sales'") for p in problems)
    assert any(p.startswith("gatewayd.toml:accounts[0](support).aliases[3]:") and
               "this account" in p for p in problems)
    assert any(p.startswith("gatewayd.toml:accounts[1](sales).aliases[0]: 'Info@Shop.Example' "
                            "is already an address of account 'support'") for p in problems)
    assert len(problems) == 4
    assert _problems(tmp_path) == []


def test_check_shared_main_address_only_matters_with_lmtp(tmp_path: Path) -> None:
    twins = accounts(sales={"address": "Support@shop.example"})
    assert _problems(tmp_path, accounts=twins) == []  # two folders of one mailbox, say
    problems = _problems(tmp_path, accounts=twins, lmtp={})
    assert problems == ["gatewayd.toml:accounts[1](sales).address: 'Support@shop.example' is "
                        "also the address of account 'support' — over LMTP an address leads to "
                        "one account only: give each account its own"]


def test_check_refuses_a_listener_reachable_from_elsewhere(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:2424", "[::]:2424", "192.0.2.10:24", "mail.shop.example:2424"):
        problems = _problems(tmp_path, lmtp={"listen": listen})
        assert len(problems) == 1 and problems[0].startswith(
            f"gatewayd.toml:lmtp.listen: {listen!r} is not a loopback address"), problems
        assert "allow_remote = true" in problems[0]
        assert _problems(tmp_path, lmtp={"listen": listen, "allow_remote": True}) == []
    for listen in ("127.0.0.1:2424", "[::1]:24", "localhost:2424", "unix:/run/gatewayd/lmtp.sock"):
        assert _problems(tmp_path, lmtp={"listen": listen}) == []
    problems = _problems(tmp_path, lmtp={"listen": "2424"})
    assert problems and problems[0].startswith("gatewayd.toml:lmtp.listen: '2424' is neither "
                                               "HOST:PORT nor unix:PATH")
    data = skeleton_data()
    data.update({"accounts": accounts(), "lmtp": {"listen": "unix:run/lmtp.sock"}})
    config = config_from_dict(data, tmp_path / "gatewayd.toml", read_secrets=False)
    assert config.lmtp is not None and config.lmtp.unix_path == tmp_path / "run" / "lmtp.sock"
    assert config.lmtp.max_sessions == 20 and config.lmtp.socket_mode == 0o660


# ------------------------------------------------------------------------------ figures


@SQLITE
async def test_metrics_and_status_count_lmtp_answers(make_config: Callable[..., Config]) -> None:
    small = {"imap": {"host": "127.0.0.1", "security": "none", "username": "s",
                      "password": "x", "max_message_bytes": 1024}}
    async with gateway(make_config, accounts=accounts(sales=small)) as runtime:
        where = address(runtime)
        await deliver(where, "k@kunde.example", ["support@shop.example"], mail())
        await deliver(where, "k@kunde.example", ["info@shop.example", "nobody@shop.example"],
                      mail())  # a redelivery, and an unknown recipient
        await deliver(where, "k@kunde.example", ["sales@shop.example"], mail(body="z" * 2000))
        client = await LmtpClient.connect(where)  # the size known only after DATA this time
        late = await client.send("k@kunde.example", ["sales@shop.example"], mail(body="y" * 2000),
                                 size=False)
        await client.close()
        assert late["sales@shop.example"].code == 552
        expected = ['gatewayd_lmtp_delivered_total{account="support"} 1',
                    'gatewayd_lmtp_duplicates_total{account="support"} 1',
                    'gatewayd_lmtp_refused_total{account="",reason="unknown_recipient"} 1',
                    'gatewayd_lmtp_refused_total{account="sales",reason="too_big"} 2',
                    'gatewayd_lmtp_delivered_total{account="sales"} 0',
                    'gatewayd_lmtp_deferred_total{account="support"} 0',
                    'gatewayd_mails_fetched_total{account="support"} 0']
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}") as http:
            for _ in range(100):  # the counts are written every 2 s
                text = (await http.get("/metrics")).text
                if all(line in text.splitlines() for line in expected):
                    break
                await asyncio.sleep(0.1)
        assert [line for line in expected if line not in text.splitlines()] == []
    report = await _status(runtime.config)
    lmtp = report["lmtp"]
    assert lmtp["listen"] == "127.0.0.1:0" and lmtp["unknown_recipients_refused"] == 1
    assert lmtp["accounts"]["support"]["delivered"] == 1
    assert lmtp["accounts"]["support"]["duplicate"] == 1
    assert lmtp["accounts"]["sales"]["refused_size"] == 2
    assert lmtp["accounts"]["support"]["last_at"] is not None
    assert report["accounts"][0]["state"] == "no imap"  # support: LMTP only
    assert status_line(runtime.config, {}) == "0/1 accounts healthy, mode test"
