"""JSON API for tickets: create, read, search, patch, staff messages, comments, attachments."""

from __future__ import annotations

import re
import urllib.parse
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gatewayd.api.deps import (
    ApiError,
    Id,
    Limit,
    Name,
    Offset,
    PathId,
    Str16,
    Str255,
    Text,
    When,
    runtime_of,
)
from gatewayd.store.attachments import blob_path, safe_filename
from gatewayd.store.models import Attachment
from gatewayd.store.ticket_views import TicketQuery, messages_view, search_tickets, ticket_view
from gatewayd.store.tickets import UNSET, NewMessage, NewTicket, TicketPatch

router = APIRouter(tags=["tickets"])


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OwnerIn(_Body):
    name: Name
    role: Name | None = None


def _owners(value: list[str | OwnerIn] | None) -> list[tuple[str, str | None]]:
    out: list[tuple[str, str | None]] = []
    for item in value or []:
        out.append((item, None) if isinstance(item, str) else (item.name, item.role))
    return out


Title = Annotated[Text, Field(min_length=1, max_length=500)]
Owners = Annotated[list[Name | OwnerIn], Field(max_length=100)]
Tags = Annotated[list[Name], Field(max_length=100)]


class TicketIn(_Body):
    title: Title
    type: Name | None = None
    status: Name | None = None
    contact_id: Id | None = None
    order_id: Id | None = None
    priority: int = Field(default=3, ge=0, le=5)
    language: Str16 | None = None
    confidential: bool = False
    parent_id: Id | None = None
    owners: Owners = []
    tags: Tags = []
    folder: Str255 | None = None
    due_at: When | None = None
    follow_up_at: When | None = None
    text: Annotated[Text, Field(max_length=1_000_000)] | None = Field(
        default=None, description="optional first message (from staff)")


class TicketPatchIn(_Body):
    title: Title | None = None
    type: Name | None = None
    status: Name | None = None
    priority: int | None = Field(default=None, ge=0, le=5)
    owners: Owners | None = None
    tags: Tags | None = None
    folder: Str255 | None = None
    confidential: bool | None = None
    parent_id: Id | None = None
    contact_id: Id | None = None
    order_id: Id | None = None
    language: Str16 | None = None
    due_at: When | None = None
    follow_up_at: When | None = None


class MessageIn(_Body):
    text: Annotated[Text, Field(min_length=1, max_length=1_000_000)]
    author: Str255 | None = None
    topic: Str255 | None = None
    html: Annotated[Text, Field(max_length=2_000_000)] | None = None




@router.post("/tickets", status_code=201)
async def create_ticket(body: TicketIn, request: Request) -> JSONResponse:
    rt = runtime_of(request)
    first = None
    if body.text:
        first = NewMessage(text=body.text, direction="out", author="api")
    ticket = await rt.store.create_ticket(
        NewTicket(
            title=body.title, type=body.type, status=body.status, priority=body.priority,
            contact_id=body.contact_id, order_id=body.order_id, source="api",
            language=body.language, confidential=body.confidential, parent_id=body.parent_id,
            owners=_owners(body.owners), tags=body.tags, folder=body.folder,
            due_at=body.due_at, follow_up_at=body.follow_up_at,
        ),
        first_message=first,
        actor="api",
    )
    return JSONResponse(await ticket_view(rt.config, ticket, full=True), status_code=201)


