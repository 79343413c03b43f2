"""OAuth2 for sending and signing in: SMTP AUTH XOAUTH2 and OAUTHBEARER against aiosmtpd (its
auth_MECHANISM hooks ask the local identity provider's introspection endpoint, as a provider's
server would), test mode still diverting every mail, `gatewayd oauth login` (device code with
slow_down, browser sign-in with PKCE), `gatewayd oauth status`, and no token or secret in the
log at DEBUG level."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, Session

from gatewayd import logs
from gatewayd.config import Config
from gatewayd.oauth import sasl
from gatewayd.oauth.cli import oauth_report
from gatewayd.oauth.login import device_login
from gatewayd.oauth.store import TokenStore
from gatewayd.oauth.tokens import forget_sources, token_source
from gatewayd.outbound import cli as outbound_cli
from tests.oauth_servers import IdP, dovecot_oauth, idp

__all__ = ["dovecot_oauth", "idp"]  # the fixtures, used by name


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    forget_sources()


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


class OAuthSmtpHandler:
    """Accepts a mail after AUTH with a token the identity provider calls active; a refused
    token gets the error challenge (base64 JSON) first, as Gmail and Exchange send it."""

    def __init__(self, idp_url: str, mechanisms: tuple[str, ...]) -> None:
        self.idp_url = idp_url
        self.received: list[tuple[str, list[str], str | None]] = []
        self.logins: list[tuple[str, str, bool]] = []  # (mechanism, user, accepted)
        for mechanism in mechanisms:
            setattr(self, f"auth_{mechanism}", self._auth(mechanism))

    def _auth(self, mechanism: str) -> Callable[..., Any]:
        async def auth(server: SMTP, args: list[str]) -> AuthResult:
            raw = base64.b64decode(args[1]).decode() if len(args) > 1 else ""
            fields = dict(p.split("=", 1) for p in raw.split("\x01") if "=" in p)
            user = fields.get("user") or raw.split(",")[1].removeprefix("a=")
            token = fields.get("auth", "").removeprefix("Bearer ")
            async with httpx.AsyncClient(timeout=10) as http:
                answer = (await http.post(f"{self.idp_url}/introspect", data={"token": token},
                                          auth=("dovecot", "idp-dovecot-secret-77"))).json()
            accepted = bool(answer.get("active")) and answer.get("username") == user
            self.logins.append((mechanism, user, accepted))
            if accepted:
                return AuthResult(success=True, auth_data=user)
            challenge = base64.b64encode(json.dumps({"status": "invalid_token"}).encode())
            await server.challenge_auth(challenge.decode(), encode_to_b64=False)
            return AuthResult(success=False, handled=False)
        return auth

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        self.received.append((str(envelope.mail_from), list(envelope.rcpt_tos),
                              str(session.auth_data) if session.auth_data else None))
        return "250 OK"


@contextlib.asynccontextmanager
async def oauth_smtp(idp: IdP, *mechanisms: str) -> AsyncIterator[tuple[int, OAuthSmtpHandler]]:
    handler = OAuthSmtpHandler(idp.url, mechanisms)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: SMTP(handler, auth_require_tls=False, auth_exclude_mechanism=["LOGIN", "PLAIN"]),
        "127.0.0.1", 0)
    try:
        yield server.sockets[0].getsockname()[1], handler
    finally:
        server.close()
        await server.wait_closed()


def smtp_account(port: int, oauth2: dict[str, Any]) -> dict[str, Any]:
    return {"name": "support", "address": "support@shop.example",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "smtp": {"host": "127.0.0.1", "port": port, "security": "none", "auth": "oauth2",
                     "username": "support", "timeout_seconds": 15},
            "oauth2": oauth2}


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
async def test_test_send_logs_in_with_the_offered_mechanism_and_test_mode_diverts(
    idp: IdP, make_config: Callable[..., Config], mechanism: str
) -> None:
    async with oauth_smtp(idp, mechanism) as (port, handler):
        config = make_config(mode="test", test_recipient="qa@shop.example", accounts=[
            smtp_account(port, idp.oauth2("support-app", "client_credentials"))])
        code, report = await outbound_cli.test_send(config, "support", "kunde@example.org")
    assert code == 0, report
    assert handler.received == [("support@shop.example", ["qa@shop.example"], "support")]
    assert f"login {mechanism} (OAuth2), token valid until" in report
    assert "test mode: meant for kunde@example.org" in report


async def test_refused_token_is_renewed_once_then_the_mail_goes(
    idp: IdP, make_config: Callable[..., Config]
) -> None:
    async with oauth_smtp(idp, "XOAUTH2") as (port, handler):
        config = make_config(mode="test", test_recipient="qa@shop.example", accounts=[
            smtp_account(port, idp.oauth2("support-app", "client_credentials"))])
        assert (await outbound_cli.test_send(config, "support", None))[0] == 0
        idp.admin("revoke-access")  # the cached token looks valid, the server refuses it
        code, report = await outbound_cli.test_send(config, "support", None)
    assert code == 0, report
    assert [accepted for _m, _u, accepted in handler.logins] == [True, False, True]
    assert len(handler.received) == 2


async def test_revoked_refresh_token_keeps_the_mail_queued_with_the_reason(
    idp: IdP, make_config: Callable[..., Config]
) -> None:
    async with oauth_smtp(idp, "XOAUTH2") as (port, handler):
        config = make_config(mode="test", test_recipient="qa@shop.example", accounts=[
            smtp_account(port, idp.oauth2("public-app", "refresh_token"))])
        TokenStore(config.data_dir, "support").save(idp.refresh_token_for("sales-user"), "mail")
        idp.admin("revoke", username="sales-user")
        code, report = await outbound_cli.test_send(config, "support", None)
    assert code == 1 and handler.received == [] and handler.logins == []
    assert "run `gatewayd oauth login support`" in report
    assert "rt-" not in report


async def test_device_login_stores_the_refresh_token_and_respects_slow_down(
    idp: IdP, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[smtp_account(1, idp.oauth2("public-app", "refresh_token"))])
    account = config.account("support")
    assert account is not None and account.smtp is not None and account.smtp.oauth is not None
    idp.admin("config", slow_down_once=True)
    said: list[str] = []
    waits: list[float] = []

    def say(text: str) -> None:
        said.append(text)

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        if len(waits) == 2:  # meanwhile the user signs in, in a browser somewhere else
            code = "".join(said).split("enter the code")[1].split()[0]
            async with httpx.AsyncClient(timeout=10) as http:
                await http.post(f"{idp.url}/admin/approve", json={"user_code": code,
                                                                 "username": "support"})

    result = await device_login(account.smtp.oauth, say, sleep=sleep)
    assert waits == [1.0, 6.0]  # the provider's interval, then 5 s more after slow_down
    store = TokenStore(config.data_dir, "support")
    grant = store.load()
    assert grant is not None and grant.refresh_token in idp.admin("live-refresh")
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert (store.folder.stat().st_mode & 0o777) == 0o700
    assert result.stored_in == str(store.path)
    assert not any(grant.refresh_token in line for line in said)
    row = oauth_report(config)[0]
    assert row["refresh_token_stored"] and row["flow"] == "refresh_token"
    assert row["access_token_expires_at"] and row["last_error"] is None


async def test_browser_login_with_pkce_and_a_loopback_redirect(
    idp: IdP, make_config: Callable[..., Config]
) -> None:
    from gatewayd.oauth.browser import browser_login

    config = make_config(accounts=[smtp_account(1, idp.oauth2("public-app", "refresh_token"))])
    account = config.account("support")
    assert account is not None and account.smtp is not None and account.smtp.oauth is not None
    redirected: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    urls: list[str] = []
    shown = asyncio.Event()

    def say(text: str) -> None:
        urls.extend(w for w in text.split() if w.startswith(f"{idp.url}/authorize"))
        if urls:
            shown.set()

    async def browser() -> None:  # the operator's browser: signs in and follows the redirect
        await shown.wait()
        async with httpx.AsyncClient(timeout=10, follow_redirects=True) as http:
            assert "code_challenge=" in urls[0]
            await http.get(urls[0])

    result, _ = await asyncio.wait_for(asyncio.gather(
        browser_login(account.smtp.oauth, say, redirected=redirected), browser()), 30)
    grant = TokenStore(config.data_dir, "support").load()
    assert grant is not None and grant.refresh_token in idp.admin("live-refresh")
    assert result.flow == "refresh_token"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to start Dovecot (see test_dovecot)")
async def test_no_token_or_secret_ever_reaches_the_log(
    idp: IdP, make_config: Callable[..., Config], capsys: pytest.CaptureFixture[str],
    request: pytest.FixtureRequest,
) -> None:
    """Everything OAuth2 does, logged at DEBUG (aioimaplib, httpx, authlib included): device
    login, refresh with rotation, IMAP AUTHENTICATE both ways, SMTP AUTH both ways, a refused
    token, a revoked grant. Then the captured log is searched for every token and secret the
    identity provider handed out, raw and in the base64 of the SASL exchange."""
    from gatewayd.ingest.imap import ImapSession, OAuthLoginRequired
    from gatewayd.loopback.dovecot import DovecotServer

    dovecot: DovecotServer = request.getfixturevalue("dovecot_oauth")
    logs.configure("DEBUG", json=True)
    for name in ("aioimaplib", "httpx", "httpcore", "httpx2", "authlib", "aiosmtplib"):
        logging.getLogger(name).setLevel(logging.DEBUG)
    idp.admin("config", rotate=True)
    try:
        async with oauth_smtp(idp, "XOAUTH2") as (x_port, _), \
                oauth_smtp(idp, "OAUTHBEARER") as (o_port, _):
            refresh = idp.oauth2("public-app", "refresh_token")
            app = idp.oauth2("support-app", "client_credentials")
            imap = {"host": "127.0.0.1", "port": dovecot.port, "security": "none",
                    "auth": "oauth2", "username": "support", "timeout_seconds": 15}
            config = make_config(mode="test", test_recipient="qa@shop.example", accounts=[
                {**smtp_account(x_port, refresh), "imap": imap},
                {**smtp_account(o_port, app), "name": "sales", "address": "sales@shop.example"},
            ])
            support = config.account("support")
            assert support is not None and support.imap is not None
            assert support.imap.oauth is not None

            def approve(text: str) -> None:
                if "enter the code" in text:
                    code = text.split("enter the code")[1].split()[0]
                    idp.admin("approve", user_code=code, username="support")

            async def no_wait(_seconds: float) -> None:
                pass

            await device_login(support.imap.oauth, approve, sleep=no_wait)
            session = ImapSession(support.imap, "")
            await session.connect()  # refresh (rotating) + AUTHENTICATE OAUTHBEARER
            await session.close()
            source = token_source(support.imap.oauth)
            cached = source.cached
            assert cached is not None
            idp.admin("revoke-access")
            send = outbound_cli.test_send
            assert (await send(config, "support", None))[0] == 0  # refused, renewed
            assert (await send(config, "sales", None))[0] == 0  # app-only, OAUTHBEARER
            idp.admin("revoke", username="support")
            forget_sources()
            with pytest.raises(OAuthLoginRequired):
                await ImapSession(support.imap, "").connect()
    finally:
        idp.admin("config", rotate=False)
        logging.getLogger().handlers.clear()
    captured = capsys.readouterr()
    text = captured.out + captured.err
    assert "OAuth2 access token obtained" in text and "Sending" in text  # DEBUG was on
    secrets = idp.admin("secrets")
    values = [*secrets["access"], *secrets["refresh"], *secrets["client_secrets"]]
    assert len(secrets["access"]) >= 4 and len(secrets["refresh"]) >= 3
    encoded = [sasl.encoded_response(m, "support", t, "127.0.0.1", p)
               for t in secrets["access"] for m, p in (("XOAUTH2", x_port),
                                                       ("OAUTHBEARER", dovecot.port))]
    leaked = [v[:8] + "…" for v in [*values, *encoded] if v in text]
    assert leaked == []
