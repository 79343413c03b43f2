"""Merge, anonymise and personal-data export end to end: through the HTTP API on SQLite and
PostgreSQL, and through the CLI."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.cli import main as cli_main
from gatewayd.ops.gdpr import duplicate_groups, identifying_terms, redact
from gatewayd.store.attachments import blob_path
from gatewayd.store.models import (
    Attachment,
    Contact,
    ContactAddress,
    Message,
    Order,
    Outbox,
    Ticket,
)
from gatewayd.store.tickets import NewAttachment, NewMessage
from tests.conftest import Api
from tests.test_contacts_csv import write_config


async def _contact(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    response = await client.post("/api/contacts", json=body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


async def _ticket(client: httpx.AsyncClient, contact_id: int, title: str) -> int:
    response = await client.post("/api/tickets", json={"title": title, "contact_id": contact_id})
    assert response.status_code == 201, response.text
    ticket_id: int = response.json()["id"]
    return ticket_id


async def test_merge_anonymise_and_export(api: Api) -> None:
    client, store = api.client, api.runtime.store
    anna = await _contact(client, first_name="Anna", last_name="Berg", company="Berg GmbH",
                          emails={"private": "anna.berg@example.org"},
                          addresses=[{"kind": "billing", "primary": True,
                                      "email": "anna.berg@example.org", "name": "Anna Berg",
                                      "street": "Lindenweg 5", "phone": "+49 30 1234567"}])
    duplicate = await _contact(client, first_name="A.", last_name="Berg", number="K-77",
                               emails={"business": "anna.berg@example.org"})
    other = await _contact(client, first_name="Otto", last_name="Other",
                           emails={"private": "otto@example.org"})
    order = (await client.post("/api/orders", json={"contact_id": duplicate["id"],
                                                     "billing_email": "anna.berg@example.org"}))
    assert order.status_code == 201
    first = await _ticket(client, anna["id"], "Lieferung fehlt")
    second = await _ticket(client, duplicate["id"], "Rechnung für Anna Berg")
    untouched = await _ticket(client, other["id"], "Otto fragt")
    await store.add_message(first, NewMessage(
        text="Hallo, hier ist Anna Berg (anna.berg@example.org), Tel. +49 30 1234567.",
        from_address="anna.berg@example.org", from_name="Anna Berg",
        to_addresses=["support@shop.example"], subject="Wo bleibt meine Lieferung, Anna Berg?"))
    # Attachments: one only Anna sent, one whose content Otto's ticket holds too.
    await store.add_message(first, NewMessage(
        text="Foto anbei", from_address="anna.berg@example.org", from_name="Anna",
        attachments=[NewAttachment("ausweis.jpg", "image/jpeg", b"\xff\xd8 Anna's ID card"),
                     NewAttachment("agb.pdf", "application/pdf", b"%PDF- shop terms")]))
    await store.add_message(untouched, NewMessage(
        text="AGB", from_address="otto@example.org",
        attachments=[NewAttachment("agb.pdf", "application/pdf", b"%PDF- shop terms")]))
    own_digest, shared_digest = (hashlib.sha256(c).hexdigest()
                                 for c in (b"\xff\xd8 Anna's ID card", b"%PDF- shop terms"))
    assert blob_path(store.data_dir, own_digest).exists()
    await Outbox.create(ticket_id=first, intended_to=["anna.berg@example.org"],
                        envelope_to=["qa@shop.example"], subject="Ihre Anfrage, Anna Berg",
                        content="To: anna.berg@example.org\n\nHallo Anna Berg", status="queued")

    # Merge the duplicate (same e-mail address) into Anna: every ticket and the order are kept.
    merged = await client.post(f"/api/contacts/{anna['id']}/merge",
                               json={"from": [duplicate["id"]]})
    assert merged.status_code == 200, merged.text
    assert merged.json()["tickets"] == 1 and merged.json()["orders"] == 1
    assert merged.json()["contact"]["number"] == "K-77"  # filled from the duplicate
    assert (await client.get(f"/api/contacts/{duplicate['id']}")).status_code == 404
    tickets = (await client.get("/api/tickets", params={"contact_id": anna["id"]})).json()
    assert sorted(t["id"] for t in tickets) == sorted([first, second])
    assert (await client.post(f"/api/contacts/{anna['id']}/merge",
                              json={"from": [anna["id"]]})).status_code == 422

    # Export: everything about Anna, as JSON.
    exported = await client.get(f"/api/contacts/{anna['id']}/export")
    assert exported.status_code == 200
    assert "attachment" in exported.headers["content-disposition"]
    data = exported.json()
    assert data["contact"]["first_name"] == "Anna"
    assert data["email_addresses"] == ["anna.berg@example.org"]
    assert [t["id"] for t in data["tickets"]] == sorted([first, second])
    assert any("Lieferung" in (m["subject"] or "") for t in data["tickets"] for m in t["messages"])
    assert data["orders"][0]["id"] == order.json()["id"]
    assert data["mails"][0]["to"] == ["anna.berg@example.org"]

    # Anonymise: irreversible, personal data gone, tickets and their history stay.
    done = await client.post(f"/api/contacts/{anna['id']}/anonymize")
    assert done.status_code == 200, done.text
    assert done.json()["tickets"] == 2 and done.json()["addresses"] == 1
    assert done.json()["attachments"] == 2
    assert not await Attachment.filter(message__ticket_id=first).exists()
    assert not blob_path(store.data_dir, own_digest).exists(), "Anna's file must be deleted"
    assert blob_path(store.data_dir, shared_digest).exists(), "Otto's message still uses it"
    assert await Attachment.filter(message__ticket_id=untouched).count() == 1
    noted = await Message.get(ticket_id=first, text="Foto anbei")
    assert any("2 attachment(s) removed" in n["note"] for n in noted.notes)
    contact = (await client.get(f"/api/contacts/{anna['id']}")).json()
    assert contact["first_name"] == "Anonymisiert" and contact["last_name"] == f"#{anna['id']}"
    assert contact["emails"] == {"private": None, "business": None, "paypal": None}
    assert contact["addresses"] == [] and contact["company"] is None
    assert contact["anonymized_at"] is not None and contact["active"] is False
    assert (await Order.get(id=order.json()["id"])).contact_id is None  # type: ignore[attr-defined]
    view = (await client.get(f"/api/tickets/{first}")).json()
    assert view["contact_id"] == anna["id"] and len(view["status_history"]) == 1
    assert view["messages"], "the ticket keeps its messages"
    whole = json.dumps((await client.get(f"/api/contacts/{anna['id']}/export")).json())
    for personal in ("Anna", "anna.berg@example.org", "Berg GmbH", "Lindenweg", "1234567"):
        assert personal not in whole, personal
    assert "Lieferung" in whole  # the history itself stays readable
    message = await Message.filter(ticket_id=first, from_address__isnull=False).first()
    assert message is not None
    assert message.from_address == "anonymised@invalid"
    mail = await Outbox.get(ticket_id=first)
    assert mail.status == "suppressed" and mail.content == "" and "Anna" not in mail.subject
    assert not await ContactAddress.filter(contact_id=anna["id"]).exists()
    assert (await client.post(f"/api/contacts/{anna['id']}/anonymize")).status_code == 409
    assert (await client.post("/api/contacts/999999/anonymize")).status_code == 404

    # Nobody else was touched.
    assert (await Ticket.get(id=untouched)).title == "Otto fragt"
    assert (await Contact.get(id=other["id"])).email_private == "otto@example.org"

    async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
        assert (await anonymous.post(f"/api/contacts/{other['id']}/anonymize")).status_code == 401
        assert (await anonymous.get(f"/api/contacts/{other['id']}/export")).status_code == 401


async def test_cli_merge_auto_anonymise_and_personal_data(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db_url = f"sqlite://{tmp_path / 'gw.sqlite3'}"
    config = str(write_config(tmp_path / "site", db_url))
    source = tmp_path / "c.csv"
    source.write_text("number,first_name,last_name,email_private,email_business\n"
                      "1,Jo,Doe,jo@example.org,\n2,Joanna,Doe,,jo@example.org\n"
                      "3,Max,Muster,max@example.org,\n", "utf-8")

    def run(*argv: str) -> int:
        return cli_main(["--config", config, *argv])

    assert await asyncio.to_thread(run, "contacts", "import", str(source)) == 0
    assert await asyncio.to_thread(run, "contacts", "merge", "--auto", "--dry-run") == 0
    assert "would merge 2 into 1" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "contacts", "merge", "--auto") == 0
    assert "merged 2 into 1" in capsys.readouterr().out
    assert await asyncio.to_thread(run, "contacts", "personal-data", "1") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["contact"]["emails"]["private"] == "jo@example.org"
    assert await asyncio.to_thread(run, "contacts", "anonymize", "1") == 1  # needs --yes
    assert await asyncio.to_thread(run, "contacts", "anonymize", "1", "--yes") == 0
    assert await asyncio.to_thread(run, "contacts", "anonymize", "1", "--yes") == 1
    assert "was anonymised" in capsys.readouterr().err
    out_file = tmp_path / "p.json"
    assert await asyncio.to_thread(run, "contacts", "personal-data", "1", "-o",
                                   str(out_file)) == 0
    assert "jo@example.org" not in out_file.read_text("utf-8")
    assert await asyncio.to_thread(run, "contacts", "personal-data", "42") == 1


def test_pure_decisions() -> None:
    assert duplicate_groups([(1, ["a@x.de"]), (2, [None, "b@x.de"]), (3, ["b@x.de", "a@x.de"]),
                             (4, ["c@x.de"])]) == [[1, 2, 3]]
    contact = Contact(first_name="Al", last_name="Berger", email_private="al@x.de")
    terms = identifying_terms(contact, [])
    # longest first; a name under three letters alone is not redacted (it would hit words)
    assert terms == ["Al Berger", "al@x.de", "Berger"]
    assert redact("Mail von al@x.de, Herr BERGER", terms) == \
        "Mail von [anonymisiert], Herr [anonymisiert]"
    assert redact(None, terms) is None
