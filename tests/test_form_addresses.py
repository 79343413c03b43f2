"""The form's e-mail field: validated with email-validator, offline (no DNS look-up)."""

from __future__ import annotations

import socket

import pytest

from gatewayd.ingest import forms as logic
from tests.test_forms_logic import FORM

INVALID = [
    "a@example..org", "a@[127.0.0.1]x", "a@[127.0.0.1]", "a@example.org%0d%0a", "a@exam%ple.org",
    "a@@example.org", "a@example", "@example.org", "a@-example.org", "a@example.org.",
    '"a b"@example.org', "Erika <a@example.org>", "a@localhost", "a@example.test",
    "a b@example.org", "a@exa mple.org", "a" * 65 + "@example.org",
    "a@" + "b" * 64 + ".org", "a@example.org,b@example.org",
]
VALID = [
    ("a+tag@example.org", "a+tag@example.org"),
    ("Erika.Muster+Shop-2026@Example.ORG", "erika.muster+shop-2026@example.org"),
    ("kunde@müller.de", "kunde@müller.de"),
    ("kunde@xn--mller-kva.de", "kunde@müller.de"),  # the same IDN domain, one spelling
    ("info@bücher.example", "info@bücher.example"),
    ("x@example.photography", "x@example.photography"),
    ("x@shop.international", "x@shop.international"),
    ("a_b-c.d@sub.domain.example.co.uk", "a_b-c.d@sub.domain.example.co.uk"),
    ("jörg@example.de", "jörg@example.de"),  # RFC 6531 local part
]


def _posted(address: str) -> logic.PostedForm:
    return logic.PostedForm({"email": address, "message": "Hallo"})


@pytest.mark.parametrize("address", INVALID)
def test_invalid_reply_addresses_are_refused(address: str) -> None:
    result = logic.validate(FORM, _posted(address))
    assert isinstance(result, list), f"{address!r} was accepted"
    assert [e.field for e in result] == ["email"]


@pytest.mark.parametrize(("address", "stored"), VALID)
def test_unusual_valid_addresses_are_accepted(address: str, stored: str) -> None:
    result = logic.validate(FORM, _posted(address))
    assert isinstance(result, logic.Submission), result
    assert result.email == stored


def test_validation_makes_no_network_look_up(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_deliverability=False: no DNS query, even for a domain that has no MX anywhere."""
    def no_network(*args: object, **kwargs: object) -> None:
        raise AssertionError("the address check tried a network look-up")

    monkeypatch.setattr(socket, "getaddrinfo", no_network)
    monkeypatch.setattr(socket, "gethostbyname", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    assert logic.form_address("kunde@no-mx-here-0123456789.example") is not None
