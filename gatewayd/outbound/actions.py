"""Event actions: configured rules (event + filter → actions) run inside the ticket's transaction.

`event_action_hook` is registered as a store hook: for every domain event it picks the matching
rules (`rule_matches`, pure) and runs their actions in order: set a status, set an owner, or send a
template (`send_template`, also used by manual sends and the forms code). Mails are written to the
outbox in the same transaction; guards that stop a mail leave a `suppressed` row with the reason.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gatewayd.config import Config, EventFilter, EventRule
from gatewayd.logs import get_logger
from gatewayd.outbound.mails import Envelope, MailError, compose_mail
from gatewayd.outbound.outbox import enqueue_mail, new_message_id
from gatewayd.outbound.recipients import CUSTOMER_SOURCES, load_recipient_facts, resolve
from gatewayd.outbound.templates import TemplateProblem, TemplateSet
from gatewayd.outbound.variables import (
    TicketFacts,
    load_ticket_facts,
    mail_account,
    template_variables,
)
from gatewayd.store import sql
from gatewayd.store.models import Message, Outbox, Ticket
from gatewayd.store.tickets import DomainEvent, TicketPatch, TicketStore

log = get_logger("gatewayd.outbound.actions")

# Events caused by the customer (a mail or a form): mails they fire are automatic replies.
CUSTOMER_EVENTS = frozenset({"ticket_created", "customer_message"})

_template_sets: dict[tuple[Path, float, int], TemplateSet] = {}


def templates_for(config: Config) -> TemplateSet:
    """One compiled-template cache per templates_dir and limits."""
    key = (config.templates_dir, config.outbound.render_timeout_seconds,
           config.outbound.max_render_bytes)
    found = _template_sets.get(key)
    if found is None:
        found = TemplateSet(config.templates_dir, timeout=key[1], max_bytes=key[2])
        _template_sets[key] = found
    return found


async def forget_templates(_old: Config, _new: Config) -> None:
    """Reload listener: after SIGHUP every template file is read again at its next use (not
    only once `recheck_seconds` have passed), so an operator's reload applies at once."""
    _template_sets.clear()


# ---------------------------------------------------------------------- decisions (pure)


def filter_matches(flt: EventFilter, ticket: dict[str, Any]) -> bool:
    """Every filter key that is set must hold (a list means: any of these)."""
    if flt.types and ticket["type"] not in flt.types:
        return False
    if flt.statuses and ticket["status"] not in flt.statuses:
        return False
    if flt.status_groups and ticket.get("status_group") not in flt.status_groups:
        return False
    if flt.sources and ticket.get("source") not in flt.sources:
        return False
    if flt.accounts and ticket.get("account") not in flt.accounts:
        return False
    if flt.owners and not {o["name"] for o in ticket.get("owners", [])} & set(flt.owners):
        return False
    if flt.priorities and ticket.get("priority") not in flt.priorities:
        return False
    return not (flt.confidential is not None and bool(ticket.get("confidential"))
                != flt.confidential)


def rule_matches(rule: EventRule, event_kind: str, ticket: dict[str, Any]) -> bool:
    return rule.active and rule.on == event_kind and filter_matches(rule.filter, ticket)


def matching_rules(config: Config, event_kind: str, ticket: dict[str, Any]) -> list[EventRule]:
    return [r for r in config.events if rule_matches(r, event_kind, ticket)]


@dataclass(frozen=True)
class Guard:
    """Why a mail to the customer must not go out, or None."""

    reason: str | None


def customer_guard(*, for_customer: bool, confidential: bool, event_kind: str | None,
                   trigger_auto_reply: bool) -> Guard:
    """The manual's hard rules, whatever the actions say. Pure."""
    if not for_customer:
        return Guard(None)
    if confidential:
        return Guard("the ticket is confidential: its customer is never mailed")
    if event_kind == "comment_added":
        return Guard("comments are internal and never reach customers")
    if trigger_auto_reply:
        return Guard("the message that fired this is an automatic reply: never answered")
    return Guard(None)


def auto_submitted_for(event_kind: str | None, source: str | None, manual: bool) -> str | None:
    """RFC 3834: replies to the customer's mail are `auto-replied`; staff mails carry none."""
    if manual or event_kind == "staff_message":
        return None
    if event_kind in CUSTOMER_EVENTS and source in ("mail", "form"):
        return "auto-replied"
    return "auto-generated"


