"""One mail from bytes to a committed ticket or message: parse off the loop, route, store.

Crash-safe order: everything (ticket or message, attachments, the inbound receipt, the domain
events and what their hooks write) commits in one transaction; the server action (move / delete /
flag) happens only after the commit, and a receipt that already exists means only that.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from tortoise.exceptions import IntegrityError

from gatewayd.config import Account, Config
from gatewayd.ingest.parse import ParseError
from gatewayd.ingest.parsers import ParserStopped, ParseTimeout, WorkerCrashed, parse_in_worker
from gatewayd.logs import get_logger
from gatewayd.mail import InboundMail
from gatewayd.routing.keywords import Keywords
from gatewayd.routing.lookup import InBatch, facts_for, lookup_batch
from gatewayd.routing.phrases import phrasebook_for
from gatewayd.routing.rules import automatic_reason, decide, keywords_of, own_mail
from gatewayd.store.attachments import save_blob
from gatewayd.store.models import InboundReceipt, Message
from gatewayd.store.tickets import NewAttachment, NewMessage, NewTicket, TicketStore

log = get_logger("gatewayd.ingest")


@dataclass(frozen=True)
class Envelope:
    """Where a mail sits on the server: the receipt's unique key."""

    account: str
    folder: str
    uidvalidity: int
    uid: int


@dataclass(frozen=True)
class Outcome:
    kind: Literal["imported", "duplicate", "own_mail", "quarantined"]
    ticket_id: int | None = None
    message_id: int | None = None
    rule: str | None = None
    detail: str | None = None


class PoisonMail(Exception):
    """This mail cannot be imported however often we try: quarantine it at once."""


async def parse_off_loop(raw: bytes, *, headers_only: bool, limit: float) -> InboundMail:
    """Parse in a worker process with a time limit so a pathological mail never freezes the loop;
    a mail that cannot be parsed (or not in time) raises PoisonMail with the reason."""
    try:
        return await parse_in_worker(raw, headers_only=headers_only, limit=limit)
    except ParseTimeout as exc:
        raise PoisonMail(f"parsing took longer than {limit:g} s (pathological mail); "
                         "the parser was stopped") from exc
    except (ParseError, WorkerCrashed) as exc:
        raise PoisonMail(f"cannot parse: {exc}") from exc
    except RecursionError as exc:
        raise PoisonMail("cannot parse: nesting too deep") from exc
    except (OSError, MemoryError, ParserStopped):
        raise  # the machine's trouble or a shutdown, not the mail's: it stays for a later try
    except Exception as exc:  # whatever else one mail's parsing raised is that mail's fault
        raise PoisonMail(f"cannot parse: {type(exc).__name__}: {exc}"[:500]) from exc


async def existing_receipt(env: Envelope) -> InboundReceipt | None:
    return await InboundReceipt.get_or_none(account=env.account, folder=env.folder,
                                            uidvalidity=env.uidvalidity, uid=env.uid)


def oversized_text(mail: InboundMail, size: int, limit: int, folder: str) -> str:
    lines = [
        f"This mail is {size:,} bytes, more than the limit of {limit:,} bytes "
        f"(accounts.imap.max_message_bytes). Its body was not imported; the original stays "
        f"on the server in folder {folder!r}, flagged, for a person to handle.",
        "",
        f"From: {mail.from_raw or mail.from_address or '-'}",
        f"To: {', '.join(mail.to) or '-'}",
        f"Subject: {mail.subject or '-'}",
        f"Date: {mail.date.isoformat() if mail.date else '-'}",
        f"Message-ID: {mail.message_id or '-'}",
    ]
    return "\n".join(lines)


def _notes(mail: InboundMail, decision_notes: tuple[str, ...],
           auto_reason: str | None) -> list[dict[str, object]]:
    notes: list[dict[str, object]] = [{"kind": "routing", "text": n} for n in decision_notes]
    if auto_reason:
        notes.append({"kind": "automatic", "text": auto_reason})
    for rejected in mail.rejected:
        notes.append({"kind": "rejected_attachment", "filename": rejected.filename,
                      "content_type": rejected.content_type, "size": rejected.size,
                      "reason": rejected.reason})
    if mail.defects:
        notes.append({"kind": "mime_defects", "text": ", ".join(mail.defects)})
    return notes


