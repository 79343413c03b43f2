"""The HTTP door: FastAPI app with bearer auth, JSON errors, health; routers plug in here."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Receive, Scope, Send

from gatewayd import __version__
from gatewayd.api import contacts, gdpr, metrics, tickets
from gatewayd.api import outbox as outbox_api
from gatewayd.api.deps import (
    PUBLIC_API_PATHS,
    ApiError,
    TokenGate,
    require_token,
    runtime_of,
)
from gatewayd.api.docs import add_docs, use_gatewayd_errors
from gatewayd.api.forms import router as forms_router
from gatewayd.logs import get_logger
from gatewayd.ops.scheduler import instance_name
from gatewayd.runtime import Runtime
from gatewayd.store.db import ping
from gatewayd.store.faults import storage_fault
from gatewayd.store.tickets import StoreError

log = get_logger("gatewayd.http")
HTTP_SOURCE = "http"  # the name HTTP writes report a full disk under (runtime.storage)
_WRITES = frozenset({"POST", "PUT", "PATCH", "DELETE"})


class StorageRecovery:
    """ASGI middleware: after a write request failed for lack of disk, the first write that
    succeeds (a 2xx or 3xx answer) clears the fault, so /healthz turns 200 again. Costs one
    dict look-up per request while nothing is wrong."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]]):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("method") not in _WRITES:
            await self.app(scope, receive, send)
            return
        runtime: Runtime = scope["app"].state.runtime
        if HTTP_SOURCE not in runtime.storage.problems:
            await self.app(scope, receive, send)
            return

        async def watch(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] < 400:
                if runtime.storage.clear(HTTP_SOURCE):
                    log.info("storage writable again", source=HTTP_SOURCE)
            await send(message)

        await self.app(scope, receive, watch)


def _error(status: int, error: str, detail: Any = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"error": error, "detail": detail}, status_code=status, headers=headers)


def create_app(runtime: Runtime) -> FastAPI:

    app = FastAPI(title="gatewayd", version=__version__, docs_url=None,
                  openapi_url="/api/openapi.json", redoc_url=None)
    app.state.runtime = runtime
    app.add_middleware(TokenGate)  # the token before the body: 401 from the headers alone
    app.add_middleware(StorageRecovery)  # a full disk reported over HTTP clears on a good write
    add_docs(app)  # /api/docs and /docs, offline
    use_gatewayd_errors(app, PUBLIC_API_PATHS)  # the document tells the errors as answered

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
        fault = storage_fault(exc)
        if fault is not None:
            # The machine's fault, not the caller's: 503 (the shop or client retries later),
            # and /healthz says so until a write over HTTP succeeds again.
            runtime.storage.report(HTTP_SOURCE, fault.kind, fault.reason)
            log.warning("storage full: request refused", kind=fault.kind,
                        reason=fault.reason[:200])
            return _error(503, "storage full", "the server cannot store this now; "
                          "try again later", {"Retry-After": "60"})
        log.exception("request failed", error=type(exc).__name__)
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