# ---------------------------------------------------------------------- loop protection


async def loop_limit(config: Config, address: str, template: str,
                     now: dt.datetime) -> str | None:
    """Why an automatic mail to `address` would be one too many, or None (one plain query)."""
    window = config.outbound.auto_reply_window_hours
    day = now - dt.timedelta(hours=24)
    since = now - dt.timedelta(hours=window)
    found = await sql.rows(
        "SELECT SUM(CASE WHEN created_at >= ? THEN 1 ELSE 0 END) AS day_count, "
        "SUM(CASE WHEN template = ? AND created_at >= ? THEN 1 ELSE 0 END) AS same "
        "FROM auto_mail_log WHERE address = ? AND created_at >= ?",
        (day, template, since, address, min(day, since)))
    day_count = int(found[0]["day_count"] or 0) if found else 0
    same = int(found[0]["same"] or 0) if found else 0
    if window > 0 and same:
        return (f"{address} already got {template!r} automatically within {window:g} h "
                "(loop protection)")
    if day_count >= config.outbound.daily_cap:
        return (f"{address} already got {day_count} automatic mails in 24 h "
                f"(outbound.daily_cap = {config.outbound.daily_cap})")
    return None


# ---------------------------------------------------------------------- sending a template


async def _trigger_auto_reply(event: DomainEvent | None, facts: TicketFacts) -> bool:
    if event is None:
        return False
    if event.data.get("auto_reply"):
        return True
    if event.message_id in facts.auto_reply:
        return facts.auto_reply[event.message_id]
    if event.message_id is not None:
        row = await Message.filter(id=event.message_id).values_list("auto_reply", flat=True)
        return bool(row and row[0])
    return False


async def send_template(
    store: TicketStore,
    ticket_id: int,
    template: str,
    to: str,
    *,
    event: DomainEvent | None = None,
    rule: str | None = None,
    manual: bool = False,
) -> list[Outbox]:
    """Render `template` for ticket `ticket_id` in its language and put it in the outbox.

    `to` is a recipient of the contract (`customer`, `order_billing`, `order_delivery`,
    `contact_private`, `contact_business`, `contact_paypal`, `owners`) or a literal address.
    Runs in the caller's transaction (or its own). Returns the outbox rows written: one row,
    `queued`, or `suppressed` / `failed` with the reason in `last_error`. Never raises for a
    missing person or a broken template; raises `NotFound` for an unknown ticket.
    """
    async with store.transaction():
        ticket = await store.get_ticket(ticket_id)
        facts = await load_ticket_facts(store.config, ticket)
        return [await _send(store.config, ticket, facts, template, to, event=event, rule=rule,
                            manual=manual)]


