"""The JSON API over a real uvicorn server, on SQLite and PostgreSQL."""

from __future__ import annotations

import httpx
import pytest

from tests.conftest import Api


async def _contact(api: Api, **extra: object) -> dict:
    body = {"first_name": "Erika", "last_name": "Muster", "language": "de",
            "emails": {"private": "Erika@Example.org"}, **extra}
    response = await api.client.post("/api/contacts", json=body)
    assert response.status_code == 201, response.text
    return response.json()


async def _ticket(api: Api, **body: object) -> dict:
    response = await api.client.post("/api/tickets", json={"title": "Frage", **body})
    assert response.status_code == 201, response.text
    return response.json()


async def test_healthz_reports_database(api: Api) -> None:
    response = await api.client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["database"] is True


async def test_401_without_or_with_wrong_token(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
        response = await anonymous.get("/api/tickets")
        assert response.status_code == 401
        assert response.json()["error"] == "missing bearer token"
        assert response.headers["www-authenticate"] == "Bearer"
        wrong = await anonymous.get("/api/tickets", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"] == "invalid bearer token"
        # Nothing was created without a token.
        created = await anonymous.post("/api/tickets", json={"title": "x"})
        assert created.status_code == 401
    assert (await api.client.get("/api/tickets")).json() == []


async def test_contacts_and_orders(api: Api) -> None:
    contact = await _contact(api, id=4711, number="K-1", addresses=[
        {"kind": "billing", "primary": True, "email": "billing@example.org", "city": "Kassel"},
        {"id": 90, "kind": "delivery", "email": "delivery@example.org"},
    ])
    assert contact["id"] == 4711
    assert contact["emails"]["private"] == "erika@example.org"
    assert [a["kind"] for a in contact["addresses"]] == ["billing", "delivery"]
    assert contact["addresses"][1]["id"] == 90

    # An auto-numbered contact after an explicit id gets a new, free id (PostgreSQL sequence).
    other = await _contact(api, emails={"business": "firma@example.org"})
    assert other["id"] not in (4711,)

    found = (await api.client.get("/api/contacts", params={"email": "ERIKA@example.org"})).json()
    assert [c["id"] for c in found] == [4711]
    by_address = (await api.client.get("/api/contacts",
                                       params={"email": "delivery@example.org"})).json()
    assert [c["id"] for c in by_address] == [4711]
    assert (await api.client.get("/api/contacts/4711")).json()["number"] == "K-1"

    order = await api.client.post("/api/orders", json={
        "id": 1001, "contact_id": 4711, "invoice_number": "RE-2026-7", "language": "en",
        "billing_email": "billing@example.org"})
    assert order.status_code == 201, order.text
    assert order.json()["id"] == 1001
    read = (await api.client.get("/api/orders/1001")).json()
    assert read["contact_id"] == 4711 and read["invoice_number"] == "RE-2026-7"

    duplicate = await api.client.post("/api/contacts", json={"id": 4711})
    assert duplicate.status_code == 409
    assert "already exists" in duplicate.json()["error"]
    missing = await api.client.post("/api/orders", json={"contact_id": 999999})
    assert missing.status_code == 422
    assert missing.json()["detail"]["field"] == "contact_id"


async def test_ticket_lifecycle_status_history_and_progress(api: Api) -> None:
    contact = await _contact(api)
    ticket = await _ticket(api, contact_id=contact["id"], priority=4, owners=["anna"],
                           tags=["rückfrage"], type="Kundenanfrage")
    assert ticket["status"] == "Neu" and ticket["progress"] == 0
    assert ticket["status_group"] == "Offen"
    assert ticket["source"] == "api"
    assert ticket["owners"] == [{"name": "anna", "role": None}]

    patched = await api.client.patch(f"/api/tickets/{ticket['id']}",
                                     json={"status": "In Bearbeitung"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["progress"] == 50
    closed = (await api.client.patch(f"/api/tickets/{ticket['id']}",
                                     json={"status": "Erledigt", "folder": "Archiv"})).json()
    assert closed["progress"] == 100 and closed["status_group"] == "Geschlossen"
    assert closed["folder"] == "Archiv"

    full = (await api.client.get(f"/api/tickets/{ticket['id']}")).json()
    history = [(h["from_status"], h["status"], h["progress"]) for h in full["status_history"]]
    assert history == [(None, "Neu", 0), ("Neu", "In Bearbeitung", 50),
                       ("In Bearbeitung", "Erledigt", 100)]

    # A change of type without a status takes the new type's first status.
    retyped = (await api.client.patch(f"/api/tickets/{ticket['id']}",
                                      json={"type": "Beschwerde"})).json()
    assert (retyped["type"], retyped["status"], retyped["progress"]) == (
        "Beschwerde", "Eingegangen", 0)


async def test_messages_and_comments(api: Api) -> None:
    ticket = await _ticket(api)
    message = await api.client.post(f"/api/tickets/{ticket['id']}/messages",
                                    json={"text": "Ihr Paket ist unterwegs.", "author": "anna",
                                          "topic": "Versand"})
    assert message.status_code == 201, message.text
    assert message.json()["kind"] == "message" and message.json()["direction"] == "out"
    comment = await api.client.post(f"/api/tickets/{ticket['id']}/comments",
                                    json={"text": "Intern: Lager gefragt"})
    assert comment.status_code == 201
    assert comment.json()["kind"] == "comment"
    full = (await api.client.get(f"/api/tickets/{ticket['id']}")).json()
    assert [(m["kind"], m["text"]) for m in full["messages"]] == [
        ("message", "Ihr Paket ist unterwegs."), ("comment", "Intern: Lager gefragt")]
    assert full["messages"][0]["topic"] == "Versand"
    assert full["messages"][0]["auto_reply"] is False


async def test_search_by_each_filter(api: Api) -> None:
    contact = await _contact(api)
    order = (await api.client.post("/api/orders", json={"contact_id": contact["id"]})).json()
    a = await _ticket(api, title="Lieferung fehlt", contact_id=contact["id"], priority=5,
                      owners=["anna"], tags=["versand"])
    b = await _ticket(api, title="Rechnung falsch", type="Beschwerde", order_id=order["id"],
                      priority=1)
    c = await _ticket(api, title="Allgemein", tags=["versand"])
    await api.client.patch(f"/api/tickets/{c['id']}", json={"status": "Erledigt"})
    await api.client.post(f"/api/tickets/{b['id']}/messages",
                          json={"text": "Die Gutschrift über 12,50 EUR folgt."})

    async def ids(**params: str | int) -> list[int]:
        response = await api.client.get("/api/tickets", params=params)
        assert response.status_code == 200, response.text
        return sorted(t["id"] for t in response.json())

    assert await ids(status="Erledigt") == [c["id"]]
    assert await ids(type="Beschwerde") == [b["id"]]
    assert await ids(status_group="Offen") == sorted([a["id"], b["id"]])
    assert await ids(status_group="Geschlossen") == [c["id"]]
    assert await ids(contact_id=contact["id"]) == [a["id"]]
    assert await ids(order_id=order["id"]) == [b["id"]]
    assert await ids(owner="anna") == [a["id"]]
    assert await ids(priority=1) == [b["id"]]
    assert await ids(tag="versand") == sorted([a["id"], c["id"]])
    assert await ids(q="lieferung") == [a["id"]]  # title, case-insensitive
    assert await ids(q="gutschrift") == [b["id"]]  # message text
    assert await ids(q="nirgends") == []
    assert await ids(tag="versand", status="Neu") == [a["id"]]
    page = await ids(limit=1, offset=1)
    assert len(page) == 1
    too_many = await api.client.get("/api/tickets", params={"limit": 101})
    assert too_many.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("get", "/api/tickets/999999", None, 404),
        ("patch", "/api/tickets/999999", {"title": "x"}, 404),
        ("post", "/api/tickets/999999/messages", {"text": "x"}, 404),
        ("get", "/api/contacts/999999", None, 404),
        ("get", "/api/orders/999999", None, 404),
        ("get", "/api/attachments/999999", None, 404),
        ("post", "/api/tickets", {}, 422),
        ("post", "/api/tickets", {"title": "x", "priority": 9}, 422),
        ("post", "/api/tickets", {"title": "x", "type": "Unbekannt"}, 422),
        ("post", "/api/tickets", {"title": "x", "status": "Gelöst"}, 422),
        ("post", "/api/tickets", {"title": "x", "owners": ["nobody"]}, 422),
        ("post", "/api/tickets", {"title": "x", "bogus": 1}, 422),
        ("post", "/api/tickets", {"title": "x", "contact_id": 424242}, 422),
        ("get", "/api/tickets?priority=abc", None, 422),
    ],
)
async def test_errors_are_json(api: Api, method: str, path: str, body: object,
                               status: int) -> None:
    response = await api.client.request(method, path, json=body)
    assert response.status_code == status, response.text
    payload = response.json()
    assert set(payload) == {"error", "detail"}
    assert payload["error"]


async def test_patch_validation(api: Api) -> None:
    ticket = await _ticket(api)
    bad_status = await api.client.patch(f"/api/tickets/{ticket['id']}",
                                        json={"status": "Gelöst"})  # belongs to Beschwerde
    assert bad_status.status_code == 422
    assert bad_status.json()["detail"]["allowed"] == ["Neu", "In Bearbeitung", "Erledigt"]
    self_parent = await api.client.patch(f"/api/tickets/{ticket['id']}",
                                         json={"parent_id": ticket["id"]})
    assert self_parent.status_code == 422
    empty = await api.client.patch(f"/api/tickets/{ticket['id']}", json={})
    assert empty.status_code == 422
    child = await _ticket(api, title="Teil 2", parent_id=ticket["id"])
    parent = (await api.client.get(f"/api/tickets/{ticket['id']}")).json()
    assert parent["children"] == [{"id": child["id"], "title": "Teil 2", "status": "Neu"}]
    cycle = await api.client.patch(f"/api/tickets/{ticket['id']}",
                                   json={"parent_id": child["id"]})
    assert cycle.status_code == 422
    # Nothing of the refused changes was written.
    after = (await api.client.get(f"/api/tickets/{ticket['id']}")).json()
    assert after["status"] == "Neu" and after["parent_id"] is None
    assert len(after["status_history"]) == 1
