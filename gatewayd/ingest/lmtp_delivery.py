"""LMTP delivery: which account a recipient is, and one mail through the same pipeline as an
IMAP mail (parse → route → store → event actions) with one reply per recipient.

A reply of 250 is given only once the mail's transaction has committed (ticket or message, or
quarantine with its reason). The receipt key of an LMTP mail is (account, "lmtp", and 126 bits
of the SHA-256 of its bytes): an MTA that delivers the same mail again, because the reply to
the first delivery was lost, hits the same unique receipt and gets 250 without a second ticket.
"""

from __future__ import annotations

import asyncio
import collections
import datetime as dt
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

from tortoise.exceptions import IntegrityError
from tortoise.expressions import F

from gatewayd.config import Account, Config, Lmtp
from gatewayd.ingest.pipeline import (
    Envelope,
    Outcome,
    PoisonMail,
    Prepared,
    existing_receipt,
    import_batch,
    import_one,
    prepare,
)
from gatewayd.ingest.quarantine import quarantine_mail
from gatewayd.logs import get_logger
from gatewayd.store.db import ping
from gatewayd.store.models import InboundReceipt, LmtpCount
from gatewayd.store.tickets import TicketStore

log = get_logger("gatewayd.lmtp")

LMTP_FOLDER = "lmtp"
DEFAULT_MAX_ATTEMPTS = 3  # for accounts without [accounts.imap] (which has max_attempts)
HASH_ON_LOOP_BYTES = 1 << 20  # larger mails are hashed in a thread
ATTEMPTS_REMEMBERED = 10_000
GROUP_COMMIT_MAX = 25  # mails of one account committed together at most (as an IMAP batch)
DEFAULT_LMTP = Lmtp()

# ------------------------------------------------------------------------------ decisions


def recipient_table(config: Config) -> dict[str, Account]:
    """Every address and alias (lower-cased) → its account. `check` makes them unique."""
    table: dict[str, Account] = {}
    for account in config.accounts:
        for address in account.addresses:
            table.setdefault(address, account)
    return table


def lmtp_settings(config: Config) -> Lmtp:
    """`[lmtp]`, or its defaults: a reload may remove the table while the listener keeps its
    socket until the restart."""
    return config.lmtp or DEFAULT_LMTP


def size_limit(config: Config, account: Account) -> int:
    """The largest mail an account takes: its IMAP limit, else [lmtp] max_message_bytes."""
    if account.imap is not None:
        return account.imap.max_message_bytes
    return lmtp_settings(config).max_message_bytes


def max_attempts(account: Account) -> int:
    return account.imap.max_attempts if account.imap else DEFAULT_MAX_ATTEMPTS


def declared_size(mail_options: Sequence[str]) -> int | None:
    """The SIZE=n an MTA declared in MAIL FROM (RFC 1870), or None."""
    for option in mail_options:
        name, _, value = option.partition("=")
        if name.upper() == "SIZE" and value.isascii() and value.isdigit():  # not '²'
            return int(value) if len(value) <= 18 else 10**18  # int() refuses > 4,300 digits
    return None


def lmtp_envelope(account: str, digest: str) -> Envelope:
    """The receipt key of an LMTP mail whose bytes have this SHA-256 (hex): 2 × 63 bits of the
    hash as uidvalidity and uid, which a signed 64-bit BIGINT holds on every engine."""
    return Envelope(account, LMTP_FOLDER, int(digest[:16], 16) >> 1, int(digest[16:32], 16) >> 1)


Failure = Literal["deferred_database", "deferred", "quarantine"]


def after_failure(database_answers: bool, attempts: int, limit: int) -> Failure:
    """What to do when storing a mail failed. A database that does not answer is never the
    mail's fault: 451, and it does not count. Otherwise the MTA retries (451) until the mail has
    failed `limit` times, and then it is quarantined, so a poison mail cannot come back forever.
    Pure."""
    if not database_answers:
        return "deferred_database"
    return "quarantine" if attempts >= limit else "deferred"


@dataclass(frozen=True)
class Reply:
    """One LMTP reply line and what it counts as."""

    text: str
    outcome: str  # delivered | quarantined | duplicate | deferred | refused_...

    @property
    def final(self) -> bool:
        return self.text.startswith("2")


def stored_reply(outcome: Outcome, account: str) -> Reply:
    if outcome.kind == "duplicate":
        if outcome.detail == "quarantined":
            return Reply(f"250 2.0.0 already delivered to {account} (in quarantine)",
                         "duplicate")
        where = f" (ticket {outcome.ticket_id})" if outcome.ticket_id else ""
        return Reply(f"250 2.0.0 already delivered to {account}{where}", "duplicate")
    if outcome.kind == "own_mail":
        return Reply(f"250 2.0.0 gatewayd's own mail, recorded for {account}", "delivered")
    return Reply(f"250 2.0.0 delivered to {account} (ticket {outcome.ticket_id})", "delivered")