async def _send(config: Config, ticket: Ticket, facts: TicketFacts, template: str, to: str, *,
                event: DomainEvent | None, rule: str | None, manual: bool) -> Outbox:
    event_kind = event.kind if event else ("manual" if manual else None)
    for_customer = to in CUSTOMER_SOURCES
    account = mail_account(config, facts.ticket)
    common: dict[str, Any] = {
        "ticket_id": ticket.id, "account": account.name if account else None,
        "event": event_kind, "rule": rule, "template": template,
        "mail_from": account.address if account else None,
        # A notice to the ticket's owners waits behind the customers' mails (`claim_due`).
        "internal": to == "owners",
    }
    bound = log.bind(ticket_id=ticket.id, template=template, rule=rule, on=event_kind)

    recipients = resolve(to, await load_recipient_facts(
        config, ticket, owner_names=[o["name"] for o in facts.ticket["owners"]]))

    async def suppressed(reason: str, status: str = "suppressed",
                         intended: Sequence[str] = recipients.addresses,
                         language: str | None = None) -> Outbox:
        bound.info("mail not sent", status=status, reason=reason)
        return await enqueue_mail(config, None, intended, status=status, last_error=reason,
                                  language=language, subject=template, **common)

    guard = customer_guard(for_customer=for_customer, confidential=bool(ticket.confidential),
                           event_kind=event.kind if event else None,
                           trigger_auto_reply=await _trigger_auto_reply(event, facts))
    if guard.reason:
        return await suppressed(guard.reason)
    if not recipients.addresses:
        return await suppressed(f"nobody to write to ({to}): {recipients.reason}")
    auto = auto_submitted_for(event.kind if event else None, ticket.source, manual)
    loop_protected = auto == "auto-replied" and for_customer
    now = dt.datetime.now(dt.UTC)
    if loop_protected:
        for address in recipients.addresses:
            reason = await loop_limit(config, address, template, now)
            if reason:
                return await suppressed(reason)
    if account is None:
        return await suppressed("no account is configured to send through", status="failed")

    staff_message = event is not None and event.kind == "staff_message"
    variables = template_variables(config, facts, for_customer=for_customer, manual=manual,
                                   author=event.actor if staff_message and event else None)
    # The manual: a staff message mailed to the customer ends with the owner's greeting and
    # signature, unless the template places them itself.
    signoff = ((variables["Greeting"], variables["Signature"])
               if staff_message and for_customer else None)
    try:
        rendered = templates_for(config).render(
            template, facts.languages, config.language_fallback, variables, signoff=signoff)
    except TemplateProblem as exc:
        return await suppressed(f"template {template!r}: {exc}", status="failed")
    message_id = new_message_id(config, ticket.id)
    envelope = Envelope(
        from_address=account.address,
        from_name=account.smtp.sender_name if account.smtp else "",
        to=recipients.addresses, subject=rendered.subject, message_id=message_id,
        ticket_id=ticket.id, reply_to=account.smtp.reply_to if account.smtp else None,
        in_reply_to=facts.thread.answer_to, references=facts.thread.message_ids,
        auto_submitted=auto, loop_marker=account.address, language=rendered.language,
    )
    try:
        message = compose_mail(envelope, rendered.text, rendered.html)
    except MailError as exc:
        return await suppressed(f"cannot build the mail: {exc}", status="failed",
                                language=rendered.language)
    row = await enqueue_mail(config, message, recipients.addresses, language=rendered.language,
                             **common)
    if loop_protected and row.status == "queued":
        for address in recipients.addresses:
            await sql.add("auto_mail_log", {"address": address, "template": template,
                                            "outbox_id": row.id, "created_at": now})
    bound.info("mail queued", outbox_id=row.id, via=recipients.via, language=rendered.language,
               status=row.status)
    return row


# ---------------------------------------------------------------------- the store hook


async def event_action_hook(store: TicketStore, event: DomainEvent) -> None:
    """Run every matching rule's actions for one domain event (inside its transaction)."""
    config = store.config
    if not any(rule.active and rule.on == event.kind for rule in config.events):
        return  # nothing can match: no look-ups at all
    ticket = await store.current_ticket(event.ticket_id)
    if ticket is None:
        return
    facts = await load_ticket_facts(config, ticket)
    for rule in matching_rules(config, event.kind, facts.ticket):
        for action in rule.actions:
            if action.set_status is not None:
                await _set_status(store, ticket, action.set_status, rule.name)
            elif action.set_owner is not None:
                owner = config.owner(action.set_owner)
                role = owner.role if owner else None
                await store.update_ticket(ticket.id, TicketPatch(owners=[(action.set_owner, role)]),
                                          actor=f"rule:{rule.name}")
            elif action.send_template is not None and action.to is not None:
                await _send(config, ticket, facts, action.send_template, action.to, event=event,
                            rule=rule.name, manual=False)
                continue
            # The ticket changed: later actions of the rule see it as it is now.
            ticket = await store.current_ticket(ticket.id) or await store.get_ticket(ticket.id)
            facts = await load_ticket_facts(config, ticket)


async def _set_status(store: TicketStore, ticket: Ticket, status: str, rule: str) -> None:
    config = store.config
    if ticket.status == status:
        return
    ticket_type = config.ticket_type(ticket.type)
    if ticket_type is None or ticket_type.status(status) is None:
        await store.log_event(ticket.id, "action_skipped", {
            "rule": rule, "reason": f"type {ticket.type!r} has no status {status!r}"})
        return
    await store.update_ticket(ticket.id, TicketPatch(status=status), actor=f"rule:{rule}")
