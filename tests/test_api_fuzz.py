"""Schema-driven fuzzing of the HTTP side (schemathesis + hypothesis) against a really running
daemon: every operation of /api/openapi.json, plus the public form, health and metrics routes,
with valid and invalid inputs, with and without the API token.

Fails on any 5xx and on a dropped connection; without the token every /api call must be 401
whatever its parameters and body (the token is checked before the body is read); an /api answer
whose status, body or content type is not what the document says fails too. The number of
examples is bounded (FUZZ_EXAMPLES, env GATEWAYD_FUZZ_EXAMPLES) so the whole run stays in
seconds; raise it locally for a deeper search.
"""

from __future__ import annotations

import asyncio
import copy
import os
from collections.abc import Callable
from typing import Any

import pytest
import requests
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, openapi
from schemathesis.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

from gatewayd.config import Config
from tests.conftest import TOKEN, Api

FUZZ_EXAMPLES = int(os.environ.get("GATEWAYD_FUZZ_EXAMPLES", "12"))
AUTH = {"Authorization": f"Bearer {TOKEN}"}
FORM = "contact"


@pytest.fixture
def config(make_config: Callable[..., Config]) -> Config:
    # The form's rate limits would answer 429 after a few posts and hide the validation paths.
    data_form = {
        "name": FORM, "ticket": {"type": "Kundenanfrage", "status": "Neu"},
        "rate_limit": 0, "recipient_daily_cap": 0, "honeypot": "website",
        "fields": [
            {"name": "email", "type": "email", "required": True},
            {"name": "name", "type": "text"},
            {"name": "subject", "type": "subject"},
            {"name": "message", "type": "message", "required": True},
            {"name": "order", "type": "order_id"},
            {"name": "file", "type": "attachment"},
        ],
    }
    return make_config(forms=[data_form])


_FORM_FIELDS = {
    "type": "object",
    "properties": {name: {"type": "string"} for name in
                   ("email", "name", "subject", "message", "order", "website")},
}


def with_public_routes(schema: dict[str, Any]) -> dict[str, Any]:
    """The published schema plus what it leaves out: /healthz and /metrics are hidden from the
    API docs, and the form route reads its body itself (its fields come from the
    configuration), so its request body is described here."""
    schema = copy.deepcopy(schema)
    paths = schema.setdefault("paths", {})
    plain = {"responses": {"200": {"description": "ok"}}}
    paths["/healthz"] = {"get": dict(plain)}
    paths["/metrics"] = {"get": dict(plain)}
    name = {"name": "name", "in": "path", "required": True,
            "schema": {"type": "string", "enum": [FORM]}}
    multipart: dict[str, Any] = copy.deepcopy(_FORM_FIELDS)
    multipart["properties"]["file"] = {"type": "string", "format": "binary"}
    form_post = paths.setdefault("/forms/{name}", {}).setdefault("post", {})
    form_post["parameters"] = [name]
    form_post["requestBody"] = {"required": True, "content": {
        "application/x-www-form-urlencoded": {"schema": _FORM_FIELDS},
        "multipart/form-data": {"schema": multipart},
    }}
    form_post.setdefault("responses", {"201": {"description": "created"}})
    return schema


def _is_api(path: str) -> bool:
    return path.startswith("/api/") and path not in ("/api/openapi.json", "/api/docs")


def _as_documented(case: Any, response: requests.Response, where: str) -> None:
    """The answer's status is one the document names, and its body and content type are what
    the document says for it (errors included: `Error`, gatewayd's shape)."""
    try:
        case.validate_response(response, checks=[status_code_conformance,
                                                  response_schema_conformance,
                                                  content_type_conformance])
    except (AssertionError, Exception, BaseExceptionGroup) as exc:
        text = " ".join(str(exc).split())[:600]
        raise AssertionError(f"{response.status_code} not as documented for {where}: {text}; "
                             f"answer {response.text[:200]!r}") from exc


def fuzz(schema_dict: dict[str, Any], base_url: str, examples: int) -> list[str]:
    """Run every operation in both generation modes; returns one line per failure found."""
    schema = openapi.from_dict(schema_dict)
    session = requests.Session()
    failures: list[str] = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            failures.append(f"the OpenAPI document has an invalid operation: {result.err()}")
            continue
        operation = result.ok()
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], report_multiple_bugs=False,
                      suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def check(case: Any) -> None:
                for headers, with_token in ((AUTH, True), ({}, False)):
                    try:
                        response = case.call(base_url=base_url, session=session,
                                             headers=headers, timeout=20)
                    except requests.ConnectionError as exc:
                        raise AssertionError(f"connection dropped: {exc}") from exc
                    where = (f"{case.method} {case.formatted_path} query={case.query!r} "
                             f"body={case.body!r:.300} token={with_token}")
                    assert response.status_code < 500, (
                        f"{response.status_code} for {where}: {response.text[:300]}")
                    if not with_token and _is_api(case.path):
                        assert response.status_code == 401, (
                            f"{response.status_code} instead of 401 for {where}")
                    if _is_api(case.path):
                        _as_documented(case, response, where)

            try:
                check()
            except Unsatisfiable:
                # Every input of this operation is valid (no parameters, or free strings only):
                # there is no invalid request to make. A positive run must always find cases.
                if mode is GenerationMode.POSITIVE:
                    failures.append(f"{operation.label}: no valid request could be generated")
            except AssertionError as exc:
                failures.append(f"{operation.label} [{mode.value}]: {exc}".splitlines()[0])
            except Exception as exc:  # a generator problem is a failure too, not a pass
                failures.append(f"{operation.label} [{mode.value}]: {type(exc).__name__}: "
                                f"{exc}".splitlines()[0])
    session.close()
    return failures


async def test_no_request_gets_a_5xx_or_a_dropped_connection(api: Api) -> None:
    published = (await api.client.get("/api/openapi.json")).json()
    schema = with_public_routes(published)
    operations = sum(len(v) for v in schema["paths"].values())
    assert operations >= 20, "the schema lists the API's operations"
    failures = await asyncio.to_thread(fuzz, schema, api.base_url, FUZZ_EXAMPLES)
    assert not failures, "\n".join(failures)