# ------------------------------------------------------------------------------ counts


class LmtpCounts:
    """How LMTP answered, per (account, outcome): added in memory at once, written to the
    `lmtp_count` table by `flush` (the worker flushes every few seconds and at stop), so every
    instance adds to the same figures and a deferral counted while the database was down is
    written once it is back."""

    def __init__(self) -> None:
        self.pending: collections.Counter[tuple[str, str]] = collections.Counter()
        self.last: dict[tuple[str, str], dt.datetime] = {}
        self._lock = asyncio.Lock()

    def add(self, account: str, outcome: str, n: int = 1) -> None:
        self.pending[(account, outcome)] += n
        self.last[(account, outcome)] = dt.datetime.now(dt.UTC)

    async def flush(self) -> None:
        """Write what is pending; what cannot be written now stays pending."""
        async with self._lock:
            for key in list(self.pending):
                n = self.pending[key]
                if n <= 0:
                    continue
                await _increment(key[0], key[1], n, self.last[key])
                self.pending[key] -= n
                if self.pending[key] <= 0:
                    del self.pending[key]


async def _increment(account: str, outcome: str, n: int, at: dt.datetime) -> None:
    for _ in range(2):
        if await LmtpCount.filter(account=account, outcome=outcome).update(
                count=F("count") + n, last_at=at):
            return
        try:
            await LmtpCount.create(account=account, outcome=outcome, count=n, last_at=at)
            return
        except IntegrityError:  # another instance created the row first: update it
            continue
    raise RuntimeError(f"cannot count lmtp {outcome} for {account!r}")


# ------------------------------------------------------------------------------ delivery


@dataclass
class _Mail:
    """One mail on its way to its accounts: parsed once, for all of them."""

    raw: bytes
    digest: str
    parsed: Prepared | None = None
    poison: str | None = None  # why it cannot be parsed


