"""UID and UIDVALIDITY at the top of their range (2^32 - 1) through the whole import, and the
receipt that makes a re-fetch a no-op — on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.pipeline import Envelope, import_mail
from gatewayd.ingest.poller import AccountPoller
from gatewayd.loopback.imap import start_imap_server
from gatewayd.runtime import Runtime
from gatewayd.store.db import open_database
from gatewayd.store.models import InboundReceipt, Ticket
from gatewayd.store.tickets import TicketStore

TOP = 4_294_967_295  # 2^32 - 1, the largest UID and UIDVALIDITY IMAP allows


async def test_largest_uid_and_uidvalidity(make_config: Callable[..., Config]) -> None:
    async with start_imap_server({"support": "pw"}) as imap:
        config = make_config(accounts=[{
            "name": "support", "address": "support@shop.example",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": imap.port, "security": "none",
                     "username": "support", "password": "pw"},
        }])
        await imap.set_uids("support", uidvalidity=TOP, last_uid=TOP - 1)
        raw = (b"From: a@example.org\r\nSubject: Grenzwert\r\nMessage-ID: <top@x>\r\n\r\n"
               b"Hallo\r\n")
        uid = await imap.append("support", raw)
        assert uid == TOP
        async with open_database(config.database_url):
            runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
            account = config.account("support")
            assert account is not None
            assert await AccountPoller(runtime, account, asyncio.Event()).poll_now() == 1
            receipt = await InboundReceipt.get()
            assert (receipt.uidvalidity, receipt.uid, receipt.server_action_done) == (
                TOP, TOP, True)
            # The same server mail again: only the receipt answers, nothing is doubled.
            again = await import_mail(runtime.store, account,
                                      Envelope("support", "INBOX", TOP, TOP), raw)
            assert again.kind == "duplicate"
            assert await Ticket.all().count() == 1
        assert await imap.uids("support") == []
