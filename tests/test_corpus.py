"""Every real-world mail in ../shared/corpus/ is imported as a ticket or quarantined with a reason;
no exception escapes and none blocks the mails behind it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.parse import parse_mail
from gatewayd.ingest.poller import AccountPoller
from gatewayd.loopback.imap import start_imap_server
from gatewayd.runtime import Runtime
from gatewayd.store.db import open_database
from gatewayd.store.models import InboundReceipt, Message, Quarantine
from gatewayd.store.tickets import TicketStore

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
MAILS = sorted(CORPUS.glob("*/*.eml")) if CORPUS.is_dir() else []


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.mark.skipif(not MAILS, reason=f"the shared corpus is not at {CORPUS}")
@pytest.mark.parametrize("path", MAILS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus_mail_parses_into_safe_text(path: Path) -> None:
    mail = parse_mail(path.read_bytes())
    for value in (mail.subject, mail.text, mail.from_name or "", mail.html or ""):
        value.encode("utf-8")  # no lone surrogates
        assert "\x00" not in value


@pytest.mark.skipif(not MAILS, reason=f"the shared corpus is not at {CORPUS}")
async def test_whole_corpus_through_imap_into_tickets_or_quarantine(
    make_config: Callable[..., Config]
) -> None:
    async with start_imap_server({"support": "pw"}) as imap:
        config = make_config(accounts=[{
            "name": "support", "address": "support@shop.example",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": imap.port, "security": "none",
                     "username": "support", "password": "pw", "after_import": "delete"},
        }])
        uids = {}
        for path in MAILS:
            uids[await imap.append("support", path.read_bytes())] = path.name
        async with open_database(config.database_url):
            runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
            account = config.account("support")
            assert account is not None
            poller = AccountPoller(runtime, account, asyncio.Event())
            assert await poller.poll_now() == len(MAILS)
            receipts = {r.uid: r for r in await InboundReceipt.all()}
            assert set(receipts) == set(uids), "every mail has a receipt"
            for uid, receipt in receipts.items():
                if receipt.outcome == "quarantined":
                    entry = await Quarantine.get(uid=uid)
                    assert entry.reason, uids[uid]
                elif receipt.outcome == "imported":
                    assert await Message.exists(id=receipt.ticket_message_id), uids[uid]  # type: ignore[attr-defined]
                else:
                    assert receipt.outcome in ("own_mail", "duplicate"), uids[uid]
            imported = sum(r.outcome == "imported" for r in receipts.values())
            assert imported >= len(MAILS) - 3  # quarantine is the exception, not the rule
        assert await imap.uids("support") == []
