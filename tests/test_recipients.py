"""Recipient sources and both fallback chains of the manual, step by step (pure), and the
loader that reads them from the store (SQLite and PostgreSQL)."""

from __future__ import annotations

from typing import Any

import pytest

from gatewayd.outbound.recipients import (
    AddressFacts,
    ContactFacts,
    OrderFacts,
    RecipientFacts,
    load_recipient_facts,
    resolve,
)
from gatewayd.store.contacts import NewAddress, NewContact, NewOrder, create_contact, create_order
from gatewayd.store.db import open_database
from gatewayd.store.tickets import NewMessage, NewTicket, TicketStore

FULL_CONTACT = ContactFacts(
    private="private@example.org",
    business="business@example.org",
    paypal="paypal@example.org",
    addresses=(
        AddressFacts(1, "billing", False, "billing-old@example.org"),
        AddressFacts(2, "billing", True, "billing-primary@example.org"),
        AddressFacts(3, "delivery", True, "delivery-primary@example.org"),
        AddressFacts(4, "billing", False, "billing-new@example.org"),
        AddressFacts(5, "delivery", False, "delivery-old@example.org"),
        AddressFacts(6, "delivery", False, "delivery-new@example.org"),
    ),
)


def without(contact: ContactFacts, *, fields: tuple[str, ...] = (),
            address_ids: tuple[int, ...] = ()) -> ContactFacts:
    values: dict[str, Any] = {f: getattr(contact, f) for f in ("private", "business", "paypal")}
    for name in fields:
        values[name] = None
    addresses = tuple(a for a in contact.addresses if a.id not in address_ids)
    return ContactFacts(addresses=addresses, **values)


# Each step of the contact chain: remove what came before, the next one answers.
CONTACT_STEPS = [
    ((), (), "private@example.org", "contact_private"),
    (("private",), (), "business@example.org", "contact_business"),
    (("private", "business"), (), "billing-primary@example.org", "contact_primary_billing"),
    (("private", "business"), (2,), "delivery-primary@example.org", "contact_primary_delivery"),
    (("private", "business"), (2, 3), "billing-new@example.org", "contact_billing_address_4"),
    (("private", "business"), (2, 3, 4), "billing-old@example.org", "contact_billing_address_1"),
    (("private", "business"), (1, 2, 3, 4), "delivery-new@example.org",
     "contact_delivery_address_6"),
    (("private", "business"), (1, 2, 3, 4, 6), "delivery-old@example.org",
     "contact_delivery_address_5"),
]


@pytest.mark.parametrize(("drop_fields", "drop_ids", "expected", "via"), CONTACT_STEPS)
def test_contact_chain_every_step(drop_fields: tuple[str, ...], drop_ids: tuple[int, ...],
                                  expected: str, via: str) -> None:
    contact = without(FULL_CONTACT, fields=drop_fields, address_ids=drop_ids)
    found = resolve("customer", RecipientFacts(contact=contact))
    assert found.addresses == (expected,)
    assert found.via == via


def test_paypal_is_not_part_of_the_customer_chain() -> None:
    contact = ContactFacts(paypal="paypal@example.org")
    found = resolve("customer", RecipientFacts(contact=contact))
    assert found.addresses == ()
    assert found.reason


def test_an_address_without_email_is_skipped() -> None:
    contact = ContactFacts(addresses=(AddressFacts(9, "billing", True, None),
                                      AddressFacts(7, "delivery", False, " Late@Example.org ")))
    found = resolve("customer", RecipientFacts(contact=contact))
    assert found.addresses == ("late@example.org",)


def test_sender_address_has_priority_over_contact_and_order() -> None:
    facts = RecipientFacts(sender="Sender@Example.org", contact=FULL_CONTACT,
                           order=OrderFacts("billing@example.org", None, None))
    found = resolve("customer", facts)
    assert found.addresses == ("sender@example.org",) and found.via == "sender"


def test_broken_sender_falls_back_to_the_contact() -> None:
    facts = RecipientFacts(sender="not an address\r\nBcc: x@example.org", contact=FULL_CONTACT)
    assert resolve("customer", facts).addresses == ("private@example.org",)


ORDER_CONTACT = ContactFacts(business="order-contact@example.org")
ORDER_STEPS = [
    (OrderFacts("billing@example.org", "delivery@example.org", ORDER_CONTACT),
     "billing@example.org", "order_billing"),
    (OrderFacts(None, "delivery@example.org", ORDER_CONTACT), "delivery@example.org",
     "order_delivery"),
    (OrderFacts(None, None, ORDER_CONTACT), "order-contact@example.org",
     "order_contact_business"),
]