async def store_mail(
    store: TicketStore, account: Account, env: Envelope, mail: InboundMail, *,
    oversized: tuple[int, int] | None = None, receipt_outcome: str = "imported",
) -> Outcome:
    """Route and store one parsed mail with its receipt, in one transaction."""
    item = Prepared(env, b"", mail, oversized)
    async with store.transaction():
        outcomes = await _store_batch(store, account, [item], receipt_outcome=receipt_outcome)
    return outcomes[0]


@dataclass(frozen=True)
class _Premises:
    """What is decided about a mail before the transaction: pure work, no database."""

    own: str | None  # why it is the gateway's own mail, or None
    keys: Keywords
    auto: str | None  # why it is automatic mail, or None


def _premises(config: Config, mail: InboundMail) -> _Premises:
    own = own_mail(mail, config.message_id_domain, [a.address for a in config.accounts])
    if own is not None:
        return _Premises(own, Keywords(), None)
    return _Premises(None, keywords_of(mail, phrasebook_for(config.routing)),
                     automatic_reason(mail, bounced_addresses(mail)))


async def _last_message_id() -> int:
    """The highest message id so far (an index look-up); the batch's messages come after it:
    ids are handed out in increasing order, also by PostgreSQL's sequences."""
    ids = await Message.all().order_by("-id").limit(1).values_list("id", flat=True)
    return int(ids[0]) if ids else 0  # type: ignore[call-overload]


def _save_attachments(data_dir: Path, contents: list[bytes]) -> None:
    for content in contents:
        save_blob(data_dir, content)


