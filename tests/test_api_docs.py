"""The OpenAPI page works offline: `/docs` leads to `/api/docs`, whose HTML names only files
gatewayd serves itself, and headless Chromium, with every host but loopback unresolvable,
renders the API's operations from them."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.conftest import Api
from tests.test_browser_forms import CHROMIUM, DevTools


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def _references(html: str) -> list[tuple[str, str]]:
    return re.findall(r"""(?:src|href)\s*=\s*["']([^"']+)["']|url:\s*'([^']+)'""", html)


async def test_docs_redirects_to_the_openapi_page_that_names_only_local_files(api: Api) -> None:
    moved = await api.client.get("/docs", headers={"Authorization": ""})
    assert moved.status_code == 307 and moved.headers["location"] == "/api/docs"
    page = await api.client.get("/api/docs", headers={"Authorization": ""})
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    found = [a or b for a, b in _references(page.text)]
    assert len(found) >= 4, found  # stylesheet, favicon, script, the OpenAPI document
    for reference in found:
        parts = urlsplit(reference)
        assert not parts.scheme and not parts.netloc, f"{reference} is not served by gatewayd"
        served = await api.client.get(reference, headers={"Authorization": ""})
        assert served.status_code == 200, reference
        assert len(served.content) > 100, reference
    assert "validatorUrl\": null" in page.text  # no badge from the public validator
    schema = (await api.client.get("/api/openapi.json")).json()
    assert "/api/tickets" in schema["paths"]


async def test_the_document_describes_errors_as_gatewayd_answers_them(api: Api) -> None:
    schema = (await api.client.get("/api/openapi.json")).json()
    schemas = schema["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas
    assert schemas["Error"]["required"] == ["error", "detail"]
    error = {"$ref": "#/components/schemas/Error"}
    create = schema["paths"]["/api/tickets"]["post"]["responses"]
    assert create["422"]["content"]["application/json"]["schema"] == error
    assert create["401"]["content"]["application/json"]["schema"] == error
    assert create["default"]["content"]["application/json"]["schema"] == error
    answered = (await api.client.post("/api/tickets", json={"title": ""})).json()
    assert set(answered) == {"error", "detail"} and answered["detail"][0]["field"] == "title"


def _render_offline(devtools: DevTools, url: str) -> dict[str, Any]:
    target = devtools.call("Target.createTarget", url="about:blank")["targetId"]
    session = devtools.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
    devtools.call("Network.enable", session)
    devtools.call("Page.enable", session)
    devtools.call("Page.navigate", session, url=url)
    devtools.wait_event("Page.loadEventFired")

    def evaluate(expression: str) -> Any:
        result = devtools.call("Runtime.evaluate", session, expression=expression,
                               returnByValue=True)
        return result["result"].get("value")

    deadline = time.monotonic() + 30
    operations = 0
    while time.monotonic() < deadline:
        operations = evaluate("document.querySelectorAll('.opblock').length") or 0
        if operations:
            break
        time.sleep(0.2)
    requested = [e["params"]["request"]["url"] for e in devtools.events
                 if e.get("method") == "Network.requestWillBeSent"]
    failed = [e["params"] for e in devtools.events if e.get("method") == "Network.loadingFailed"]
    return {"operations": operations, "title": evaluate("document.title"),
            "href": evaluate("location.href"), "requested": requested, "failed": failed,
            "error": evaluate("document.querySelector('.errors-wrapper')?.textContent || ''")}


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed "
                    "(apt-get install chromium)")
async def test_chromium_renders_the_api_docs_with_no_outside_network(
    api: Api, tmp_path: Path,
) -> None:
    # Chromium resolves no host but loopback: a CDN file would fail to load, and the page
    # could not render from one.
    devtools = DevTools(tmp_path / "chromium-profile", extra_args=[
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"])
    try:
        result = await asyncio.to_thread(_render_offline, devtools, f"{api.base_url}/docs")
    finally:
        devtools.close()
    assert result["href"] == f"{api.base_url}/api/docs"
    assert result["title"] == "gatewayd API"
    assert result["operations"] >= 10, result
    assert result["error"] == ""
    assert result["failed"] == []
    assert all(u.startswith(api.base_url) or u.startswith("data:") for u in result["requested"]), \
        result["requested"]
