"""The form endpoint's protections and hostile bodies, over a real uvicorn server.

Each protection must answer with its status and leave no ticket. These do not depend on the
database engine, so they run on SQLite only.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from gatewayd.config import Config
from gatewayd.ingest.form_guards import SIGNATURE_HEADER, TIMESTAMP_HEADER, sign
from gatewayd.store.models import Ticket
from tests.conftest import Api
from tests.test_forms import JSON, form_config

SECRET = "s3cret-for-signed-posts-0123456789"


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
def form_overrides() -> dict[str, Any]:
    return {}


@pytest.fixture
def config(make_config: Callable[..., Config], form_overrides: dict[str, Any]) -> Config:
    return form_config(make_config, **form_overrides)


@pytest.fixture
async def public(api: Api) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=api.base_url, timeout=30) as client:
        yield client


FIELDS = {"email": "erika@example.org", "message": "Hallo"}


async def _no_tickets() -> None:
    assert await Ticket.all().count() == 0


async def _still_healthy(public: httpx.AsyncClient) -> None:
    assert (await public.get("/healthz")).status_code == 200


async def test_honeypot_filled_looks_accepted_but_stores_nothing(
    api: Api, public: httpx.AsyncClient
) -> None:
    trap = {**FIELDS, "website": "http://spam.example"}
    as_browser = await public.post("/forms/contact", data=trap)
    assert as_browser.status_code == 303
    assert as_browser.headers["location"] == "https://shop.example/danke"
    as_json = await public.post("/forms/contact", data=trap, headers=JSON)
    assert as_json.status_code == 200
    await _no_tickets()


async def test_declared_50_mb_body_gets_413_before_reading(
    api: Api, public: httpx.AsyncClient
) -> None:
    body = b"email=a%40b.example&message=" + b"x" * (50 * 1024 * 1024)
    response = await public.post("/forms/contact", content=body, headers={
        **JSON, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    assert response.json()["error"] == "the form is too large"
    await _no_tickets()
    await _still_healthy(public)


@pytest.mark.parametrize("form_overrides", [{"max_body_bytes": 64 * 1024}])
async def test_chunked_body_over_the_limit_gets_413(api: Api, public: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"email=a%40b.example&message="
        for _ in range(100):
            yield b"y" * 4096

    response = await public.post("/forms/contact", content=chunks(), headers={
        **JSON, "Content-Type": "application/x-www-form-urlencoded"})
    assert response.status_code == 413
    await _no_tickets()
    await _still_healthy(public)


async def test_field_of_one_megabyte_is_refused(api: Api, public: httpx.AsyncClient) -> None:
    huge = "z" * (1024 * 1024)
    urlencoded = await public.post("/forms/contact", data={**FIELDS, "name": huge}, headers=JSON)
    assert urlencoded.status_code == 422
    assert urlencoded.json()["detail"] == [{
        "field": "name", "code": "too_long",
        "message": "Bitte schreiben Sie höchstens 200 Zeichen."}]
    multipart = await public.post("/forms/contact", data={**FIELDS, "message": huge},
                                  files={"file": ("a.txt", b"hi", "text/plain")}, headers=JSON)
    assert multipart.status_code == 422
    assert multipart.json()["detail"][0]["field"] == "message"
    await _no_tickets()


@pytest.mark.parametrize("body, content_type", [
    (b"--xyz\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b.example\r\n",
     "multipart/form-data; boundary=xyz"),  # no closing boundary
    (b"this is not multipart at all", "multipart/form-data; boundary=xyz"),
    (b"--xyz\r\nContent-Disposition: form-data\r\n\r\nno name\r\n--xyz--\r\n",
     "multipart/form-data; boundary=xyz"),
    (b"--xyz\r\n\r\n--xyz--\r\n", "multipart/form-data"),  # no boundary parameter
])
async def test_malformed_multipart_gets_400(
    api: Api, public: httpx.AsyncClient, body: bytes, content_type: str
) -> None:
    response = await public.post("/forms/contact", content=body,
                                 headers={**JSON, "Content-Type": content_type})
    assert response.status_code == 400, response.text
    assert response.json()["error"] == "malformed multipart body"
    await _no_tickets()
    await _still_healthy(public)


@pytest.mark.parametrize("body, content_type", [
    (b"email=a%40b.example&message=Gr%FC%DFe", "application/x-www-form-urlencoded"),
    (b"email=a%40b.example&message=Gr\xfc\xdfe", "application/x-www-form-urlencoded"),
    (b"--xyz\r\nContent-Disposition: form-data; name=\"email\"\r\n\r\na@b.example\r\n"
     b"--xyz\r\nContent-Disposition: form-data; name=\"message\"\r\n\r\nGr\xfc\xdfe\r\n--xyz--\r\n",
     "multipart/form-data; boundary=xyz"),
])
async def test_non_utf8_form_data_gets_400(
    api: Api, public: httpx.AsyncClient, body: bytes, content_type: str
) -> None:
    response = await public.post("/forms/contact", content=body,
                                 headers={**JSON, "Content-Type": content_type})
    assert response.status_code == 400
    assert response.json()["error"] == "form data is not UTF-8"
    await _no_tickets()


async def test_other_content_types_get_415(api: Api, public: httpx.AsyncClient) -> None:
    response = await public.post("/forms/contact", json=FIELDS, headers=JSON)
    assert response.status_code == 415
    await _no_tickets()


async def test_unknown_form_gets_404(api: Api, public: httpx.AsyncClient) -> None:
    assert (await public.post("/forms/nope", data=FIELDS, headers=JSON)).status_code == 404
    assert (await public.get("/forms/nope")).status_code == 404


@pytest.mark.parametrize("form_overrides", [{"rate_limit": 2, "trusted_proxies": ["10.0.0.0/8"]}])
async def test_rate_limit_per_client_ip_ignores_untrusted_forwarded_for(
    api: Api, public: httpx.AsyncClient
) -> None:
    statuses = []
    for n in range(3):
        # The peer (127.0.0.1) is not a trusted proxy: each new X-Forwarded-For is ignored.
        response = await public.post("/forms/contact", headers={
            **JSON, "X-Forwarded-For": f"203.0.113.{n}"},
            data={**FIELDS, "email": f"p{n}@example.org"})
        statuses.append(response.status_code)
    assert statuses == [201, 201, 429]
    assert await Ticket.all().count() == 2


@pytest.mark.parametrize("form_overrides", [{"rate_limit": 1, "trusted_proxies": ["127.0.0.1"]}])
async def test_rate_limit_uses_forwarded_for_from_a_trusted_proxy(
    api: Api, public: httpx.AsyncClient
) -> None:
    async def post(client_ip: str, n: int) -> int:
        response = await public.post("/forms/contact", headers={
            **JSON, "X-Forwarded-For": f"198.51.100.7, {client_ip}"},
            data={**FIELDS, "email": f"t{n}@example.org"})
        return response.status_code

    assert [await post("203.0.113.1", 0), await post("203.0.113.2", 1),
            await post("203.0.113.1", 2)] == [201, 201, 429]


async def test_foreign_origin_gets_403(api: Api, public: httpx.AsyncClient) -> None:
    evil = await public.post("/forms/contact", data=FIELDS,
                             headers={**JSON, "Origin": "https://evil.example"})
    assert evil.status_code == 403
    assert "evil.example" in evil.json()["detail"]
    cross = await public.post("/forms/contact", data=FIELDS,
                              headers={**JSON, "Sec-Fetch-Site": "cross-site"})
    assert cross.status_code == 403
    as_browser = await public.post("/forms/contact", data=FIELDS,
                                   headers={"Origin": "null"})
    assert as_browser.status_code == 403 and "text/html" in as_browser.headers["content-type"]
    await _no_tickets()
    allowed = await public.post("/forms/contact", data=FIELDS,
                                headers={**JSON, "Origin": "https://shop.example",
                                         "Sec-Fetch-Site": "cross-site"})
    assert allowed.status_code == 201


def _signed(body: bytes, *, at: float | None = None, secret: str = SECRET) -> dict[str, str]:
    stamp = str(int(time.time() if at is None else at))
    return {**JSON, "Content-Type": "application/x-www-form-urlencoded",
            TIMESTAMP_HEADER: stamp, SIGNATURE_HEADER: sign(secret, stamp, body)}


@pytest.mark.parametrize("referer", ["http://[::1", "http://[zz]/kontakt", "https://evil.example/x"])
async def test_a_referer_that_is_no_url_or_foreign_sends_the_browser_to_the_forms_page(
    api: Api, public: httpx.AsyncClient, referer: str
) -> None:
    response = await public.post("/forms/contact", data={"email": "erika@example.org"},
                                 headers={"Origin": "https://shop.example", "Referer": referer})
    assert response.status_code == 303, response.text
    location = httpx.URL(response.headers["location"])
    assert location.path == "/forms/contact" and location.params["errors"] == "message"
    await _no_tickets()


@pytest.mark.parametrize("form_overrides", [
    {"hmac_secret": SECRET, "require_signature": True, "rate_limit": 1}])
async def test_hmac_signature(api: Api, public: httpx.AsyncClient) -> None:
    body = b"email=erika%40example.org&message=signed"
    unsigned = await public.post("/forms/contact", content=body, headers={
        **JSON, "Content-Type": "application/x-www-form-urlencoded"})
    assert unsigned.status_code == 401
    wrong = await public.post("/forms/contact", content=body, headers=_signed(body, secret="x"))
    assert wrong.status_code == 401 and wrong.json()["detail"] == "the signature does not match"
    stale = await public.post("/forms/contact", content=body,
                              headers=_signed(body, at=time.time() - 301))
    assert stale.status_code == 401 and "300 s" in stale.json()["detail"]
    tampered_headers = _signed(body)
    tampered = await public.post("/forms/contact", content=body + b"x", headers=tampered_headers)
    assert tampered.status_code == 401
    await _no_tickets()

    headers = _signed(body)
    ok = await public.post("/forms/contact", content=body, headers=headers)
    assert ok.status_code == 201, ok.text
    replay = await public.post("/forms/contact", content=body, headers=headers)
    assert replay.status_code == 401 and "replay" in replay.json()["detail"]
    # Signed server-to-server posts are exempt from the per-IP limit and the origin check.
    second = b"email=other%40example.org&message=again"
    again = await public.post("/forms/contact", content=second, headers={
        **_signed(second), "Origin": "https://backend.shop.example"})
    assert again.status_code == 201
    assert await Ticket.all().count() == 2


@pytest.mark.parametrize("form_overrides", [{"recipient_daily_cap": 2}])
async def test_daily_cap_per_recipient_address(api: Api, public: httpx.AsyncClient) -> None:
    victim = {**FIELDS, "email": "Victim@Example.org"}
    statuses = [(await public.post("/forms/contact", data=victim, headers=JSON)).status_code
                for _ in range(3)]
    assert statuses == [201, 201, 429]
    assert await Ticket.filter(reply_address="victim@example.org").count() == 2
    other = await public.post("/forms/contact", data=FIELDS, headers=JSON)
    assert other.status_code == 201


async def test_get_form_serves_accessible_html(api: Api, public: httpx.AsyncClient) -> None:
    response = await public.get("/forms/contact")
    assert response.status_code == 200
    page = response.text
    assert '<html lang="de">' in page  # default_language: nobody asked for another
    assert ('<label for="gwf-email">E-Mail <span class="required">(Pflichtfeld)</span></label>'
            in page)
    assert 'id="gwf-email" name="email" type="email"' in page and "required" in page
    assert 'enctype="multipart/form-data"' in page
    assert 'name="website"' in page and 'tabindex="-1"' in page and 'aria-hidden="true"' in page
    errors = await public.get("/forms/contact", params={
        "errors": "email", "error.email": "not a valid e-mail address"})
    assert 'aria-invalid="true"' in errors.text and "not a valid e-mail address" in errors.text
    snippet = await public.get("/forms/contact", params={"snippet": "1"})
    assert snippet.text.startswith("<form") and f'action="{api.base_url}/forms/contact"' in (
        snippet.text)
