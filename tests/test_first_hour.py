"""A new installation's first hour: `init --loopback` + `run` shows mail flowing with no edits;
form and API tickets are answered through the first active account with SMTP; mail that
cannot go out says why (`status`, `GET /api/outbox`, the sender) and `check` warns about it;
an unset `backend_ticket_url` leaves the link out."""

from __future__ import annotations

import asyncio
import email
import email.policy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiosmtplib
import httpx
import pytest
from structlog.testing import capture_logs

from gatewayd import cli
from gatewayd.config import Config, config_from_dict, load_config
from gatewayd.loopback.smtp import smtp_sink
from gatewayd.outbound import sender
from gatewayd.outbound.waiting import answering_note, waiting_problems, waiting_reason
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox, Ticket
from tests.conftest import TOKEN, Api, skeleton_data, until


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _account(name: str, *, active: bool = True, smtp_port: int | None = 2525) -> dict[str, Any]:
    account: dict[str, Any] = {
        "name": name, "address": f"{name}@shop.example", "active": active,
        "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
    }
    if smtp_port is not None:
        account["smtp"] = {"host": "127.0.0.1", "port": smtp_port, "security": "none"}
    return account


def _config(tmp_path: Path, *accounts: dict[str, Any], **extra: Any) -> Config:
    data = skeleton_data()
    data.update(accounts=list(accounts), database_url=f"sqlite://{tmp_path / 'db.sqlite3'}",
                http={"listen": "127.0.0.1:0", "api_tokens": [TOKEN]}, **extra)
    return config_from_dict(data, tmp_path / "gatewayd.toml")


def test_the_answering_account_is_the_first_active_one_with_smtp(tmp_path: Path) -> None:
    config = _config(tmp_path, _account("off", active=False), _account("nosmtp", smtp_port=None),
                     _account("third"), _account("fourth"))
    assert config.answering_account is not None and config.answering_account.name == "third"
    assert waiting_reason(config, None) is None
    assert "answered through account third (the first active account with SMTP)" in (
        answering_note(config) or "")
    # None can send: the first active one answers, and its mail waits saying why.
    config = _config(tmp_path, _account("off", active=False), _account("nosmtp", smtp_port=None))
    assert config.answering_account.name == "nosmtp"  # type: ignore[union-attr]
    assert waiting_reason(config, None) == "no SMTP configured for account nosmtp"
    config = _config(tmp_path, _account("off", active=False))
    assert waiting_reason(config, None) == "account off is inactive"
    assert waiting_reason(config, "removed-account") == "account off is inactive"
    assert waiting_reason(_config(tmp_path), None) == "no account is configured to send through"


def test_check_warns_about_mail_that_would_wait_and_an_unset_backend_url(tmp_path: Path) -> None:
    from gatewayd.config import check_semantics

    config = _config(tmp_path, _account("off", active=False),
                     {**_account("imports", smtp_port=None),
                      "imap": {"host": "imap.shop.example", "username": "u", "password": "p"}})
    problems = {p.key: p for p in waiting_problems(config)}
    answering = problems["accounts[1](imports)"]
    assert answering.severity == "warning"
    assert answering.message == ("form answers and the merchant's info mails wait in the outbox: "
                                 "no SMTP configured for account imports")
    assert "add [accounts.smtp]" in answering.fix
    assert "event actions answer its mail" in problems["accounts[1](imports).smtp"].message
    backend = [p for p in check_semantics(config) if p.key == "backend_ticket_url"]
    assert [(p.severity, p.message) for p in backend] == [(
        "warning", "not set, so owner notices and the merchant's info mails carry no link to "
        "the ticket")]
    sendable = _config(tmp_path, _account("ok"),
                       backend_ticket_url="https://backend.shop.example/t/{id}")
    assert waiting_problems(sendable) == []
    assert [p for p in check_semantics(sendable) if p.key == "backend_ticket_url"] == []


@pytest.fixture
def config(tmp_path: Path, make_config: Callable[..., Config]) -> Config:
    """Form tickets with an inactive first account and an active second one with SMTP (its
    port is set per test)."""
    from tests.test_forms import form_config

    return form_config(make_config)


