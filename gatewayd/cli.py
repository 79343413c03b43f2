"""The `gatewayd` command line: run, check, init, migrate, status and the operator tools.

Exit codes: 0 ok, 1 a check or command failed (message on stderr), 2 usage error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tortoise.exceptions import BaseORMException

from gatewayd.config import Config, ConfigError, Problem, find_config_path, load_config

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

Command = Callable[[argparse.Namespace], int]


def _err(text: str) -> None:
    print(text, file=sys.stderr)


def _load(args: argparse.Namespace, *, read_secrets: bool = True) -> Config:
    return load_config(find_config_path(args.config), read_secrets=read_secrets)


# ---------------------------------------------------------------------------- commands


def cmd_run(args: argparse.Namespace) -> int:
    from gatewayd import daemon, logs

    config = _load(args)
    logs.configure(args.log_level)
    try:
        asyncio.run(daemon.run(config))
    except OSError as exc:
        _err(f"gatewayd: cannot start: {exc}")
        return EXIT_FAILED
    return EXIT_OK


def collect_problems(config: Config) -> list[Problem]:
    """Everything `check` reports beyond the file's own validation (warnings included)."""
    from gatewayd.config import check_semantics
    from gatewayd.ingest.form_checks import form_problems
    from gatewayd.outbound.checks import outbound_problems
    from gatewayd.outbound.waiting import waiting_problems

    found = [p for p in check_semantics(config) if p.severity == "warning"]
    # mail templates and event rules; the forms' pages, texts and info mail
    return (found + outbound_problems(config) + form_problems(config)
            + waiting_problems(config))


def cmd_check(args: argparse.Namespace) -> int:
    path = find_config_path(args.config)
    try:
        config = load_config(path)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem.format(exc.file), file=sys.stderr)
        _err(f"{len(exc.problems)} problem(s) found")
        return EXIT_FAILED
    problems = collect_problems(config)
    errors = [p for p in problems if p.severity == "error"]
    for problem in problems:
        prefix = "warning: " if problem.severity == "warning" else ""
        print(prefix + problem.format(path), file=sys.stderr)
    if errors:
        _err(f"{len(errors)} problem(s) found")
        return EXIT_FAILED
    print(f"{path}: ok ({len(config.accounts)} accounts, {len(config.events)} event actions, "
          f"mode {config.mode})")
    from gatewayd.outbound.waiting import answering_note

    note = answering_note(config)
    if note:
        print(note)
    return EXIT_OK


def cmd_init(args: argparse.Namespace) -> int:
    from gatewayd.ops.setup import SetupError, write_installation
    from gatewayd.store.db import migrate

    target = Path(args.dir)
    try:
        written = write_installation(target, loopback=args.loopback, full=args.full,
                                     force=args.force)
    except SetupError as exc:
        _err(str(exc))
        return EXIT_FAILED
    config = load_config(written.config)
    asyncio.run(migrate(config.database_url))
    names = ", ".join(str(f) for f in [written.config, *written.files])
    print(f"wrote {names} and an empty database")
    print(f"API token: {written.token[:6]}… (in {target / 'api-tokens'})")
    if written.loopback_ports:
        imap, smtp = written.loopback_ports
        print(f"loopback: `run` starts an IMAP server on 127.0.0.1:{imap} (mailboxes support, "
              f"service) and an SMTP sink on 127.0.0.1:{smtp}; sent mail lands in "
              f"{config.loopback.sink_folder if config.loopback else '-'}")
    elif not args.full:
        print("the mailbox in it is inactive until you fill it in; to see mail flow first: "
              "gatewayd init --loopback ANOTHER_DIR")
    print(f"next: gatewayd --config {written.config} check && "
          f"gatewayd --config {written.config} run")
    return EXIT_OK


def cmd_migrate(args: argparse.Namespace) -> int:
    from gatewayd.store.db import migrate

    config = _load(args, read_secrets=False)
    asyncio.run(migrate(config.database_url))
    print("database is up to date")
    return EXIT_OK


def _live_health(config: Config) -> dict[str, Any] | None:
    """The running daemon's /healthz on this machine (live state, stalls, backlog, import rate,
    storage), or None when no daemon answers there."""
    import urllib.error
    import urllib.request

    host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(config.http.host,
                                                                     config.http.host)
    url = f"http://{f'[{host}]' if ':' in host else host}:{config.http.port}/healthz"
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:  # 503 still carries the report
        try:
            body = json.load(exc)
        except ValueError:
            return None
    except (OSError, ValueError):
        return None
    return body if isinstance(body, dict) and "accounts" in body else None


LIVE_KEYS = ("state", "last_poll_at", "last_error", "backoff_seconds", "stalled_since",
             "backlog", "import_rate", "imported")