async def _store_batch(
    store: TicketStore, account: Account, items: list[Prepared], *,
    dedupe_by_content: bool = False, receipt_outcome: str = "imported",
) -> list[Outcome]:
    """Route and store parsed mails inside the caller's transaction, with their receipts.

    The routing look-ups are made once for the batch; each mail then sees what the ones before
    it stored (a reply threads onto a ticket opened earlier in the batch). The receipts are
    written together at the end; all of it commits or rolls back with the caller's transaction.
    """
    config = store.config
    premises = [_premises(config, item.mail) for item in items]
    found = await lookup_batch([(item.mail, p.keys) for item, p in zip(items, premises,
                                                                       strict=True)
                                if p.own is None])
    in_batch = InBatch()
    debug = logging.getLogger("gatewayd.ingest").isEnabledFor(logging.DEBUG)
    receipts: list[dict[str, Any]] = []
    new_tickets: dict[int, int] = {}  # receipt index → ticket opened with the mail
    floor: int | None = None  # messages stored from here on have higher ids
    twins: dict[tuple[str, str | None], int | None] = {}  # (hash, Message-ID) → ticket
    outcomes: list[Outcome] = []
    for item, premise in zip(items, premises, strict=True):
        env, mail = item.env, item.mail
        receipt: dict[str, Any] = {
            "account": env.account, "folder": env.folder, "uidvalidity": env.uidvalidity,
            "uid": env.uid, "message_id": mail.message_id, "content_hash": mail.content_hash,
        }
        if dedupe_by_content:
            twin_key = (mail.content_hash, mail.message_id)
            if twin_key in twins:
                twin_ticket = twins[twin_key]
            else:
                twin = await InboundReceipt.filter(
                    account=env.account, content_hash=mail.content_hash,
                    message_id=mail.message_id,
                ).first()
                twin_ticket = twin.ticket_id if twin else -1  # type: ignore[attr-defined]
            if twin_ticket != -1:
                log.warning("UIDVALIDITY changed: mail already imported (same Message-ID and "
                            "content)", uid=env.uid, message_id=mail.message_id,
                            ticket_id=twin_ticket)
                receipts.append({**receipt, "ticket_id": twin_ticket, "outcome": "duplicate"})
                outcomes.append(Outcome("duplicate", ticket_id=twin_ticket,
                                        detail="same Message-ID and content under an earlier "
                                        "UIDVALIDITY"))
                continue
        if premise.own is not None:
            receipts.append({**receipt, "outcome": "own_mail"})
            log.info("own mail not imported", uid=env.uid, reason=premise.own)
            outcomes.append(Outcome("own_mail", detail=premise.own))
            if dedupe_by_content:
                twins[(mail.content_hash, mail.message_id)] = None
            continue
        keys, auto = premise.keys, premise.auto
        text = mail.text
        if item.oversized is not None:
            text = oversized_text(mail, item.oversized[0], item.oversized[1], env.folder)
        decision = decide(mail, keys, facts_for(mail, keys, found, in_batch))
        message = NewMessage(
            text=text, direction="in", from_address=mail.from_address,
            from_name=mail.from_name, to_addresses=mail.to, cc_addresses=mail.cc,
            subject=mail.subject, html=mail.html, reply_text=mail.reply_text,
            auto_reply=auto is not None, message_id=mail.message_id,
            in_reply_to=mail.in_reply_to, references=mail.references, routed_by=decision.rule,
            notes=_notes(mail, decision.notes, auto),
            attachments=[NewAttachment(a.filename, a.content_type, a.content)
                         for a in mail.attachments],
        )
        message_id: int | None = None
        if decision.action == "append" and decision.ticket_id is not None:
            stored = await store.add_message(decision.ticket_id, message, actor="mail")
            ticket_id, message_id = decision.ticket_id, stored.id
        else:
            if floor is None:
                floor = await _last_message_id()
            ticket = await store.create_ticket(
                NewTicket(
                    title=mail.subject or "(no subject)", type=account.new_ticket.type,
                    status=account.new_ticket.status, contact_id=decision.contact_id,
                    order_id=decision.order_id, account=account.name, source="mail",
                    language=decision.language or account.language or config.default_language,
                    reply_address=mail.from_address or mail.reply_to,
                ),
                first_message=message, actor="mail",
            )
            ticket_id = ticket.id
            new_tickets[len(receipts)] = ticket_id
        in_batch.add(mail.message_id, ticket_id, opened=message_id is None)
        if dedupe_by_content:
            twins[(mail.content_hash, mail.message_id)] = ticket_id
        receipts.append({**receipt, "ticket_id": ticket_id, "ticket_message_id": message_id,
                         "outcome": receipt_outcome})
        if debug:
            log.debug("mail imported", uid=env.uid, message_id=mail.message_id,
                      ticket_id=ticket_id, rule=decision.rule, action=decision.action,
                      auto_reply=auto is not None)
        outcomes.append(Outcome("imported", ticket_id=ticket_id, message_id=message_id,
                                rule=decision.rule))
    if new_tickets:
        # The first message of each ticket opened here is the mail's: one query for all, over
        # the messages written since `floor` only (an id range; message.ticket_id has no index).
        first: dict[int, int] = {}
        for ticket_id, message_id in await Message.filter(
            id__gt=floor or 0, ticket_id__in=list(new_tickets.values())
        ).order_by("id").values_list("ticket_id", "id"):
            first.setdefault(int(ticket_id), int(message_id))
        for index, ticket_id in new_tickets.items():
            receipts[index]["ticket_message_id"] = first.get(ticket_id)
        for n, outcome in enumerate(outcomes):
            if outcome.kind == "imported" and outcome.message_id is None:
                outcomes[n] = replace(outcome, message_id=first.get(outcome.ticket_id or 0))
    await InboundReceipt.bulk_create([InboundReceipt(**r) for r in receipts])
    return outcomes


def bounced_addresses(mail: InboundMail) -> list[str]:
    """Failed recipients named by a bounce: flufl.bounce's findings and X-Failed-Recipients."""
    addresses = list(mail.bounced)
    for value in mail.header_all("x-failed-recipients"):
        addresses.extend(a.strip().lower() for a in value.split(",") if "@" in a)
    return addresses


