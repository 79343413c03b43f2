"""A validated form submission becomes a ticket: the look-ups (contact, order, the address's
daily count), the ticket with its first message and attachments, and the merchant's info mail,
in one transaction (on SQLite shared with the submissions that arrive together,
`store.groups`). The HTTP door is `gatewayd.api.forms`; the pure parts are `ingest.forms`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from typing import Any

from gatewayd.config import Config, Form
from gatewayd.ingest import forms as logic
from gatewayd.ingest.form_texts import INFO_MAIL, info_variables, texts_for
from gatewayd.outbound.mails import ComposedMail, Envelope, MailError, compose_mail, header_value
from gatewayd.outbound.outbox import enqueue_mail_later, new_message_id
from gatewayd.outbound.templates import TemplateProblem
from gatewayd.store import sql
from gatewayd.store.attachments import save_blob
from gatewayd.store.contacts import normalise_email, uses_address
from gatewayd.store.models import Order
from gatewayd.store.tickets import (
    NewAttachment,
    NewMessage,
    NewTicket,
    TicketStore,
    id_in_range,
)

# The contacts using an address (`store.contacts.uses_address`) and the form tickets it made
# in the last 24 hours, in one round trip: both are read for every submission, inside its
# transaction.
_LOOKUP_SQL = (
    "SELECT 'c' AS k, id, email_private AS a, email_business AS b, email_paypal AS c "
    "FROM contact WHERE {uses_address} "
    "UNION ALL SELECT 'n', COUNT(*), NULL, NULL, NULL FROM ticket "
    "WHERE reply_address = ? AND created_at >= ? AND source = 'form' "
    "ORDER BY k, id"
)


async def look_up(submission: logic.Submission) -> tuple[logic.Links, int]:
    """What the ticket links (see `logic.decide_links`) and how many form tickets the address
    made in the last 24 hours (the daily cap)."""
    address = normalise_email(submission.email)
    since = dt.datetime.now(dt.UTC) - dt.timedelta(days=1)
    condition, params = uses_address(address)
    found = await sql.rows(_LOOKUP_SQL.format(uses_address=condition), (*params, address, since))
    contacts = [logic.ContactFacts(int(r["id"]), submission.email in (r["a"], r["b"], r["c"]))
                for r in found if r["k"] == "c"]
    sent_today = next((int(r["id"]) for r in found if r["k"] == "n"), 0)
    order_facts = None
    if submission.order_id is not None:
        # A number no row id can have is "no such order" (PostgreSQL would refuse the query).
        order = (await Order.get_or_none(id=submission.order_id)
                 if id_in_range(submission.order_id) else None)
        if order is not None:
            order_facts = logic.OrderFacts(order.id, order.contact_id,  # type: ignore[attr-defined]
                                           order.billing_email, order.delivery_email)
    links = logic.decide_links(submission.email, contacts, order_facts, submission.order_id)
    return links, sent_today


def info_mail(config: Config, form: Form, ticket_id: int, submission: logic.Submission,
              links: logic.Links, form_language: str) -> ComposedMail:
    """The merchant's plain-text info mail about one submission, as finished mail text, from
    the `_form_info` template in the merchant's language (`merchant_language`).

    Its subject carries `[Ticket-ID N]`, the routing keyword, so the merchant's reply lands on
    the ticket. `compose_mail` cleans every header value (no header can be injected through the
    title) and writes the text directly: a tenth of the cost of an `EmailMessage`, which matters
    because the info mail is made inside the ticket's transaction. Raises `MailError` when the
    sender or the merchant address is not a plain address or the template cannot be rendered.
    """
    language = config.merchant_language or config.default_language
    variables = info_variables(config, form, ticket_id, submission,
                               order_problem=links.order_problem, language=language,
                               form_language=form_language)
    try:
        subject, text = texts_for(config).info_mail(language, variables)
    except TemplateProblem as exc:
        raise MailError(f"the info mail template: {exc}") from None
    account = config.answering_account
    composed = compose_mail(Envelope(
        from_address=account.address if account else (config.merchant_address or ""),
        from_name=account.smtp.sender_name if account and account.smtp else "",
        to=[config.merchant_address or ""],
        subject=header_value(subject, limit=280),
        message_id=new_message_id(config, ticket_id), ticket_id=ticket_id,
        auto_submitted="auto-generated", language=language,
    ), text)
    return dataclasses.replace(
        composed, content=f"X-Gatewayd-Ticket: {ticket_id}\r\n{composed.content}")


async def save_files(store: TicketStore, submission: logic.Submission) -> None:
    """Write the attachment files before the transaction, off the event loop: the store finds
    them there (files are stored by content) instead of writing and fsyncing them while it holds
    the write transaction. A transaction that then rolls back leaves an unused file, which is
    harmless (the store's own rule for its files)."""
    for upload in submission.files:
        await asyncio.to_thread(save_blob, store.data_dir, upload.content)


async def create_form_ticket(store: TicketStore, form: Form, submission: logic.Submission,
                             language: str | None = None) -> int:
    """The ticket, its first message with attachments, and the merchant's info mail: one
    transaction, so `ticket_created` actions and the info mail commit or vanish together.
    `language`: the one the form or the visitor asked for (the ticket's language; None leaves
    it to the contact's). Raises FormRejected (429) when the address reached the form's daily
    cap."""
    config = store.config
    # The manual's "first configured account", skipping inactive ones and those without SMTP.
    answering = config.answering_account
    first_account = answering.name if answering else None
    # Files are written before the transaction. The look-ups run inside it, in one query: on
    # SQLite every query queues for the one connection, and each round trip waits for the
    # event loop (~0.3 ms under load), so round trips, not rows, bound submissions per second.
    # On SQLite, submissions that arrive together share one transaction (`store.groups`).
    await save_files(store, submission)

    async def change() -> int:
        links, sent_today = await look_up(submission)
        if form.recipient_daily_cap and sent_today >= form.recipient_daily_cap:
            raise logic.FormRejected(429, "too many submissions for this address today",
                                     f"at most {form.recipient_daily_cap} a day per address",
                                     code="daily_cap")
        text = logic.render_submission(form, submission, links.notes)
        ticket = await store.create_ticket(NewTicket(
            title=submission.title, type=form.ticket.type, status=form.ticket.status,
            contact_id=links.contact_id, order_id=links.order_id, account=first_account,
            source="form", reply_address=submission.email, language=language,
        ), first_message=NewMessage(
            text=text, direction="in", from_address=submission.email,
            from_name=submission.name, subject=submission.title, routed_by=f"form:{form.name}",
            notes=[{"note": n} for n in links.notes],
            attachments=[NewAttachment(f.filename, f.content_type, f.content)
                         for f in submission.files],
        ), actor=f"form:{form.name}")
        if config.merchant_address:
            common: dict[str, Any] = {
                "ticket_id": ticket.id, "account": first_account, "event": "form_submitted",
                "rule": f"form:{form.name}", "template": INFO_MAIL,
                "language": config.merchant_language or config.default_language,
                "mail_from": answering.address if answering else None, "internal": True,
            }
            try:
                mail = info_mail(config, form, ticket.id, submission, links,
                                 language or config.default_language)
            except MailError as exc:  # an address check refuses, a broken _form_info template
                await enqueue_mail_later(config, None, [config.merchant_address],
                                         status="failed",
                                         last_error=f"cannot build the mail: {exc}",
                                         subject=f"Form {form.name}: {submission.title}",
                                         **common)
            else:
                # Nobody reads the row back: on SQLite it goes with the COMMIT.
                await enqueue_mail_later(config, mail, [config.merchant_address], **common)
        return int(ticket.id)

    return await store.run_grouped(change)