async def _status(config: Config) -> dict[str, Any]:
    from tortoise.functions import Count

    from gatewayd.loopback.service import sink_summary
    from gatewayd.outbound.waiting import waiting_fix, waiting_reason
    from gatewayd.runtime import unpolled_state
    from gatewayd.store.db import open_database
    from gatewayd.store.models import AccountState, LmtpCount, Outbox, Quarantine, Ticket

    async with open_database(config.database_url):
        lmtp_rows = await LmtpCount.all().values("account", "outcome", "count", "last_at")
        states = {s.account: s for s in await AccountState.all()}
        outbox = {
            row["status"]: row["n"]
            for row in await Outbox.all().group_by("status").annotate(n=Count("id"))
            .values("status", "n")
        }
        queued = await Outbox.filter(status="queued").group_by("account").annotate(
            n=Count("id")).values("account", "n")
        quarantined = await Quarantine.filter(status="held").count()
        tickets = await Ticket.all().count()
    # Queued mail that cannot go out with the configuration in force, and why.
    waiting: dict[str, dict[str, Any]] = {}
    for group in queued:
        reason = waiting_reason(config, group["account"])
        if reason:
            entry = waiting.setdefault(reason, {
                "reason": reason, "count": 0, "fix": waiting_fix(config, group["account"])})
            entry["count"] += group["n"]
    live = await asyncio.to_thread(_live_health, config)
    # Only the daemon that polls these accounts counts (another one may answer on the address).
    ours = live is not None and live.get("instance") in {s.instance for s in states.values()}
    live_accounts = {a["account"]: a for a in (live or {}).get("accounts", [])
                     if ours and a.get("state") not in ("remote", "removed")}
    accounts = []
    for account in config.accounts:
        state = states.get(account.name)
        idle = "never polled" if account.polled else unpolled_state(account)
        row: dict[str, Any] = {
            "account": account.name,
            "active": account.active,
            "state": state.state if state else idle,
            "last_poll_at": state.last_poll_at.isoformat() if state and state.last_poll_at
            else None,
            "last_error": state.last_error if state else None,
            "backoff_seconds": state.backoff_seconds if state else 0,
            "stalled_since": None, "backlog": None, "import_rate": None, "imported": None,
        }
        # The daemon's own view is current to the second; the database row to the last poll.
        row.update({k: live_accounts[account.name][k] for k in LIVE_KEYS
                    if account.name in live_accounts and k in live_accounts[account.name]})
        accounts.append(row)
    daemon = "answering" if ours else "another daemon answers" if live else "not answering"
    report: dict[str, Any] = {
        "mode": config.mode, "daemon": daemon, "http": config.http.listen,
        "storage": (live or {}).get("storage", []) if ours else [],
        "accounts": accounts, "tickets": tickets, "outbox": outbox,
        "outbox_waiting": list(waiting.values()), "quarantine": quarantined,
        "loopback": sink_summary(config)}
    if config.lmtp is not None or lmtp_rows:
        report["lmtp"] = lmtp_report(config, lmtp_rows)
    return report


