"""The outbox sender against aiosmtpd: plain, STARTTLS with AUTH, implicit TLS with a test CA;
4xx retry with the same Message-ID, 5xx failure, partial refusals, claiming and restarts."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.loopback.smtp import SmtpSink, TestCA, smtp_sink
from gatewayd.outbound import outcomes, sender
from gatewayd.outbound.outbox import enqueue_mail
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


def account_data(name: str, sink: SmtpSink | None, *, security: str = "none",
                 username: str | None = None, password: str | None = None,
                 cafile: str | None = None, active: bool = True,
                 port: int | None = None) -> dict[str, Any]:
    smtp: dict[str, Any] = {
        "host": "127.0.0.1", "port": port or (sink.port if sink else 25), "security": security,
        "sender_name": "Shop Service", "reply_to": f"{name}@shop.example",
        "timeout_seconds": 5,
    }
    if username:
        smtp["username"] = username
        smtp["password"] = password
    if cafile:
        smtp["cafile"] = cafile
    return {"name": name, "address": f"{name}@shop.example", "active": active,
            "language": "de", "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "smtp": smtp}


def live(make_config: Callable[..., Config], *accounts: dict[str, Any], **extra: Any) -> Config:
    outbound = {"retry_base_seconds": 30, "poll_seconds": 0.05, **extra.pop("outbound", {})}
    return make_config(mode="live", accounts=list(accounts), outbound=outbound, **extra)


def simple_mail(subject: str = "Hello", to: str = "kunde@example.org") -> EmailMessage:
    message = EmailMessage()
    message["From"] = "support@shop.example"
    message["To"] = to
    message["Subject"] = subject
    message.set_content("Body text\n")
    return message


@pytest.fixture(scope="module")
def ca() -> Any:
    authority = TestCA()
    yield authority
    authority.cleanup()


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


async def queue(config: Config, to: list[str], account: str | None = "support",
                subject: str = "Hello") -> Outbox:
    return await enqueue_mail(config, simple_mail(subject, to[0]), to, account=account,
                              mail_from=f"{account}@shop.example" if account else None)


@sqlite_only
async def test_plain_delivery_sends_exactly_the_envelope(make_config: Any, sink: SmtpSink) -> None:
    config = live(make_config, account_data("support", sink))
    async with open_database(config.database_url):
        row = await queue(config, ["a@example.org", "b@example.org"])
        assert await sender.run_once(config) == 1
        row = await Outbox.get(id=row.id)
    assert row.status == "sent" and row.attempts == 1 and row.sent_at is not None
    assert len(sink.received) == 1
    got = sink.received[0]
    assert got.mail_from == "support@shop.example"
    assert set(got.rcpt_tos) == {"a@example.org", "b@example.org"}
    assert got.message()["Message-ID"] == row.message_id
    assert row.recipient_results["a@example.org"]["code"] == 250


@sqlite_only
async def test_starttls_with_auth_and_verified_certificate(make_config: Any, ca: TestCA) -> None:
    async with smtp_sink("starttls", ca=ca, users={"support": "s3cret"}) as server:
        config = live(make_config, account_data(
            "support", server, security="starttls", username="support", password="s3cret",
            cafile=str(ca.ca_cert)))
        async with open_database(config.database_url):
            row = await queue(config, ["kunde@example.org"])
            await sender.run_once(config)
            row = await Outbox.get(id=row.id)
        assert row.status == "sent", row.last_error
        assert server.received[0].login == "support"
        assert server.received[0].tls


@sqlite_only
async def test_starttls_wrong_password_keeps_the_mail_for_later(
    make_config: Any, ca: TestCA
) -> None:
    async with smtp_sink("starttls", ca=ca, users={"support": "s3cret"}) as server:
        config = live(make_config, account_data(
            "support", server, security="starttls", username="support", password="wrong",
            cafile=str(ca.ca_cert)))
        async with open_database(config.database_url):
            row = await queue(config, ["kunde@example.org"])
            await sender.run_once(config)
            row = await Outbox.get(id=row.id)
        assert row.status == "queued" and row.attempts == 1
        assert "login refused" in (row.last_error or "")
        assert server.received == []


@sqlite_only
async def test_implicit_tls_verifies_the_certificate(make_config: Any, ca: TestCA) -> None:
    async with smtp_sink("tls", ca=ca, users={"support": "pw"}) as server:
        trusted = live(make_config, account_data(
            "support", server, security="tls", username="support", password="pw",
            cafile=str(ca.ca_cert)))
        async with open_database(trusted.database_url):
            row = await queue(trusted, ["kunde@example.org"])
            await sender.run_once(trusted)
            assert (await Outbox.get(id=row.id)).status == "sent"
        assert len(server.received) == 1 and server.received[0].login == "support"


@sqlite_only
async def test_untrusted_certificate_is_not_accepted(make_config: Any, ca: TestCA) -> None:
    async with smtp_sink("tls", ca=ca) as server:
        config = live(make_config, account_data("support", server, security="tls"))
        async with open_database(config.database_url):
            row = await queue(config, ["kunde@example.org"])
            await sender.run_once(config)
            row = await Outbox.get(id=row.id)
        assert row.status == "queued"
        assert "certificate" in (row.last_error or "").lower()
        assert server.received == []


@sqlite_only
async def test_required_starttls_never_falls_back_to_plain_text(
    make_config: Any, sink: SmtpSink
) -> None:
    # The plain sink offers no STARTTLS: the mail must wait, not go out unencrypted.
    config = live(make_config, account_data("support", sink, security="starttls"))
    async with open_database(config.database_url):
        row = await queue(config, ["kunde@example.org"])
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "queued" and "STARTTLS" in (row.last_error or "").upper()
    assert sink.received == []


@sqlite_only
async def test_4xx_is_retried_with_backoff_and_the_same_message_id(
    make_config: Any, sink: SmtpSink
) -> None:
    config = live(make_config, account_data("support", sink))
    sink.fail_data.append("451 4.3.0 try again later")
    async with open_database(config.database_url):
        row = await queue(config, ["kunde@example.org"])
        await sender.run_once(config)
        first = await Outbox.get(id=row.id)
        assert first.status == "queued" and first.attempts == 1
        assert "451" in (first.last_error or "")
        assert first.next_attempt_at is not None
        # Not due yet: the next cycle leaves it alone.
        assert await sender.run_once(config) == 0
        await Outbox.filter(id=row.id).update(next_attempt_at=dt.datetime.now(dt.UTC))
        await sender.run_once(config)
        second = await Outbox.get(id=row.id)
    assert second.status == "sent" and second.attempts == 2
    assert len(sink.received) == 1
    assert sink.received[0].message()["Message-ID"] == row.message_id


def test_backoff_is_exponential_and_capped() -> None:
    delays = [outcomes.backoff_seconds(n, 60, 3600) for n in range(1, 9)]
    assert delays[:4] == [60, 120, 240, 480]
    assert delays[-1] == 3600 and delays == sorted(delays)


@sqlite_only
async def test_5xx_fails_with_the_servers_answer(make_config: Any, sink: SmtpSink) -> None:
    config = live(make_config, account_data("support", sink))
    sink.fail_data.append("554 5.7.1 message rejected as spam")
    async with open_database(config.database_url):
        row = await queue(config, ["kunde@example.org"])
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "failed"
    assert "554" in (row.last_error or "") and "spam" in (row.last_error or "")


@sqlite_only
async def test_partial_refusal_is_recorded_per_recipient(make_config: Any, sink: SmtpSink) -> None:
    config = live(make_config, account_data("support", sink))
    sink.refuse_rcpt["gone@example.org"] = "550 5.1.1 no such user"
    async with open_database(config.database_url):
        row = await queue(config, ["ok@example.org", "gone@example.org"])
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "sent"
    assert row.recipient_results["gone@example.org"]["code"] == 550
    assert row.recipient_results["ok@example.org"]["code"] == 250
    assert sink.received[0].rcpt_tos == ("ok@example.org",)


@sqlite_only
async def test_all_recipients_refused_permanently_fails(make_config: Any, sink: SmtpSink) -> None:
    config = live(make_config, account_data("support", sink))
    sink.refuse_rcpt["gone@example.org"] = "550 5.1.1 no such user"
    async with open_database(config.database_url):
        row = await queue(config, ["gone@example.org"])
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "failed" and "no such user" in (row.last_error or "")


@sqlite_only
async def test_connection_refused_is_retried_then_given_up(make_config: Any) -> None:
    async with smtp_sink() as closed:
        port = closed.port  # bound once, now closed: nothing listens there
    config = live(make_config, account_data("support", None, port=port),
                  outbound={"max_attempts": 2, "retry_base_seconds": 1})
    async with open_database(config.database_url):
        row = await queue(config, ["kunde@example.org"])
        await sender.run_once(config)
        assert (await Outbox.get(id=row.id)).status == "queued"
        await Outbox.filter(id=row.id).update(next_attempt_at=None)
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "failed" and "gave up after 2 attempts" in (row.last_error or "")


@sqlite_only
async def test_rows_go_through_their_own_account(make_config: Any) -> None:
    async with smtp_sink() as one, smtp_sink() as two:
        config = live(make_config, account_data("support", one), account_data("sales", two))
        async with open_database(config.database_url):
            await queue(config, ["a@example.org"], account="support")
            await queue(config, ["b@example.org"], account="sales")
            await queue(config, ["c@example.org"], account=None)
            await sender.run_once(config)
        assert {r.mail_from for r in one.received} == {"support@shop.example"}
        assert sorted(r.rcpt_tos[0] for r in one.received) == ["a@example.org", "c@example.org"]
        assert [r.rcpt_tos[0] for r in two.received] == ["b@example.org"]


async def test_claim_is_exclusive_and_stale_claims_come_back(make_config: Any) -> None:
    config = live(make_config, account_data("support", None))
    async with open_database(config.database_url):
        for n in range(5):
            await queue(config, [f"k{n}@example.org"])
        first = await sender.claim_due(3, instance="a")
        second = await sender.claim_due(3, instance="b")
        assert len(first) == 3 and len(second) == 2
        assert not {r.id for r in first} & {r.id for r in second}
        assert await sender.claim_due(3, instance="c") == []
        # Instance "a" died mid-send: after the claim timeout its rows are queued again.
        later = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=700)
        assert await sender.requeue_stale(600, now=later) == 5
        again = await sender.claim_due(10, instance="c")
    assert len(again) == 5


async def test_customers_mails_are_claimed_before_internal_ones_that_are_not_yet_old(
        make_config: Any) -> None:
    config = live(make_config, account_data("support", None))
    async with open_database(config.database_url):
        info = await enqueue_mail(config, simple_mail("Info"), ["shop@shop.example"],
                                  account="support", internal=True)
        receipt = await queue(config, ["kunde@example.org"])
        first = await sender.claim_due(1, instance="a")
        assert [r.id for r in first] == [receipt.id]  # younger, but a customer's
        assert [r.id for r in await sender.claim_due(1, instance="a")] == [info.id]
        # An internal mail that has waited INTERNAL_GRACE goes by its age again.
        old = await enqueue_mail(config, simple_mail("Info"), ["shop@shop.example"],
                                 account="support", internal=True)
        newer = await queue(config, ["kunde2@example.org"])
        later = dt.datetime.now(dt.UTC) + sender.INTERNAL_GRACE + dt.timedelta(seconds=1)
        assert [r.id for r in await sender.claim_due(2, now=later, instance="b")] == [
            old.id, newer.id]


@sqlite_only
async def test_inactive_account_keeps_its_mail_queued(make_config: Any, sink: SmtpSink) -> None:
    config = live(make_config, account_data("support", sink, active=False))
    async with open_database(config.database_url):
        row = await queue(config, ["kunde@example.org"])
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "queued" and row.attempts == 0
    assert sink.received == []


async def test_concurrent_claimers_each_get_different_rows(make_config: Any) -> None:
    import asyncio

    config = live(make_config, account_data("support", None))
    async with open_database(config.database_url):
        for n in range(12):
            await queue(config, [f"k{n}@example.org"])
        batches = await asyncio.gather(*(sender.claim_due(3, instance=f"w{i}") for i in range(4)))
        claimed = [row.id for batch in batches for row in batch]
        assert sorted(claimed) == sorted(set(claimed))
        assert len(claimed) == 12
        assert await Outbox.filter(status="sending").count() == 12


@sqlite_only
async def test_rows_of_a_dead_process_are_requeued_at_start(make_config: Any) -> None:
    import asyncio
    import sys

    child = await asyncio.create_subprocess_exec(sys.executable, "-c", "pass")
    await child.wait()
    dead = child.pid  # exited and reaped: no process has this id now
    host = sender.INSTANCE.rpartition(":")[0]
    config = live(make_config, account_data("support", None))
    async with open_database(config.database_url):
        for n in range(3):
            await queue(config, [f"k{n}@example.org"])
        await sender.claim_due(1, instance=f"{host}:{dead}")        # died
        await sender.claim_due(1, instance=f"{host}:{os.getppid()}")  # alive
        await sender.claim_due(1, instance=f"elsewhere:{dead}")     # another host: timeout
        assert await sender.requeue_orphans() == 1
        statuses = [r.status for r in await Outbox.all().order_by("id")]
    assert statuses == ["queued", "sending", "sending"]


@sqlite_only
async def test_each_outcome_is_committed_before_the_next_mail_is_sent(
        make_config: Any, sink: SmtpSink) -> None:
    """A crash mid-batch repeats at most the mail on the wire: when the server receives mail
    n, the rows of mails 1..n-1 are already recorded as sent in the database."""
    config = live(make_config, account_data("support", sink))
    seen: list[list[str]] = []

    async def record_statuses() -> None:
        rows = await Outbox.all().order_by("id").values_list("status", flat=True)
        seen.append([str(s) for s in rows])

    async with open_database(config.database_url):
        for n in range(3):
            await queue(config, [f"k{n}@example.org"], subject=f"Mail {n}")
        sink.on_data = record_statuses
        assert await sender.run_once(config) == 3
        final = await Outbox.all().order_by("id").values_list("status", flat=True)
    assert seen == [["sending", "sending", "sending"], ["sent", "sending", "sending"],
                    ["sent", "sent", "sending"]]
    assert list(final) == ["sent", "sent", "sent"]
