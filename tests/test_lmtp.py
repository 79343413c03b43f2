"""LMTP delivery against the real daemon (`daemon.start`: database, HTTP, workers, the listener
on a free loopback port or a unix socket), spoken to by a real LMTP client on asyncio streams.

Engine-independent behaviour runs on SQLite; the receipt key (two 63-bit halves of a SHA-256 in
BIGINT columns) and redelivery also on PostgreSQL when GATEWAYD_TEST_POSTGRES_URL is set.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd import daemon
from gatewayd.config import Config
from gatewayd.ingest.lmtp_delivery import after_failure, declared_size, lmtp_envelope
from gatewayd.ingest.pipeline import import_batch, import_one
from gatewayd.loopback.lmtp import LmtpClient, deliver
from gatewayd.runtime import Runtime
from gatewayd.store.models import InboundReceipt, Message, Outbox, Quarantine, Ticket

NEW = {"type": "Kundenanfrage", "status": "Neu"}


def accounts(**extra: dict[str, Any]) -> list[dict[str, Any]]:
    """Two LMTP-only accounts (no [accounts.imap]); `extra` adds keys per account name."""
    found = [{"name": "support", "address": "support@shop.example",
              "aliases": ["Info@Shop.example", "hilfe@shop.example"], "new_ticket": NEW},
             {"name": "sales", "address": "sales@shop.example", "new_ticket": NEW}]
    for account in found:
        account.update(extra.get(str(account["name"]), {}))
    return found


def mail(subject: str = "Frage zur Bestellung", message_id: str = "<m1@kunde.example>",
         body: str = "Hallo, wo bleibt meine Bestellung?", sender: str = "kunde@kunde.example",
         **headers: str) -> bytes:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    return (f"From: Kunde <{sender}>\r\nTo: support@shop.example\r\nSubject: {subject}\r\n"
            f"Message-ID: {message_id}\r\n{head}Content-Type: text/plain; charset=utf-8\r\n\r\n"
            f"{body}\r\n").encode()


@contextlib.asynccontextmanager
async def gateway(make_config: Callable[..., Config], *, lmtp: dict[str, Any] | None = None,
                  **overrides: Any) -> AsyncIterator[Runtime]:
    overrides.setdefault("accounts", accounts())
    config = make_config(lmtp={"listen": "127.0.0.1:0", **(lmtp or {})}, **overrides)
    async with daemon.start(config) as runtime:
        yield runtime


def address(runtime: Runtime) -> str:
    assert runtime.lmtp is not None
    return runtime.lmtp.address


# Engine-independent tests take only the SQLite database of conftest's `db_url`.
SQLITE = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


# ------------------------------------------------------------------------------ decisions


def test_receipt_key_halves_fit_a_signed_bigint_and_differ_per_account() -> None:
    digest = "f" * 64
    env = lmtp_envelope("support", digest)
    assert env.folder == "lmtp" and env.uidvalidity == env.uid == 2**63 - 1
    assert lmtp_envelope("sales", digest).uid == env.uid and lmtp_envelope("sales", digest) != env
    zero = lmtp_envelope("support", "0" * 64)
    assert lmtp_envelope("support", "2" + "0" * 63) != zero  # in the first half
    assert lmtp_envelope("support", "0" * 31 + "2" + "0" * 32) != zero  # in the second


def test_size_option_and_failure_decisions() -> None:
    assert declared_size(["BODY=8BITMIME", "SIZE=1234"]) == 1234
    assert declared_size(["size=77"]) == 77 and declared_size(["SIZE=x"]) is None
    assert declared_size(["SIZE=\u00b2"]) is None  # a digit to str.isdigit, not to int()
    assert declared_size(["SIZE=" + "9" * 5000]) == 10**18  # beyond every limit, no ValueError
    assert after_failure(False, 0, 3) == "deferred_database"  # never the mail's fault
    assert after_failure(False, 5, 3) == "deferred_database"
    assert after_failure(True, 1, 3) == "deferred"
    assert after_failure(True, 3, 3) == "quarantine"


# ------------------------------------------------------------------------------ delivery


@SQLITE
async def test_recipients_aliases_and_unknown_recipient(make_config: Callable[..., Config]
                                                        ) -> None:
    async with gateway(make_config) as runtime:
        client = await LmtpClient.connect(address(runtime))
        assert client.greeting and client.greeting.code == 220
        replies = await client.send("kunde@kunde.example",
                                    ["SUPPORT@shop.example", "nobody@shop.example",
                                     "info@shop.EXAMPLE", "sales@shop.example",
                                     "relay@elsewhere.example"], mail())
        assert replies["nobody@shop.example"].code == 550
        assert replies["nobody@shop.example"].text.startswith("5.1.1")
        assert replies["relay@elsewhere.example"].code == 550  # no relay, whatever the domain
        for rcpt in ("SUPPORT@shop.example", "info@shop.EXAMPLE", "sales@shop.example"):
            assert replies[rcpt].code == 250, replies
            assert replies[rcpt].text.startswith("2.0.0")
        # One mail for each account, whatever number of its addresses were named.
        tickets = await Ticket.all().order_by("account").values_list("account", "source", "title")
        assert tickets == [("sales", "mail", "Frage zur Bestellung"),
                           ("support", "mail", "Frage zur Bestellung")]
        # The session goes on after a multi-recipient DATA: the replies did not get out of step.
        assert (await client.command("NOOP")).code == 250
        # LMTP-only accounts are doing their job: /healthz and status say `no imap`, healthy
        # (they said `disabled`, not healthy).
        assert {n: (h.state, h.healthy) for n, h in runtime.health.items()} == {
            "support": ("no imap", True), "sales": ("no imap", True)}
        await client.close()
        receipts = await InboundReceipt.filter(folder="lmtp").count()
        assert receipts == 2


@SQLITE
async def test_odd_bytes_in_the_envelope_get_a_final_answer_not_try_again(
    make_config: Callable[..., Config]
) -> None:
    """An undecodable recipient (its reply could not be written: 451, so the MTA retried an
    address that does not exist) and a SIZE of non-ASCII digits (aiosmtpd's int() raised: 451)
    are refused for good, and the session goes on."""
    async with gateway(make_config) as runtime:
        client = await LmtpClient.connect(address(runtime))
        assert (await client.command("LHLO mta.example")).code == 250
        odd_size = await client.command("MAIL FROM:<kunde@kunde.example> SIZE=\u00b2")
        assert odd_size.code == 501 and odd_size.text.startswith("5.5.4"), odd_size
        assert (await client.command("MAIL FROM:<kunde@kunde.example> SIZE=100")).code == 250
        client.writer.write(b"RCPT TO:<\xff@shop.example>\r\n")
        refused = await client.reply()
        assert refused.code == 550, refused
        assert refused.text.startswith("5.1.1 <\\udcff@shop.example>"), refused
        accepted = await client.command("RCPT TO:<support@shop.example>")
        assert accepted.code == 250, accepted
        assert (await client.command("RSET")).code == 250
        await client.close()


async def test_redelivery_of_the_same_mail_gets_250_and_no_second_ticket(
        make_config: Callable[..., Config]) -> None:
    """An MTA whose reply was lost (a timeout after DATA) delivers again: the receipt's key
    (account, lmtp, SHA-256 halves) recognises it, on both engines; a changed mail is new."""
    async with gateway(make_config) as runtime:
        first = await deliver(address(runtime), "kunde@kunde.example",
                              ["support@shop.example"], mail())
        again = await deliver(address(runtime), "kunde@kunde.example",
                              ["hilfe@shop.example"], mail())
        assert first["support@shop.example"].code == 250
        assert again["hilfe@shop.example"].code == 250
        assert "already delivered" in again["hilfe@shop.example"].text
        assert await Ticket.all().count() == 1 and await Message.all().count() == 1
        # Same Message-ID, other content: not a redelivery.
        other = await deliver(address(runtime), "kunde@kunde.example",
                              ["support@shop.example"], mail(body="Noch eine Frage"))
        assert "already" not in other["support@shop.example"].text
        assert await Message.all().count() == 2


@SQLITE
async def test_concurrent_redeliveries_store_the_mail_once(
        make_config: Callable[..., Config]) -> None:
    async with gateway(make_config) as runtime:
        results = await asyncio.gather(*(
            deliver(address(runtime), "kunde@kunde.example", ["support@shop.example"], mail())
            for _ in range(4)))
        assert [r["support@shop.example"].code for r in results] == [250] * 4
        assert await Ticket.all().count() == 1
        assert await InboundReceipt.filter(folder="lmtp").count() == 1


@SQLITE
async def test_bounce_with_null_sender_is_stored_as_automatic(
        make_config: Callable[..., Config]) -> None:
    """We make the final delivery, so the envelope sender becomes the Return-Path: MAIL FROM:<>
    marks a bounce, and event actions never answer it (no mail loop with the MTA)."""
    async with gateway(make_config) as runtime:
        client = await LmtpClient.connect(address(runtime))
        bounce = await client.send("", ["support@shop.example"],
                                   mail(subject="Frage", message_id="<b@mx>"))
        normal = await client.send("kunde@kunde.example", ["sales@shop.example"],
                                   mail(subject="Frage", message_id="<n@kunde.example>"))
        await client.close()
        assert bounce["support@shop.example"].code == normal["sales@shop.example"].code == 250
        auto = await Message.get(message_id="<b@mx>")
        assert auto.auto_reply is True
        assert (await Message.get(message_id="<n@kunde.example>")).auto_reply is False
        # The acknowledgement action answers the customer, never the bounce.
        answered = await Outbox.exclude(status="suppressed").values_list("ticket_id", flat=True)
        assert auto.ticket_id not in answered  # type: ignore[attr-defined]
        assert answered, "the normal mail was answered"


@SQLITE
async def test_size_limits_refuse_early_and_per_recipient(
        make_config: Callable[..., Config]) -> None:
    """552 5.3.4: on MAIL FROM SIZE= above every limit, on RCPT for the account whose limit it
    exceeds, and after DATA for that recipient only; data above every limit is refused once
    per recipient and the session stays in step."""
    small = {"imap": {"host": "127.0.0.1", "security": "none", "username": "s",
                      "password": "x", "max_message_bytes": 2048}}
    config_accounts = accounts(sales=small)
    config_accounts[1]["active"] = True
    async with gateway(make_config, accounts=config_accounts,
                       lmtp={"max_message_bytes": 8192}) as runtime:
        client = await LmtpClient.connect(address(runtime))
        refused = await client.command("MAIL FROM:<k@kunde.example> SIZE=9000")
        assert refused.code == 552 and refused.text.startswith("5.3.4")
        await client.command("RSET")
        assert (await client.command("MAIL FROM:<k@kunde.example> SIZE=4000")).code == 250
        early = await client.command("RCPT TO:<sales@shop.example>")
        assert early.code == 552 and early.text.startswith("5.3.4")
        await client.command("RSET")
        # Undeclared size: decided after DATA, per recipient.
        big = mail(body="x" * 4000)
        replies = await client.send("k@kunde.example", ["support@shop.example",
                                                        "sales@shop.example"], big, size=False)
        assert replies["support@shop.example"].code == 250
        assert replies["sales@shop.example"].code == 552
        assert replies["sales@shop.example"].text.startswith("5.3.4")
        huge = mail(body="y" * 10000)
        replies = await client.send("k@kunde.example", ["support@shop.example",
                                                        "hilfe@shop.example"], huge, size=False)
        assert [r.code for r in replies.values()] == [552, 552]
        assert (await client.command("NOOP")).code == 250
        await client.close()
        assert await Ticket.all().values_list("account", flat=True) == ["support"]


@SQLITE
async def test_inactive_account_and_too_many_recipients_are_temporary(
        make_config: Callable[..., Config]) -> None:
    config_accounts = accounts(sales={"active": False})
    async with gateway(make_config, accounts=config_accounts,
                       lmtp={"max_recipients": 2}) as runtime:
        client = await LmtpClient.connect(address(runtime))
        replies = await client.send("k@kunde.example", ["sales@shop.example",
                                                        "support@shop.example",
                                                        "info@shop.example",
                                                        "hilfe@shop.example"], mail())
        await client.close()
        assert replies["sales@shop.example"].code == 450
        assert replies["hilfe@shop.example"].code == 452
        assert replies["support@shop.example"].code == 250
        assert await Ticket.all().count() == 1


@SQLITE
async def test_poison_mail_is_quarantined_with_its_reason_and_250(
        make_config: Callable[..., Config]) -> None:
    lines = ["From: a@kunde.example", "Subject: poison", 'Content-Type: multipart/mixed; '
             'boundary="b0"', ""]
    for i in range(80):
        lines += [f"--b{i}", f'Content-Type: multipart/mixed; boundary="b{i + 1}"', ""]
    poison = "\r\n".join([*lines, "--b80--", ""]).encode()
    async with gateway(make_config) as runtime:
        replies = await deliver(address(runtime), "a@kunde.example",
                                ["support@shop.example", "sales@shop.example"], poison)
        assert [r.code for r in replies.values()] == [250, 250]
        assert "quarantine" in replies["support@shop.example"].text
        entries = await Quarantine.all().order_by("account")
        assert [e.account for e in entries] == ["sales", "support"]
        assert all(e.reason.startswith("cannot parse") and e.folder == "lmtp" for e in entries)
        stored = (Path(runtime.config.data_dir) / "quarantine" / f"{entries[0].sha256}.eml")
        assert stored.read_bytes().endswith(poison)
        again = await deliver(address(runtime), "a@kunde.example", ["support@shop.example"],
                              poison)
        assert again["support@shop.example"].code == 250
        assert await Quarantine.all().count() == 2  # a redelivery is not set aside twice


@SQLITE
async def test_failing_mail_is_deferred_then_quarantined_after_max_attempts(
        make_config: Callable[..., Config]) -> None:
    """An exception from the mail's content (here an event action) while the database answers:
    451 so the MTA retries, and after max_attempts quarantine with the reason and 250. The
    mails behind it are delivered meanwhile."""
    async with gateway(make_config) as runtime:

        async def failing_hook(store: Any, event: Any) -> None:
            ticket = await Ticket.get(id=event.ticket_id)
            if ticket.title == "Kaputt":
                raise RuntimeError("event action exploded")

        runtime.store.hooks.append(failing_hook)
        bad = mail(subject="Kaputt", message_id="<bad@kunde.example>")
        codes = []
        for _ in range(3):
            replies = await deliver(address(runtime), "k@kunde.example",
                                    ["support@shop.example"], bad)
            codes.append(replies["support@shop.example"].code)
            good = await deliver(address(runtime), "k@kunde.example", ["support@shop.example"],
                                 mail(subject=f"Gut {len(codes)}",
                                      message_id=f"<good{len(codes)}@kunde.example>"))
            assert good["support@shop.example"].code == 250
        assert codes == [451, 451, 250]
        entry = await Quarantine.get()
        assert "event action exploded" in entry.reason and entry.attempts == 3
        assert await Ticket.filter(title="Kaputt").count() == 0
        assert await Ticket.filter(title__startswith="Gut").count() == 3


@SQLITE
async def test_group_commit_stores_waiting_mails_together_and_isolates_a_bad_one(
        make_config: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    """While one mail commits, the next ones of the account wait and then commit in one
    transaction; one of them failing (an event action) rolls that group back, and the mails
    are then stored one by one: the good ones get 250, the bad one 451."""
    from gatewayd.ingest import lmtp_delivery

    first_in, release = asyncio.Event(), asyncio.Event()
    commits: list[tuple[str, int]] = []

    async def batch(store: Any, account: Any, items: list[Any], **kw: Any) -> Any:
        commits.append(("together", len(items)))
        return await import_batch(store, account, items, **kw)

    async def one(store: Any, account: Any, item: Any, **kw: Any) -> Any:
        commits.append(("alone", 1))
        return await import_one(store, account, item, **kw)

    monkeypatch.setattr(lmtp_delivery, "import_batch", batch)
    monkeypatch.setattr(lmtp_delivery, "import_one", one)
    async with gateway(make_config) as runtime:

        async def hook(store: Any, event: Any) -> None:
            ticket = await Ticket.get(id=event.ticket_id)
            if ticket.title == "Erste":
                first_in.set()
                await release.wait()
            if ticket.title == "Kaputt":
                raise RuntimeError("event action exploded")

        runtime.store.hooks.append(hook)
        where = address(runtime)
        first = asyncio.create_task(deliver(where, "k@kunde.example", ["support@shop.example"],
                                            mail(subject="Erste", message_id="<1@k>")))
        await asyncio.wait_for(first_in.wait(), 30)
        subjects = ["Zwei", "Kaputt", "Drei", "Vier", "Fünf"]
        rest = [asyncio.create_task(deliver(where, "k@kunde.example", ["support@shop.example"],
                                            mail(subject=s, message_id=f"<{s}@k>")))
                for s in subjects]
        for _ in range(1500):  # until all five wait behind the first (parsing takes a moment)
            if len(runtime_waiting(runtime)) == len(subjects):
                break
            await asyncio.sleep(0.02)
        assert len(runtime_waiting(runtime)) == len(subjects)
        release.set()
        results = [r["support@shop.example"].code for r in await asyncio.gather(first, *rest)]
        assert results == [250, 250, 451, 250, 250, 250]
        assert sorted(await Ticket.all().values_list("title", flat=True)) == [
            "Drei", "Erste", "Fünf", "Vier", "Zwei"]
        assert commits == [("alone", 1), ("together", 5)] + [("alone", 1)] * 5


def runtime_waiting(runtime: Runtime) -> list[Any]:
    """The mails waiting for the group commit (through the listener the worker made)."""
    assert runtime.lmtp is not None
    return [w for group in runtime.lmtp.delivery.waiting.values() for w in group]
