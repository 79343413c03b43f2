"""The public shop-form door: `POST /forms/{name}` turns a submission into a ticket,
`GET /forms/{name}` serves the form as HTML. No bearer token; the protections below instead.

Order of the checks, cheapest refusal first: unknown form (404), declared body too large (413),
unsigned post where a signature is required (401), foreign origin (403), rate limit per client
IP (429), body read with the size limit (413), signature and replay (401), parsing (400/415),
honeypot (looks accepted, stores nothing), field validation (422), per-address daily cap (429).
A valid signature marks a server-to-server post: the origin check and the per-IP rate limit do
not apply to it (the shop's backend posts for many customers from one address).

Pages, field errors and refusals are in the form's language (`form_texts.form_language`); the
ticket takes that language when the form or the visitor named one. JSON answers keep their
English `error`; each field error carries its `code` and the `message` in the form's language.
"""

from __future__ import annotations

import time
import urllib.parse
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.requests import ClientDisconnect

from gatewayd.api.deps import runtime_of
from gatewayd.config import Config, Form
from gatewayd.ingest import form_body
from gatewayd.ingest import form_guards as protection
from gatewayd.ingest import form_pages as pages
from gatewayd.ingest import forms as logic
from gatewayd.ingest.form_texts import (
    REFUSAL_CODES,
    chain,
    chosen_language,
    texts_for,
)
from gatewayd.ingest.form_ticket import create_form_ticket
from gatewayd.logs import get_logger

router = APIRouter(tags=["forms"])
log = get_logger("gatewayd.forms")

_HTML_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'",
    "Cache-Control": "no-store",
    "Vary": "Accept-Language",
}


@dataclass
class _Guards:
    """Per-app state of the protections (in memory: one instance's view)."""

    rate: protection.RateLimiter = field(default_factory=protection.RateLimiter)
    replay: protection.ReplayCache = field(default_factory=protection.ReplayCache)


def _guards(request: Request) -> _Guards:
    state = request.app.state
    guards: _Guards | None = getattr(state, "form_guards", None)
    if guards is None:
        guards = state.form_guards = _Guards()
    return guards


def _language(request: Request, config: Config, form: Form | None,
              posted: logic.PostedForm | None = None) -> str | None:
    """The language the form or visitor asks for: the form's own, the post's `lang` field (a
    page's `?lang=`), Accept-Language; None: nobody asked (default_language applies)."""
    requested = request.query_params.get(pages.LANG_FIELD)
    if posted is not None and (form is None or pages.LANG_FIELD not in {
            f.name for f in form.fields}):
        requested = posted.values.get(pages.LANG_FIELD) or requested
    return chosen_language(config, form, requested, request.headers.get("accept-language"))


def _with_lang(url: str, form: Form, language: str | None) -> str:
    """gatewayd's own page URL carrying the visitor's language (forms without one of their own)."""
    if form.language or not language:
        return url
    return f"{url}{'&' if '?' in url else '?'}{pages.LANG_FIELD}={urllib.parse.quote(language)}"


def _form_or_404(config: Config, name: str) -> Form:
    form = config.form(name)
    if form is None:
        raise logic.FormRejected(404, f"no form named {name!r}", None)
    return form


def _wants_json(request: Request) -> bool:
    return "application/json" in request.headers.get("accept", "").lower()


def _own_origin(request: Request) -> str:
    return f"{request.url.scheme}://{request.headers.get('host', '')}"


def _refusal(request: Request, exc: logic.FormRejected, form: Form | None = None,
             language: str | None = None) -> Response:
    if _wants_json(request):
        return JSONResponse({"error": exc.error, "detail": exc.detail}, status_code=exc.status)
    config = runtime_of(request).config
    language = language or _language(request, config, form) or config.default_language
    code = exc.code or REFUSAL_CODES.get(exc.status, "bad_request")
    return HTMLResponse(pages.message_page_html(texts_for(config), language, exc.status, code),
                        status_code=exc.status, headers=_HTML_HEADERS)


def _back_url(request: Request, form: Form, errors: list[tuple[str, str]],
              language: str | None) -> str:
    """Where a browser goes back to with the errors, (field, message) in the form's language:
    the page it came from when that page is one the form accepts posts from, else gatewayd's
    own page for the form."""
    fallback = _with_lang(f"/forms/{urllib.parse.quote(form.name)}", form, language)
    referer = request.headers.get("referer")
    target = fallback
    if referer:
        try:
            parts = urllib.parse.urlsplit(referer)
        except ValueError:  # not a URL ('http://[::1'): the form's own page
            parts = None
        if parts and protection.origin_problem(form, f"{parts.scheme}://{parts.netloc}", None,
                                               _own_origin(request)) is None:
            target = referer
    parts = urllib.parse.urlsplit(target)
    query = [(k, v) for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
             if k != "errors" and not k.startswith("error.")]
    query.append(("errors", ",".join(dict.fromkeys(name for name, _message in errors))))
    query += [(f"error.{name}", message) for name, message in errors]
    return urllib.parse.urlunsplit(parts._replace(query=urllib.parse.urlencode(query),
                                                  fragment=""))


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None:
        if not (declared.isascii() and declared.isdigit()):
            raise logic.FormRejected(400, "invalid Content-Length", None)
        if len(declared) > 18 or int(declared) > limit:  # int() refuses > 4,300 digits
            raise logic.FormRejected(413, "the form is too large",
                                     f"at most {limit // 1024} KiB per submission")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise logic.FormRejected(413, "the form is too large",
                                         f"at most {limit // 1024} KiB per submission")
            chunks.append(chunk)
    except ClientDisconnect:
        raise logic.FormRejected(400, "the client went away", None) from None
    return b"".join(chunks)


