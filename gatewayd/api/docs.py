"""The API's OpenAPI page, offline: Swagger UI served by gatewayd itself, its files taken from
the fastapi-offline package (FastAPI's self-hosting recipe), never from a CDN; servers
usually have no internet. `/docs` leads there.

The document describes gatewayd's errors as they are answered: every error is
`{"error": "...", "detail": ...}` (`Error`), not FastAPI's default `HTTPValidationError`; each
operation behind a token names its 401, and every operation's other refusals are its default."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

DOCS_URL = "/api/docs"
ASSETS_URL = "/api/docs/assets"
ASSETS = Path(fastapi_offline.__file__).parent / "static"


def add_docs(app: FastAPI) -> None:
    """`GET /api/docs` (Swagger UI), its assets under `/api/docs/assets/`, and `GET /docs`."""
    openapi_url = app.openapi_url or "/api/openapi.json"
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=openapi_url, title=f"{app.title} API",
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
            # No badge from the public validator service: the page makes no outside request.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs", include_in_schema=False)
    async def docs() -> RedirectResponse:
        return RedirectResponse(DOCS_URL, status_code=307)


ERROR_SCHEMA: dict[str, Any] = {
    "title": "Error",
    "type": "object",
    "required": ["error", "detail"],
    "properties": {
        "error": {"type": "string", "description": "what went wrong, in a few words"},
        "detail": {"description": "more: null, a text, or for invalid fields a list of "
                   "{\"field\": ..., \"message\": ...}"},
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_FASTAPI_ERRORS = ("HTTPValidationError", "ValidationError")


def describe_errors(document: dict[str, Any], public_paths: frozenset[str]) -> dict[str, Any]:
    """The OpenAPI document with gatewayd's error shape: FastAPI's validation error schemas
    replaced by `Error`, a 401 for every operation outside `public_paths` under /api/, and
    `Error` as every operation's default answer (the other refusals).
    Changes `document` in place and returns it."""
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    for name in _FASTAPI_ERRORS:
        schemas.pop(name, None)
    schemas["Error"] = ERROR_SCHEMA
    error_content = {"application/json": {"schema": _ERROR_REF}}
    for path, operations in document.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            if "422" in responses:
                responses["422"] = {"description": "invalid request", "content": error_content}
            if path.startswith("/api/") and path not in public_paths:
                responses.setdefault("401", {"description": "missing or unknown bearer token",
                                             "content": error_content})
            # Every other refusal (400 unreadable body, 404, 409, 503 storage full, …).
            responses.setdefault("default", {"description": "an error", "content": error_content})
    return document


def use_gatewayd_errors(app: FastAPI, public_paths: frozenset[str]) -> None:
    """`app.openapi()` answers the document `describe_errors` makes, built once."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = describe_errors(get_openapi(
                title=app.title, version=app.version, openapi_version=app.openapi_version,
                routes=app.routes,
                separate_input_output_schemas=app.separate_input_output_schemas), public_paths)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
