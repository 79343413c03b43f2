"""Routing rules as pure functions: the manual's keywords, thread headers, automatic mail."""

from __future__ import annotations

from pathlib import Path

import pytest

from gatewayd.ingest.parse import parse_mail
from gatewayd.mail import InboundMail
from gatewayd.routing.keywords import find_keywords
from gatewayd.routing.rules import (
    Facts,
    automatic_reason,
    decide,
    keywords_of,
    own_mail,
    referenced_ids,
)

MAILS = Path(__file__).parent / "mails"

# Table 14 of the manual: Ticket + ID / Nr / No / Nummer / number + Zahl, case-insensitive.
TICKET_SPELLINGS = [
    "Ticket-ID 42", "Ticket ID 42", "ticket id: 42", "Ticket Nr. 42", "Ticket-Nr.: 42",
    "Ticketnummer 42", "Ticket-Nummer 42", "Ticket No 42", "ticket no. 42", "TICKET NUMBER 42",
    "Ticket number 42", "TicketID 42", "Ticket-ID #42",
]


def mail(subject: str = "Hallo", body: str = "Text", **headers: str) -> InboundMail:
    head = "".join(f"{k.replace('_', '-')}: {v}\r\n" for k, v in headers.items())
    raw = (f"From: Kunde <kunde@example.org>\r\nTo: support@shop.example\r\n"
           f"Subject: {subject}\r\nMessage-ID: <x1@example.org>\r\n{head}"
           f"Content-Type: text/plain; charset=utf-8\r\n\r\n{body}\r\n").encode()
    return parse_mail(raw)


@pytest.mark.parametrize("spelling", TICKET_SPELLINGS)
def test_ticket_keyword_in_subject(spelling: str) -> None:
    keys = find_keywords(f"Re: Ihre Anfrage [{spelling}]", "nichts")
    assert (keys.ticket_id, keys.ticket_in) == (42, "subject")


@pytest.mark.parametrize("spelling", TICKET_SPELLINGS)
def test_ticket_keyword_in_body(spelling: str) -> None:
    keys = find_keywords("Re: Ihre Anfrage", f"Hallo,\nbezüglich {spelling} noch eine Frage")
    assert (keys.ticket_id, keys.ticket_in) == (42, "body")


def test_subject_wins_over_body() -> None:
    keys = find_keywords("Ticket-ID 1", "siehe Ticket-ID 2")
    assert keys.ticket_id == 1


@pytest.mark.parametrize("text", ["Ticket 42", "Ticketsystem 42", "MyTicket-ID 42",
                                  "Tickets: 42"])
def test_not_a_ticket_keyword(text: str) -> None:
    assert find_keywords(text, "").ticket_id is None


@pytest.mark.parametrize(("text", "customer"), [
    ("Kunden-ID 7", "7"), ("Kunden-Nr. 7", "7"), ("Kundennummer 7", "7"), ("Kunde Nr 7", "7"),
    ("customer id 7", "7"), ("Customer No. 7", "7"), ("customer number 7", "7"),
    ("Kunden Nummer 7", "7"),
])
def test_customer_keywords(text: str, customer: str) -> None:
    assert find_keywords(text, "").customer == customer


@pytest.mark.parametrize("text", ["Auftrags-ID 55", "Auftrag Nr. 55", "Auftragsnr 55",
                                  "Order ID 55", "order no 55", "Order-Nr.: 55"])
def test_order_keywords(text: str) -> None:
    assert find_keywords("", text).order_id == 55


@pytest.mark.parametrize("text", ["Rechnungsnummer RE-9", "Rechnungs-Nr. 2024", "Rechnung Nr 2024",
                                  "Invoice number 2024", "invoice no. 2024", "Rechnungs-ID 2024"])
def test_invoice_keywords(text: str) -> None:
    keys = find_keywords(text, "")
    if "RE-9" in text:
        assert keys.invoice is None  # the manual's keyword needs a number
    else:
        assert keys.invoice == "2024"


def test_order_takes_no_nummer_spelling() -> None:
    # The manual lists ID / Nr / No for orders, not "Nummer".
    assert find_keywords("Auftragsnummer 5", "").order_id is None


def test_referenced_ids_nearest_first() -> None:
    m = mail(In_Reply_To="<c@x>", References="<a@x> <b@x> <c@x>")
    assert referenced_ids(m) == ["<c@x>", "<b@x>", "<a@x>"]


def test_rule_order_thread_before_keyword_before_links() -> None:
    m = mail("Ticket-ID 5, Auftrags-ID 9")
    keys = keywords_of(m)
    assert decide(m, keys, Facts(thread_ticket_id=3, ticket_exists=True, order_id=9)).rule == (
        "thread_headers")
    d = decide(m, keys, Facts(ticket_exists=True, order_id=9))
    assert (d.action, d.rule, d.ticket_id) == ("append", "ticket_keyword", 5)


def test_unknown_ticket_number_opens_new_ticket_with_note() -> None:
    m = mail("Ticket-ID 777")
    d = decide(m, keywords_of(m), Facts(ticket_exists=False, sender_contact_id=4))
    assert (d.action, d.rule, d.contact_id) == ("new", "ticket_keyword_unknown", 4)
    assert any("777" in n and "does not exist" in n for n in d.notes)


def test_order_keyword_links_order_and_its_contact() -> None:
    m = mail("Frage zu Auftrag Nr. 9")
    d = decide(m, keywords_of(m), Facts(order_id=9, order_contact_id=11, sender_contact_id=12))
    assert (d.action, d.rule, d.order_id, d.contact_id) == ("new", "order_keyword", 9, 11)


