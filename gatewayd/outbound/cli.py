"""`gatewayd test-send ACCOUNT [--to ADDR]`: one test mail through an account's SMTP, now.

The mail goes through the outbox like every other (test mode still diverts it to
`test_recipient`), is sent at once and the outcome is printed; exit 1 when it did not go out.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from email.message import EmailMessage
from typing import Any

from gatewayd.config import Config, SmtpSettings, is_address


def add_outbound_parser(sub: Any, load: Any) -> None:
    """Register `test-send` on the CLI's sub-parsers; `load(args)` gives the Config."""
    p = sub.add_parser(
        "test-send", help="send a test mail through an account (test mode still diverts)",
        description="Send one test mail through ACCOUNT's SMTP server now and report the "
        "server's answer (and, for OAuth2, the mechanism and the token's expiry). In test mode "
        "the mail goes to test_recipient whatever --to says.")
    p.add_argument("account", metavar="ACCOUNT", help="the [[accounts]] name")
    p.add_argument("--to", metavar="ADDR", help="recipient (default: the account's own address)")
    p.set_defaults(func=lambda a: cmd_test_send(a, load(a)))


def test_mail(config: Config, account_name: str, to: str) -> EmailMessage:
    account = config.account(account_name)
    assert account is not None and account.smtp is not None
    message = EmailMessage()
    message["From"] = f"{account.smtp.sender_name} <{account.address}>" if (
        account.smtp.sender_name) else account.address
    message["To"] = to
    message["Subject"] = f"gatewayd test mail through {account.name}"
    message["Auto-Submitted"] = "auto-generated"
    message["X-Loop"] = account.address
    message.set_content(
        f"This is a test mail sent by `gatewayd test-send {account.name}` at "
        f"{dt.datetime.now(dt.UTC):%Y-%m-%d %H:%M} UTC.\n"
        f"Mode: {config.mode}. Intended recipient: {to}.\n")
    return message


async def test_send(config: Config, account_name: str, to: str | None) -> tuple[int, str]:
    """Queue and send one test mail; (exit code, report)."""
    from gatewayd.outbound.outbox import enqueue_mail
    from gatewayd.outbound.sender import INSTANCE, send_claimed
    from gatewayd.store.db import open_database
    from gatewayd.store.models import Outbox

    account = config.account(account_name)
    if account is None:
        names = ", ".join(a.name for a in config.accounts) or "none configured"
        return 1, f"unknown account {account_name!r} — use one of: {names}"
    if account.smtp is None:
        return 1, f"accounts({account.name}).smtp: missing — add [accounts.smtp] host and port"
    target = to or account.address
    if not is_address(target):
        return 2, f"--to {target!r} is not an e-mail address"
    async with open_database(config.database_url):
        row = await enqueue_mail(config, test_mail(config, account.name, target), [target],
                                 account=account.name, event="test_send",
                                 mail_from=account.address)
        if row.status != "queued":
            return 1, f"not sent: {row.last_error}"
        # Claim just this row, so the daemon's sender cannot send it a second time.
        await Outbox.filter(id=row.id, status="queued").update(
            status="sending", claimed_at=dt.datetime.now(dt.UTC), claimed_by=INSTANCE)
        # A test mail is not retried later behind the operator's back.
        await send_claimed(config, [await Outbox.get(id=row.id)], retry=False)
        row = await Outbox.get(id=row.id)
    where = ", ".join(row.envelope_to)
    diverted = "" if config.mode == "live" else f" (test mode: meant for {target})"
    login = _oauth_login_note(account.smtp)
    if row.status == "sent":
        return 0, (f"sent through {account.name} to {where}{diverted}; Message-ID "
                   f"{row.message_id}{login}")
    from gatewayd.loopback.service import runs_inside_run

    hint = "" if account.active else " (the account is inactive: its password is not loaded)"
    hint += runs_inside_run(config, account, "smtp")
    return 1, (f"not sent through {account.name} ({account.smtp.host}:"
               f"{account.smtp.effective_port}): {row.last_error}{hint}{login}")


def _oauth_login_note(smtp: SmtpSettings) -> str:
    """For an OAuth2 login: the SASL mechanism used and the access token's expiry."""
    if smtp.oauth is None:
        return ""
    from gatewayd.oauth.tokens import token_source

    source = token_source(smtp.oauth)
    mechanism = source.mechanisms.get("smtp")
    token = source.cached
    if mechanism is None or token is None:
        return "; OAuth2 login not completed"
    return f"; login {mechanism} (OAuth2), token valid until {token.expires:%Y-%m-%d %H:%M:%S} UTC"


def cmd_test_send(args: argparse.Namespace, config: Config) -> int:
    code, report = asyncio.run(test_send(config, args.account, args.to))
    print(report, file=sys.stdout if code == 0 else sys.stderr)
    return code
