"""`gatewayd oauth login`: getting an account's refresh token once, by the device authorization
grant (RFC 8628: a URL and a code to enter in any browser) or, where the provider allows mail
scopes only there (Google), the browser login with PKCE and a loopback redirect. The token
requests are authlib's; this module shows the instructions, waits as the provider asks
(interval, slow_down, expires_in) and stores the result (mode 0600, replaced atomically).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import httpx2  # the HTTP client authlib uses
from authlib.integrations.base_client import OAuthError

from gatewayd.config.schema import OAuthBinding
from gatewayd.oauth.providers import endpoints
from gatewayd.oauth.store import TokenStore
from gatewayd.oauth.tokens import TokenSource, describe_failure, lifetime, oauth_client

DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
SLOW_DOWN_STEP = 5  # RFC 8628 3.5: slow_down adds 5 seconds to the interval for good


class LoginError(Exception):
    """The login did not give a refresh token; the text says why and what to do."""


@dataclass(frozen=True)
class LoginResult:
    flow: str
    expires: dt.datetime  # of the access token that came with it
    scope: str
    stored_in: str | None  # the refresh token's file (None for client credentials)


Say = Callable[[str], None]
Sleep = Callable[[float], Awaitable[None]]


def _expires(raw: dict[str, Any]) -> dt.datetime:
    now = time.time()
    return dt.datetime.fromtimestamp(now + lifetime(raw, now), dt.UTC)


def _store(binding: OAuthBinding, raw: dict[str, Any], scope_wanted: str) -> LoginResult:
    refresh = raw.get("refresh_token")
    if not isinstance(refresh, str) or not refresh:
        raise LoginError("the provider answered without a refresh token — ask for the "
                         "offline_access scope (Microsoft) or access_type=offline (Google)")
    store = TokenStore(binding.data_dir, binding.account)
    scope = str(raw.get("scope") or scope_wanted)
    store.save(refresh, scope)
    expires = _expires(raw)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    store.record(flow="refresh_token", logged_in_at=now, last_refresh_at=now,
                 access_token_expires_at=expires.isoformat(timespec="seconds"), last_error=None)
    return LoginResult("refresh_token", expires, scope, str(store.path))


async def app_only_check(binding: OAuthBinding) -> LoginResult:
    """The client-credentials flow needs no login: fetch one token to prove the settings."""
    source = TokenSource(binding)
    token = await source.token()
    return LoginResult("client_credentials", token.expires, " ".join(source.endpoints.scopes),
                       None)


async def device_login(binding: OAuthBinding, say: Say, *, sleep: Sleep = asyncio.sleep,
                       clock: Callable[[], float] = time.monotonic) -> LoginResult:
    """RFC 8628: ask for a device code, show the URL and code, poll until the user agreed."""
    settings = binding.settings
    ep = endpoints(settings)
    if not ep.device_authorization_url or not ep.token_url:
        raise LoginError("no device_authorization_url / token_url for this provider — set "
                         "them in [accounts.oauth2]")
    scope = " ".join(ep.scopes)
    limit = settings.timeout_seconds + 5
    async with oauth_client(settings, ep) as client:
        try:
            auth = client.client_auth(client.token_endpoint_auth_method)
            response = await asyncio.wait_for(client.post(
                ep.device_authorization_url, data={"scope": scope} if scope else {},
                auth=auth), limit)  # client authentication as at the token endpoint
            grant = response.json()
        except (httpx2.HTTPError, OSError, TimeoutError, ValueError) as exc:
            raise LoginError(f"device authorization request failed: "
                             f"{describe_failure(exc, ep.device_authorization_url)[1]}") from None
        if not isinstance(grant, dict) or "device_code" not in grant:
            error = grant.get("error", "") if isinstance(grant, dict) else ""
            desc = grant.get("error_description", "") if isinstance(grant, dict) else ""
            raise LoginError(f"the provider refused the device authorization "
                             f"(HTTP {response.status_code} {error}: {str(desc)[:300]})")
        uri = grant.get("verification_uri") or grant.get("verification_url")  # Google: _url
        say(f"To let gatewayd use the mailbox of {binding.account}, open\n\n    {uri}\n\n"
            f"in any browser, sign in as the mailbox's user and enter the code\n\n"
            f"    {grant.get('user_code')}\n")
        if grant.get("verification_uri_complete"):
            say(f"(or open {grant['verification_uri_complete']} with the code filled in)")
        interval = max(1.0, float(grant.get("interval") or 5))
        deadline = clock() + float(grant.get("expires_in") or 900)
        say("Waiting for the sign-in …")
        while True:
            await sleep(interval)
            if clock() > deadline:
                raise LoginError("the code expired before the sign-in was finished — run "
                                 f"`gatewayd oauth login {binding.account}` again")
            try:
                raw = await asyncio.wait_for(client.fetch_token(
                    ep.token_url, grant_type=DEVICE_GRANT, device_code=grant["device_code"]),
                    limit)
            except OAuthError as exc:
                if exc.error == "authorization_pending":
                    continue
                if exc.error == "slow_down":
                    interval += SLOW_DOWN_STEP
                    continue
                if exc.error == "expired_token":
                    raise LoginError("the code expired — run the login again") from None
                if exc.error == "access_denied":
                    raise LoginError("the sign-in was declined") from None
                raise LoginError(describe_failure(exc, ep.token_url)[1]) from None
            except (httpx2.HTTPError, OSError, TimeoutError, ValueError) as exc:
                # A network hiccup while the user types: keep polling until the code expires.
                say(f"(token endpoint: {describe_failure(exc, ep.token_url)[1]}; still waiting)")
                continue
            return _store(binding, raw, scope)