async def _check_request(request: Request, form: Form) -> tuple[bytes, bool]:
    """Every protection up to and including parsing's precondition; returns (body, signed)."""
    guards = _guards(request)
    headers = request.headers
    secret = form.hmac_secret.get_secret_value() if form.hmac_secret else None
    signed = secret is not None and (protection.SIGNATURE_HEADER in headers
                                     or protection.TIMESTAMP_HEADER in headers)
    if not signed:
        if form.require_signature:
            raise logic.FormRejected(401, "signature required", protection.signature_problem(
                "", None, None, b"", 0, form.signature_tolerance_seconds))
        problem = protection.origin_problem(form, headers.get("origin"),
                                       headers.get("sec-fetch-site"), _own_origin(request))
        if problem:
            raise logic.FormRejected(403, "origin not allowed", problem)
        peer = request.client.host if request.client else None
        ip = protection.client_ip(peer, headers.get("x-forwarded-for"), form.trusted_proxies)
        if not guards.rate.allow((form.name, ip), form.rate_limit,
                                 form.rate_limit_window_seconds):
            raise logic.FormRejected(429, "too many submissions",
                                     f"at most {form.rate_limit} per "
                                     f"{form.rate_limit_window_seconds} s; try again later")
    body = await _read_body(request, form.max_body_bytes)
    if signed:
        assert secret is not None
        now = time.time()
        signature = headers.get(protection.SIGNATURE_HEADER)
        problem = protection.signature_problem(
            secret, headers.get(protection.TIMESTAMP_HEADER), signature, body, now,
            form.signature_tolerance_seconds)
        if problem is None and not guards.replay.first_use(
            signature or "", now, 2 * form.signature_tolerance_seconds
        ):
            problem = "this signature was used before (replay)"
        if problem:
            raise logic.FormRejected(401, "invalid signature", problem)
    return body, signed


@router.post("/forms/{name}", response_model=None)
async def submit_form(name: str, request: Request) -> Response:
    runtime = runtime_of(request)
    config = runtime.config
    wants_json = _wants_json(request)
    form: Form | None = None
    language: str | None = None
    try:
        form = _form_or_404(config, name)
        language = _language(request, config, form)
        body, signed = await _check_request(request, form)
        posted = form_body.parse_body(body, request.headers.get("content-type", ""))
        language = _language(request, config, form, posted)
        success = form.success_url or _with_lang(
            f"/forms/{urllib.parse.quote(form.name)}/thanks", form, language)
        if logic.honeypot_filled(form, posted):
            log.info("form honeypot filled", form=form.name)
            if wants_json:
                return JSONResponse({"ticket_id": None}, status_code=200)
            return RedirectResponse(success, status_code=303)
        staff = config.merchant_language or config.default_language
        result = logic.validate(form, posted, chain(config, staff))
        if isinstance(result, list):
            log.info("form invalid", form=form.name, fields=[e.field for e in result])
            texts = texts_for(config)
            shown = language or config.default_language
            messages = [texts.message(shown, e.code, e.params) for e in result]
            if wants_json:
                return JSONResponse({"error": "invalid form", "detail": [
                    e.view(m) for e, m in zip(result, messages, strict=True)]}, status_code=422)
            errors = [(e.field, m) for e, m in zip(result, messages, strict=True)]
            return RedirectResponse(_back_url(request, form, errors, language), status_code=303)
        ticket_id = await create_form_ticket(runtime.store, form, result, language)
    except logic.FormRejected as exc:
        if exc.status >= 400:
            log.info("form refused", form=name, status=exc.status, error=exc.error)
        return _refusal(request, exc, form, language)
    log.info("form ticket created", form=form.name, ticket_id=ticket_id, signed=signed,
             attachments=len(result.files), language=language)
    if wants_json:
        return JSONResponse({"ticket_id": ticket_id}, status_code=201)
    return RedirectResponse(success, status_code=303)


@router.get("/forms/{name}", response_class=HTMLResponse)
async def form_page(name: str, request: Request, snippet: bool = False) -> Response:
    config = runtime_of(request).config
    form = config.form(name)
    if form is None:
        return _refusal(request, logic.FormRejected(404, f"no form named {name!r}"))
    language = _language(request, config, form) or config.default_language
    errors: list[tuple[str, str]] = []
    query = request.query_params
    for field_name in (query.get("errors") or "").split(","):
        if field_name:
            errors.append((field_name, query.get(f"error.{field_name}") or ""))
    action = f"/forms/{urllib.parse.quote(form.name)}"
    if snippet:
        action = str(request.base_url).rstrip("/") + action
    return HTMLResponse(pages.render_form_html(texts_for(config), form, language, action, errors,
                                               snippet=snippet), headers=_HTML_HEADERS)


@router.get("/forms/{name}/thanks", response_class=HTMLResponse)
async def thanks_page(name: str, request: Request) -> Response:
    config = runtime_of(request).config
    form = config.form(name)
    if form is None:
        return _refusal(request, logic.FormRejected(404, f"no form named {name!r}"))
    language = _language(request, config, form) or config.default_language
    return HTMLResponse(pages.render_thanks_html(texts_for(config), form, language),
                        headers=_HTML_HEADERS)
