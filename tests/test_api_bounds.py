"""Odd API input is answered 4xx naming the field, never 500: integers beyond the columns, texts
longer than their columns or unstorable (NUL, lone surrogates), and the token checked before
the body. Each case here returned 500 (and dropped the connection) or 422-without-token before
the bounds; the schemathesis run in test_api_fuzz.py searches the rest of the input space."""

from __future__ import annotations

import httpx

from gatewayd.store.models import Contact, ContactAddress, Order
from tests.conftest import Api

HUGE = 2**63  # one past SQLite's INTEGER: OverflowError in the driver
LONG = "x" * 129  # one past the 128 characters of type, status, owner, tag, account


def _field_named(response: httpx.Response, field: str) -> None:
    assert response.status_code == 422, response.text
    payload = response.json()
    fields = [d.get("field", "") for d in payload["detail"]]
    assert any(f == field or f.startswith(field + ".") or f.endswith("." + field)
               for f in fields), (field, payload)


QUERY_AND_PATH = [
    (f"/api/tickets?offset={HUGE}", "query.offset"),
    (f"/api/contacts?offset={HUGE}", "query.offset"),
    (f"/api/outbox?offset={HUGE}", "query.offset"),
    (f"/api/outbox?ticket_id={HUGE}", "query.ticket_id"),
    (f"/api/tickets?contact_id={HUGE}", "query.contact_id"),
    (f"/api/tickets?order_id={-1}", "query.order_id"),
    (f"/api/tickets/{HUGE}", "path.ticket_id"),
    (f"/api/contacts/{HUGE}", "path.contact_id"),
    (f"/api/contacts/{HUGE}/export", "path.contact_id"),
    (f"/api/orders/{HUGE}", "path.order_id"),
    (f"/api/attachments/{HUGE}", "path.attachment_id"),
    (f"/api/tickets?status={LONG}", "query.status"),
    (f"/api/tickets?type={LONG}", "query.type"),
    (f"/api/tickets?owner={LONG}", "query.owner"),
    (f"/api/tickets?tag={LONG}", "query.tag"),
    (f"/api/tickets?account={LONG}", "query.account"),
    (f"/api/tickets?status_group={LONG}", "query.status_group"),
    (f"/api/tickets?folder={'x' * 256}", "query.folder"),
    ("/api/tickets?q=a%00b", "query.q"),
    (f"/api/contacts?email={'x' * 321}", "query.email"),
]


async def test_out_of_range_query_and_path_values_are_422(api: Api) -> None:
    for path, field in QUERY_AND_PATH:
        _field_named(await api.client.get(path), field)


BODIES = [
    ("post", "/api/tickets", {"title": "x", "tags": [LONG]}, "tags.0"),
    ("post", "/api/tickets", {"title": "x", "owners": [{"name": LONG}]}, "owners"),
    ("post", "/api/tickets", {"title": "x", "folder": "f" * 256}, "folder"),
    ("post", "/api/tickets", {"title": "x", "type": LONG}, "type"),
    ("post", "/api/tickets", {"title": "x", "contact_id": HUGE}, "contact_id"),
    ("post", "/api/tickets", {"title": "x", "parent_id": HUGE}, "parent_id"),
    ("post", "/api/tickets", {"title": "a\x00b"}, "title"),  # PostgreSQL refuses NUL
    ("post", "/api/tickets", {"title": "x", "due_at": "9999-12-31T23:59:59-05:00"}, "due_at"),
    ("post", "/api/contacts", {"registered_at": "0001-01-01T00:00:00+01:00"}, "registered_at"),
    ("post", "/api/tickets/{ticket}/send-template",
     {"template": "ticket_received", "to": "a\x00b@x.example"}, "to"),
    ("post", "/api/tickets", '{"title": "x", "tags": ["\\ud800"]}', "tags.0"),
    ("post", "/api/contacts", {"last_name": "x", "addresses": [
        {"kind": "billing", "postal_code": "1" * 33}]}, "addresses.0.postal_code"),
    ("post", "/api/contacts", {"id": HUGE, "last_name": "x"}, "id"),
    ("post", "/api/orders", {"contact_id": HUGE}, "contact_id"),
    ("post", "/api/contacts/{contact}/merge", {"from": [HUGE]}, "from.0"),
]


