"""Test mode: on every sending path the SMTP server sees only the test address, while the
outbox keeps who the mail was meant for. Live mode sends to the real recipients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from gatewayd import daemon
from gatewayd.config import Config
from gatewayd.loopback.smtp import SmtpSink, smtp_sink
from gatewayd.outbound import cli as outbound_cli
from gatewayd.outbound import sender
from gatewayd.outbound.actions import event_action_hook
from gatewayd.outbound.outbox import enqueue_mail, envelope_for
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox
from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore
from tests.conftest import TOKEN
from tests.test_outbound import RECEIVED, STAFF
from tests.test_sender import account_data

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
QA = "qa@shop.example"


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


@pytest.fixture
def testmode(make_config: Callable[..., Config], sink: SmtpSink) -> Callable[..., Config]:
    def build(**overrides: Any) -> Config:
        overrides.setdefault("mode", "test")
        overrides.setdefault("test_recipient", QA)
        overrides.setdefault("accounts", [account_data("support", sink)])
        overrides.setdefault("events", [RECEIVED, STAFF])
        overrides.setdefault("outbound", {"poll_seconds": 0.05})
        return make_config(**overrides)
    return build


def test_envelope_guard_is_pure_and_total(make_config: Callable[..., Config]) -> None:
    config = make_config(mode="test", test_recipient=QA)
    assert envelope_for(config, ["a@example.org", "b@example.org"]) == [QA]
    assert envelope_for(config, []) == []
    live = make_config(mode="live")
    assert envelope_for(live, ["a@example.org", "a@example.org"]) == ["a@example.org"]


async def test_event_actions_in_test_mode_reach_only_the_test_address(
    testmode: Callable[..., Config], sink: SmtpSink
) -> None:
    config = testmode()
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket = await store.create_ticket(
            NewTicket(title="Paket", source="mail", account="support",
                      reply_address="kunde@example.org"),
            first_message=NewMessage(text="?", from_address="kunde@example.org"))
        await store.add_message(ticket.id, NewMessage(text="Antwort", direction="out"))
        await sender.run_once(config)
        found = await Outbox.filter(ticket_id=ticket.id).order_by("id")
    assert [(r.intended_to, r.envelope_to, r.status) for r in found] == [
        (["kunde@example.org"], [QA], "sent"), (["kunde@example.org"], [QA], "sent")]
    assert len(sink.received) == 2
    assert sink.envelope_recipients() == {QA}


@sqlite_only
async def test_merchant_info_mail_door_diverts(testmode: Callable[..., Config],
                                               sink: SmtpSink) -> None:
    """The forms code enqueues the merchant's info mail through `enqueue_mail` like this."""
    config = testmode(merchant_address="owner@shop.example")
    message = EmailMessage()
    message["From"] = "support@shop.example"
    message["To"] = "owner@shop.example"
    message["Cc"] = "someone-else@example.org"
    message["Bcc"] = "hidden@example.org"
    message["Subject"] = "Form contact"
    message.set_content("info")
    async with open_database(config.database_url):
        row = await enqueue_mail(config, message, ["owner@shop.example"], account="support",
                                 event="form_submitted")
        await sender.run_once(config)
        row = await Outbox.get(id=row.id)
    assert row.status == "sent" and row.intended_to == ["owner@shop.example"]
    # Cc/Bcc headers name other people, but the envelope is what the server delivers to.
    assert sink.envelope_recipients() == {QA}


@sqlite_only
async def test_test_send_command_diverts(testmode: Callable[..., Config],
                                         sink: SmtpSink) -> None:
    config = testmode()
    code, report = await outbound_cli.test_send(config, "support", "someone@example.org")
    assert code == 0, report
    assert "test mode: meant for someone@example.org" in report
    assert sink.envelope_recipients() == {QA}
    assert sink.received[0].message()["Subject"] == "gatewayd test mail through support"


@sqlite_only
async def test_test_send_reports_failure_and_unknown_account(
    testmode: Callable[..., Config], sink: SmtpSink
) -> None:
    sink.fail_data.append("554 5.7.1 no thanks")
    config = testmode()
    code, report = await outbound_cli.test_send(config, "support", None)
    assert code == 1 and "554" in report
    code, report = await outbound_cli.test_send(config, "nope", None)
    assert code == 1 and "use one of: support" in report
    async with open_database(config.database_url):
        # A failed test mail is not retried behind the operator's back.
        assert await Outbox.filter(status="queued").count() == 0


@sqlite_only
async def test_live_mode_sends_to_the_real_recipient(testmode: Callable[..., Config],
                                                     sink: SmtpSink) -> None:
    config = testmode(mode="live")
    code, report = await outbound_cli.test_send(config, "support", "someone@example.org")
    assert code == 0, report
    assert sink.envelope_recipients() == {"someone@example.org"}


@sqlite_only
async def test_every_http_path_in_the_running_daemon_diverts(
    testmode: Callable[..., Config], sink: SmtpSink
) -> None:
    """The daemon as operators run it: API staff message, manual template send and (when the
    forms code is present) a form submission with its merchant info mail."""
    config = testmode(merchant_address="owner@shop.example",
                      http={"listen": "127.0.0.1:0", "api_tokens": [TOKEN]})
    async with daemon.start(config) as runtime:
        base = f"http://127.0.0.1:{runtime.http_port}"
        async with httpx.AsyncClient(base_url=base, timeout=30,
                                     headers={"Authorization": f"Bearer {TOKEN}"}) as client:
            contact = (await client.post("/api/contacts", json={
                "first_name": "K", "emails": {"private": "kunde@example.org"}})).json()
            ticket = (await client.post("/api/tickets", json={
                "title": "Frage", "contact_id": contact["id"]})).json()
            assert (await client.post(f"/api/tickets/{ticket['id']}/messages",
                                      json={"text": "Antwort"})).status_code == 201
            sent = await client.post(f"/api/tickets/{ticket['id']}/send-template",
                                     json={"template": "ticket_received"})
            assert sent.status_code == 201
            expected = 2
            form = await client.post(
                "/forms/contact",
                data={"email": "former@example.org", "message": "Hallo", "subject": "Form"},
                headers={"Accept": "application/json", "Origin": "http://127.0.0.1:8080"})
            if form.status_code != 404:  # the forms door: confirmation + merchant info mail
                assert form.status_code == 201, form.text
                expected += 2
            await sink.wait_for(expected, seconds=20)
            await asyncio.sleep(0.2)  # anything extra would show up now
            rows = (await client.get("/api/outbox", params={"limit": 100})).json()
    assert len(sink.received) == expected
    assert sink.envelope_recipients() == {QA}
    assert {r["status"] for r in rows} == {"sent"}
    intended = {a for r in rows for a in r["intended_to"]}
    assert "kunde@example.org" in intended and QA not in intended
    if expected == 4:
        assert {"former@example.org", "owner@shop.example"} <= intended
