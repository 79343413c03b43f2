"""JSON API for contacts and orders."""

from __future__ import annotations

import datetime as dt
from typing import Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

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

Email = str  # validated loosely: shops hold odd but deliverable addresses


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class EmailsIn(_Body):
    private: Email | None = Field(default=None, max_length=320)
    business: Email | None = Field(default=None, max_length=320)
    paypal: Email | None = Field(default=None, max_length=320)


class AddressIn(_Body):
    id: int | None = Field(default=None, ge=1)
    kind: Literal["billing", "delivery"]
    primary: bool = False
    email: Email | None = Field(default=None, max_length=320)
    name: str | None = None
    company: str | None = None
    street: str | None = None
    postal_code: str | None = None
    city: str | None = None
    country: str | None = None
    phone: str | None = None


class ContactIn(_Body):
    id: int | None = Field(default=None, ge=1)
    number: str | None = Field(default=None, max_length=64)
    first_name: str = Field(default="", max_length=255)
    last_name: str = Field(default="", max_length=255)
    company: str | None = Field(default=None, max_length=255)
    language: str | None = Field(default=None, max_length=16)
    emails: EmailsIn = EmailsIn()
    addresses: list[AddressIn] = []
    active: bool = True
    registered_at: dt.datetime | None = None


class OrderIn(_Body):
    id: int | None = Field(default=None, ge=1)
    contact_id: int | None = None
    invoice_number: str | None = Field(default=None, max_length=64)
    language: str | None = Field(default=None, max_length=16)
    billing_email: Email | None = Field(default=None, max_length=320)
    delivery_email: Email | None = Field(default=None, max_length=320)


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
    email: str | None = Query(default=None, max_length=320),
    limit: int = Query(default=50, ge=1, le=100),
    offset: int = Query(default=0, ge=0),
) -> list[dict[str, Any]]:
    if email is not None:
        contacts = (await find_contacts_by_email(email))[offset:offset + limit]
    else:
        contacts = await Contact.all().order_by("id").offset(offset).limit(limit)
    return [await contact_view(c) for c in contacts]


@router.get("/contacts/{contact_id}")
async def read_contact(contact_id: int) -> dict[str, Any]:
    return await contact_view(await get_contact(contact_id))


@router.post("/orders", status_code=201)
async def post_order(body: OrderIn) -> JSONResponse:
    order = await create_order(NewOrder(**body.model_dump()))
    return JSONResponse(order_view(order), status_code=201)


@router.get("/orders/{order_id}")
async def read_order(order_id: int) -> dict[str, Any]:
    return order_view(await get_order(order_id))
