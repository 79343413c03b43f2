"""What every router needs from the app: the runtime of a request, the API error type, the
bearer-token check (as a dependency and as a gate in front of the body), and the bounded types
of every id, offset and text the API accepts. Imports nothing of the routers, so they can
import it without a cycle."""

from __future__ import annotations

import datetime as dt
import hmac
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, Field, StringConstraints

from gatewayd.runtime import Runtime
from gatewayd.store.tickets import MAX_ID

# ------------------------------------------------------------------------------ bounded values
# Every integer and text the API takes is bounded by the column it ends up in (store/models.py):
# an id beyond the column, an offset beyond SQLite's 64-bit integers or a text longer than its
# column is answered 422 naming the field, never passed on to the database (which raised
# OverflowError or tortoise's ValidationError: a 500 and a dropped connection).

MAX_OFFSET = 2**63 - 1  # SQLite INTEGER / PostgreSQL bigint
_SURROGATE = re.compile("[\ud800-\udfff]")


def storable(value: str) -> str:
    """Text every database can store: no NUL (PostgreSQL refuses it) and no lone surrogate (a
    JSON "\\ud800" escape decodes to one; UTF-8 cannot encode it)."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    if _SURROGATE.search(value):
        raise ValueError("must not contain unpaired surrogate characters")
    return value


def storable_time(value: dt.datetime) -> dt.datetime:
    """A time every database can store: convertible to UTC (9999-12-31T23:59-05:00 is not, and
    the store's conversion raised OverflowError), naive times taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    try:
        return value.astimezone(dt.UTC)
    except OverflowError:
        raise ValueError("out of range: the time must lie between the years 1 and 9999 in UTC"
                         ) from None


Id = Annotated[int, Field(ge=1, le=MAX_ID)]  # IntField primary keys (PostgreSQL integer)
PathId = Annotated[int, Path(ge=1, le=MAX_ID)]  # the same, as a path parameter
Limit = Annotated[int, Query(ge=1, le=100)]  # a page of a list
Offset = Annotated[int, Query(ge=0, le=MAX_OFFSET)]
Text = Annotated[str, AfterValidator(storable)]  # TextField: unbounded but storable
When = Annotated[dt.datetime, AfterValidator(storable_time)]
Str16 = Annotated[str, StringConstraints(max_length=16), AfterValidator(storable)]
Str32 = Annotated[str, StringConstraints(max_length=32), AfterValidator(storable)]
Str64 = Annotated[str, StringConstraints(max_length=64), AfterValidator(storable)]
Name = Annotated[str, StringConstraints(max_length=128), AfterValidator(storable)]  # type, status,
# status group, owner, role, tag, account: CharField(max_length=128)
Str255 = Annotated[str, StringConstraints(max_length=255), AfterValidator(storable)]
Address = Annotated[str, StringConstraints(max_length=320), AfterValidator(storable)]


# ------------------------------------------------------------------------------ errors, runtime


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


# ------------------------------------------------------------------------------ the token


def token_problem(authorization: str | None, tokens: list[str]) -> ApiError | None:
    """Why a request's Authorization header does not open the API, or None. The token must equal
    one configured token (constant-time compare, every token compared)."""
    scheme, _, given = (authorization or "").strip().partition(" ")
    given = given.strip()
    if scheme.lower() != "bearer" or not given:
        return ApiError(401, "missing bearer token",
                        "send Authorization: Bearer <token> (tokens: http.api_tokens_file)")
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given.encode(), token.encode())
    return None if matched else ApiError(401, "invalid bearer token", None)


_bearer = HTTPBearer(auto_error=False)  # declares the bearer scheme in the OpenAPI schema


def require_token(
    request: Request, _credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> str:
    """The routers' dependency (TokenGate has checked already; this declares the token in the
    schema and guards a router mounted without the gate)."""
    problem = token_problem(request.headers.get("authorization"),
                            runtime_of(request).config.api_token_values)
    if problem is not None:
        raise problem
    return "api"


def _is_api(path: str) -> bool:
    return ((path == "/api" or path.startswith("/api/")) and path not in PUBLIC_API_PATHS
            and not path.startswith("/api/docs/"))  # the OpenAPI page's own files


PUBLIC_API_PATHS = frozenset({"/api/openapi.json", "/api/docs", "/api/docs/oauth2-redirect"})

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


class TokenGate:
    """ASGI middleware: a request under /api without a valid token is answered 401 from its
    headers alone, before anything reads its body. FastAPI decodes a JSON body before the
    route's dependencies run, so with the dependency alone a malformed body earned a caller
    without a token a 422 (or 400) that told him about the route's body."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and _is_api(scope.get("path", "")):
            authorization = None
            for name, value in scope.get("headers", ()):
                if name == b"authorization":
                    authorization = value.decode("latin-1")
                    break
            runtime: Runtime = scope["app"].state.runtime
            problem = token_problem(authorization, runtime.config.api_token_values)
            if problem is not None:
                response = JSONResponse({"error": problem.error, "detail": problem.detail},
                                        status_code=401, headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)
