"""The outbox: every outbound mail is a row here first; the test/live guard decides its envelope.

`enqueue_mail` is the one door into the outbox for every sending path (event actions, manual
template sends, form info mails, test-send). In test mode it replaces the envelope recipients with
`test_recipient`, whatever the caller intended; the row keeps both.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from typing import Any, TypedDict, Unpack

from gatewayd.config import Config
from gatewayd.outbound.mails import ComposedMail
from gatewayd.store import sql
from gatewayd.store.models import Outbox


def envelope_for(config: Config, intended: Sequence[str]) -> list[str]:
    """Where a mail really goes: in test mode only ever the test address. Pure."""
    if config.mode != "live":
        return [config.test_recipient] if config.test_recipient and intended else []
    return list(dict.fromkeys(intended))


def new_message_id(config: Config, ticket_id: int | None = None) -> str:
    """A short, unique Message-ID at `message_id_domain` (short: it stays on one header line)."""
    prefix = f"t{ticket_id}." if ticket_id is not None else ""
    return f"<{prefix}{secrets.token_hex(10)}@{config.message_id_domain}>"


class OutboxFacts(TypedDict, total=False):
    """What an outbox row records beside its mail (the keywords of `outbox_values`)."""

    ticket_id: int | None
    account: str | None
    event: str | None
    rule: str | None
    template: str | None
    language: str | None
    mail_from: str | None
    status: str
    last_error: str | None
    subject: str | None
    internal: bool


async def enqueue_mail(config: Config, message: ComposedMail | EmailMessage | None,
                       intended_to: Sequence[str], **facts: Unpack[OutboxFacts]) -> Outbox:
    """Write one outbound mail (call inside the transaction of the change that caused it).

    `message` is complete (headers and body): a `ComposedMail`, or an `EmailMessage` whose
    Message-ID is set here if missing. A row with
    no recipient is stored as `suppressed` with the reason instead of being sent. `message` may be
    None only for a row that records a mail that was not made (`suppressed` or `failed`, with
    `last_error` saying why; `subject` then describes it). `internal`: a mail for the shop's
    own people, sent after the customers' mails that wait beside it.
    """
    values = outbox_values(config, message, intended_to, **facts)
    # Plain SQL (one insert per mail on the hot path); the row object is built from the same
    # values, as tortoise would have returned it.
    row_id = await sql.insert("outbox", _columns(values))
    row = Outbox(id=row_id, **values)
    row._saved_in_db = True
    if values["status"] == "queued":
        wake_senders()
    return row


async def enqueue_mail_later(config: Config, message: ComposedMail | EmailMessage | None,
                             intended_to: Sequence[str], **facts: Unpack[OutboxFacts]) -> None:
    """`enqueue_mail` for a caller that needs neither the row nor its id (the forms' info
    mail): on SQLite the insert goes with the transaction's next statement or its COMMIT, one
    round trip fewer inside the transaction (`store.sql.add`). Same guard, same row."""
    values = outbox_values(config, message, intended_to, **facts)
    await sql.add("outbox", _columns(values))
    if values["status"] == "queued":
        wake_senders()


def outbox_values(config: Config, message: ComposedMail | EmailMessage | None,
                  intended_to: Sequence[str], **facts: Unpack[OutboxFacts]) -> dict[str, Any]:
    """An outbox row's values, with the test/live guard applied to its envelope. Pure.
    Facts not given are None, except `status` ("queued") and `internal` (False)."""
    status = facts.get("status", "queued")
    last_error = facts.get("last_error")
    subject = facts.get("subject")
    if message is None:
        if status == "queued":
            raise ValueError("a queued outbox row needs a message")
        content, message_id = "", None
        subject = subject or ""
    elif isinstance(message, ComposedMail):
        content, message_id, subject = message.content, message.message_id, message.subject
    else:
        if not message.get("Message-ID"):
            message["Message-ID"] = new_message_id(config)
        content, message_id = message.as_string(), str(message["Message-ID"])
        subject = str(message.get("Subject", ""))
    intended = list(dict.fromkeys(a.strip().lower() for a in intended_to if a and a.strip()))
    envelope = envelope_for(config, intended)
    if status == "queued" and not envelope:
        status, last_error = "suppressed", last_error or "no recipient"
    named = ("ticket_id", "account", "event", "rule", "template", "language", "mail_from")
    return {
        **{name: facts.get(name) for name in named},
        "intended_to": intended, "envelope_to": envelope, "subject": subject[:1000],
        "message_id": message_id, "content": content, "status": status,
        "last_error": last_error, "attempts": 0, "recipient_results": {},
        "created_at": dt.datetime.now(dt.UTC), "internal": facts.get("internal", False),
    }


def _columns(values: dict[str, Any]) -> dict[str, Any]:
    """The row's values as the insert writes them (JSON columns as text)."""
    return {**values, "intended_to": sql.json_text(values["intended_to"]),
            "envelope_to": sql.json_text(values["envelope_to"]), "recipient_results": "{}"}


# Senders running in this process: woken when a row is queued (they also poll).
_wakers: set[Callable[[], None]] = set()


def register_waker(wake: Callable[[], None]) -> Callable[[], None]:
    """Register a sender's wake-up; returns the function that unregisters it."""
    _wakers.add(wake)
    return lambda: _wakers.discard(wake)


def wake_senders() -> None:
    for wake in list(_wakers):
        wake()