async def test_out_of_range_body_values_are_422(api: Api) -> None:
    contact = (await api.client.post("/api/contacts", json={"last_name": "Ziel"})).json()
    ticket = (await api.client.post("/api/tickets", json={"title": "Frage"})).json()
    for method, path, body, field in BODIES:
        path = path.format(contact=contact["id"], ticket=ticket["id"])
        if isinstance(body, str):  # a JSON text httpx would not write (a lone surrogate)
            response = await api.client.request(method, path, content=body.encode(),
                                                headers={"Content-Type": "application/json"})
        else:
            response = await api.client.request(method, path, json=body)
        _field_named(response, field)


async def test_patch_with_long_values_is_422(api: Api) -> None:
    ticket = (await api.client.post("/api/tickets", json={"title": "Frage"})).json()
    for body, field in (({"tags": [LONG]}, "tags.0"), ({"status": LONG}, "status"),
                        ({"parent_id": HUGE}, "parent_id")):
        _field_named(await api.client.patch(f"/api/tickets/{ticket['id']}", json=body), field)


# Every route that reads a body, with a body that is not JSON at all.
BODY_ROUTES = [
    ("post", "/api/tickets"), ("patch", "/api/tickets/1"), ("post", "/api/tickets/1/messages"),
    ("post", "/api/tickets/1/comments"), ("post", "/api/tickets/1/send-template"),
    ("post", "/api/contacts"), ("post", "/api/orders"), ("post", "/api/contacts/1/merge"),
    ("post", "/api/contacts/1/anonymize"),
]


async def test_token_is_checked_before_the_body(api: Api) -> None:
    json_type = {"Content-Type": "application/json"}
    for method, path in BODY_ROUTES:
        for body in (b"{not json", b"\xff\xfe\x00", b""):
            async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
                response = await anonymous.request(method, path, content=body,
                                                   headers=json_type)
                assert response.status_code == 401, (method, path, body, response.text)
                assert response.headers["www-authenticate"] == "Bearer"
                assert response.json()["error"] == "missing bearer token"
                wrong = await anonymous.request(method, path, content=body, headers={
                    **json_type, "Authorization": "Bearer wrong"})
                assert wrong.status_code == 401, (method, path, body)
                assert wrong.json()["error"] == "invalid bearer token"
            # With the token the same malformed body is the caller's mistake: 4xx, not 500.
            with_token = await api.client.request(method, path, content=body,
                                                  headers=json_type)
            assert with_token.status_code in (400, 404, 422), (method, path, with_token.text)


async def test_unknown_api_path_without_token_is_401_and_docs_stay_public(api: Api) -> None:
    async with httpx.AsyncClient(base_url=api.base_url) as anonymous:
        assert (await anonymous.get("/api/nothing-here")).status_code == 401
        assert (await anonymous.get("/api/openapi.json")).status_code == 200
        assert (await anonymous.get("/healthz")).status_code == 200


async def test_an_explicit_id_at_the_top_of_the_range_leaves_generated_ids_a_409(
    api: Api
) -> None:
    """A shop may send its own ids; one at the top of the range leaves no id to generate.
    PostgreSQL's sequence then failed every later insert without an id (500), SQLite handed
    out ids the API cannot name. Now: 409 naming the field, nothing stored, explicit free ids
    still taken."""
    top = 2**31 - 1
    client = api.client
    cases = [
        ("/api/contacts", {"id": top}, {}, "id"),
        ("/api/contacts", {"id": 20, "addresses": [{"id": top, "kind": "billing"}]},
         {"id": 21, "addresses": [{"kind": "delivery"}]}, "addresses.id"),
        ("/api/orders", {"id": top}, {}, "id"),
    ]
    for path, first, generated, field in cases:
        assert (await client.post(path, json=first)).status_code == 201
        before = await _rows()
        refused = await client.post(path, json=generated)
        assert refused.status_code == 409, refused.text
        assert refused.json()["detail"] == {"field": field}
        assert "id is left" in refused.json()["error"]
        assert await _rows() == before  # rolled back whole
    assert (await client.post("/api/contacts", json={"id": 30})).status_code == 201
    assert (await client.post("/api/orders", json={"id": 30})).status_code == 201


async def _rows() -> tuple[int, int, int]:
    return (await Contact.all().count(), await ContactAddress.all().count(),
            await Order.all().count())
