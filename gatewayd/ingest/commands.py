"""The operator commands of inbound mail: `test-fetch ACCOUNT` and `quarantine list|retry ID`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from typing import Any

from gatewayd.config import Config
from gatewayd.ingest.imap import ImapError, ImapSession

EXIT_OK, EXIT_FAILED = 0, 1


async def test_fetch(config: Config, name: str) -> dict[str, Any]:
    """Log in, select the folder, report unseen count, capabilities, TLS and the login
    mechanism (with an OAuth2 token's expiry). Changes nothing."""
    account = config.account(name)
    if account is None:
        raise LookupError(f"no account named {name!r} — configured: "
                          f"{[a.name for a in config.accounts]}")
    if account.imap is None:
        raise LookupError(f"account {name!r} has no [accounts.imap] section")
    imap = account.imap
    session = ImapSession(imap, imap.password.get_secret_value() if imap.password else "")
    try:
        await session.connect()
        selected = await session.select(imap.folder)
        unseen = await session.unseen()
        return {
            "account": name, "host": imap.host, "port": imap.effective_port,
            "security": imap.security, "tls": session.tls, "folder": imap.folder,
            "uidvalidity": selected.uidvalidity, "messages": selected.exists,
            "unseen": len(unseen),
            "capabilities": {c: session.has(c) for c in ("IDLE", "MOVE", "UIDPLUS")},
            "all_capabilities": sorted(session.capabilities),
            "login": session.auth_mechanism,
            "token_expires_at": session.token_expires_at.isoformat(timespec="seconds")
            if session.token_expires_at else None,
        }
    finally:
        await session.close()


def cmd_test_fetch(args: argparse.Namespace, config: Config) -> int:
    from gatewayd.loopback.service import runs_inside_run

    try:
        report = asyncio.run(test_fetch(config, args.account))
    except LookupError as exc:
        print(f"gatewayd test-fetch: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ImapError as exc:
        account = config.account(args.account)
        hint = runs_inside_run(config, account, "imap") if account else ""
        print(f"gatewayd test-fetch: {exc}{hint}", file=sys.stderr)
        return EXIT_FAILED
    if getattr(args, "json", False):
        print(json.dumps(report, indent=2))
        return EXIT_OK
    caps = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in report["capabilities"].items())
    print(f"{report['account']}: {report['host']}:{report['port']} ({report['security']}, "
          f"TLS: {report['tls']})")
    print(f"  folder {report['folder']}: {report['messages']} mails, {report['unseen']} unseen, "
          f"UIDVALIDITY {report['uidvalidity']}")
    print(f"  capabilities: {caps}")
    login = report["login"]
    if report["token_expires_at"]:
        login += f" (OAuth2), token valid until {report['token_expires_at']}"
    print(f"  login: {login}")
    return EXIT_OK


async def _quarantine_list(config: Config, all_entries: bool) -> list[dict[str, Any]]:
    from gatewayd.store.db import open_database
    from gatewayd.store.models import Quarantine

    async with open_database(config.database_url):
        query = Quarantine.all() if all_entries else Quarantine.filter(status="held")
        return [
            {"id": q.id, "account": q.account, "folder": q.folder, "uid": q.uid,
             "message_id": q.message_id, "size": q.size, "attempts": q.attempts,
             "status": q.status, "reason": q.reason, "ticket_id": q.ticket_id,  # type: ignore[attr-defined]
             "created_at": q.created_at.isoformat() if q.created_at else None}
            for q in await query.order_by("id")
        ]


async def _quarantine_retry(config: Config, entry_id: int) -> dict[str, Any]:
    from gatewayd.daemon import event_hooks
    from gatewayd.ingest.quarantine import retry_quarantined
    from gatewayd.store.db import open_database
    from gatewayd.store.tickets import TicketStore

    async with open_database(config.database_url):
        store = TicketStore(config, event_hooks(config))
        outcome = await retry_quarantined(store, entry_id)
        return {"id": entry_id, "outcome": outcome.kind, "ticket_id": outcome.ticket_id,
                "rule": outcome.rule}


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    from gatewayd.ingest.pipeline import PoisonMail

    if args.action == "list":
        entries = asyncio.run(_quarantine_list(config, args.all))
        if args.json:
            print(json.dumps(entries, indent=2))
            return EXIT_OK
        if not entries:
            print("quarantine is empty")
        for e in entries:
            print(f"{e['id']:>5}  {e['status']:<8} {e['account'] or '-'}/{e['folder'] or '-'} "
                  f"uid {e['uid']}  {e['size']} bytes  {e['created_at']}")
            print(f"       reason: {e['reason'][:300]}")
        return EXIT_OK
    if args.id is None:
        print("gatewayd quarantine retry: give the entry's ID (see `gatewayd quarantine list`)",
              file=sys.stderr)
        return 2
    try:
        result = asyncio.run(_quarantine_retry(config, args.id))
    except (LookupError, OSError, PoisonMail) as exc:
        print(f"gatewayd quarantine retry {args.id}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"quarantine entry {args.id}: {result['outcome']} into ticket {result['ticket_id']} "
          f"(rule {result['rule']})")
    return EXIT_OK


def add_commands(sub: Any, load: Any) -> None:
    """Register the commands on the CLI's sub-parsers; `load(args)` gives the Config."""
    p = sub.add_parser("test-fetch", help="log in to an account's IMAP server and report",
                       description="Log in, select the folder, report the unseen count, the "
                       "capabilities (IDLE, MOVE, UIDPLUS), TLS details and the login used "
                       "(LOGIN, or the OAuth2 mechanism and its token's expiry). Changes "
                       "nothing.")
    p.add_argument("account", metavar="ACCOUNT", help="the account's name")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=lambda a: cmd_test_fetch(a, load(a)))

    p = sub.add_parser("quarantine", help="mails that could not be processed",
                       description="`list` shows quarantined mails with their reasons; "
                       "`retry ID` runs one through the import again.")
    p.add_argument("action", choices=["list", "retry"])
    p.add_argument("id", nargs="?", type=int, metavar="ID", help="the entry to retry")
    p.add_argument("--all", action="store_true", help="list retried entries too")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=lambda a: cmd_quarantine(a, load(a)))
