"""Access tokens for an account: fetched with authlib (client credentials, or a stored refresh
token), cached in memory, renewed a margin before they expire, and once more when a server
refuses one. A grant the provider refuses (revoked or expired refresh token, wrong secret) is
remembered, so the token endpoint is not asked again until something changed; a temporary
failure backs off. No token or secret ever reaches a log line or an exception text.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx2  # the HTTP client authlib uses
from authlib.integrations.base_client import OAuthError
from authlib.integrations.httpx_client import AsyncOAuth2Client

from gatewayd.config.schema import OAuth2Settings, OAuthBinding
from gatewayd.logs import get_logger
from gatewayd.oauth.providers import Endpoints, endpoints
from gatewayd.oauth.store import TokenStore

log = get_logger("gatewayd.oauth")
R = TypeVar("R")

# Errors that need an operator (RFC 6749 5.2, and what Microsoft and Google send when a
# refresh token was revoked, expired, or consent is missing): asking again changes nothing.
REFUSALS = frozenset({
    "invalid_grant", "invalid_client", "unauthorized_client", "invalid_scope", "access_denied",
    "consent_required", "interaction_required",
})
RETRY_START = 5.0  # a temporary failure: the endpoint is asked again after 5 s, 10 s, ... 5 min
RETRY_CAP = 300.0
REFUSED_RETRY_SECONDS = 1800.0  # refused client credentials are tried again this rarely
DEFAULT_LIFETIME = 3600.0  # when the provider names no expires_in


class TokenError(Exception):
    """No access token now (endpoint unreachable, timeout, temporary error): try again later."""


class GrantRefused(TokenError):
    """The provider refused the grant or there is none: an operator must act; the text says
    what to do."""


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # epoch seconds
    obtained_at: float

    @property
    def expires(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.expires_at, dt.UTC)


def needs_refresh(token: AccessToken, now: float, margin: float) -> bool:
    """Renew `margin` seconds before expiry, but never sooner than half-way through the token's
    life (a provider that hands out 10-minute tokens must not be asked at every use). Pure."""
    lifetime = max(0.0, token.expires_at - token.obtained_at)
    return now >= token.expires_at - min(margin, lifetime / 2)


def retry_delay(failures: int) -> float:
    return float(min(RETRY_CAP, RETRY_START * 2 ** max(0, failures - 1)))


def lifetime(raw: dict[str, Any], now: float) -> float:
    """Seconds the token lives: expires_in (relative, immune to clock skew), else expires_at."""
    for key, base in (("expires_in", 0.0), ("expires_at", now)):
        value = raw.get(key)
        try:
            seconds = float(value) - base  # type: ignore[arg-type]
        except (TypeError, ValueError):
            continue
        if seconds > 0:
            return seconds
    return DEFAULT_LIFETIME


def _digest(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def _iso(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).isoformat(timespec="seconds")


def client_secret(settings: OAuth2Settings) -> str | None:
    return settings.client_secret.get_secret_value() if settings.client_secret else None


def oauth_client(settings: OAuth2Settings, ep: Endpoints) -> AsyncOAuth2Client:
    """authlib's httpx client for these settings; every request has the settings' timeout."""
    secret = client_secret(settings)
    return AsyncOAuth2Client(
        client_id=settings.client_id, client_secret=secret,
        token_endpoint_auth_method="client_secret_post" if secret else "none",
        scope=" ".join(ep.scopes) or None, timeout=settings.timeout_seconds,
    )


def describe_failure(exc: BaseException, url: str | None) -> tuple[bool, str]:
    """(refused, text) for a failed token request; the text names the endpoint's host and the
    provider's error code and description, which carry no token."""
    host = urlsplit(url or "").netloc or "the token endpoint"
    if isinstance(exc, OAuthError):
        code = str(exc.error or "error")
        desc = " ".join(str(exc.description or "").split())[:300]
        return code in REFUSALS, f"{code}: {desc}" if desc else code
    if isinstance(exc, httpx2.HTTPStatusError):
        return False, f"{host} answered HTTP {exc.response.status_code}"
    if isinstance(exc, httpx2.TimeoutException | TimeoutError):
        return False, f"{host} did not answer in time"
    if isinstance(exc, httpx2.HTTPError | OSError):
        return False, f"cannot reach {host} ({type(exc).__name__})"
    return False, f"{host} sent an answer that is not a token ({type(exc).__name__})"


