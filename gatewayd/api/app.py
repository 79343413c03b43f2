"""The HTTP door: FastAPI app with bearer auth, JSON errors, health; routers plug in here."""

from __future__ import annotations

from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from gatewayd import __version__
from gatewayd.api import contacts, gdpr, metrics, tickets
from gatewayd.api import outbox as outbox_api
from gatewayd.api.deps import ApiError, TokenGate, require_token, runtime_of
from gatewayd.api.docs import add_docs
from gatewayd.api.forms import router as forms_router
from gatewayd.ops.scheduler import instance_name
from gatewayd.runtime import Runtime
from gatewayd.store.db import ping
from gatewayd.store.tickets import StoreError


def _error(status: int, error: str, detail: Any = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def create_app(runtime: Runtime) -> FastAPI:

    app = FastAPI(title="gatewayd", version=__version__, docs_url=None,
                  openapi_url="/api/openapi.json", redoc_url=None)
    app.state.runtime = runtime
    app.add_middleware(TokenGate)  # the token before the body: 401 from the headers alone
    add_docs(app)  # /api/docs and /docs, offline

    @app.exception_handler(ApiError)
    async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        return _error(exc.status, exc.error, exc.detail, headers)

    @app.exception_handler(StoreError)
    async def _store_error(_request: Request, exc: StoreError) -> JSONResponse:
        return _error(exc.status, str(exc), exc.detail)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = [
            {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "message": e["msg"]}
            for e in exc.errors()
        ]
        return _error(422, "invalid request", detail)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), None, getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        import structlog

        structlog.get_logger("gatewayd.http").exception("request failed", error=type(exc).__name__)
        return _error(500, "internal error", None)

    @app.get("/healthz", include_in_schema=False)
    async def healthz(request: Request) -> JSONResponse:
        """503 when the database does not answer or a write failed for lack of disk (with the
        reason in `storage`); each account's state, stall, backlog and import rate."""
        rt = runtime_of(request)
        db_ok = await ping()
        status = "ok"
        if not db_ok:
            status = "database unavailable"
        elif not rt.storage.ok:
            status = "storage full"
        body = {
            "status": status,
            "instance": instance_name(),
            "database": db_ok,
            "storage": rt.storage.view(),
            "mode": rt.config.mode,
            "accounts": [h.view() for h in rt.health.values()],
        }
        return JSONResponse(body, status_code=200 if status == "ok" else 503)

    # Forms first: the busiest public route is matched before the API's ~20 (no path overlaps,
    # so the order changes nothing else).
    app.include_router(forms_router)  # public shop forms: no token, their own protections
    app.include_router(tickets.router, prefix="/api", dependencies=[Depends(require_token)])
    app.include_router(contacts.router, prefix="/api", dependencies=[Depends(require_token)])
    app.include_router(outbox_api.router, prefix="/api", dependencies=[Depends(require_token)])
    app.include_router(gdpr.router, prefix="/api", dependencies=[Depends(require_token)])
    app.include_router(metrics.router)  # public, like /healthz
    return app