@dataclass(frozen=True)
class Prepared:
    """A fetched mail, parsed; `oversized` = (size, limit) when only its headers were read."""

    env: Envelope
    raw: bytes
    mail: InboundMail
    oversized: tuple[int, int] | None = None


async def prepare(account: Account, env: Envelope, raw: bytes,
                  size: int | None = None) -> Prepared:
    """Parse a fetched mail off the loop. Raises PoisonMail when it can never be parsed."""
    settings = account.imap
    limit = settings.max_message_bytes if settings else 25 * 1024 * 1024
    timeout = settings.parse_timeout_seconds if settings else 30.0
    headers_only = size is not None and size > limit
    mail = await parse_off_loop(raw, headers_only=headers_only, limit=timeout)
    return Prepared(env, raw, mail, (size, limit) if headers_only and size else None)


async def save_attachments_first(store: TicketStore, items: list[Prepared]) -> None:
    """Write the batch's attachment files (hash, write, fsync) in a thread before the
    transaction, so the event loop and the database are not held up by file I/O; the store then
    finds each file in place. A rollback leaves unreferenced files, which is harmless (the
    same content reuses them); a row never references a missing file."""
    contents = [a.content for item in items for a in item.mail.attachments]
    if contents:
        await asyncio.to_thread(_save_attachments, store.data_dir, contents)


async def import_batch(store: TicketStore, account: Account, items: list[Prepared], *,
                       dedupe_by_content: bool = False) -> list[Outcome]:
    """Several parsed mails in ONE transaction (a group commit): all or none.

    A failure rolls the whole batch back; the caller then imports the mails one by one, so a
    bad mail is found and counted on its own. Hooks run for every mail before the commit.
    """
    await save_attachments_first(store, items)
    async with store.transaction():
        outcomes = await _store_batch(store, account, items, dedupe_by_content=dedupe_by_content)
    # Committed: one line for the batch at info level (each line costs its rendering); each
    # mail's routing is logged at debug level.
    imported = [(item.env.uid, outcome.ticket_id) for item, outcome
                in zip(items, outcomes, strict=True) if outcome.kind == "imported"]
    if imported:
        log.info("mails imported", mails=len(imported), uids=[u for u, _ in imported],
                 ticket_ids=[t for _, t in imported])
    return outcomes


async def import_mail(
    store: TicketStore, account: Account, env: Envelope, raw: bytes, *,
    size: int | None = None, dedupe_by_content: bool = False, receipt_checked: bool = False,
) -> Outcome:
    """Import one fetched mail. Raises PoisonMail for mails that can never be imported; any other
    exception means "try again later" (the caller counts attempts)."""
    if not receipt_checked and await existing_receipt(env) is not None:
        return Outcome("duplicate", detail="receipt exists")
    item = await prepare(account, env, raw, size)
    return await import_one(store, account, item, dedupe_by_content=dedupe_by_content)


async def import_one(store: TicketStore, account: Account, item: Prepared, *,
                     dedupe_by_content: bool = False) -> Outcome:
    """One parsed mail in its own transaction; a receipt committed meanwhile is a duplicate."""
    try:
        outcomes = await import_batch(store, account, [item],
                                      dedupe_by_content=dedupe_by_content)
    except IntegrityError:
        # Another instance committed the same receipt first: the mail is in; nothing doubled.
        if await existing_receipt(item.env) is not None:
            return Outcome("duplicate", detail="receipt committed concurrently")
        raise
    return outcomes[0]


async def existing_receipts(account: str, folder: str, uidvalidity: int,
                            uids: list[int]) -> dict[int, InboundReceipt]:
    """The receipts of these UIDs, in chunks (one query per 500 UIDs, not one per mail)."""
    found: dict[int, InboundReceipt] = {}
    for start in range(0, len(uids), 500):
        for receipt in await InboundReceipt.filter(
            account=account, folder=folder, uidvalidity=uidvalidity,
            uid__in=uids[start:start + 500],
        ):
            found[int(receipt.uid)] = receipt
    return found
