"""Quarantine: a mail that cannot become a ticket is set aside with its reason, its raw bytes
kept under data_dir/quarantine/<sha256>.eml, and its receipt written, so that a fetch of it again
only re-applies the server action. `gatewayd quarantine retry` runs it through the pipeline again.
"""

from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path

from tortoise.exceptions import IntegrityError

from gatewayd.config import Config
from gatewayd.ingest.pipeline import Envelope, Outcome, parse_off_loop, store_mail
from gatewayd.logs import get_logger
from gatewayd.store.files import write_atomic
from gatewayd.store.models import InboundReceipt, Quarantine
from gatewayd.store.tickets import TicketStore

log = get_logger("gatewayd.ingest")


def quarantine_path(config: Config, digest: str) -> Path:
    return config.data_dir / "quarantine" / f"{digest}.eml"


def save_quarantined(config: Config, raw: bytes) -> str:
    """Write the raw mail durably under data_dir/quarantine/<sha256>.eml; return the hash."""
    digest = hashlib.sha256(raw).hexdigest()
    target = quarantine_path(config, digest)
    if target.exists():
        return digest
    write_atomic(target, raw)  # named by its hash: a lost rename only means writing it again
    return digest


async def quarantine_mail(store: TicketStore, env: Envelope, raw: bytes, reason: str,
                          attempts: int, message_id: str | None = None) -> Quarantine:
    """Set a mail aside with its reason; its receipt makes a re-fetch only re-apply the action."""
    digest = save_quarantined(store.config, raw)
    async with store.transaction():
        entry = await Quarantine.create(
            account=env.account, folder=env.folder, uidvalidity=env.uidvalidity, uid=env.uid,
            message_id=message_id, sha256=digest, size=len(raw), reason=reason[:2000],
            attempts=attempts,
        )
        with contextlib.suppress(IntegrityError):
            await InboundReceipt.create(
                account=env.account, folder=env.folder, uidvalidity=env.uidvalidity,
                uid=env.uid, message_id=message_id, content_hash=digest, outcome="quarantined",
            )
    log.warning("mail quarantined", uid=env.uid, quarantine_id=entry.id, reason=reason[:200])
    return entry


async def retry_quarantined(store: TicketStore, quarantine_id: int) -> Outcome:
    """Run one quarantined mail through the pipeline again (e.g. after a fix)."""
    entry = await Quarantine.get_or_none(id=quarantine_id)
    if entry is None:
        raise LookupError(f"quarantine entry {quarantine_id} does not exist — see "
                          "`gatewayd quarantine list`")
    account = store.config.account(entry.account or "")
    if account is None:
        raise LookupError(f"quarantine entry {quarantine_id} belongs to account "
                          f"{entry.account!r}, which is not configured any more")
    raw = quarantine_path(store.config, entry.sha256).read_bytes()
    env = Envelope(account.name, entry.folder or "INBOX", entry.uidvalidity or 0, entry.uid or 0)
    settings = account.imap
    mail = await parse_off_loop(raw, headers_only=False,
                                limit=settings.parse_timeout_seconds if settings else 30.0)
    async with store.transaction():
        await InboundReceipt.filter(account=env.account, folder=env.folder,
                                    uidvalidity=env.uidvalidity, uid=env.uid,
                                    outcome="quarantined").delete()
        outcome = await store_mail(store, account, env, mail, receipt_outcome="imported")
        entry.status = "retried"
        entry.ticket_id = outcome.ticket_id
        entry.attempts += 1
        await entry.save()
    return outcome