async def test_forms_are_answered_through_the_first_active_account_with_smtp(
    tmp_path: Path, make_config: Callable[..., Config],
) -> None:
    from gatewayd import daemon
    from tests.test_forms import form_config

    async with smtp_sink() as sink:
        base = form_config(make_config)
        accounts = [base.accounts[0],  # inactive, as `gatewayd init` writes it
                    base.accounts[1].model_copy(update={
                        "active": True, "smtp": base.accounts[1].smtp.model_copy(  # type: ignore[union-attr]
                            update={"host": "127.0.0.1", "port": sink.port, "security": "none",
                                    "username": None})})]
        config = base.model_copy(update={
            "accounts": accounts, "merchant_address": "owner@shop.example",
            "backend_ticket_url": "",
            "outbound": base.outbound.model_copy(update={"poll_seconds": 0.05})})
        async with daemon.start(config) as runtime:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}",
                                         timeout=30) as client:
                answer = await client.post("/forms/contact", headers={"Accept": "application/json"},
                                           data={"email": "erika@example.org", "message": "Hallo"})
                assert answer.status_code == 201, answer.text
                ticket = await Ticket.get(id=answer.json()["ticket_id"])
                received = await sink.wait_for(2, seconds=20)
        rows = await _rows(config)
    assert ticket.account == "second"
    assert {(r["account"], r["status"], r["mail_from"]) for r in rows} == {
        ("second", "sent", "second@shop.example")}
    assert {m.mail_from for m in received} == {"second@shop.example"}
    info = next(m.message() for m in received
                if str(m.message()["Auto-Submitted"]) == "auto-generated")
    body = info.get_content() if not info.is_multipart() else str(info)
    assert "Ticket" in str(info["Subject"]) and "Hallo" in body
    assert "/tickets/" not in body  # backend_ticket_url is unset: no dead link


async def _rows(config: Config) -> list[dict[str, Any]]:
    async with open_database(config.database_url):
        return await Outbox.all().values("account", "status", "mail_from", "last_error",
                                         "attempts")


async def test_queued_mail_says_why_it_waits_in_the_api_and_the_sender(api: Api) -> None:
    """The form config's accounts are both inactive, as `gatewayd init` writes them."""
    answer = await api.client.post("/forms/contact", headers={"Accept": "application/json"},
                                   data={"email": "erika@example.org", "message": "Hallo"})
    assert answer.status_code == 201
    rows = (await api.client.get("/api/outbox")).json()
    assert rows and {r["waiting_reason"] for r in rows} == {"account support is inactive"}
    await sender.run_once(api.runtime.config)
    stored = await Outbox.all().values("status", "attempts", "last_error")
    assert {(r["status"], r["attempts"], r["last_error"]) for r in stored} == {
        ("queued", 0, "account support is inactive")}
    # An account without SMTP: the reason follows the configuration in force.
    config = api.runtime.config
    api.runtime.replace_config(config.model_copy(update={"accounts": [
        config.accounts[0].model_copy(update={"active": True, "smtp": None})]}))
    rows = (await api.client.get("/api/outbox")).json()
    assert {r["waiting_reason"] for r in rows} == {"no SMTP configured for account support"}


def test_status_says_why_mail_waits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    site = tmp_path / "site"
    assert cli.main(["init", str(site)]) == 0
    config = load_config(site / "gatewayd.toml")

    async def queue() -> None:
        async with open_database(config.database_url):
            for _ in range(3):
                await Outbox.create(account="support", envelope_to=["qa@shop.example"],
                                    intended_to=["kunde@example.org"], status="queued",
                                    content="", subject="Hallo")

    asyncio.run(queue())
    capsys.readouterr()
    assert cli.main(["--config", str(site / "gatewayd.toml"), "status"]) == 0
    out = capsys.readouterr().out
    assert "outbox: queued 3" in out
    assert "  3 waiting: account support is inactive — set active = true" in out
    assert cli.main(["--config", str(site / "gatewayd.toml"), "status", "--json"]) == 0
    report = __import__("json").loads(capsys.readouterr().out)
    assert report["outbox_waiting"][0]["count"] == 3 and report["loopback"] is None


def _loopback_site(tmp_path: Path) -> Path:
    site = tmp_path / "site"
    assert cli.main(["init", "--loopback", str(site)]) == 0
    path = site / "gatewayd.toml"
    # Only the HTTP port is changed, so tests can run side by side; everything else is as
    # init wrote it.
    path.write_text(path.read_text().replace('listen = "127.0.0.1:8080"',
                                             'listen = "127.0.0.1:0"'))
    return path