def lmtp_report(config: Config, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """LMTP answers per account (and for unknown recipients) from the lmtp_count rows. Pure."""
    outcomes = ("delivered", "quarantined", "duplicate", "deferred", "refused_unknown",
                "refused_size")
    found: dict[str, dict[str, Any]] = {}
    for name in [a.name for a in config.accounts] + [str(r["account"]) for r in rows]:
        found.setdefault(name, {**dict.fromkeys(outcomes, 0), "last_at": None})
    for row in rows:
        entry = found[str(row["account"])]
        entry[str(row["outcome"])] = entry.get(str(row["outcome"]), 0) + int(row["count"])
        last = row["last_at"].isoformat() if row["last_at"] else None
        if last and (entry["last_at"] is None or last > entry["last_at"]):
            entry["last_at"] = last
    unknown = found.pop("", None)
    return {"listen": config.lmtp.listen if config.lmtp else None, "accounts": found,
            "unknown_recipients_refused": unknown["refused_unknown"] if unknown else 0}


def cmd_status(args: argparse.Namespace) -> int:
    config = _load(args, read_secrets=False)
    report = asyncio.run(_status(config))
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    source = {"answering": "live from the daemon",
              "not answering": "from the database; no daemon answers"}.get(
        report["daemon"], "from the database; another daemon answers")
    print(f"mode: {report['mode']} (states {source} on {report['http']})")
    for a in report["accounts"]:
        line = f"  {a['account']:<20} {a['state']:<14} last poll {a['last_poll_at'] or '-'}"
        if a["backoff_seconds"]:
            line += f"  backoff {a['backoff_seconds']:.0f}s"
        if a["backlog"]:
            line += f"  backlog {a['backlog']:,} unseen at {a['import_rate'] or 0:.1f} mails/s"
        print(line)
        if a["stalled_since"]:
            print(f"  {'':<20} stalled since {a['stalled_since']}")
        if a["last_error"]:
            print(f"  {'':<20} last error: {a['last_error']}")
    for problem in report["storage"]:
        print(f"storage: {problem['kind']} cannot be written since {problem['since']} "
              f"({problem['source']}): {problem['reason']}")
    counts = ", ".join(f"{k} {v}" for k, v in sorted(report["outbox"].items())) or "empty"
    print(f"tickets: {report['tickets']}")
    print(f"outbox: {counts}")
    for item in report["outbox_waiting"]:
        print(f"  {item['count']} waiting: {item['reason']} — {item['fix']}")
    print(f"quarantine: {report['quarantine']}")
    loopback = report["loopback"]
    if loopback:
        print(f"loopback: IMAP {loopback['imap']} (mailboxes "
              f"{', '.join(loopback['mailboxes']) or 'none'}), SMTP sink {loopback['smtp']}: "
              f"{loopback['sink_mails']} mail(s) in {loopback['sink_folder']}")
    if "lmtp" in report:
        lmtp = report["lmtp"]
        print(f"lmtp: {lmtp['listen'] or 'not configured'}; unknown recipients refused "
              f"{lmtp['unknown_recipients_refused']}")
        for name, c in lmtp["accounts"].items():
            print(f"  {name:<20} delivered {c['delivered']}, quarantined {c['quarantined']}, "
                  f"duplicates {c['duplicate']}, deferred {c['deferred']}, too big "
                  f"{c['refused_size']}; last {c['last_at'] or '-'}")
    return EXIT_OK


# ---------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gatewayd",
        description="Mail gateway for a shop's customer service: IMAP mailboxes, mail the "
        "shop's MTA hands over by LMTP and shop forms become tickets, event actions answer by "
        "mail through SMTP.",
        epilog="Configuration: --config PATH, else $GATEWAYD_CONFIG, else ./gatewayd.toml, else "
        "/etc/gatewayd/gatewayd.toml. Exit codes: 0 ok, 1 failed, 2 usage error.",
    )
    parser.add_argument("--config", "-c", metavar="PATH", help="the configuration file")
    parser.add_argument("--log-level", default="INFO",
                        choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="default INFO")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the daemon (HTTP API, pollers, LMTP, sender, "
                       "scheduler)",
                       description="Run the daemon in the foreground: migrates the database, "
                       "binds HTTP, starts the workers; SIGTERM drains, SIGHUP reloads.")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("check", help="validate the configuration and templates",
                       description="Validate the configuration file and the templates; print "
                       "every problem as file:key: what is wrong — how to fix. Exit 1 if any.")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("init", help="write a working example config, templates and database",
                       description="Write gatewayd.toml, templates (de, en), an API token file "
                       "and an empty SQLite database into DIR. The mailbox in it is inactive "
                       "until you give it real hosts and passwords; --loopback wires embedded "
                       "ones instead, so `run` shows mail flowing at once.")
    p.add_argument("dir", nargs="?", default=".", metavar="DIR", help="default: .")
    p.add_argument("--force", action="store_true", help="overwrite an existing config")
    p.add_argument("--loopback", action="store_true",
                   help="mailboxes on an embedded IMAP server and SMTP sink that `run` starts "
                   "on 127.0.0.1 (free ports chosen now), with sample mails")
    p.add_argument("--full", action="store_true",
                   help="also write gatewayd.example.toml: every key, commented")
    p.set_defaults(func=cmd_init)

    p = sub.add_parser("migrate", help="apply database migrations",
                       description="Apply every pending migration (run also does this at start).")
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("status", help="accounts, tickets, outbox (and why mail waits), "
                       "quarantine, LMTP",
                       description="Show each account's state, last poll, last error and "
                       "backoff, the number of tickets, the outbox by state with the reason "
                       "queued mail cannot go out, the quarantine size, with [lmtp] the LMTP "
                       "answers per account and, with [loopback], the mails in the sink. When "
                       "the daemon answers on http.listen, its live view is shown: stalls, the "
                       "unseen backlog and import rate of each account, and a full disk.")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_status)

    from gatewayd.ingest.commands import add_commands  # test-fetch, quarantine

    add_commands(sub, _load)

    from gatewayd.outbound.cli import add_outbound_parser  # test-send

    add_outbound_parser(sub, _load)

    from gatewayd.oauth.cli import add_oauth_parser  # oauth login, oauth status

    add_oauth_parser(sub, _load)

    p = sub.add_parser("demo", help="run the whole loop on loopback: IMAP, daemon, SMTP",
                       description="Start an embedded IMAP server and SMTP sink on 127.0.0.1, "
                       "deliver German and English sample mails, run the daemon in test mode "
                       "and print the tickets, the threading and the mails sent. Needs no "
                       "configuration.")
    p.add_argument("--keep", metavar="DIR", help="keep the demo's database and files in DIR")
    from gatewayd.demo import cmd_demo

    p.set_defaults(func=cmd_demo)

    from gatewayd.ops.cli_contacts import add_contacts_parser

    add_contacts_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ConfigError as exc:
        for problem in exc.problems:
            _err(problem.format(exc.file))
        return EXIT_FAILED
    except KeyboardInterrupt:
        return EXIT_FAILED
    except (OSError, BaseORMException) as exc:
        # The database or a file is not there: one line, not a traceback (and no password).
        reason = re.sub(r"(://[^:/@\s]+:)[^@\s]+@", r"\1***@", f"{exc}") or type(exc).__name__
        _err(f"gatewayd {args.command}: {reason} — check that the database in database_url "
             "answers and that data_dir is writable")
        return EXIT_FAILED
    return code


if __name__ == "__main__":
    sys.exit(main())
