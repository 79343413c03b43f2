"""Event actions end to end: ticket change → rule → template → outbox → sender → aiosmtpd.

Confidential tickets, comments, staff messages only through actions, set_status / set_owner,
header injection from customer data, auto-replies and an echoing autoresponder, the daily cap,
and the outbox API (GET /api/outbox, POST /api/tickets/{id}/send-template).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import structlog

from gatewayd.config import Config
from gatewayd.loopback.smtp import SmtpSink, smtp_sink
from gatewayd.outbound import sender
from gatewayd.outbound.actions import event_action_hook, send_template
from gatewayd.store.contacts import NewContact, create_contact
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox
from gatewayd.store.tickets import NewMessage, NewTicket, TicketPatch, TicketStore
from tests.conftest import Api
from tests.test_sender import account_data

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

RECEIVED = {"name": "Eingangsbestätigung", "on": "ticket_created",
            "filter": {"sources": ["mail", "form"]},
            "actions": [{"send_template": "ticket_received", "to": "customer"}]}
STAFF = {"name": "Antwort", "on": "staff_message",
         "actions": [{"send_template": "staff_reply", "to": "customer"}]}
REOPEN = {"name": "Wieder öffnen", "on": "customer_message",
          "filter": {"status_groups": ["Geschlossen"]},
          "actions": [{"set_status": "Neu"}, {"send_template": "owner_notice", "to": "owners"}]}


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


@pytest.fixture
def outbound(make_config: Callable[..., Config], sink: SmtpSink) -> Callable[..., Config]:
    def build(*events: dict[str, Any], **overrides: Any) -> Config:
        overrides.setdefault("mode", "live")
        overrides.setdefault("accounts", [account_data("support", sink)])
        return make_config(events=list(events), **overrides)
    return build


def mail_from_customer(text: str = "Wo ist mein Paket?", address: str = "kunde@example.org",
                       message_id: str = "<first@customer.example>",
                       auto_reply: bool = False) -> NewMessage:
    return NewMessage(text=text, from_address=address, message_id=message_id,
                      subject="Paket", auto_reply=auto_reply)


async def new_mail_ticket(store: TicketStore, title: str = "Paket",
                          address: str = "kunde@example.org", **kw: Any) -> int:
    ticket = await store.create_ticket(
        NewTicket(title=title, source="mail", account="support", reply_address=address, **kw),
        first_message=mail_from_customer(address=address))
    return ticket.id


async def rows(ticket_id: int | None = None) -> list[Outbox]:
    query = Outbox.all() if ticket_id is None else Outbox.filter(ticket_id=ticket_id)
    return await query.order_by("id")


async def test_ticket_created_answers_the_sender_with_threading_headers(
    outbound: Callable[..., Config], sink: SmtpSink
) -> None:
    config = outbound(RECEIVED, message_id_domain="tickets.shop.example")
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store)
        [row] = await rows(ticket_id)
        assert row.status == "queued" and row.intended_to == ["kunde@example.org"]
        assert row.event == "ticket_created" and row.rule == "Eingangsbestätigung"
        assert row.language == "de" and row.template == "ticket_received"
        await sender.run_once(config)
        assert (await Outbox.get(id=row.id)).status == "sent"
    [got] = sink.received
    assert got.rcpt_tos == ("kunde@example.org",) and got.mail_from == "support@shop.example"
    mail = got.message()
    assert mail["Subject"].startswith(f"[Ticket-ID {ticket_id}] ")
    assert mail["Message-ID"].endswith("@tickets.shop.example>")
    assert mail["Message-ID"] == row.message_id
    assert mail["In-Reply-To"] == "<first@customer.example>"
    assert "<first@customer.example>" in mail["References"]
    assert mail["Auto-Submitted"] == "auto-replied"
    assert mail["X-Loop"] == "support@shop.example"
    assert mail["Reply-To"] == "support@shop.example"
    assert mail.get_content_type() == "multipart/alternative"


@sqlite_only
async def test_api_tickets_and_no_rule_send_nothing(outbound: Callable[..., Config]) -> None:
    config = outbound(RECEIVED)
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket = await store.create_ticket(NewTicket(title="intern", source="api"))
        # No staff_message rule: a staff answer stays in the ticket.
        await store.add_message(ticket.id, NewMessage(text="Antwort", direction="out"))
        assert await rows() == []


@sqlite_only
async def test_staff_message_reaches_the_customer_only_through_an_action(
    outbound: Callable[..., Config], sink: SmtpSink
) -> None:
    config = outbound(STAFF)
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store)
        await store.add_message(ticket_id, NewMessage(text="Ihr Paket ist unterwegs.",
                                                      direction="out", author="anna"))
        [row] = await rows(ticket_id)
        await sender.run_once(config)
    [got] = sink.received
    body = got.message().get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Ihr Paket ist unterwegs." in body
    assert got.message()["Auto-Submitted"] is None  # a person's answer, not an auto-reply
    assert row.rule == "Antwort"


@sqlite_only
async def test_comments_never_reach_customers(outbound: Callable[..., Config],
                                              sink: SmtpSink) -> None:
    config = outbound({"name": "c", "on": "comment_added", "actions": [
        {"send_template": "staff_reply", "to": "customer"},
        {"send_template": "owner_notice", "to": "owners"}]})
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store, owners=[("anna", None)])
        await store.add_message(ticket_id, NewMessage(text="GEHEIM: Kunde ist schwierig",
                                                      kind="comment", direction="out"))
        to_customer, to_owner = await rows(ticket_id)
        assert to_customer.status == "suppressed"
        assert "never reach customers" in (to_customer.last_error or "")
        assert to_owner.status == "queued" and to_owner.intended_to == ["anna@shop.example"]
        await sender.run_once(config)
    assert sink.envelope_recipients() == {"anna@shop.example"}
    assert all(b"GEHEIM" not in r.content or "anna@shop.example" in r.rcpt_tos
               for r in sink.received)


@sqlite_only
async def test_confidential_ticket_never_mails_its_customer(
    outbound: Callable[..., Config], sink: SmtpSink
) -> None:
    config = outbound(RECEIVED, STAFF, {"name": "o", "on": "staff_message", "actions": [
        {"send_template": "owner_notice", "to": "owners"}]})
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store, confidential=True, owners=[("anna", None)])
        await store.add_message(ticket_id, NewMessage(text="x", direction="out"))
        found = await rows(ticket_id)
        statuses = [(r.template, r.status) for r in found]
        assert statuses == [("ticket_received", "suppressed"), ("staff_reply", "suppressed"),
                            ("owner_notice", "queued")]
        assert all("confidential" in (r.last_error or "") for r in found[:2])
        await sender.run_once(config)
    assert sink.envelope_recipients() == {"anna@shop.example"}


@sqlite_only
async def test_set_status_then_notify_owners(outbound: Callable[..., Config],
                                             sink: SmtpSink) -> None:
    config = outbound(REOPEN)
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store, owners=[("anna", None)])
        await store.update_ticket(ticket_id, TicketPatch(status="Erledigt"))
        await store.add_message(ticket_id, mail_from_customer("Doch nicht erledigt!",
                                                              message_id="<2@c.example>"))
        ticket = await store.get_ticket(ticket_id)
        assert ticket.status == "Neu"
        [row] = await rows(ticket_id)
        await sender.run_once(config)
    assert row.template == "owner_notice" and row.intended_to == ["anna@shop.example"]
    body = sink.received[0].message().get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Doch nicht erledigt!" in body and "(Neu)" in body  # rendered after set_status


@sqlite_only
async def test_set_owner_action(outbound: Callable[..., Config]) -> None:
    config = outbound({"name": "assign", "on": "ticket_created",
                       "actions": [{"set_owner": "anna"},
                                   {"send_template": "owner_notice", "to": "owners"}]})
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store)
        [row] = await rows(ticket_id)
    assert row.intended_to == ["anna@shop.example"]


@sqlite_only
async def test_header_injection_in_customer_data_adds_no_header_or_recipient(
    outbound: Callable[..., Config], sink: SmtpSink
) -> None:
    config = outbound(RECEIVED)
    async with open_database(config.database_url):
        contact = await create_contact(NewContact(first_name="Eve\r\nBcc: y@example.org",
                                                  email_private="eve@example.org"))
        store = TicketStore(config, [event_action_hook])
        ticket = await store.create_ticket(
            NewTicket(title="Hallo\r\nBcc: x@example.org\r\nX-Evil: 1", source="mail",
                      account="support", contact_id=contact.id,
                      reply_address="eve@example.org\r\nBcc: z@example.org"),
            first_message=mail_from_customer(address="eve@example.org"))
        [row] = await rows(ticket.id)
        assert row.status == "queued"
        await sender.run_once(config)
    [got] = sink.received
    assert got.rcpt_tos == ("eve@example.org",)
    mail = got.message()
    assert mail["Bcc"] is None and mail["X-Evil"] is None
    assert "\n" not in mail["Subject"].replace("\n ", " ")
    assert "Bcc: x@example.org" in " ".join(mail["Subject"].split())  # kept as harmless text
    assert sink.envelope_recipients() == {"eve@example.org"}


@sqlite_only
async def test_template_injection_from_customer_text_is_not_evaluated(
    outbound: Callable[..., Config], sink: SmtpSink
) -> None:
    config = outbound(STAFF)
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store, title="{{ ''.__class__ }} {% raw %}")
        await store.add_message(ticket_id, NewMessage(text="{{ 7*7 }}", direction="out"))
        await sender.run_once(config)
    mail = sink.received[0].message()
    assert "{{ ''.__class__ }}" in mail["Subject"]
    assert "{{ 7*7 }}" in mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]


@sqlite_only
async def test_auto_reply_is_never_answered(outbound: Callable[..., Config],
                                            sink: SmtpSink) -> None:
    answer_every_message = {"name": "ack", "on": "customer_message",
                            "actions": [{"send_template": "ticket_received", "to": "customer"}]}
    config = outbound(RECEIVED, answer_every_message)
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket = await store.create_ticket(
            NewTicket(title="Abwesend", source="mail", account="support",
                      reply_address="bot@example.org"),
            first_message=mail_from_customer(address="bot@example.org", auto_reply=True))
        await store.add_message(ticket.id, mail_from_customer(
            address="bot@example.org", message_id="<3@bot>", auto_reply=True))
        found = await rows(ticket.id)
        assert [r.status for r in found] == ["suppressed", "suppressed"]
        assert all("automatic reply" in (r.last_error or "") for r in found)
        await sender.run_once(config)
    assert sink.received == []


@sqlite_only
async def test_echoing_autoresponder_gets_at_most_one_mail(
    outbound: Callable[..., Config], sink: SmtpSink
) -> None:
    """An autoresponder that does not mark its mails answers every mail with a new one."""
    config = outbound(RECEIVED)
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        for n in range(4):  # each echo comes in as a new ticket from the same address
            await new_mail_ticket(store, title=f"Re: Echo {n}", address="echo@example.org")
            await sender.run_once(config)
        statuses = [r.status for r in await rows()]
    assert statuses == ["sent", "suppressed", "suppressed", "suppressed"]
    assert len(sink.received) == 1


@sqlite_only
async def test_daily_cap_per_recipient(outbound: Callable[..., Config]) -> None:
    config = outbound({"name": "ack", "on": "customer_message", "actions": [
        {"send_template": "ticket_received", "to": "customer"},
        {"send_template": "staff_reply", "to": "customer"}]},
        outbound={"daily_cap": 3})
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        first = await new_mail_ticket(store, address="busy@example.org")
        second = await new_mail_ticket(store, title="B", address="busy@example.org")
        for ticket_id in (first, second):
            await store.add_message(ticket_id, mail_from_customer(address="busy@example.org"))
        found = await rows()
    # Two templates, once each per 24 h; the cap (3) is not reached by them alone.
    assert [r.status for r in found] == ["queued", "queued", "suppressed", "suppressed"]
    third = outbound({"name": "many", "on": "customer_message", "actions": [
        {"send_template": t, "to": "customer"}
        for t in ("ticket_received", "staff_reply", "owner_notice")]},
        outbound={"daily_cap": 2})
    async with open_database(third.database_url):
        await Outbox.all().delete()
        from gatewayd.store.models import AutoMailLog

        await AutoMailLog.all().delete()
        store = TicketStore(third, [event_action_hook])
        await store.add_message(first, mail_from_customer(address="busy@example.org"))
        found = await rows()
    assert [r.status for r in found] == ["queued", "queued", "suppressed"]
    assert "daily_cap" in (found[2].last_error or "")


@sqlite_only
async def test_nobody_to_write_to_is_a_suppressed_row(outbound: Callable[..., Config]) -> None:
    config = outbound({"name": "x", "on": "ticket_created",
                       "actions": [{"send_template": "ticket_received", "to": "customer"}]})
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket = await store.create_ticket(NewTicket(title="ohne Kunde", source="api"))
        [row] = await rows(ticket.id)
    assert row.status == "suppressed" and "nobody to write to" in (row.last_error or "")
    assert row.content == ""


@sqlite_only
async def test_broken_template_fails_the_row_not_the_ticket(
    outbound: Callable[..., Config], tmp_path: Any
) -> None:
    import shutil

    from tests.test_templates import SKELETON

    templates = tmp_path / "tpl"
    shutil.copytree(SKELETON, templates)
    (templates / "ticket_received" / "de.txt").write_text("{{ Undefined }}", encoding="utf-8")
    config = outbound(RECEIVED, templates_dir=str(templates))
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store)
        [row] = await rows(ticket_id)
    assert row.status == "failed" and "Undefined" in (row.last_error or "")


@sqlite_only
async def test_send_template_helper_for_other_callers(outbound: Callable[..., Config]) -> None:
    config = outbound()
    async with open_database(config.database_url):
        store = TicketStore(config, [event_action_hook])
        ticket_id = await new_mail_ticket(store)
        with structlog.testing.capture_logs() as logs:
            [row] = await send_template(store, ticket_id, "ticket_received", "customer",
                                        rule="form:contact")
    assert row.status == "queued" and row.rule == "form:contact"
    assert row.intended_to == ["kunde@example.org"]
    # The line names the rule and what it answered; `event` stays the line's own text.
    [line] = [e for e in logs if e["event"] == "mail queued"]
    assert (line["rule"], line["on"], line["ticket_id"]) == ("form:contact", None, ticket_id)


# ---------------------------------------------------------------------- HTTP API


@sqlite_only
async def test_send_template_api_and_outbox_list(api: Api) -> None:
    contact = (await api.client.post("/api/contacts", json={
        "first_name": "Erika", "last_name": "Muster", "language": "en",
        "emails": {"private": "erika@example.org"}})).json()
    with_person = (await api.client.post("/api/tickets", json={
        "title": "Frage", "contact_id": contact["id"]})).json()
    nobody = (await api.client.post("/api/tickets", json={"title": "intern"})).json()

    sent = await api.client.post(f"/api/tickets/{with_person['id']}/send-template",
                                 json={"template": "staff_reply"})
    assert sent.status_code == 201, sent.text
    row = sent.json()
    assert row["intended_to"] == ["erika@example.org"]
    assert row["envelope_to"] == ["qa@shop.example"]  # the skeleton runs in test mode
    assert row["language"] == "en" and row["status"] == "queued"
    assert row["subject"].startswith(f"[Ticket-ID {with_person['id']}]")

    conflict = await api.client.post(f"/api/tickets/{nobody['id']}/send-template",
                                     json={"template": "staff_reply"})
    assert conflict.status_code == 409 and "nobody" in conflict.json()["detail"]
    unknown = await api.client.post(f"/api/tickets/{with_person['id']}/send-template",
                                    json={"template": "nope"})
    assert unknown.status_code == 422 and "staff_reply" in unknown.json()["detail"]["allowed"]
    missing = await api.client.post("/api/tickets/99999/send-template",
                                    json={"template": "staff_reply"})
    assert missing.status_code == 404

    listed = (await api.client.get("/api/outbox",
                                   params={"ticket_id": with_person["id"]})).json()
    assert [r["id"] for r in listed] == [row["id"]]
    assert (await api.client.get("/api/outbox", params={"ticket_id": nobody["id"]})).json() == []
    assert (await api.client.get("/api/outbox", params={"status": "bogus"})).status_code == 422
    queued = (await api.client.get("/api/outbox", params={"status": "queued"})).json()
    assert row["id"] in [r["id"] for r in queued]
    unauthorised = await api.client.get("/api/outbox", headers={"Authorization": "Bearer x"})
    assert unauthorised.status_code == 401