class TokenSource:
    """One account's access tokens, shared by its IMAP poller and its SMTP sender."""

    def __init__(self, binding: OAuthBinding, *, clock: Callable[[], float] = time.time) -> None:
        self.account = binding.account
        self.settings = binding.settings
        self.endpoints = endpoints(binding.settings)
        self.store = TokenStore(binding.data_dir, binding.account)
        self.clock = clock
        self.mechanisms: dict[str, str] = {}  # "imap" / "smtp" → the SASL mechanism last used
        self._token: AccessToken | None = None
        self._lock: asyncio.Lock | None = None
        self._lock_loop: asyncio.AbstractEventLoop | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._last_error: TokenError | None = None
        self._refused: tuple[str | None, float, str] | None = None  # (grant digest, at, text)

    @property
    def flow(self) -> str:
        return self.settings.effective_flow

    @property
    def cached(self) -> AccessToken | None:
        return self._token

    def invalidate(self, token: AccessToken) -> None:
        """A server refused this token: the next call fetches a new one."""
        if self._token is not None and self._token.value == token.value:
            self._token = None

    async def login(self, protocol: str, mechanism: str,
                    attempt: Callable[[AccessToken], Awaitable[R | None]],
                    ) -> tuple[AccessToken, R | None]:
        """One SASL login with a token, as IMAP and SMTP do it: `attempt(token)` logs in and
        returns None when the server accepts, else its refusal; a refused token is dropped and
        the login tried once more with a new one. Returns the last token and the refusal (None:
        logged in, and `mechanism` is remembered for `protocol`). Raises GrantRefused or
        TokenError when no token can be had."""
        refusal: R | None = None
        for retry in (False, True):
            token = await self.token(force=retry)
            refusal = await attempt(token)
            if refusal is None:
                self.mechanisms[protocol] = mechanism
                break
            self.invalidate(token)
        return token, refusal

    def _guard(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        if self._lock is None or self._lock_loop is not loop:
            self._lock, self._lock_loop = asyncio.Lock(), loop
        return self._lock

    async def token(self, *, force: bool = False) -> AccessToken:
        """A valid access token: the cached one, or a new one when it is near its end (or
        `force`, after a server refused it). Raises GrantRefused or TokenError."""
        async with self._guard():
            now = self.clock()
            cached = self._token
            if cached and not force and not needs_refresh(
                    cached, now, self.settings.refresh_margin_seconds):
                return cached
            self._check_refused(now)
            if self._last_error is not None and now < self._retry_at:
                raise TokenError(f"{self._last_error} (next try in "
                                 f"{self._retry_at - now:.0f} s)")
            try:
                token = await self._fetch(now)
            except GrantRefused as exc:
                self._token = None
                log.error("OAuth2 grant refused", reason=str(exc), flow=self.flow)
                self.store.record(last_error=str(exc), last_error_at=_iso(now), flow=self.flow)
                raise
            except TokenError as exc:
                self._failures += 1
                self._retry_at = now + retry_delay(self._failures)
                self._last_error = exc
                log.warning("OAuth2 token request failed", reason=str(exc),
                            retry_in=retry_delay(self._failures))
                self.store.record(last_error=str(exc), last_error_at=_iso(now), flow=self.flow)
                raise
            self._token = token
            self._failures, self._last_error, self._refused = 0, None, None
            log.info("OAuth2 access token obtained", flow=self.flow, expires=_iso(token.expires_at))
            self.store.record(flow=self.flow, access_token_expires_at=_iso(token.expires_at),
                              last_refresh_at=_iso(token.obtained_at), last_error=None)
            return token

    def _check_refused(self, now: float) -> None:
        """Raise the remembered refusal while nothing changed (no network)."""
        if self.flow == "refresh_token":
            grant = self.store.load()
            if grant is None:
                raise GrantRefused(f"no refresh token is stored for {self.account} — run "
                                   f"`gatewayd oauth login {self.account}`")
            if self._refused and self._refused[0] == _digest(grant.refresh_token):
                raise GrantRefused(self._refused[2])
        elif self._refused and now < self._refused[1] + REFUSED_RETRY_SECONDS:
            raise GrantRefused(self._refused[2])

    async def _fetch(self, now: float) -> AccessToken:
        ep = self.endpoints
        if not ep.token_url:
            raise GrantRefused(f"no token_url for {self.account} — set token_url in "
                               "[accounts.oauth2]")
        grant = self.store.load() if self.flow == "refresh_token" else None
        try:
            async with oauth_client(self.settings, ep) as client:
                if grant is None:
                    raw: dict[str, Any] = await asyncio.wait_for(
                        client.fetch_token(ep.token_url, grant_type="client_credentials"),
                        self.settings.timeout_seconds + 5)
                else:
                    raw = await asyncio.wait_for(
                        client.refresh_token(ep.token_url, refresh_token=grant.refresh_token),
                        self.settings.timeout_seconds + 5)
        except (OAuthError, httpx2.HTTPError, OSError, TimeoutError, ValueError) as exc:
            refused, text = describe_failure(exc, ep.token_url)
            if not refused:
                raise TokenError(f"OAuth2 token for {self.account}: {text}") from None
            if grant is not None:
                message = (f"the identity provider refused the refresh token of {self.account} "
                           f"({text}) — run `gatewayd oauth login {self.account}`")
            else:
                message = (f"the identity provider refused the client credentials of "
                           f"{self.account} ({text}) — check client_id, the client secret and "
                           "the app's permissions (docs/providers.md)")
            self._refused = (_digest(grant.refresh_token) if grant else None, now, message)
            raise GrantRefused(message) from None
        value = raw.get("access_token")
        if not isinstance(value, str) or not value:
            raise TokenError(f"OAuth2 token for {self.account}: the answer has no access_token")
        if grant is not None:
            rotated = raw.get("refresh_token")
            if isinstance(rotated, str) and rotated and rotated != grant.refresh_token:
                # Saved before the access token is used: a crash now keeps the new one.
                self.store.save(rotated, str(raw.get("scope") or grant.scope), rotated=True)
                log.info("OAuth2 refresh token rotated and saved", file=str(self.store.path))
        return AccessToken(value, now + lifetime(raw, now), now)


_SOURCES: dict[tuple[str, str, str], TokenSource] = {}


def _fingerprint(settings: OAuth2Settings) -> str:
    public = settings.model_dump_json(exclude={"client_secret"})
    return _digest(public + "\0" + (client_secret(settings) or ""))


def token_source(binding: OAuthBinding) -> TokenSource:
    """The process's TokenSource for an account: one per account and settings, so the poller
    and the sender share one cached token; a reload with other settings starts a new one."""
    key = (binding.account, str(binding.data_dir), _fingerprint(binding.settings))
    source = _SOURCES.get(key)
    if source is None:
        for old in [k for k in _SOURCES if k[0] == binding.account and k[1] == key[1]]:
            del _SOURCES[old]
        source = _SOURCES[key] = TokenSource(binding)
    return source


def forget_sources() -> None:
    """Drop every cached token (a new process: tests of a restart)."""
    _SOURCES.clear()
