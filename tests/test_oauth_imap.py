"""OAuth2 logins against a real Dovecot whose oauth2 passdb asks the local identity provider
(tests/oauth_idp.py) by introspection: AUTHENTICATE XOAUTH2 and OAUTHBEARER, with and without
SASL-IR, app-only and refresh-token accounts, token expiry during IDLE, a refused token renewed
once, refresh-token rotation across a restart, and a revoked refresh token parking only its
account."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import aioimaplib
import pytest

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.imap import ImapSession, OAuthLoginRequired
from gatewayd.ingest.poller import AccountPoller, run_account
from gatewayd.loopback.dovecot import DovecotServer
from gatewayd.oauth.imap_auth import authenticate
from gatewayd.oauth.store import TokenStore
from gatewayd.oauth.tokens import forget_sources, token_source
from gatewayd.runtime import Runtime
from gatewayd.store.db import open_database
from gatewayd.store.models import AccountState, Message
from gatewayd.store.tickets import TicketStore
from tests.oauth_servers import IdP, dovecot_oauth, idp, needs_dovecot
from tests.test_dovecot import deliver, mail, wait_for

pytestmark = needs_dovecot
__all__ = ["dovecot_oauth", "idp"]  # the fixtures, used by name


@pytest.fixture(autouse=True)
def _fresh_tokens() -> None:
    forget_sources()  # every test starts like a new process


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


def oauth_account(name: str, dovecot: DovecotServer, oauth2: dict[str, Any],
                  **imap: Any) -> dict[str, Any]:
    return {"name": name, "address": f"{name}@shop.example",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": dovecot.port, "security": "none",
                     "auth": "oauth2", "username": name, "poll_seconds": 300,
                     "timeout_seconds": 15, **imap},
            "oauth2": oauth2}


async def _client(port: int) -> aioimaplib.IMAP4:
    client = aioimaplib.IMAP4(host="127.0.0.1", port=port, timeout=15)
    await client.wait_hello_from_server()
    return client


@pytest.mark.parametrize("mechanism", ["XOAUTH2", "OAUTHBEARER"])
@pytest.mark.parametrize("sasl_ir", [True, False], ids=["sasl-ir", "continuation"])
async def test_authenticate_against_dovecot(idp: IdP, dovecot_oauth: DovecotServer,
                                            mechanism: str, sasl_ir: bool) -> None:
    import httpx

    async with httpx.AsyncClient(timeout=10) as http:
        token = (await http.post(f"{idp.url}/token", data={
            "grant_type": "client_credentials", "client_id": "support-app",
            "client_secret": "idp-app-secret-5f2a9c", "scope": "mail"})).json()["access_token"]
    for value, expected in ((token, True), ("at-not-a-token", False)):
        client = await _client(dovecot_oauth.port)
        assert f"AUTH={mechanism}" in client.protocol.capabilities
        if not sasl_ir:  # make the command wait for the server's "+" before the response
            client.protocol.capabilities.discard("SASL-IR")
        # A refused token must come back as NO at once: the error challenge is answered
        # (left unanswered, the command would hang until this bound).
        async with asyncio.timeout(12):
            accepted, why = await authenticate(client, mechanism, "support", value,
                                               "127.0.0.1", dovecot_oauth.port, 15)
        assert accepted is expected, why
        if expected:
            assert (await client.select("INBOX")).result == "OK"
        else:
            assert "fail" in why.lower() or "invalid" in why.lower(), why
        await client.logout()


async def test_app_only_account_imports_with_the_offered_mechanism(
    idp: IdP, dovecot_oauth: DovecotServer, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[oauth_account(
        "support", dovecot_oauth, idp.oauth2("support-app", "client_credentials"))])
    acc = config.account("support")
    assert acc is not None and acc.imap is not None
    await deliver(dovecot_oauth.port, "support", mail("App-only", "<app1@example.org>"))
    async with open_database(config.database_url):
        runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
        assert await AccountPoller(runtime, acc, asyncio.Event()).poll_now() == 1
        assert await Message.filter(message_id="<app1@example.org>").exists()
    session = ImapSession(acc.imap, "")
    await session.connect()
    try:
        assert session.auth_mechanism == "OAUTHBEARER"  # both offered: the standard one
        assert session.token_expires_at is not None
    finally:
        await session.close()


def _delta(before: dict[str, int], after: dict[str, int], key: str) -> int:
    return after.get(key, 0) - before.get(key, 0)


async def test_token_expiry_during_a_long_idle_session(
    idp: IdP, dovecot_oauth: DovecotServer, make_config: Callable[..., Config]
) -> None:
    """Tokens live 2 s here. The poller stays in IDLE past several token lifetimes; then the
    server ends the session (as Exchange does when the token expires) and the poller logs in
    again with a token renewed before expiry: no login is refused, the account never parks."""
    idp.admin("config", lifetime=2)
    try:
        config = make_config(accounts=[oauth_account(
            "support", dovecot_oauth, idp.oauth2("support-app", "client_credentials",
                                                 refresh_margin_seconds=60), poll_seconds=8,
            timeout_seconds=3)])  # aioimaplib notices an ended IDLE only after IDLE + timeout
        acc = config.account("support")
        assert acc is not None
        before = idp.stats()
        async with open_database(config.database_url):
            runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
            stop = asyncio.Event()
            task = asyncio.create_task(run_account(runtime, acc, stop))
            states: list[str] = []

            async def idle() -> bool:
                health = runtime.health.get("support")
                if health is not None:
                    states.append(health.state)
                return health is not None and health.state == "idle"

            await wait_for(idle)
            await asyncio.sleep(5)  # one IDLE, past two token lifetimes
            await deliver(dovecot_oauth.port, "support", mail("Während IDLE", "<idle1@ex.org>"))
            await wait_for(lambda: Message.filter(message_id="<idle1@ex.org>").exists())
            await wait_for(idle)
            # Kicked while in IDLE (a connection dropped during another command is the
            # poller's own matter, not OAuth2's).
            await asyncio.sleep(0.5)
            await asyncio.to_thread(dovecot_oauth.kick, "support")
            await deliver(dovecot_oauth.port, "support", mail("Nach Ablauf", "<idle2@ex.org>"))
            await wait_for(lambda: Message.filter(message_id="<idle2@ex.org>").exists(), 40)
            stop.set()
            await asyncio.wait_for(task, 15)
        after = idp.stats()
        assert "parked" not in states
        assert _delta(before, after, "introspect_inactive") == 0  # never an expired token
        assert _delta(before, after, "token_client_credentials_200") >= 2  # renewed
    finally:
        idp.admin("config", lifetime=3600)


async def test_a_refused_token_is_renewed_once_and_the_login_goes_on(
    idp: IdP, dovecot_oauth: DovecotServer, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[oauth_account(
        "support", dovecot_oauth, idp.oauth2("support-app", "client_credentials"))])
    acc = config.account("support")
    assert acc is not None and acc.imap is not None
    session = ImapSession(acc.imap, "")
    await session.connect()  # caches a token
    await session.close()
    idp.admin("revoke-access")  # the cached token still looks valid, the server refuses it
    before = idp.stats()
    session = ImapSession(acc.imap, "")
    await session.connect()
    await session.close()
    after = idp.stats()
    assert _delta(before, after, "introspect_inactive") == 1
    assert _delta(before, after, "token_client_credentials_200") == 1


async def test_rotated_refresh_token_is_saved_and_used_after_a_restart(
    idp: IdP, dovecot_oauth: DovecotServer, make_config: Callable[..., Config]
) -> None:
    idp.admin("config", rotate=True)
    try:
        config = make_config(accounts=[oauth_account(
            "support", dovecot_oauth, idp.oauth2("public-app", "refresh_token"))])
        acc = config.account("support")
        assert acc is not None and acc.imap is not None
        store = TokenStore(config.data_dir, "support")
        first = idp.refresh_token_for("support")
        store.save(first, "mail offline_access")
        session = ImapSession(acc.imap, "")
        await session.connect()
        await session.close()
        grant = store.load()
        assert grant is not None and grant.refresh_token != first  # rotated and saved
        assert grant.rotated_at is not None
        assert store.path.stat().st_mode & 0o777 == 0o600
        live = idp.admin("live-refresh")
        assert first not in live and grant.refresh_token in live
        forget_sources()  # a restart: nothing in memory, only the file
        session = ImapSession(acc.imap, "")
        await session.connect()
        await session.close()
        again = store.load()
        assert again is not None and again.refresh_token not in (first, grant.refresh_token)
        assert not list(store.folder.glob(".*.tmp"))  # no temporary file left behind
    finally:
        idp.admin("config", rotate=False)


async def test_revoked_refresh_token_parks_its_account_and_the_other_keeps_working(
    idp: IdP, dovecot_oauth: DovecotServer, make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[
        oauth_account("support", dovecot_oauth, idp.oauth2("public-app", "refresh_token")),
        oauth_account("sales", dovecot_oauth, idp.oauth2("sales-app", "client_credentials")),
    ])
    TokenStore(config.data_dir, "support").save(idp.refresh_token_for("support"), "mail")
    idp.admin("revoke", username="support")
    await deliver(dovecot_oauth.port, "sales", mail("Für Sales", "<sales1@example.org>"))
    before = idp.stats()
    async with open_database(config.database_url):
        runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
        stop = asyncio.Event()
        tasks = [asyncio.create_task(run_account(runtime, a, stop)) for a in config.accounts]

        async def parked() -> bool:
            health = runtime.health.get("support")
            return health is not None and health.state == "parked"

        await wait_for(parked)
        await wait_for(lambda: Message.filter(message_id="<sales1@example.org>").exists())
        # More logins of the parked account ask the token endpoint nothing more.
        support = config.account("support")
        assert support is not None and support.imap is not None
        for _ in range(3):
            with pytest.raises(OAuthLoginRequired):
                await ImapSession(support.imap, "").connect()
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 15)
        health = runtime.health["support"].view()
        state = await AccountState.get(account="support")
    after = idp.stats()
    reason = "run `gatewayd oauth login support`"
    assert reason in (health["last_error"] or "")  # /healthz
    assert reason in (state.last_error or "")  # `gatewayd status`
    assert runtime.health["sales"].state != "parked"
    assert _delta(before, after, "token_refresh_token_400") == 1
    status = TokenStore(config.data_dir, "support").status()
    assert reason in status["last_error"]  # `gatewayd oauth status`
    assert "rt-" not in json.dumps(health) + (state.last_error or "")
    assert token_source(support.imap.oauth).cached is None  # type: ignore[arg-type]


async def test_token_is_renewed_a_margin_before_it_expires(idp: IdP, tmp_path: Any) -> None:
    """A fake clock against the real token endpoint: the cached token is used until `margin`
    seconds before its end, then a new one is fetched — not only once a server refuses it."""
    from gatewayd.config.schema import OAuth2Settings, OAuthBinding
    from gatewayd.oauth.tokens import TokenSource

    now = [1_000_000.0]
    settings = OAuth2Settings.model_validate(
        idp.oauth2("support-app", "client_credentials", refresh_margin_seconds=300))
    source = TokenSource(OAuthBinding("support", settings, tmp_path), clock=lambda: now[0])
    before = idp.stats()
    first = await source.token()
    assert first.expires_at == now[0] + 3600
    now[0] = first.expires_at - 301
    assert (await source.token()) is first
    now[0] = first.expires_at - 299
    second = await source.token()
    assert second.value != first.value
    assert _delta(before, idp.stats(), "token_client_credentials_200") == 2
    status = TokenStore(tmp_path, "support").status()
    assert status["flow"] == "client_credentials" and status["last_error"] is None
    assert first.value not in json.dumps(status) and second.value not in json.dumps(status)