@pytest.mark.parametrize(("order", "expected", "via"), ORDER_STEPS)
def test_order_chain_every_step(order: OrderFacts, expected: str, via: str) -> None:
    found = resolve("customer", RecipientFacts(order=order))
    assert found.addresses == (expected,) and found.via == via


def test_contact_chain_comes_before_the_order_chain() -> None:
    facts = RecipientFacts(contact=ContactFacts(private="c@example.org"),
                           order=OrderFacts("billing@example.org", None, None))
    assert resolve("customer", facts).addresses == ("c@example.org",)
    empty_contact = RecipientFacts(contact=ContactFacts(),
                                   order=OrderFacts("billing@example.org", None, None))
    assert resolve("customer", empty_contact).addresses == ("billing@example.org",)


def test_nobody_to_write_to_says_why() -> None:
    found = resolve("customer", RecipientFacts())
    assert found.addresses == () and "no sender address" in (found.reason or "")


@pytest.mark.parametrize(("recipient", "expected"), [
    ("order_billing", "ob@example.org"),
    ("order_delivery", "od@example.org"),
    ("contact_private", "private@example.org"),
    ("contact_business", "business@example.org"),
    ("contact_paypal", "paypal@example.org"),
    ("fixed@shop.example", "fixed@shop.example"),
])
def test_named_sources(recipient: str, expected: str) -> None:
    facts = RecipientFacts(sender="sender@example.org", contact=FULL_CONTACT,
                           order=OrderFacts("ob@example.org", "od@example.org", None))
    assert resolve(recipient, facts).addresses == (expected,)


@pytest.mark.parametrize("recipient", ["order_billing", "order_delivery", "contact_private",
                                       "contact_business", "contact_paypal", "owners"])
def test_named_sources_without_data_have_a_reason(recipient: str) -> None:
    found = resolve(recipient, RecipientFacts(sender="s@example.org"))
    assert found.addresses == () and found.reason


def test_owners_with_and_without_address() -> None:
    facts = RecipientFacts(owners=("anna@shop.example", "ben@shop.example"),
                           owner_names_without_email=("carl",))
    assert resolve("owners", facts).addresses == ("anna@shop.example", "ben@shop.example")
    lonely = resolve("owners", RecipientFacts(owner_names_without_email=("carl",)))
    assert lonely.addresses == () and "carl" in (lonely.reason or "")


def test_literal_with_injection_is_refused() -> None:
    found = resolve("a@example.org\r\nBcc: x@example.org", RecipientFacts())
    assert found.addresses == ()


async def test_loader_reads_sender_contact_order_and_owners(make_config: Any) -> None:
    config = make_config(owners=[
        {"name": "anna", "email": "anna@shop.example"}, {"name": "carl"}])
    async with open_database(config.database_url):
        contact = await create_contact(NewContact(
            first_name="Erika", email_business="erika@business.example",
            addresses=[NewAddress(kind="billing", primary=True, email="bill@example.org"),
                       NewAddress(kind="delivery", email="deliver@example.org")]))
        other = await create_contact(NewContact(email_private="other@example.org"))
        order = await create_order(NewOrder(contact_id=other.id, delivery_email="od@example.org"))
        store = TicketStore(config)
        ticket = await store.create_ticket(NewTicket(
            title="t", contact_id=contact.id, order_id=order.id, owners=[("anna", None),
                                                                       ("carl", None)]),
            first_message=NewMessage(text="hi", from_address="First@Example.org"))
        facts = await load_recipient_facts(config, ticket)
    assert facts.sender == "First@Example.org"  # no reply_address: the first inbound mail's
    assert facts.contact is not None and facts.contact.business == "erika@business.example"
    assert [a.email for a in facts.contact.addresses] == ["bill@example.org",
                                                          "deliver@example.org"]
    assert [a.primary for a in facts.contact.addresses] == [True, False]
    assert all(type(a.primary) is bool for a in facts.contact.addresses)
    assert facts.order is not None and facts.order.delivery == "od@example.org"
    assert facts.order.contact is not None and facts.order.contact.private == "other@example.org"
    assert facts.owners == ("anna@shop.example",)
    assert facts.owner_names_without_email == ("carl",)
    assert resolve("customer", facts).addresses == ("first@example.org",)
    assert resolve("order_delivery", facts).addresses == ("od@example.org",)
