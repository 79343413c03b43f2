"""OAuth2 configuration and the pure parts: `check` reports each mistake as
`file:key: what — fix`; secrets come from files or systemd credentials and never show; the
provider endpoints and scopes, the SASL messages, the renewal rule and the token file."""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import load_config
from gatewayd.config.schema import OAuth2Settings
from gatewayd.oauth import sasl
from gatewayd.oauth.providers import endpoints
from gatewayd.oauth.store import TokenStore
from gatewayd.oauth.tokens import AccessToken, needs_refresh
from tests.test_config import IMAP_SECRET, SMTP_SECRET, run_check, valid_data, write

CLIENT_SECRET = "oauth-client-Geheim-3"


def oauth_data(tmp_path: Path, **oauth2: Any) -> dict[str, Any]:
    """The valid config with its account switched to app-only OAuth2 at Microsoft."""
    data = valid_data(tmp_path)
    (tmp_path / "secrets" / "oauth").write_text(CLIENT_SECRET + "\n")
    account = data["accounts"][0]
    for proto in ("imap", "smtp"):
        account[proto].pop("password_file")
        account[proto]["auth"] = "oauth2"
    account["oauth2"] = {"provider": "microsoft", "tenant": "contoso.onmicrosoft.com",
                         "client_id": "00000000-1111-2222-3333-444444444444",
                         "client_secret_file": "secrets/oauth", **oauth2}
    return data


def test_oauth_account_loads_binds_both_logins_and_reads_the_secret(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, oauth_data(tmp_path)))
    account = config.accounts[0]
    assert account.oauth2 is not None and account.oauth2.client_secret is not None
    assert account.oauth2.client_secret.get_secret_value() == CLIENT_SECRET
    assert account.oauth2.effective_flow == "client_credentials"
    for settings in (account.imap, account.smtp):
        assert settings is not None and settings.oauth is not None
        assert settings.oauth.account == account.name
        assert settings.oauth.data_dir == tmp_path / "var"
        assert settings.password is None
    assert CLIENT_SECRET not in repr(config) and CLIENT_SECRET not in config.model_dump_json()


