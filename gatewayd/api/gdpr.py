"""JSON API for personal data: anonymise a contact, export its data, merge duplicates."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gatewayd.api.deps import Id, PathId, runtime_of
from gatewayd.ops.gdpr import anonymize_contact, export_personal_data, merge_contacts
from gatewayd.store.contacts import contact_view, get_contact

router = APIRouter(tags=["gdpr"])


class MergeIn(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    from_ids: list[Id] = Field(alias="from", min_length=1, max_length=100)


@router.post("/contacts/{contact_id}/anonymize")
async def anonymize(contact_id: PathId, request: Request) -> dict[str, Any]:
    """Irreversible: names anonymised; addresses, options, order and company links removed."""
    return await anonymize_contact(runtime_of(request).store, contact_id, actor="api")


@router.get("/contacts/{contact_id}/export")
async def export(contact_id: PathId, request: Request) -> JSONResponse:
    data = await export_personal_data(runtime_of(request).store, contact_id)
    return JSONResponse(data, headers={
        "Content-Disposition": f'attachment; filename="contact-{contact_id}.json"'})


@router.post("/contacts/{contact_id}/merge")
async def merge(contact_id: PathId, body: MergeIn, request: Request) -> dict[str, Any]:
    """Merge the contacts in `from` into this one; all their tickets and orders are kept."""
    result = await merge_contacts(runtime_of(request).store, contact_id, body.from_ids,
                                  actor="api")
    return {**result, "contact": await contact_view(await get_contact(contact_id))}