async def test_init_loopback_and_run_show_mail_flowing(tmp_path: Path) -> None:
    from gatewayd import daemon

    path = await asyncio.to_thread(_loopback_site, tmp_path)
    config = load_config(path)
    assert config.loopback is not None and config.mode == "test"
    sink_folder = config.loopback.sink_folder
    async with daemon.start(config) as runtime:
        # The sample mails arrive by themselves: three tickets (one an auto-reply).
        await until(lambda: _count(Ticket, 3), 30, "3 tickets")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{runtime.http_port}",
                                     timeout=30) as client:
            answer = await client.post("/forms/contact", headers={"Accept": "application/json"},
                                       data={"email": "maria@example.org", "message": "Hallo"})
            assert answer.status_code == 201, answer.text
        # A customer writes to the support address through the sink: it lands in the mailbox.
        await aiosmtplib.send(
            b"From: Tom <tom@example.org>\r\nTo: support@shop.example\r\n"
            b"Subject: Frage\r\n\r\nWo ist mein Paket?\r\n",
            sender="tom@example.org", recipients=["support@shop.example"],
            hostname="127.0.0.1", port=config.loopback.smtp_port, timeout=10)
        await until(lambda: _count(Ticket, 5), 30, "5 tickets")
        # Confirmations for two sample mails, the form and Tom's mail, and the info mail.
        await until(lambda: _files(sink_folder, 5), 30, "5 mails in the sink")
        ticket_ids = [t.id for t in await Ticket.all()]
    mails = [email.message_from_bytes(p.read_bytes(), policy=email.policy.default)
             for p in sorted(sink_folder.glob("*.eml"))]
    assert {str(m["X-Envelope-To"]) for m in mails} == {"<qa@shop.example>"}  # test mode
    assert any(str(m["To"]) == "tom@example.org" for m in mails)
    # A restart keeps the sample mails from coming again.
    async with daemon.start(config):
        await asyncio.sleep(1.5)
        assert [t.id for t in await Ticket.all()] == ticket_ids
    status = await asyncio.to_thread(_status, path)
    assert "tickets: 5" in status
    assert f"SMTP sink {config.loopback.smtp_listen}: 5 mail(s) in {sink_folder}" in status


async def _count(model: Any, n: int) -> bool:
    return bool(await model.all().count() >= n)


async def _files(folder: Path, n: int) -> bool:
    return len(await asyncio.to_thread(lambda: list(folder.glob("*.eml")))) >= n


def _status(path: Path) -> str:
    import contextlib
    import io

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert cli.main(["--config", str(path), "status"]) == 0
    return out.getvalue()


def test_loopback_listens_only_on_loopback_and_warns_in_live_mode(tmp_path: Path) -> None:
    from gatewayd.config import ConfigError, check_semantics

    with pytest.raises(ConfigError) as refused:
        _config(tmp_path, loopback={"imap_listen": "0.0.0.0:10143"})
    assert [p.key for p in refused.value.problems] == ["loopback.imap_listen"]
    live = _config(tmp_path, loopback={}, mode="live")
    assert [p.severity for p in check_semantics(live) if p.key == "loopback"] == ["warning"]


async def test_a_busy_loopback_port_names_the_key_to_change(tmp_path: Path) -> None:
    import socket

    from gatewayd import daemon

    path = await asyncio.to_thread(_loopback_site, tmp_path)
    config = load_config(path)
    assert config.loopback is not None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", config.loopback.imap_port))
        taken.listen()
        with pytest.raises(OSError) as refused:
            async with daemon.start(config):
                pass
    assert f"cannot listen on {config.loopback.imap_listen} for [loopback]" in str(refused.value)
    assert "change loopback.imap_listen" in str(refused.value)


def test_test_fetch_and_test_send_say_the_loopback_servers_run_inside_run(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without `gatewayd run`, the embedded servers of an `init --loopback` site do not exist:
    test-fetch and test-send say so instead of leaving a bare "connection refused"."""
    path = _loopback_site(tmp_path)
    capsys.readouterr()
    assert cli.main(["--config", str(path), "test-fetch", "support"]) == 1
    err = capsys.readouterr().err
    assert "cannot connect" in err
    assert "embedded [loopback] IMAP server: it runs only while `gatewayd run` does" in err
    with capture_logs() as logs:
        assert cli.main(["--config", str(path), "test-send", "support"]) == 1
    err = capsys.readouterr().err
    assert "not sent through support" in err
    assert "embedded [loopback] SMTP sink: it runs only while `gatewayd run` does" in err
    # A test mail is not retried behind the operator's back, and the log does not say it is.
    rows = [e for e in logs if e["event"].startswith("outbox row")]
    assert [e["event"] for e in rows] == ["outbox row failed"], rows
    assert asyncio.run(_outbox_states(load_config(path))) == [("failed", 1, None)]


async def _outbox_states(config: Config) -> list[tuple[str, int, object]]:
    async with open_database(config.database_url):
        return [(r.status, r.attempts, r.next_attempt_at) for r in await Outbox.all()]