@dataclass
class Delivery:
    """Stores LMTP mails through the ingest pipeline; one per listener."""

    store: TicketStore
    counts: LmtpCounts
    # (account, sha256) → failed attempts while the database answered (bounded, oldest dropped)
    attempts: collections.OrderedDict[tuple[str, str], int] = field(
        default_factory=collections.OrderedDict)
    # Parsed mails waiting for the group commit, per account, each with its session's future.
    waiting: dict[str, list[tuple[Account, Prepared, asyncio.Future[Outcome]]]] = field(
        default_factory=dict)
    committers: dict[str, asyncio.Task[None]] = field(default_factory=dict)  # one per account

    async def deliver(self, raw: bytes, accounts: Sequence[Account]) -> dict[str, Reply]:
        """Store one mail for each of these accounts; a reply per account name. Never raises
        (but for cancellation): a failure is a 451 or, after max_attempts, a quarantine."""
        digest = (hashlib.sha256(raw).hexdigest() if len(raw) <= HASH_ON_LOOP_BYTES
                  else await asyncio.to_thread(lambda: hashlib.sha256(raw).hexdigest()))
        mail = _Mail(raw, digest)
        replies: dict[str, Reply] = {}
        for account in accounts:
            env = lmtp_envelope(account.name, digest)
            try:
                reply = await self._deliver_one(account, env, mail)
            except Exception as exc:
                reply = await self._failed(account, env, mail, exc)
            replies[account.name] = reply
            self.counts.add(account.name, reply.outcome)
        return replies

    async def _deliver_one(self, account: Account, env: Envelope, mail: _Mail) -> Reply:
        # Parse first (worker processes, no database): on SQLite a read here would wait for
        # the transaction in progress, and parsing would no longer overlap with it. Whether
        # the mail is in already (a redelivery) is asked by the committer, for all at once.
        if mail.parsed is None and mail.poison is None:
            try:
                mail.parsed = await prepare(account, env, mail.raw)
            except PoisonMail as exc:
                mail.poison = str(exc)
        if mail.parsed is None:
            receipt = await existing_receipt(env)
            if receipt is not None:
                return stored_reply(_duplicate(receipt), account.name)
            entry = await quarantine_mail(self.store, env, mail.raw, mail.poison or "poison", 1)
            return Reply(f"250 2.0.0 set aside in quarantine {entry.id} for {account.name}: "
                         "it cannot be parsed", "quarantined")
        outcome = await self._commit(account, replace(mail.parsed, env=env))
        self.attempts.pop((account.name, mail.digest), None)
        return stored_reply(outcome, account.name)

    async def _failed(self, account: Account, env: Envelope, mail: _Mail,
                      exc: Exception) -> Reply:
        error = f"{type(exc).__name__}: {exc}"[:300]
        answers = await ping()
        key = (account.name, mail.digest)
        attempts = self.attempts.pop(key, 0) + (1 if answers else 0)
        limit = max_attempts(account)
        decision = after_failure(answers, attempts, limit)
        if decision == "deferred_database":
            if attempts:
                self.attempts[key] = attempts
            log.warning("lmtp: database unavailable, mail deferred", account=account.name,
                        error=error)
            return Reply("451 4.3.0 the database is unavailable, try again later", "deferred")
        if decision == "deferred":
            self._remember(key, attempts)
            log.warning("lmtp: mail could not be stored, deferred", account=account.name,
                        attempts=attempts, error=error)
            return Reply(f"451 4.3.0 the mail could not be stored (attempt {attempts} of "
                         f"{limit}), try again later", "deferred")
        try:
            entry = await quarantine_mail(
                self.store, env, mail.raw, f"failed {attempts} times: {error}", attempts,
                message_id=mail.parsed.mail.message_id if mail.parsed else None)
        except Exception as again:
            self._remember(key, attempts)
            log.warning("lmtp: quarantine failed too, mail deferred", account=account.name,
                        error=f"{type(again).__name__}: {again}"[:300])
            return Reply("451 4.3.0 the mail could not be stored, try again later", "deferred")
        log.error("lmtp: mail failed too often, quarantined", account=account.name,
                  attempts=attempts, quarantine_id=entry.id, error=error)
        return Reply(f"250 2.0.0 set aside in quarantine {entry.id} for {account.name} after "
                     f"{attempts} failures", "quarantined")

    async def _commit(self, account: Account, item: Prepared) -> Outcome:
        """Store one parsed mail; the mails other sessions hand over meanwhile for the same
        account commit together with it in one transaction (a group commit): one commit's
        wait serves them all, and each session still answers only after its mail is in."""
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting.setdefault(account.name, []).append((account, item, future))
        running = self.committers.get(account.name)
        if running is None or running.done():
            self.committers[account.name] = asyncio.create_task(
                self._commit_waiting(account.name), name=f"lmtp-commit:{account.name}")
        return await future

    async def _commit_waiting(self, name: str) -> None:
        """The account's committer: takes what waits, commits it, until nothing waits."""
        while self.waiting.get(name):
            group = self.waiting.pop(name)
            batch, rest = group[:GROUP_COMMIT_MAX], group[GROUP_COMMIT_MAX:]
            if rest:
                self.waiting[name] = rest
            account = batch[0][0]
            try:
                stored = await _receipts(account.name, [item.env for _, item, _ in batch])
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for _, item, future in batch:
                receipt = stored.get((item.env.uidvalidity, item.env.uid))
                if receipt is not None and not future.done():
                    future.set_result(_duplicate(receipt))
            batch = [entry for entry in batch if not entry[2].done()]
            items = [item for _, item, _ in batch]
            if len(batch) > 1:
                try:
                    outcomes = await import_batch(self.store, account, items)
                except Exception as exc:
                    # All or none: find the mail that failed by storing them one by one.
                    log.info("lmtp group commit failed, one by one", mails=len(batch),
                             error=f"{type(exc).__name__}: {exc}"[:200])
                else:
                    for (_, _, future), outcome in zip(batch, outcomes, strict=True):
                        if not future.done():
                            future.set_result(outcome)
                    continue
            for _, item, future in batch:
                try:
                    outcome = await import_one(self.store, account, item)
                except Exception as exc:
                    if not future.done():
                        future.set_exception(exc)
                else:
                    if not future.done():
                        future.set_result(outcome)

    def _remember(self, key: tuple[str, str], attempts: int) -> None:
        self.attempts[key] = attempts
        while len(self.attempts) > ATTEMPTS_REMEMBERED:
            self.attempts.popitem(last=False)


def _duplicate(receipt: InboundReceipt) -> Outcome:
    """A redelivery of a mail whose receipt exists (stored, own mail or quarantined)."""
    ticket_id = receipt.ticket_id  # type: ignore[attr-defined]
    log.info("lmtp redelivery: already stored", account=receipt.account, ticket_id=ticket_id,
             outcome=receipt.outcome)
    return Outcome("duplicate", ticket_id=ticket_id, detail=receipt.outcome)


async def _receipts(account: str, envs: list[Envelope]) -> dict[tuple[int, int], InboundReceipt]:
    """The receipts among these LMTP envelopes of one account, in one query."""
    found = await InboundReceipt.filter(account=account, folder=LMTP_FOLDER,
                                        uid__in=[env.uid for env in envs])
    wanted = {(env.uidvalidity, env.uid) for env in envs}
    return {(int(r.uidvalidity), int(r.uid)): r for r in found
            if (int(r.uidvalidity), int(r.uid)) in wanted}
