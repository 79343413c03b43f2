"""JSON API for contacts and orders."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gatewayd.api.deps import (
    Address,
    Id,
    Limit,
    Offset,
    PathId,
    Str16,
    Str32,
    Str64,
    Str255,
    When,
)
from gatewayd.store.contacts import (
    NewAddress,
    NewContact,
    NewOrder,
    contact_view,
    create_contact,
    create_order,
    find_contacts_by_email,
    get_contact,
    get_order,
    order_view,
)
from gatewayd.store.models import Contact

router = APIRouter(tags=["contacts"])

Email = Address  # validated loosely: shops hold odd but deliverable addresses


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmailsIn(_Body):
    private: Email | None = None
    business: Email | None = None
    paypal: Email | None = None


class AddressIn(_Body):
    id: Id | None = None
    kind: Literal["billing", "delivery"]
    primary: bool = False
    email: Email | None = None
    name: Str255 | None = None
    company: Str255 | None = None
    street: Str255 | None = None
    postal_code: Str32 | None = None
    city: Str255 | None = None
    country: Str64 | None = None
    phone: Str64 | None = None


class ContactIn(_Body):
    id: Id | None = None
    number: Str64 | None = None
    first_name: Str255 = ""
    last_name: Str255 = ""
    company: Str255 | None = None
    language: Str16 | None = None
    emails: EmailsIn = EmailsIn()
    addresses: Annotated[list[AddressIn], Field(max_length=100)] = []
    active: bool = True
    registered_at: When | None = None


class OrderIn(_Body):
    id: Id | None = None
    contact_id: Id | None = None
    invoice_number: Str64 | None = None
    language: Str16 | None = None
    billing_email: Email | None = None
    delivery_email: Email | None = None


@router.post("/contacts", status_code=201)
async def post_contact(body: ContactIn) -> JSONResponse:
    contact = await create_contact(NewContact(
        id=body.id, number=body.number, first_name=body.first_name, last_name=body.last_name,
        company=body.company, language=body.language, email_private=body.emails.private,
        email_business=body.emails.business, email_paypal=body.emails.paypal,
        active=body.active, registered_at=body.registered_at,
        addresses=[NewAddress(**a.model_dump()) for a in body.addresses],
    ))
    return JSONResponse(await contact_view(contact), status_code=201)


@router.get("/contacts")
async def list_contacts(
    email: Address | None = None,
    limit: Limit = 50,
    offset: Offset = 0,
) -> list[dict[str, Any]]:
    if email is not None:
        contacts = (await find_contacts_by_email(email))[offset:offset + limit]
    else:
        contacts = await Contact.all().order_by("id").offset(offset).limit(limit)
    return [await contact_view(c) for c in contacts]


@router.get("/contacts/{contact_id}")
async def read_contact(contact_id: PathId) -> dict[str, Any]:
    return await contact_view(await get_contact(contact_id))


@router.post("/orders", status_code=201)
async def post_order(body: OrderIn) -> JSONResponse:
    order = await create_order(NewOrder(**body.model_dump()))
    return JSONResponse(order_view(order), status_code=201)


@router.get("/orders/{order_id}")
async def read_order(order_id: PathId) -> dict[str, Any]:
    return order_view(await get_order(order_id))