@router.get("/tickets")
async def list_tickets(
    request: Request,
    status: Name | None = None,
    type: Name | None = None,
    status_group: Name | None = None,
    contact_id: Id | None = None,
    order_id: Id | None = None,
    owner: Name | None = None,
    priority: Annotated[int | None, Query(ge=0, le=5)] = None,
    tag: Name | None = None,
    q: Annotated[Text | None, Query(max_length=500)] = None,
    folder: Str255 | None = None,
    source: Literal["mail", "form", "api"] | None = None,
    account: Name | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    rt = runtime_of(request)
    query = TicketQuery(
        status=status, type=type, status_group=status_group, contact_id=contact_id,
        order_id=order_id, owner=owner, priority=priority, tag=tag, q=q, folder=folder,
        source=source, account=account, limit=limit, offset=offset,
    )
    return [await ticket_view(rt.config, t) for t in await search_tickets(rt.config, query)]


@router.get("/tickets/{ticket_id}")
async def read_ticket(ticket_id: PathId, request: Request) -> dict[str, Any]:
    rt = runtime_of(request)
    return await ticket_view(rt.config, await rt.store.get_ticket(ticket_id), full=True)


@router.patch("/tickets/{ticket_id}")
async def patch_ticket(ticket_id: PathId, body: TicketPatchIn,
                       request: Request) -> dict[str, Any]:
    rt = runtime_of(request)
    given = body.model_fields_set
    if not given:
        raise ApiError(422, "nothing to change", "send at least one field")
    values: dict[str, Any] = {}
    for key in given:
        value = getattr(body, key)
        if key == "owners":
            value = _owners(value)
        elif key == "tags":
            value = value or []
        elif value is None and key in ("title", "type", "status", "priority", "confidential"):
            raise ApiError(422, "invalid request", [{"field": key, "message": "must not be null"}])
        values[key] = value
    patch = TicketPatch(**{k: values.get(k, UNSET) for k in TicketPatch.__dataclass_fields__})
    ticket = await rt.store.update_ticket(ticket_id, patch, actor="api")
    return await ticket_view(rt.config, ticket, full=True)


async def _add(ticket_id: int, body: MessageIn, request: Request, kind: str) -> JSONResponse:
    rt = runtime_of(request)
    message = await rt.store.add_message(
        ticket_id,
        NewMessage(text=body.text, html=body.html, kind=kind, direction="out",
                   author=body.author, topic=body.topic),
        actor=body.author or "api",
    )
    views = await messages_view(ticket_id)
    return JSONResponse(next(v for v in views if v["id"] == message.id), status_code=201)


@router.post("/tickets/{ticket_id}/messages", status_code=201)
async def add_staff_message(ticket_id: PathId, body: MessageIn, request: Request) -> JSONResponse:
    """A customer-visible message from staff; it fires `staff_message`."""
    return await _add(ticket_id, body, request, "message")


@router.post("/tickets/{ticket_id}/comments", status_code=201)
async def add_comment(ticket_id: PathId, body: MessageIn, request: Request) -> JSONResponse:
    """An internal comment: never mailed to the customer."""
    return await _add(ticket_id, body, request, "comment")


_CONTENT_TYPE = re.compile(r"^[a-z0-9!#$&^_.+-]+/[a-z0-9!#$&^_.+-]+$")


def content_disposition(filename: str) -> str:
    """RFC 6266 `attachment` with an ASCII fallback and the UTF-8 name: always a download, and
    a name with no path in it (rows stored before names were sanitised are cleaned here too)."""
    name = safe_filename(filename)
    fallback = "".join(c if " " <= c < "\x7f" and c not in '"\\%' else "_" for c in name)
    return (f'attachment; filename="{fallback}"; '
            f"filename*=UTF-8''{urllib.parse.quote(name, safe='')}")


@router.get("/attachments/{attachment_id}")
async def read_attachment(attachment_id: PathId,
                          request: Request) -> FileResponse:
    """The stored file as a download: never rendered by the browser as the API's own page
    (attachment disposition, nosniff, a sandboxing CSP for a browser that opens it anyway)."""
    rt = runtime_of(request)
    attachment = await Attachment.get_or_none(id=attachment_id)
    if attachment is None:
        raise ApiError(404, f"attachment {attachment_id} does not exist")
    path = blob_path(rt.config.data_dir, attachment.sha256)
    if not path.exists():
        raise ApiError(404, f"the file of attachment {attachment_id} is missing on disk")
    media_type = attachment.content_type.lower()
    if not _CONTENT_TYPE.match(media_type):
        media_type = "application/octet-stream"
    return FileResponse(path, media_type=media_type, headers={
        "Content-Disposition": content_disposition(attachment.filename),
        "X-Content-Type-Options": "nosniff",
        "Content-Security-Policy": "default-src 'none'; sandbox",
    })
