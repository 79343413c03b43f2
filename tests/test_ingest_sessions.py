"""An account's connection against a real IMAP server on loopback (pymap, in-process): IDLE and
polling, a stop, a refused login that parks one account while the others go on, required
STARTTLS that the server does not offer; and the operator commands `test-fetch` and
`quarantine list|retry` through the real CLI. SQLite only, as test_ingest_imap.py."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.ingest.imap import TlsRequired
from gatewayd.ingest.pipeline import Envelope
from gatewayd.ingest.poller import run_account
from gatewayd.loopback.imap import LoopbackImap, start_imap_server
from gatewayd.store.models import AccountState, Message, Ticket
from tests.test_config import to_toml
from tests.test_ingest_imap import USERS, account, imap, poll, running, text_mail, wait_for

__all__ = ["imap"]  # the fixture, used by name


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


async def test_idle_account_imports_pushed_mail_and_stops_cleanly(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port, poll_seconds=300)])
    async with running(config) as runtime:
        acc = config.account("support")
        assert acc is not None
        stop = asyncio.Event()
        task = asyncio.create_task(run_account(runtime, acc, stop))

        async def idle() -> bool:
            return runtime.health.get("support") is not None and (
                runtime.health["support"].state == "idle")

        await wait_for(idle)
        await asyncio.sleep(0.2)  # let the IDLE command reach the server
        await imap.append("support", text_mail("Per IDLE", message_id="<idle@x>"))
        await wait_for(lambda: Message.filter(message_id="<idle@x>").exists())
        stop.set()
        await asyncio.wait_for(task, 10)
        state = await AccountState.get(account="support")
        assert state.state == "stopped" and state.last_poll_at is not None


async def test_polling_account_without_idle(make_config: Callable[..., Config]) -> None:
    async with start_imap_server(USERS, idle=False) as server:
        config = make_config(accounts=[account("support", server.port, poll_seconds=1)])
        async with running(config) as runtime:
            acc = config.account("support")
            assert acc is not None
            stop = asyncio.Event()
            task = asyncio.create_task(run_account(runtime, acc, stop))
            await wait_for(lambda: AccountState.filter(account="support", state="idle").exists())
            await server.append("support", text_mail("Per Polling", message_id="<poll@x>"))
            await wait_for(lambda: Message.filter(message_id="<poll@x>").exists())
            stop.set()
            await asyncio.wait_for(task, 10)


async def test_refused_login_parks_the_account_and_others_keep_running(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    bad = account("support", imap.port, password="wrong")
    config = make_config(accounts=[bad, account("sales", imap.port)])
    await imap.append("sales", text_mail("Läuft", message_id="<ok@x>"))
    async with running(config) as runtime:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_account(runtime, a, stop)) for a in config.accounts]
        await wait_for(lambda: AccountState.filter(account="support", state="parked").exists())
        await wait_for(lambda: Message.filter(message_id="<ok@x>").exists())
        state = await AccountState.get(account="support")
        assert "refused the login" in (state.last_error or "")
        assert "wrong" not in (state.last_error or "")
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 10)


async def test_required_starttls_not_offered_is_refused(
    imap: LoopbackImap, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", imap.port, security="starttls")])
    await imap.append("support", text_mail("Nie im Klartext"))
    async with running(config) as runtime:
        with pytest.raises(TlsRequired, match="does not offer STARTTLS"):
            await poll(runtime, "support")
        assert await Ticket.all().count() == 0


async def test_cli_test_fetch_and_quarantine_commands(
    imap: LoopbackImap, make_config: Callable[..., Config], tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    import json
    import tomllib

    from gatewayd.cli import main
    from gatewayd.ingest.commands import test_fetch

    config = make_config(accounts=[account("support", imap.port)])
    await imap.append("support", text_mail("Eins"))
    await imap.append("support", text_mail("Zwei"))
    report = await test_fetch(config, "support")
    assert report["unseen"] == 2 and report["capabilities"] == {
        "IDLE": True, "MOVE": True, "UIDPLUS": True}
    with pytest.raises(LookupError, match="no account named"):
        await test_fetch(config, "nope")
    # quarantine list / retry through the real CLI (a thread: the CLI runs its own loop).
    async with running(config) as runtime:
        from gatewayd.ingest.quarantine import quarantine_mail

        entry = await quarantine_mail(runtime.store, Envelope("support", "INBOX", 1, 7),
                                      text_mail("Zurückgehalten"), "test reason", 1)
    path = tmp_path / "cli.toml"
    data: dict[str, Any] = {
        "database_url": config.database_url, "data_dir": str(config.data_dir),
        "test_recipient": "qa@shop.example", "templates_dir": str(config.templates_dir),
        "status_groups": [{"name": "Offen"}, {"name": "Geschlossen"}],
        "ticket_types": [{"name": "Kundenanfrage", "statuses": [
            {"name": "Neu", "progress": 0, "group": "Offen"}]}],
        "accounts": [account("support", imap.port)],
    }
    path.write_text(to_toml(data), encoding="utf-8")
    assert tomllib.loads(path.read_text())
    capsys.readouterr()  # drop the log lines so far
    code = await asyncio.to_thread(main, ["--config", str(path), "quarantine", "list", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)[0]["reason"] == "test reason"
    code = await asyncio.to_thread(main, ["--config", str(path), "quarantine", "retry",
                                          str(entry.id)])
    assert code == 0 and "imported into ticket" in capsys.readouterr().out
    code = await asyncio.to_thread(main, ["--config", str(path), "test-fetch", "support"])
    assert code == 0 and "2 unseen" in capsys.readouterr().out
