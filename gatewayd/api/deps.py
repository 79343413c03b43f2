"""What every router needs from the app: the runtime of a request, the API error type and the
bearer-token check. Imports nothing of the routers, so they can import it without a cycle."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from gatewayd.runtime import Runtime

_bearer = HTTPBearer(auto_error=False)


class ApiError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None):
        super().__init__(error)
        self.status = status
        self.error = error
        self.detail = detail


def runtime_of(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


def require_token(
    request: Request, credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)
) -> str:
    """Bearer-token auth: the token must equal one configured token (constant-time compare)."""
    tokens = runtime_of(request).config.api_token_values
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(401, "missing bearer token",
                       "send Authorization: Bearer <token> (tokens: http.api_tokens_file)")
    given = credentials.credentials.encode()
    matched = False
    for token in tokens:
        matched |= hmac.compare_digest(given, token.encode())
    if not matched:
        raise ApiError(401, "invalid bearer token", None)
    return "api"