def test_invoice_keyword_rule_name() -> None:
    m = mail("Rechnungsnummer 2024")
    d = decide(m, keywords_of(m), Facts(order_id=9, order_contact_id=11))
    assert d.rule == "invoice_keyword"


def test_customer_keyword_and_sender_fallback() -> None:
    m = mail("Kundennummer 7")
    assert decide(m, keywords_of(m), Facts(customer_contact_id=7)).rule == "customer_keyword"
    m = mail("Hallo")
    d = decide(m, keywords_of(m), Facts(sender_contact_id=3, contact_language="en"))
    assert (d.rule, d.contact_id, d.language) == ("sender_contact", 3, "en")
    assert decide(m, keywords_of(m), Facts()).rule == "new_ticket"


@pytest.mark.parametrize(("headers", "fragment"), [
    ({"Auto_Submitted": "auto-replied"}, "Auto-Submitted"),
    ({"Precedence": "bulk"}, "Precedence"),
    ({"Precedence": "junk"}, "Precedence"),
    ({"List_Id": "<news.example.org>"}, "List-Id"),
    ({"Return_Path": "<>"}, "Return-Path"),
    ({"X_Autoreply": "yes"}, "x-autoreply"),
])
def test_automatic_headers(headers: dict[str, str], fragment: str) -> None:
    reason = automatic_reason(mail(**headers))
    assert reason is not None and fragment.lower() in reason.lower()


def test_auto_submitted_no_is_a_person() -> None:
    assert automatic_reason(mail(Auto_Submitted="no")) is None
    assert automatic_reason(mail()) is None


@pytest.mark.parametrize("sender", ["mailer-daemon@x.example", "postmaster@x.example",
                                    "noreply@x.example", "no-reply@x.example"])
def test_automatic_senders(sender: str) -> None:
    raw = f"From: {sender}\r\nSubject: hi\r\n\r\nx\r\n".encode()
    assert automatic_reason(parse_mail(raw)) is not None


def test_fixture_auto_reply_and_bounce() -> None:
    ooo = parse_mail((MAILS / "auto_reply.eml").read_bytes())
    assert "Auto-Submitted" in (automatic_reason(ooo) or "")
    bounce = parse_mail((MAILS / "bounce.eml").read_bytes())
    assert automatic_reason(bounce, bounce.bounced) is not None
    assert bounce.bounced == ("gone@customer.example",)


def test_own_mail_by_message_id_domain_and_x_loop() -> None:
    raw = b"From: support@shop.example\r\nMessage-ID: <abc@tickets.shop.example>\r\n\r\nx\r\n"
    assert own_mail(parse_mail(raw), "tickets.shop.example", ["support@shop.example"])
    looped = mail(X_Loop="support@shop.example")
    assert own_mail(looped, "tickets.shop.example", ["support@shop.example"])
    assert own_mail(mail(), "tickets.shop.example", ["support@shop.example"]) is None


def test_keyword_prefilter_never_hides_a_match() -> None:
    """find_keywords skips texts that `may_name_keywords` rules out; on random texts full of
    near-keywords, case variants and the characters re.IGNORECASE folds specially, it finds
    exactly what the case-insensitive patterns alone find."""
    import random

    from gatewayd.routing import keywords

    rng = random.Random(14)
    words = ["ticket", "kunden", "kunde", "customer", "auftrags", "auftrag", "order",
             "rechnungs", "rechnung", "invoice", "tickets", "my"]
    qualifiers = ["id", "nr", "no", "nummer", "number", "nr.", "idx", ""]
    separators = ["", " ", "-", ".", ": ", "#", "_", " - ", "\n", "/"]
    numbers = ["1", "42", "2024", "٣", "x", "", "99999999999"]
    noise = ["Hallo ", "mein", "é", "Ü", "Ⅰ", "1", " ", "\n", "xticket"]
    special = {"i": "İı", "s": "ſ", "k": "K"}

    def spell(word: str) -> str:
        out = []
        for ch in word:
            if ch in special and rng.random() < 0.08:
                out.append(rng.choice(special[ch]))
            else:
                out.append(ch.upper() if rng.random() < 0.3 else ch)
        return "".join(out)

    def text(segments: int) -> str:
        parts = []
        for _ in range(segments):
            if rng.random() < 0.5:
                parts.append(rng.choice(noise))
            else:
                parts.append(spell(rng.choice(words)) + rng.choice(separators)
                             + spell(rng.choice(qualifiers)) + rng.choice(separators)
                             + rng.choice(numbers))
        return "".join(parts)

    def plain(subject: str, body: str) -> tuple[str | None, ...]:
        found = []
        for pattern in (keywords.TICKET, keywords.CUSTOMER, keywords.ORDER, keywords.INVOICE):
            hits = [pattern.search(t) for t in (subject, body)]
            found.append(next((h.group(1) for h in hits if h), None))
        return tuple(found)

    def number(found: str | None) -> int | None:
        return int(found) if found is not None and int(found) < 2**31 else None

    matched = 0
    for _ in range(3000):
        subject = text(rng.randint(0, 3))
        body = text(rng.randint(0, 8))
        keys = find_keywords(subject, body)
        ticket, customer, order, invoice = plain(subject, body)
        assert keys.ticket_id == number(ticket), (subject, body)
        assert keys.customer == customer, (subject, body)
        assert keys.order_id == number(order), (subject, body)
        assert keys.invoice == invoice, (subject, body)
        matched += any((ticket, customer, order, invoice))
    assert matched > 300  # the texts do name keywords often enough to mean something
    assert not keywords.may_name_keywords("Ticket-ID ohne Nummer")
    assert keywords.may_name_keywords("zu TİCKET-ID 5")
