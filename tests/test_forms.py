"""Shop forms over a real uvicorn server: tickets, contacts, orders, attachments, the outbox.

These exercise the store, so they run on SQLite and PostgreSQL (the `db_url` fixture).
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import httpx
import pytest

from gatewayd.config import Config
from gatewayd.store.models import Attachment, Message, Outbox, Ticket
from tests.conftest import Api

JSON = {"Accept": "application/json"}
PNG = b"\x89PNG\r\n\x1a\n" + b"\x00" * 64


def form_config(make_config: Callable[..., Config], **form: Any) -> Config:
    """The skeleton with one `contact` form and an active first account to answer from."""
    from tests.conftest import skeleton_data

    data = skeleton_data()
    definition = {
        "name": "contact",
        "ticket": {"type": "Beschwerde", "status": "Eingegangen"},
        "success_url": "https://shop.example/danke",
        "allowed_origins": ["https://shop.example"],
        "fields": [
            {"name": "email", "type": "email", "required": True, "label": "E-Mail"},
            {"name": "name", "type": "name", "label": "Name"},
            {"name": "subject", "type": "subject", "label": "Betreff"},
            {"name": "message", "type": "message", "required": True, "label": "Nachricht"},
            {"name": "order", "type": "order_id", "label": "Auftragsnummer"},
            {"name": "file", "type": "attachment", "label": "Datei"},
        ],
        **form,
    }
    accounts = data["accounts"]
    second = {**accounts[0], "name": "second", "address": "second@shop.example"}
    return make_config(forms=[definition], accounts=[accounts[0], second],
                       backend_ticket_url="https://backend.shop.example/tickets/{id}")


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    return form_config(make_config)


def _fields(**extra: str) -> dict[str, str]:
    return {"email": "Erika@Example.org", "name": "Erika Muster", "subject": "Lieferung",
            "message": "Wo bleibt mein Paket?\nBitte schreiben Sie an other@example.net.",
            **extra}


async def test_urlencoded_post_creates_ticket_with_form_type_and_status(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post("/forms/contact", data=_fields(), headers=JSON)
    assert response.status_code == 201, response.text
    ticket_id = response.json()["ticket_id"]
    ticket = (await api.client.get(f"/api/tickets/{ticket_id}")).json()
    assert (ticket["type"], ticket["status"], ticket["source"]) == (
        "Beschwerde", "Eingegangen", "form")
    assert ticket["title"] == "Lieferung"
    assert ticket["account"] == "support"  # answers go out through the first account
    text = ticket["messages"][0]["text"]
    assert "Name: Erika Muster" in text and "Wo bleibt mein Paket?" in text
    assert ticket["messages"][0]["from_address"] == "erika@example.org"
    row = await Ticket.get(id=ticket_id)
    assert row.reply_address == "erika@example.org"


async def test_multipart_post_with_attachment(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post(
            "/forms/contact", data=_fields(subject="Foto"), headers=JSON,
            files={"file": ("schaden.png", PNG, "image/png")},
        )
    assert response.status_code == 201, response.text
    message = await Message.get(ticket_id=response.json()["ticket_id"])
    attachments = await Attachment.filter(message_id=message.id)
    assert [(a.filename, a.content_type, a.size) for a in attachments] == [
        ("schaden.png", "image/png", len(PNG))]
    assert "Attachment: schaden.png" in message.text
    stored = await api.client.get(f"/api/attachments/{attachments[0].id}")
    assert stored.status_code == 200 and stored.content == PNG


async def test_attachment_of_a_type_not_allowed_is_refused_and_names_the_field(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post(
            "/forms/contact", data=_fields(), headers=JSON,
            files={"file": ("tool.exe", b"MZ\x90\x00", "application/octet-stream")},
        )
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert [d["field"] for d in detail] == ["file"] and ".exe" in detail[0]["message"]
    assert await Ticket.all().count() == 0


async def test_contact_matched_by_the_email_field_only(api: Api) -> None:
    erika = (await api.client.post("/api/contacts", json={
        "first_name": "Erika", "last_name": "Muster", "emails": {"private": "erika@example.org"},
    })).json()
    other = (await api.client.post("/api/contacts", json={
        "first_name": "Otto", "last_name": "Other", "emails": {"business": "other@example.net"},
    })).json()
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        # The message names other@example.net; only the email field counts.
        matched = await public.post("/forms/contact", data=_fields(), headers=JSON)
        unknown = await public.post(
            "/forms/contact", headers=JSON,
            data=_fields(email="new@example.com", message="Ich bin other@example.net"))
    ticket = (await api.client.get(f"/api/tickets/{matched.json()['ticket_id']}")).json()
    assert ticket["contact_id"] == erika["id"] != other["id"]
    stranger = (await api.client.get(f"/api/tickets/{unknown.json()['ticket_id']}")).json()
    assert stranger["contact_id"] is None
    assert (await Ticket.get(id=stranger["id"])).reply_address == "new@example.com"


async def test_order_linked_only_when_it_belongs_to_the_address(api: Api) -> None:
    contact = (await api.client.post("/api/contacts", json={
        "first_name": "Erika", "last_name": "Muster", "emails": {"private": "erika@example.org"},
    })).json()
    mine = (await api.client.post("/api/orders", json={
        "id": 5001, "contact_id": contact["id"], "billing_email": "erika@example.org"})).json()
    theirs = (await api.client.post("/api/orders", json={
        "id": 5002, "billing_email": "someone@example.net"})).json()
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        linked = await public.post("/forms/contact", headers=JSON,
                                   data=_fields(order=f"#{mine['id']}"))
        foreign = await public.post("/forms/contact", headers=JSON,
                                    data=_fields(order=str(theirs["id"])))
    one = (await api.client.get(f"/api/tickets/{linked.json()['ticket_id']}")).json()
    assert (one["order_id"], one["contact_id"]) == (5001, contact["id"])
    two = (await api.client.get(f"/api/tickets/{foreign.json()['ticket_id']}")).json()
    assert two["order_id"] is None and two["contact_id"] == contact["id"]
    assert "order 5002 belongs to another address" in two["messages"][0]["text"]


@pytest.mark.parametrize("number", ["99999999999999999999", "4294967296", "2147483648"])
async def test_order_number_beyond_any_row_id_is_no_such_order(api: Api, number: str) -> None:
    # Beyond PostgreSQL's integer (and bigint): the look-up must not reach the database.
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post("/forms/contact", headers=JSON,
                                     data=_fields(order=number))
    assert response.status_code == 201, response.text
    ticket = (await api.client.get(f"/api/tickets/{response.json()['ticket_id']}")).json()
    assert ticket["order_id"] is None
    text = ticket["messages"][0]["text"]
    assert f"Auftragsnummer: {number}" in text
    assert f"Note: order {number} does not exist (not linked)" in text


async def test_info_mail_and_confirmation_in_outbox_reach_only_the_test_address(
    api: Api, config: Config
) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post("/forms/contact", data=_fields(), headers=JSON)
    ticket_id = response.json()["ticket_id"]
    rows = await Outbox.filter(ticket_id=ticket_id).order_by("id")
    by_event = {row.event: row for row in rows}
    info = by_event["form_submitted"]
    assert info.intended_to == [config.merchant_address]
    # The merchant's info mail, from templates_dir/_form_info in the merchant's language.
    assert info.subject == f"[Ticket-ID {ticket_id}] Formular contact: Lieferung"
    assert info.language == "de"
    parsed = email.message_from_string(info.content, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    body = parsed.get_content()
    assert "Wo bleibt mein Paket?" in body and f"/tickets/{ticket_id}" in body
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert info.account == "support"
    confirmation = by_event["ticket_created"]  # the configured Eingangsbestätigung action
    assert confirmation.intended_to == ["erika@example.org"]
    assert config.mode == "test"
    for row in rows:
        assert row.envelope_to == [config.test_recipient]


async def test_info_mail_that_cannot_be_built_does_not_lose_the_submission(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gatewayd.ingest import form_ticket
    from gatewayd.outbound.mails import MailError

    def broken(*args: Any) -> None:
        raise MailError("'owner@' is not a single plain e-mail address")

    monkeypatch.setattr(form_ticket, "info_mail", broken)
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post("/forms/contact", data=_fields(), headers=JSON)
    assert response.status_code == 201, response.text
    ticket_id = response.json()["ticket_id"]
    info = await Outbox.get(ticket_id=ticket_id, event="form_submitted")
    assert info.status == "failed" and "cannot build the mail" in (info.last_error or "")
    assert info.subject == "Form contact: Lieferung"


async def test_browser_post_redirects_to_success_url(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        response = await public.post("/forms/contact", data=_fields(),
                                     headers={"Origin": "https://shop.example"})
    assert response.status_code == 303
    assert response.headers["location"] == "https://shop.example/danke"
    assert await Ticket.all().count() == 1


async def test_validation_errors_json_and_browser(api: Api) -> None:
    bad = {"email": "not-an-address", "message": "", "order": "12a"}
    async with httpx.AsyncClient(base_url=api.base_url) as public:
        as_json = await public.post("/forms/contact", data=bad, headers=JSON)
        as_browser = await public.post("/forms/contact", data=bad, headers={
            "Origin": "https://shop.example", "Referer": "https://shop.example/kontakt?x=1"})
    assert as_json.status_code == 422
    assert {d["field"] for d in as_json.json()["detail"]} == {"email", "message", "order"}
    assert as_browser.status_code == 303
    location = httpx.URL(as_browser.headers["location"])
    assert location.host == "shop.example" and location.path == "/kontakt"
    assert location.params["x"] == "1"
    assert set(location.params["errors"].split(",")) == {"email", "message", "order"}
    # In the form's language (default_language here): templates_dir/_form_messages/de.txt
    assert location.params["error.message"] == "Bitte füllen Sie dieses Feld aus."
    assert await Ticket.all().count() == 0
