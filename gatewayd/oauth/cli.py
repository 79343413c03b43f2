"""`gatewayd oauth login ACCOUNT` and `gatewayd oauth status`: an account's OAuth2 sign-in,
and per account its flow, token expiry, last refresh and last error — never a token."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gatewayd.config import Config
from gatewayd.oauth.providers import endpoints
from gatewayd.oauth.store import TokenStore

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _say(text: str) -> None:
    print(text, flush=True)


def cmd_login(args: argparse.Namespace, config: Config) -> int:
    # Imported here: authlib and its HTTP client are for this command only, not for every
    # `gatewayd` command that builds the parser.
    from gatewayd.oauth.login import LoginError, app_only_check, device_login
    from gatewayd.oauth.tokens import TokenError

    account = config.account(args.account)
    if account is None:
        names = ", ".join(a.name for a in config.accounts) or "none configured"
        print(f"gatewayd oauth login: unknown account {args.account!r} — use one of: {names}",
              file=sys.stderr)
        return EXIT_USAGE
    binding = next((s.oauth for s in (account.imap, account.smtp) if s and s.oauth), None)
    if binding is None:
        print(f"gatewayd oauth login: account {account.name} does not log in with OAuth2 — "
              'set auth = "oauth2" in [accounts.imap] / [accounts.smtp] and add '
              "[accounts.oauth2] (docs/providers.md)", file=sys.stderr)
        return EXIT_FAILED
    try:
        if binding.settings.effective_flow == "client_credentials":
            _say(f"{account.name}: flow client_credentials needs no sign-in; asking the "
                 "provider for a token to check the settings …")
            result = asyncio.run(app_only_check(binding))
        else:
            ep = endpoints(binding.settings)
            if args.browser or not ep.device_flow_allowed:
                from gatewayd.oauth.browser import browser_login

                result = asyncio.run(browser_login(binding, _say))
            else:
                result = asyncio.run(device_login(binding, _say))
    except (LoginError, TokenError) as exc:
        print(f"gatewayd oauth login {account.name}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    _say(f"{account.name}: signed in ({result.flow}); access token valid until "
         f"{result.expires:%Y-%m-%d %H:%M:%S} UTC; scope {result.scope or '-'}")
    if result.stored_in:
        _say(f"refresh token stored in {result.stored_in} (mode 0600). A running daemon uses "
             "it at its next login; a parked account tries again within 30 minutes (at once "
             "after `systemctl restart gatewayd`).")
    return EXIT_OK


def oauth_report(config: Config) -> list[dict[str, Any]]:
    """Per OAuth2 account: provider, flow, whether a refresh token is stored, and the status the
    daemon last recorded (token expiry, last refresh, last error). No token, no secret."""
    rows = []
    for account in config.accounts:
        if account.oauth2 is None:
            continue
        settings = account.oauth2
        store = TokenStore(config.data_dir, account.name)
        status = store.status()
        grant = store.load() if settings.effective_flow == "refresh_token" else None
        rows.append({
            "account": account.name,
            "provider": settings.provider,
            "flow": settings.effective_flow,
            "used_by": [p for p in ("imap", "smtp") if getattr(account, p) is not None
                        and getattr(account, p).auth == "oauth2"],
            "refresh_token_stored": (grant is not None) if settings.effective_flow
            == "refresh_token" else None,
            "logged_in_at": grant.obtained_at if grant else None,
            "rotated_at": grant.rotated_at if grant else None,
            "access_token_expires_at": status.get("access_token_expires_at"),
            "last_refresh_at": status.get("last_refresh_at"),
            "last_error": status.get("last_error"),
            "last_error_at": status.get("last_error_at") if status.get("last_error") else None,
        })
    return rows


def cmd_status(args: argparse.Namespace, config: Config) -> int:
    rows = oauth_report(config)
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print("no account uses OAuth2")
    for row in rows:
        login = ""
        if row["flow"] == "refresh_token":
            login = (f", signed in {row['logged_in_at']}" if row["refresh_token_stored"]
                     else ", NOT signed in (run `gatewayd oauth login "
                     f"{row['account']}`)")
        print(f"{row['account']:<20} {row['provider']} {row['flow']} "
              f"({'+'.join(row['used_by']) or 'unused'}){login}")
        print(f"  {'':<18} access token until {row['access_token_expires_at'] or '-'}, "
              f"last refresh {row['last_refresh_at'] or '-'}")
        if row["last_error"]:
            print(f"  {'':<18} last error ({row['last_error_at']}): {row['last_error']}")
    return EXIT_OK


def add_oauth_parser(sub: Any, load: Any) -> None:
    """`gatewayd oauth login|status`; `load(args, read_secrets=...)` gives the Config."""
    p = sub.add_parser("oauth", help="OAuth2 sign-in and token status of the accounts",
                       description="`login ACCOUNT` gets an account's refresh token (device code, "
                       "or the browser sign-in for Google) or checks app-only credentials; "
                       "`status` shows per account the flow, token expiry, last refresh and "
                       "last error — never a token.")
    actions = p.add_subparsers(dest="oauth_action", metavar="ACTION", required=True)
    login = actions.add_parser("login", help="sign an account in (stores its refresh token)")
    login.add_argument("account", metavar="ACCOUNT", help="the [[accounts]] name")
    login.add_argument("--browser", action="store_true",
                       help="sign in through a browser redirect instead of a device code")
    login.set_defaults(func=lambda a: cmd_login(a, load(a)))
    status = actions.add_parser("status", help="flow, token expiry, last refresh, last error")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(func=lambda a: cmd_status(a, load(a, read_secrets=False)))
