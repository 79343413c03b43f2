"""End to end through the running daemon: a customer's mail comes in over IMAP, the
confirmation goes out over SMTP, and the customer's replies to it come back over IMAP into the
same ticket: by the thread headers, by the `[Ticket-ID N]` subject keyword alone (mail programs
that drop the headers), and by In-Reply-To alone (subject rewritten)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from gatewayd import daemon
from gatewayd.config import Config
from gatewayd.loopback.imap import start_imap_server
from gatewayd.loopback.smtp import smtp_sink
from gatewayd.store.models import Message, Ticket
from tests.conftest import TOKEN
from tests.test_outbound import RECEIVED

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def customer_mail(subject: str, message_id: str, body: str = "Hallo",
                  **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"From: Erika Kundin <erika@example.org>\r\nTo: support@shop.example\r\n"
            f"Subject: {subject}\r\nMessage-ID: {message_id}\r\n{head}"
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + body + "\r\n").encode()


async def message_ticket(message_id: str, seconds: float = 20) -> int:
    """The ticket a mail with this Message-ID was imported into (waits for the poller)."""
    for _ in range(int(seconds / 0.05)):
        row = await Message.get_or_none(message_id=message_id)
        if row is not None:
            return int(row.ticket_id)  # type: ignore[attr-defined]
        await asyncio.sleep(0.05)
    raise AssertionError(f"{message_id} was not imported within {seconds} s")


@sqlite_only
async def test_reply_to_a_sent_mail_threads_back_into_the_same_ticket(
    make_config: Callable[..., Config]
) -> None:
    async with start_imap_server({"support": "imap-pw"}) as imap, smtp_sink() as sink:
        account: dict[str, Any] = {
            "name": "support", "address": "support@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": imap.port, "security": "none",
                     "username": "support", "password": "imap-pw", "poll_seconds": 1},
            "smtp": {"host": "127.0.0.1", "port": sink.port, "security": "none",
                     "sender_name": "Shop", "reply_to": "support@shop.example"},
        }
        config = make_config(mode="live", accounts=[account], events=[RECEIVED],
                             outbound={"poll_seconds": 0.05},
                             http={"listen": "127.0.0.1:0", "api_tokens": [TOKEN]})
        async with daemon.start(config):
            # 1. The customer writes: IMAP in.
            await imap.append("support", customer_mail("Wo ist mein Paket?", "<c1@example.org>"))
            ticket_id = await message_ticket("<c1@example.org>")
            # 2. The confirmation: SMTP out, to the customer, threaded and keyworded.
            [confirmation] = await sink.wait_for(1, seconds=20)
            sent = confirmation.message()
            assert confirmation.rcpt_tos == ("erika@example.org",)
            assert sent["In-Reply-To"] == "<c1@example.org>"
            assert f"[Ticket-ID {ticket_id}]" in sent["Subject"]
            our_id = sent["Message-ID"]

            # 3a. The customer answers from a normal mail program: IMAP in again.
            await imap.append("support", customer_mail(
                f"Re: {sent['Subject']}", "<c2@example.org>", "Danke!\r\n\r\n> " + "Zitat",
                In_Reply_To=our_id, References=f"<c1@example.org> {our_id}"))
            assert await message_ticket("<c2@example.org>") == ticket_id
            # 3b. A mail program that drops the thread headers: the subject keyword routes it.
            await imap.append("support", customer_mail(
                f"AW: {sent['Subject']}", "<c3@example.org>", "Noch eine Frage"))
            assert await message_ticket("<c3@example.org>") == ticket_id
            # 3c. Subject rewritten, headers kept: our Message-ID routes it.
            await imap.append("support", customer_mail(
                "ganz neuer Betreff", "<c4@example.org>", "Und noch etwas",
                In_Reply_To=our_id))
            assert await message_ticket("<c4@example.org>") == ticket_id

            assert await Ticket.all().count() == 1
            # The replies are customer messages, not new tickets: no further confirmation.
            await asyncio.sleep(0.3)
            assert len(sink.received) == 1
