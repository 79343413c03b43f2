"""Draining one account's unseen mail on a connected session: chunk by chunk, oldest first.

The UIDs found by one UID SEARCH UNSEEN are taken in chunks of MAX_UIDS_PER_COMMAND: each chunk's
sizes come in one UID FETCH, and only that chunk's sizes and receipts are held; its mails are
fetched in batches (FETCH_BATCH mails or FETCH_BATCH_BYTES), each batch committed in one
transaction, then moved. Memory is bounded by a chunk's sizes and two batches of mail, whatever
the backlog. A write that fails for lack of disk raises StorageFull: never the mail's fault.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from gatewayd.config import Account
from gatewayd.ingest.imap import ImapError, ImapSession
from gatewayd.ingest.imap_wire import MAX_UIDS_PER_COMMAND, chunks
from gatewayd.ingest.pipeline import (
    Envelope,
    Outcome,
    PoisonMail,
    Prepared,
    existing_receipts,
    import_batch,
    import_one,
    prepare,
)
from gatewayd.ingest.quarantine import quarantine_mail
from gatewayd.ingest.supervisor import Progress
from gatewayd.logs import get_logger
from gatewayd.runtime import AccountHealth, Runtime
from gatewayd.store.faults import StorageFault, storage_fault
from gatewayd.store.models import InboundReceipt

log = get_logger("gatewayd.poller")

FETCH_BATCH = 25
# Two batches are in hand per account (one stored, the next fetched and parsed): 4 MB each.
FETCH_BATCH_BYTES = 4 * 1024 * 1024
UID_CHUNK = MAX_UIDS_PER_COMMAND

# Tests hook in here to simulate a crash between commit and server action.
AfterCommit = Callable[[Envelope, Outcome], Awaitable[None]]
Sizes = dict[int, tuple[int, frozenset[str]]]


class StorageFull(Exception):
    """A write failed for lack of disk: the account pauses; no mail is counted as failing."""

    def __init__(self, fault: StorageFault) -> None:
        super().__init__(f"{fault.kind} cannot be written: {fault.reason}")
        self.fault = fault


def raise_if_storage(exc: BaseException) -> None:
    fault = storage_fault(exc)
    if fault is not None:
        raise StorageFull(fault) from exc


def server_action(account: Account, outcome_kind: str) -> tuple[str, str | None]:
    """What to do on the server with a mail after its commit: ("move", folder) / ("delete",
    None) / ("flag", None). Quarantined mails are moved aside or flagged, never deleted."""
    imap = account.imap
    assert imap is not None
    if outcome_kind == "quarantined":
        return ("move", imap.quarantine_folder) if imap.quarantine_folder else ("flag", None)
    if outcome_kind == "oversized":
        return ("flag", None)
    if imap.after_import == "delete":
        return ("delete", None)
    return ("move", imap.move_to)


@dataclass
class Fetched:
    """A fetched batch: its parsed mails, and those already quarantined as unparseable."""

    prepared: list[Prepared] = field(default_factory=list)
    quarantined: list[tuple[Envelope, str]] = field(default_factory=list)


@dataclass
class Drainer:
    """The import steps of one account; AccountPoller adds the connection and its supervision."""

    runtime: Runtime
    account: Account
    stop: asyncio.Event
    after_commit: AfterCommit | None = None
    attempts: dict[tuple[int, int], int] = field(default_factory=dict)
    ensured_folders: set[str] = field(default_factory=set)
    dedupe_by_content: bool = False  # set when UIDVALIDITY changed since the last import
    progress: Progress = field(default_factory=Progress)

    @property
    def health(self) -> AccountHealth:
        return self.runtime.health.setdefault(self.account.name, AccountHealth(self.account.name))

    @property
    def storage_source(self) -> str:
        return f"account {self.account.name}"

    def made_progress(self) -> None:
        """A batch committed or a poll completed: the account is neither stalled nor blocked
        by a full disk any more."""
        health = self.health
        if health.stalled_since is not None:
            log.info("account makes progress again", stalled_since=health.stalled_since.isoformat())
            health.stalled_since = None
        if self.runtime.storage.clear(self.storage_source):
            log.info("storage writable again: import resumed")

    async def poll_once(self, session: ImapSession, uidvalidity: int) -> int:
        """Import every unseen mail, oldest first, UID_CHUNK UIDs at a time; returns how many
        were handled. A stop finishes the batch in hand (see `_drain_chunk`)."""
        self.progress.working("searching unseen mail")
        uids = await session.unseen()
        self.health.found_unseen(len(uids))
        handled = 0
        for chunk in chunks(uids, UID_CHUNK):
            if self.stop.is_set():
                break
            handled += await self._drain_chunk(session, uidvalidity, chunk)
        return handled

    async def _drain_chunk(self, session: ImapSession, uidvalidity: int, uids: list[int]) -> int:
        """Import one chunk of unseen mail.

        Mails are fetched in batches and each batch is committed in one transaction (falling
        back to one transaction per mail when anything in it fails); the server actions of a
        batch follow its commit, one command per action (one UID MOVE for the batch).

        Pipelined, one batch deep: while a batch is routed and committed, the next one is
        fetched and parsed (nothing of it is written before its own turn, so a crash or a stop
        between the two leaves it unseen on the server, to be fetched again). A stop finishes
        the batch being stored (commit and server action) and drops the one fetched behind it.
        """
        imap = self.account.imap
        assert imap is not None
        self.progress.working(f"fetching the sizes of {len(uids)} mails")
        sizes = await session.sizes(uids)
        receipts = await existing_receipts(self.account.name, imap.folder, uidvalidity, uids)
        done: list[tuple[Envelope, str]] = []  # committed, server action pending
        plan: list[tuple[list[int], bool]] = []  # (UIDs, headers only) in UID order
        batch: list[int] = []
        batch_bytes = 0
        for uid in uids:
            env = Envelope(self.account.name, imap.folder, uidvalidity, uid)
            if uid in receipts:
                # Imported before (a crash or a failed action): only re-apply the server action.
                done.append((env, receipts[uid].outcome))
                continue
            size = sizes.get(uid, (0, frozenset()))[0]
            if size > imap.max_message_bytes:
                plan.append(([uid], True))
                continue
            batch.append(uid)
            batch_bytes += size
            if len(batch) >= FETCH_BATCH or batch_bytes >= FETCH_BATCH_BYTES:
                plan.append((batch, False))
                batch, batch_bytes = [], 0
        if batch:
            plan.append((batch, False))
        del receipts

        lock = asyncio.Lock()  # one IMAP command at a time on the connection
        handled = 0

        def fetch(n: int) -> asyncio.Task[Fetched]:
            uids, headers_only = plan[n]
            return asyncio.create_task(self._fetch_and_prepare(
                session, lock, uids, uidvalidity, sizes, headers_only=headers_only))

        ahead: asyncio.Task[Fetched] | None = None
        try:
            for n in range(len(plan)):
                if self.stop.is_set():
                    if ahead is not None:
                        # Fetched and parsed, not stored: left unseen on the server for next
                        # time. Only what was quarantined already gets its server action.
                        done.extend((await ahead).quarantined)
                        ahead = None
                    break
                fetched = await (ahead or fetch(n))
                # The next batch is fetched and parsed while this one is stored.
                ahead = fetch(n + 1) if n + 1 < len(plan) else None
                done.extend(fetched.quarantined)
                await self._import_prepared(fetched.prepared, done)
                async with lock:
                    handled += await self._apply(session, done)
        finally:
            if ahead is not None:  # an error (or a stop) left a fetch running: end it
                ahead.cancel()
                with contextlib.suppress(BaseException):
                    await ahead
        # Even when stopping: the mails in hand are committed, so finish their server actions.
        async with lock:
            handled += await self._apply(session, done)
        return handled

    async def _fetch_and_prepare(
        self, session: ImapSession, lock: asyncio.Lock, uids: list[int], uidvalidity: int,
        sizes: Sizes, *, headers_only: bool = False,
    ) -> Fetched:
        """Fetch a batch and parse its mails (all at once: the parser pool bounds the work);
        a mail that cannot be parsed is quarantined here, at once."""
        imap = self.account.imap
        assert imap is not None
        async with lock:
            self.progress.working(f"fetching {len(uids)} mails")
            raws = await session.fetch(uids, headers_only=headers_only)
        envs = [(Envelope(self.account.name, imap.folder, uidvalidity, uid), raws[uid])
                for uid in uids if uid in raws]  # a missing one was expunged meanwhile
        del raws

        async def parse(env: Envelope, raw: bytes) -> Prepared:
            prepared = await prepare(self.account, env, raw, sizes.get(env.uid, (len(raw),))[0])
            self.progress.advanced()
            return prepared

        results = await asyncio.gather(*(parse(env, raw) for env, raw in envs),
                                       return_exceptions=True)
        fetched = Fetched()
        for (env, raw), result in zip(envs, results, strict=True):
            if isinstance(result, PoisonMail):
                try:
                    await quarantine_mail(self.runtime.store, env, raw, str(result),
                                          self.attempts.get((uidvalidity, env.uid), 0) + 1)
                except Exception as exc:
                    raise_if_storage(exc)
                    raise
                self.attempts.pop((uidvalidity, env.uid), None)
                fetched.quarantined.append((env, "quarantined"))
            elif isinstance(result, BaseException):
                raise result
            else:
                fetched.prepared.append(result)
        return fetched

    async def _import_prepared(self, prepared: list[Prepared],
                               done: list[tuple[Envelope, str]]) -> None:
        """Commit a parsed batch in one transaction, or its mails one by one if that fails."""
        store = self.runtime.store
        if len(prepared) > 1:
            self.progress.working(f"storing {len(prepared)} mails")
            try:
                outcomes = await import_batch(store, self.account, prepared,
                                              dedupe_by_content=self.dedupe_by_content)
            except (OSError, ConnectionError) as exc:
                raise_if_storage(exc)
                raise  # the database is gone: the account backs off
            except Exception as exc:
                raise_if_storage(exc)  # a full disk fails every mail alike: no one by one
                log.info("batch rolled back, importing its mails one by one",
                         mails=len(prepared), error=f"{type(exc).__name__}: {exc}"[:200])
            else:
                for item, outcome in zip(prepared, outcomes, strict=True):
                    await self._committed(item, outcome, done)
                return
        for item in prepared:
            if self.stop.is_set():
                break
            await self._import(item, done)

    async def _committed(self, item: Prepared, outcome: Outcome,
                         done: list[tuple[Envelope, str]]) -> None:
        self.attempts.pop((item.env.uidvalidity, item.env.uid), None)
        self.progress.advanced()
        self.made_progress()
        if self.after_commit is not None:
            await self.after_commit(item.env, outcome)
        done.append((item.env, "oversized" if item.oversized else outcome.kind))

    async def _import(self, item: Prepared, done: list[tuple[Envelope, str]]) -> None:
        """Commit one mail, or count a failure and quarantine it after max_attempts. A failure
        for lack of disk is not the mail's: it raises StorageFull and counts nothing."""
        imap = self.account.imap
        assert imap is not None
        env = item.env
        key = (env.uidvalidity, env.uid)
        self.progress.working("storing 1 mail")
        try:
            outcome = await import_one(self.runtime.store, self.account, item,
                                       dedupe_by_content=self.dedupe_by_content)
        except (OSError, ConnectionError, ImapError) as exc:
            raise_if_storage(exc)
            raise  # the connection or the database is gone: the account backs off
        except Exception as exc:
            raise_if_storage(exc)
            attempts = self.attempts.get(key, 0) + 1
            self.attempts[key] = attempts
            reason = f"{type(exc).__name__}: {exc}"[:1000]
            if attempts >= imap.max_attempts:
                try:
                    await quarantine_mail(self.runtime.store, env, item.raw,
                                          f"failed {attempts} times: {reason}", attempts,
                                          item.mail.message_id)
                except Exception as failed:
                    raise_if_storage(failed)
                    raise
                log.error("mail failed too often: quarantined", uid=env.uid, attempts=attempts,
                          error=reason[:300])
                self.attempts.pop(key, None)
                done.append((env, "quarantined"))
                return
            log.warning("mail failed, will retry", uid=env.uid, attempts=attempts,
                        error=reason[:300])
            return
        await self._committed(item, outcome, done)

    async def _apply(self, session: ImapSession, done: list[tuple[Envelope, str]]) -> int:
        """Run the server actions of committed mails, one command per action and chunk of
        UIDs; clears `done`."""
        groups: dict[tuple[str, str | None], list[Envelope]] = {}
        for env, kind in done:
            groups.setdefault(server_action(self.account, kind), []).append(env)
        count = len(done)
        done.clear()
        for (action, folder), envs in groups.items():
            uids = [e.uid for e in envs]
            self.progress.working(f"{action} of {len(uids)} mails on the server")
            if action == "move" and folder:
                if folder not in self.ensured_folders:
                    await session.ensure_folder(folder)
                    self.ensured_folders.add(folder)
                await session.move(uids, folder)
            elif action == "delete":
                await session.delete(uids)
            else:
                await session.flag(uids, "\\Flagged", "\\Seen")
            first = envs[0]
            try:
                for part in chunks(uids):
                    await InboundReceipt.filter(
                        account=first.account, folder=first.folder,
                        uidvalidity=first.uidvalidity, uid__in=part,
                    ).update(server_action_done=True)
            except Exception as exc:
                raise_if_storage(exc)
                raise
            self.health.handled(len(uids))
        return count
