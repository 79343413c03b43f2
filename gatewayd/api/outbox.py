"""JSON API for outbound mail: the outbox list and sending a template by hand."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gatewayd.api.deps import Address, ApiError, Id, Limit, Offset, PathId, runtime_of
from gatewayd.config import Config
from gatewayd.outbound.actions import send_template, templates_for
from gatewayd.outbound.waiting import waiting_reason
from gatewayd.store.models import Outbox

router = APIRouter(tags=["outbox"])


def _iso(value: Any) -> str | None:
    return value.isoformat() if value else None


def outbox_view(row: Outbox, config: Config) -> dict[str, Any]:
    """The contract's outbox object (plus account, event, rule, Message-ID, times, and why a
    queued mail cannot go out now: `waiting_reason`, from the configuration in force)."""
    waiting = (waiting_reason(config, row.account) if row.status in ("queued", "sending")
               else None)
    return {
        "id": row.id,
        "ticket_id": row.ticket_id,  # type: ignore[attr-defined]
        "template": row.template,
        "language": row.language,
        "envelope_to": row.envelope_to,
        "intended_to": row.intended_to,
        "subject": row.subject,
        "status": row.status,
        "attempts": row.attempts,
        "last_error": row.last_error,
        "waiting_reason": waiting,
        "account": row.account,
        "event": row.event,
        "rule": row.rule,
        "message_id": row.message_id,
        "recipient_results": row.recipient_results,
        "created_at": _iso(row.created_at),
        "next_attempt_at": _iso(row.next_attempt_at),
        "sent_at": _iso(row.sent_at),
    }


@router.get("/outbox")
async def list_outbox(
    request: Request,
    ticket_id: Id | None = None,
    status: Literal["queued", "sending", "sent", "failed", "suppressed"] | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    """Outbound mails, newest first: where each really goes (`envelope_to`) and to whom it was
    meant (`intended_to`, before test mode)."""
    query = Outbox.all()
    if ticket_id is not None:
        query = query.filter(ticket_id=ticket_id)
    if status is not None:
        query = query.filter(status=status)
    rows = await query.order_by("-id").offset(offset).limit(limit)
    config = runtime_of(request).config
    return [outbox_view(r, config) for r in rows]


class SendTemplateIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    template: str = Field(min_length=1, max_length=255, pattern=r"^[A-Za-z0-9_.-]+$")
    to: Address = Field(default="customer", max_length=320,
                    description="customer (default), order_billing, order_delivery, "
                    "contact_private, contact_business, contact_paypal, owners, or an address")


class _Refused(Exception):
    def __init__(self, status: int, error: str, detail: Any):
        self.status, self.error, self.detail = status, error, detail


@router.post("/tickets/{ticket_id}/send-template", status_code=201)
async def send_template_by_hand(ticket_id: PathId,
                                body: SendTemplateIn,
                                request: Request) -> JSONResponse:
    """Send a template to the ticket's customer (or `to`) now, signed with the system signature.

    201 with the outbox row; 404 unknown ticket; 422 unknown or broken template; 409 when the
    ticket has nobody to write to (or its customer must not be mailed: confidential).
    """
    rt = runtime_of(request)
    if not templates_for(rt.config).exists(body.template):
        raise ApiError(422, f"unknown template {body.template!r}",
                       {"field": "template", "allowed": templates_for(rt.config).names()})
    try:
        async with rt.store.transaction():
            rows = await send_template(rt.store, ticket_id, body.template, body.to, manual=True)
            row = rows[0]
            if row.status == "suppressed":
                raise _Refused(409, "the mail cannot be sent", row.last_error)
            if row.status == "failed":
                raise _Refused(422, "the template cannot be rendered", row.last_error)
            await rt.store.log_event(ticket_id, "template_sent_by_hand", {
                "template": body.template, "to": body.to, "outbox_id": row.id}, actor="api")
    except _Refused as refused:  # raised inside the transaction: nothing was written
        raise ApiError(refused.status, refused.error, refused.detail) from None
    return JSONResponse(outbox_view(row, rt.config), status_code=201)
