"""The browser sign-in for `gatewayd oauth login --browser` (and Google, whose device flow
does not grant the mail scope): authorization code with PKCE (RFC 7636) and a loopback
redirect (RFC 8252 7.3). The browser may run on another machine: then the page it is sent to
does not load, and the operator pastes that page's address here instead."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2
from authlib.common.security import generate_token
from authlib.integrations.base_client import OAuthError

from gatewayd.config.schema import OAuthBinding
from gatewayd.oauth.login import LoginError, LoginResult, Say, _store
from gatewayd.oauth.providers import endpoints
from gatewayd.oauth.tokens import describe_failure, oauth_client

LOGIN_WAIT_SECONDS = 900.0  # the operator has this long to sign in
_PAGE = (b"HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nConnection: close\r\n"
         b"\r\ngatewayd: sign-in received, you can close this page.\r\n")


async def _redirect_listener(found: asyncio.Future[str]) -> asyncio.Server:
    """A one-request HTTP listener on 127.0.0.1 that hands the redirected URL over."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            parts = line.decode("latin-1").split()
            target = parts[1] if len(parts) >= 2 else ""
            if "code=" in target or "error=" in target:
                host, port = writer.get_extra_info("sockname")[:2]
                if not found.done():
                    found.set_result(f"http://{host}:{port}{target}")
            writer.write(_PAGE)
            await writer.drain()
        except (OSError, TimeoutError, UnicodeError):
            pass
        finally:
            writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


def _read_pasted(found: asyncio.Future[str]) -> bool:
    """Take a pasted redirect address from stdin (when stdin can be watched)."""
    loop = asyncio.get_running_loop()

    def ready() -> None:
        line = sys.stdin.readline().strip()
        if "code=" in line or "error=" in line:
            if not found.done():
                found.set_result(line)

    try:
        loop.add_reader(sys.stdin.fileno(), ready)
    except (OSError, ValueError, NotImplementedError):
        return False
    return True


async def browser_login(binding: OAuthBinding, say: Say, *,
                        redirected: asyncio.Future[str] | None = None) -> LoginResult:
    """Show the sign-in URL, wait for the redirect (or a pasted address), store the token."""
    settings = binding.settings
    ep = endpoints(settings)
    if not ep.authorization_url or not ep.token_url:
        raise LoginError("no authorization_url / token_url for this provider — set them in "
                         "[accounts.oauth2]")
    found: asyncio.Future[str] = redirected or asyncio.get_running_loop().create_future()
    server = await _redirect_listener(found)
    port = server.sockets[0].getsockname()[1]
    watching = redirected is None and _read_pasted(found)
    scope = " ".join(ep.scopes)
    try:
        async with oauth_client(settings, ep) as client:
            client.redirect_uri = f"http://127.0.0.1:{port}/"
            client.code_challenge_method = "S256"
            verifier = generate_token(48)
            extra: dict[str, Any] = {}
            if settings.provider == "google":
                extra = {"access_type": "offline", "prompt": "consent"}
            url, state = client.create_authorization_url(
                ep.authorization_url, code_verifier=verifier, **extra)
            say(f"To let gatewayd use the mailbox of {binding.account}, open this address in a "
                f"browser and sign in as the mailbox's user:\n\n    {url}\n")
            say(f"The browser is then sent to http://127.0.0.1:{port}/… — if that page does "
                "not load (the browser runs on another machine), copy its address from the "
                "address bar and paste it here.")
            try:
                answer = await asyncio.wait_for(found, LOGIN_WAIT_SECONDS)
            except TimeoutError:
                raise LoginError("no sign-in within 15 minutes — run the login again") from None
            query = parse_qs(urlsplit(answer).query)
            if "error" in query:
                raise LoginError(f"the sign-in was not completed: {query['error'][0]} "
                                 f"{query.get('error_description', [''])[0][:200]}")
            try:
                raw = await asyncio.wait_for(client.fetch_token(
                    ep.token_url, authorization_response=answer, state=state,
                    code_verifier=verifier), settings.timeout_seconds + 5)
            except (OAuthError, httpx2.HTTPError, OSError, TimeoutError, ValueError) as exc:
                raise LoginError(describe_failure(exc, ep.token_url)[1]) from None
            return _store(binding, raw, scope)
    finally:
        if watching:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
        server.close()
        await server.wait_closed()