def test_client_secret_from_a_systemd_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = oauth_data(tmp_path)
    del data["accounts"][0]["oauth2"]["client_secret_file"]
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / f"{data['accounts'][0]['name']}-oauth2").write_text("from-credential\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    account = load_config(write(tmp_path, data)).accounts[0]
    assert account.oauth2 is not None and account.oauth2.client_secret is not None
    assert account.oauth2.client_secret.get_secret_value() == "from-credential"


Mutation = Callable[[dict[str, Any]], None]


def _oauth(**values: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["accounts"][0]["oauth2"].update(values)
        for key in [k for k, v in values.items() if v is None]:
            del data["accounts"][0]["oauth2"][key]
    return mutate


def _imap(**values: Any) -> Mutation:
    def mutate(data: dict[str, Any]) -> None:
        data["accounts"][0]["imap"].update(values)
    return mutate


def _no_oauth_table(data: dict[str, Any]) -> None:
    del data["accounts"][0]["oauth2"]


A = "accounts[0](support)"
CASES = [
    ("client id missing", _oauth(client_id=None), f"{A}.oauth2.client_id", "no client id",
     "set client_id"),
    ("password and oauth2", _imap(password_file="secrets/imap"), f"{A}.imap.password_file",
     'both a password and auth = "oauth2"', "remove password_file"),
    ("unknown provider", _oauth(provider="yahoo"), f"{A}.oauth2.provider",
     "'yahoo' is not allowed here", "'microsoft'"),
    ("tenant missing", _oauth(tenant=None), f"{A}.oauth2.tenant", "Microsoft needs the tenant",
     "tenant ="),
    ("unreadable secret", _oauth(client_secret_file="secrets/missing"),
     f"{A}.oauth2.client_secret_file", "cannot read", "$CREDENTIALS_DIRECTORY"),
    ("no secret for app-only", _oauth(client_secret_file=None),
     f"{A}.oauth2.client_secret_file", "needs a client secret", "support-oauth2"),
    ("oauth2 auth without table", _no_oauth_table, f"{A}.imap.auth",
     "no [accounts.oauth2]", "add [accounts.oauth2]"),
    ("google app-only", _oauth(provider="google", tenant=None, flow="client_credentials"),
     f"{A}.oauth2.flow", "no client-credentials grant", 'flow = "refresh_token"'),
    ("custom without token url", _oauth(provider="custom", tenant=None),
     f"{A}.oauth2.token_url", "needs a token URL", "token_url ="),
    ("plain http token url", _oauth(token_url="http://login.example/token"),
     f"{A}.oauth2.token_url", "not an https:// URL", "https://"),
    ("unknown flow", _oauth(flow="password"), f"{A}.oauth2.flow",
     "'password' is not allowed here", "'refresh_token'"),
]


@pytest.mark.parametrize(("mutate", "key", "what", "fix"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_check_reports_oauth2_mistakes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    mutate: Mutation, key: str, what: str, fix: str,
) -> None:
    data = oauth_data(tmp_path)
    mutate(data)
    path = write(tmp_path, data)
    code, out, err = run_check(path, capsys)
    assert code == 1 and out == ""
    lines = [line for line in err.splitlines() if line.startswith(f"{path}:{key}: ")]
    assert lines, f"no line for {key!r} in:\n{err}"
    assert any(what in line and " — " in line and fix in line.split(" — ", 1)[1]
               for line in lines), err
    assert CLIENT_SECRET not in err and IMAP_SECRET not in err and SMTP_SECRET not in err


def test_check_accepts_the_oauth_account(tmp_path: Path,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(write(tmp_path, oauth_data(tmp_path)), capsys)
    assert code == 0, err
    assert "ok" in out and CLIENT_SECRET not in out + err


# ------------------------------------------------------------------------------ pure parts


def test_provider_endpoints_and_default_scopes() -> None:
    app = endpoints(OAuth2Settings(provider="microsoft", tenant="contoso.onmicrosoft.com",
                                   client_id="x"))
    assert app.token_url == (
        "https://login.microsoftonline.com/contoso.onmicrosoft.com/oauth2/v2.0/token")
    assert app.scopes == ("https://outlook.office365.com/.default",)
    delegated = endpoints(OAuth2Settings(provider="microsoft", tenant="t", client_id="x",
                                         flow="refresh_token"))
    assert delegated.device_authorization_url == (
        "https://login.microsoftonline.com/t/oauth2/v2.0/devicecode")
    assert delegated.scopes == ("https://outlook.office.com/IMAP.AccessAsUser.All",
                                "https://outlook.office.com/SMTP.Send", "offline_access")
    google = endpoints(OAuth2Settings(provider="google", client_id="x"))
    assert google.scopes == ("https://mail.google.com/",)
    assert google.token_url == "https://oauth2.googleapis.com/token"
    assert not google.device_flow_allowed  # Google's device flow does not grant mail
    own = endpoints(OAuth2Settings(provider="google", client_id="x", scopes=["a"],
                                   token_url="https://idp.example/t"))
    assert own.scopes == ("a",) and own.token_url == "https://idp.example/t"


def test_sasl_messages() -> None:
    # RFC 7628 4.1's example, byte for byte.
    assert sasl.initial_response("OAUTHBEARER", "user@example.com",
                                 "vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==",
                                 "server.example.com", 143) == (
        b"n,a=user@example.com,\x01host=server.example.com\x01port=143\x01"
        b"auth=Bearer vF9dft4qmTc2Nvb3RlckBhbHRhdmlzdGEuY29tCg==\x01\x01")
    assert base64.b64decode(sasl.encoded_response("XOAUTH2", "u@x.org", "tok", "h", 1)) == (
        b"user=u@x.org\x01auth=Bearer tok\x01\x01")
    assert sasl.initial_response("OAUTHBEARER", "a=b,c", "t", "h", 1).startswith(
        b"n,a=a=3Db=2Cc,")
    assert sasl.choose_mechanism(["PLAIN", "XOAUTH2", "OAUTHBEARER"]) == "OAUTHBEARER"
    assert sasl.choose_mechanism(["xoauth2", "LOGIN"]) == "XOAUTH2"
    assert sasl.choose_mechanism(["PLAIN"]) is None
    challenge = base64.b64encode(json.dumps(
        {"status": "invalid_token", "scope": "mail"}).encode())
    assert sasl.describe_challenge(b"+ " + challenge) == "invalid_token, scope mail"
    assert sasl.describe_challenge(b"+ not base64!") == ""
    assert sasl.after_error_challenge("OAUTHBEARER") == b"AQ=="  # %x01
    assert sasl.after_error_challenge("XOAUTH2") == b""


def test_renewal_margin_is_capped_at_half_the_lifetime() -> None:
    hour = AccessToken("t", expires_at=3600.0, obtained_at=0.0)
    assert not needs_refresh(hour, 3299.0, 300)
    assert needs_refresh(hour, 3300.0, 300)
    short = AccessToken("t", expires_at=60.0, obtained_at=0.0)  # margin 300 > lifetime
    assert not needs_refresh(short, 29.0, 300) and needs_refresh(short, 30.0, 300)
    assert "at-Geheim" not in repr(AccessToken("at-Geheim", 1.0, 0.0))  # not in its repr


def test_token_file_is_private_replaced_atomically_and_keeps_its_login_time(
    tmp_path: Path,
) -> None:
    store = TokenStore(tmp_path, "support")
    assert store.load() is None
    store.save("rt-first", "mail")
    first = store.load()
    assert first is not None and first.rotated_at is None
    inode = store.identity()
    store.save("rt-second", "mail", rotated=True)
    second = store.load()
    assert second is not None and second.refresh_token == "rt-second"
    assert second.obtained_at == first.obtained_at and second.rotated_at is not None
    assert store.identity() != inode  # a new file renamed over the old one
    assert store.path.stat().st_mode & 0o777 == 0o600
    assert store.folder.stat().st_mode & 0o777 == 0o700
    assert sorted(p.name for p in store.folder.iterdir()) == ["support.json"]
    assert "rt-second" not in repr(second)
    store.record(last_error="x")
    assert store.status() == {"last_error": "x"}
    assert os.stat(store.status_path).st_mode & 0o777 == 0o600


def test_oauth_status_command_shows_state_but_no_token(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gatewayd import cli

    data = oauth_data(tmp_path, flow="refresh_token")
    path = write(tmp_path, data)
    code = cli.main(["--config", str(path), "oauth", "status"])
    out = capsys.readouterr().out
    assert code == 0 and "NOT signed in (run `gatewayd oauth login support`)" in out
    store = TokenStore(tmp_path / "var", "support")
    store.save("rt-Geheim-refresh", "mail")
    store.record(access_token_expires_at="2026-12-02T13:00:00+00:00", last_error="invalid_grant")
    assert cli.main(["--config", str(path), "oauth", "status", "--json"]) == 0
    out = capsys.readouterr().out
    row = json.loads(out)[0]
    assert row["refresh_token_stored"] is True and row["used_by"] == ["imap", "smtp"]
    assert row["access_token_expires_at"] == "2026-12-02T13:00:00+00:00"
    assert row["last_error"] == "invalid_grant"
    assert "rt-Geheim-refresh" not in out and CLIENT_SECRET not in out
