"""`gatewayd contacts ...`: CSV import/export, merging duplicates, anonymising, personal data."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TextIO

from gatewayd.config import Config, find_config_path, load_config

EXIT_OK, EXIT_FAILED = 0, 1


def _config(args: argparse.Namespace) -> Config:
    return load_config(find_config_path(args.config), read_secrets=False)


def _run(config: Config, work: Callable[[], Awaitable[int]]) -> int:
    from gatewayd.store.db import open_database

    async def main() -> int:
        async with open_database(config.database_url):
            return await work()

    return asyncio.run(main())


def _progress(stream: TextIO) -> Callable[[int, int], None] | None:
    """A one-line progress bar on a terminal; nothing when output goes to a file or pipe."""
    if not stream.isatty():
        return None

    def show(done: int, total: int) -> None:
        width = 30
        filled = width * done // max(total, 1)
        stream.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} rows")
        if done == total:
            stream.write("\n")
        stream.flush()

    return show


def cmd_import(args: argparse.Namespace) -> int:
    from gatewayd.ops.contacts_csv import import_contacts

    path = Path(args.file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        print(f"{path}: cannot read ({exc.strerror}) — check the path", file=sys.stderr)
        return EXIT_FAILED
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        print(f"{path}:{line}: not UTF-8 (byte {exc.start}) — save the file as UTF-8 CSV",
              file=sys.stderr)
        return EXIT_FAILED

    async def work() -> int:
        report = await import_contacts(text, _progress(sys.stderr), strict=args.strict)
        if report.ignored:
            print(f"{path}: ignored: {', '.join(report.ignored)} (columns gatewayd does not "
                  "use; --strict refuses them)", file=sys.stderr)
        for error in report.errors:
            print(error.format(str(path)), file=sys.stderr)
        print(f"{path}: {report.created} created, {report.updated} updated, "
              f"{report.unchanged} unchanged, {len(report.errors)} bad row(s) skipped")
        return EXIT_FAILED if report.errors else EXIT_OK

    return _run(_config(args), work)


def cmd_export(args: argparse.Namespace) -> int:
    from gatewayd.ops.contacts_csv import export_contacts

    buffer = io.StringIO()
    counted: list[int] = []

    async def work() -> int:
        counted.append(await export_contacts(buffer))
        return EXIT_OK

    code = _run(_config(args), work)
    if args.output in (None, "-"):
        sys.stdout.write(buffer.getvalue())
    else:
        Path(args.output).write_text(buffer.getvalue(), encoding="utf-8", newline="")
    print(f"exported {counted[0]} contact(s)", file=sys.stderr)
    return code


def _store(config: Config) -> Any:
    from gatewayd.store.tickets import TicketStore

    return TicketStore(config)


def cmd_merge(args: argparse.Namespace) -> int:
    from gatewayd.ops.gdpr import find_duplicates, merge_contacts
    from gatewayd.store.tickets import StoreError

    config = _config(args)
    if not args.auto and len(args.ids) < 2:
        print("name the contact to keep and at least one to merge into it "
              "(gatewayd contacts merge KEEP OTHER...), or use --auto", file=sys.stderr)
        return 2

    async def work() -> int:
        store = _store(config)
        groups = await find_duplicates() if args.auto else [args.ids]
        if args.auto and not groups:
            print("no duplicate contacts (same e-mail address) found")
        for group in groups:
            keep, others = group[0], group[1:]
            if args.dry_run:
                print(f"would merge {', '.join(map(str, others))} into {keep}")
                continue
            try:
                result = await merge_contacts(store, keep, others, actor="cli")
            except StoreError as exc:
                print(f"contacts merge {keep}: {exc}", file=sys.stderr)
                return EXIT_FAILED
            print(f"merged {', '.join(map(str, others))} into {keep}: {result['tickets']} "
                  f"ticket(s), {result['orders']} order(s), {result['addresses']} address(es) "
                  "moved")
        return EXIT_OK

    return _run(config, work)


def cmd_anonymize(args: argparse.Namespace) -> int:
    from gatewayd.ops.gdpr import anonymize_contact
    from gatewayd.store.tickets import StoreError

    if not args.yes:
        if not sys.stdin.isatty():
            print("anonymising cannot be undone: pass --yes to confirm", file=sys.stderr)
            return EXIT_FAILED
        answer = input(f"Anonymising contact {args.id} cannot be undone. Type its id to "
                       "confirm: ").strip()
        if answer != str(args.id):
            print("not confirmed; nothing changed", file=sys.stderr)
            return EXIT_FAILED
    config = _config(args)

    async def work() -> int:
        try:
            result = await anonymize_contact(_store(config), args.id, actor="cli")
        except StoreError as exc:
            print(f"contacts anonymize {args.id}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        print(f"contact {args.id} anonymised: {result['tickets']} ticket(s) and "
              f"{result['messages']} message(s) cleaned, {result['addresses']} address(es) and "
              f"{result['outbox']} mail(s) cleared")
        return EXIT_OK

    return _run(config, work)


def cmd_personal_data(args: argparse.Namespace) -> int:
    from gatewayd.ops.gdpr import export_personal_data
    from gatewayd.store.tickets import StoreError

    config = _config(args)
    found: list[dict[str, Any]] = []

    async def work() -> int:
        try:
            found.append(await export_personal_data(_store(config), args.id))
        except StoreError as exc:
            print(f"contacts personal-data {args.id}: {exc}", file=sys.stderr)
            return EXIT_FAILED
        return EXIT_OK

    code = _run(config, work)
    if code != EXIT_OK:
        return code
    text = json.dumps(found[0], indent=2, ensure_ascii=False)
    if args.output in (None, "-"):
        print(text)
    else:
        Path(args.output).write_text(text + "\n", encoding="utf-8")
        print(f"wrote {args.output}", file=sys.stderr)
    return EXIT_OK


def add_contacts_parser(sub: Any) -> None:
    """Register `gatewayd contacts ...` on the main parser's subcommands."""
    p = sub.add_parser("contacts", help="contact list: CSV import/export, merge, anonymise, "
                       "personal data export",
                       description="Contacts: CSV import/export (UTF-8, header row), merging "
                       "duplicates, anonymising (GDPR) and exporting a contact's data as JSON.")
    csub = p.add_subparsers(dest="contacts_command", metavar="ACTION", required=True)

    c = csub.add_parser("import", help="import or update contacts from a CSV file",
                        description="Columns: number, first_name, last_name, company, "
                        "email_private, email_business, email_paypal, language, active (1/0), "
                        "registered (YYYY-MM-DD). A row updates the contact with the same number "
                        "or e-mail address, else creates one. Bad rows are reported by line "
                        "number and skipped; exit 1 if there were any. Columns gatewayd does "
                        "not use (Telefon, billing_street, ...) are named once and skipped.")
    c.add_argument("file", metavar="FILE.csv")
    c.add_argument("--strict", action="store_true",
                   help="refuse a file with columns gatewayd does not use")
    c.set_defaults(func=cmd_import)

    c = csub.add_parser("export", help="write every contact as CSV",
                        description="Write all contacts (active and inactive) as UTF-8 CSV with "
                        "a header row, in the format import reads.")
    c.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    c.set_defaults(func=cmd_export)

    c = csub.add_parser("merge", help="merge duplicate contacts (all their tickets are kept)",
                        description="Merge OTHER contacts into KEEP: tickets, orders and "
                        "addresses move to KEEP, its empty fields are filled, the others are "
                        "deleted. --auto merges every group sharing an e-mail into its oldest.")
    c.add_argument("ids", nargs="*", type=int, metavar="ID", help="KEEP OTHER...")
    c.add_argument("--auto", action="store_true", help="find duplicates by e-mail address")
    c.add_argument("--dry-run", action="store_true", help="only say what would be merged")
    c.set_defaults(func=cmd_merge)

    c = csub.add_parser("anonymize", aliases=["anonymise"],
                        help="anonymise a contact (irreversible)",
                        description="Names anonymised; addresses, e-mail addresses, order and "
                        "company links removed; the contact's tickets keep their history without "
                        "personal data. Cannot be undone.")
    c.add_argument("id", type=int, metavar="ID")
    c.add_argument("--yes", action="store_true", help="confirm without asking")
    c.set_defaults(func=cmd_anonymize)

    c = csub.add_parser("personal-data", help="export a contact's personal data as JSON",
                        description="Everything gatewayd holds about the contact: its data, "
                        "orders, tickets with messages, and the mails sent about them.")
    c.add_argument("id", type=int, metavar="ID")
    c.add_argument("--output", "-o", metavar="FILE", help="default: standard output")
    c.set_defaults(func=cmd_personal_data)
