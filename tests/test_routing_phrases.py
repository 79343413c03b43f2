"""What customers really write before an order (contact, invoice) number, beside table 14:
real phrasings that must be found, near-misses that must not, configured aliases, and the rule
that a phrase links only what exists and never adds a note (table 14 keeps its note)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.parse import parse_mail
from gatewayd.ingest.pipeline import Envelope, Prepared, import_batch
from gatewayd.routing.keywords import find_keywords, may_name_keywords
from gatewayd.routing.phrases import phrasebook
from gatewayd.routing.rules import Facts, decide, keywords_of
from gatewayd.store.contacts import NewContact, NewOrder, create_contact, create_order
from gatewayd.store.db import open_database
from gatewayd.store.models import Message, Ticket
from gatewayd.store.tickets import TicketStore
from tests.test_ingest_imap import account, text_mail

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)

ORDER_PHRASES = [
    "Bestellnummer 90210", "Bestellnummer: 90210", "Bestell-Nr. 90210", "Bestell-Nr.: 90210",
    "Bestellnr. 90210", "Bestellungsnummer 90210", "Bestellung Nr. 90210",
    "Bestellung Nummer 90210", "Bestellung #90210", "zu meiner Bestellung 90210 fehlt ein Teil",
    "Bestellung: 90210", "Ihre Bestellung mit der Nummer 90210 ist eingegangen",
    "Auftragsnummer 90210", "Auftrags-Nummer 90210", "Auftrag 90210", "Auftrag #90210",
    "Order number 90210", "order number: 90210", "Order #90210", "order# 90210",
    "BESTELLNUMMER 90210",
]

NOT_AN_ORDER = [
    "Bestellung vom 12.03.", "Bestellung vom 12.03.2024", "Nr. 5 im Katalog",
    "Artikel Nr. 5 im Katalog", "Re: Nr. 5 im Katalog", "Tel. 0151 2345678",
    "Telefon: +49 30 901820", "Bestellung 12.03.2024", "Bestellung 49,90 €",
    "Bestellung 12345,00 EUR", "Bestellung 10115 Berlin", "Lieferung an 10115 Berlin",
    "I would like to order 20000 units", "order 90210", "Bestellung 3 mal versucht",
    "Bestellung 2024 war super", "Bestellung 20000 Stück", "Bestellung 4711",
    "Bestellnummer 12.03.2024", "Bestellungen 90210", "Nachbestellung Nr. 90210x",
    "PLZ 90210", "Rechnungsbetrag 90210", "Mein Auftragsbuch 90210",
]


@pytest.mark.parametrize("text", ORDER_PHRASES)
def test_real_order_phrasings_are_found(text: str) -> None:
    in_body = find_keywords("Frage", f"Guten Tag,\n{text}\nViele Grüße")
    in_subject = find_keywords(text, "")
    assert in_body.order_phrases == (90210,) and in_subject.order_phrases == (90210,)
    assert in_body.order_id is None  # not table 14's keyword: no note when it names nothing


@pytest.mark.parametrize("text", NOT_AN_ORDER)
def test_phrasings_that_name_no_order(text: str) -> None:
    keys = find_keywords(text, f"Hallo,\n{text}\n")
    assert keys.order_phrases == () and keys.order_id is None
    assert keys.invoice_phrases == () and keys.customer_phrases == ()


@pytest.mark.parametrize(("text", "kind", "number"), [
    ("Kd.-Nr. 4711", "customer", "4711"), ("KdNr 4711", "customer", "4711"),
    ("Kd-Nummer 4711", "customer", "4711"), ("Customer #4711", "customer", "4711"),
    ("Rg.-Nr. 2024", "invoice", "2024"), ("Rechnung #2024", "invoice", "2024"),
    ("Invoice #2024", "invoice", "2024"),
])
def test_customer_and_invoice_phrasings(text: str, kind: str, number: str) -> None:
    keys = find_keywords("", text)
    found = {"customer": keys.customer_phrases, "invoice": keys.invoice_phrases}
    assert found[kind] == (number,)


def test_table_14_spellings_are_unchanged() -> None:
    # "Auftragsnummer" is a phrase, not the manual's order keyword (ID / Nr / No only).
    keys = find_keywords("Auftragsnummer 5", "")
    assert keys.order_id is None and keys.order_phrases == (5,)
    keys = find_keywords("Auftrags-ID 5", "Bestellnummer 6")
    assert (keys.order_id, keys.order_phrases) == (5, (6,))


def test_every_number_a_phrase_names_is_kept_in_order_first_found_first() -> None:
    keys = find_keywords("Order #90210", "Bestellnummer 11111 und Bestell-Nr. 90210")
    assert keys.order_phrases == (90210, 11111)


def test_configured_aliases_per_keyword() -> None:
    book = phrasebook(order=("Vorgangsnummer",), customer=("Mitgliedsnummer",),
                      ticket=("Anfrage-Nr.",), invoice=("Belegnummer",))
    text = ("Vorgangsnummer 4711, Mitglieds-Nr. 88, Anfragenr 12 und Belegnummer 2024; "
            "Vorgangsnummern 5 und Vorgang 6")
    assert may_name_keywords(text, book) and not may_name_keywords(text)
    keys = find_keywords("", text, book)
    assert keys.order_phrases == (4711,)
    assert keys.ticket_phrases == (12,)
    assert keys.invoice_phrases == ("2024",)
    # "Mitglieds-Nr." is not the configured "Mitgliedsnummer": only the parts' joins vary
    assert keys.customer_phrases == ()
    assert find_keywords("", text).order_phrases == ()  # without the aliases: nothing


def test_a_phrase_links_only_what_exists_and_adds_no_note() -> None:
    mail = parse_mail(text_mail("Bestellnummer 90210"))
    keys = keywords_of(mail)
    found = decide(mail, keys, Facts(order_id=90210, order_contact_id=3, order_via="order_phrase"))
    assert (found.action, found.rule, found.order_id, found.contact_id) == (
        "new", "order_phrase", 90210, 3)
    missing = decide(mail, keys, Facts())
    assert (missing.rule, missing.order_id, missing.notes) == ("new_ticket", None, ())
    # Table 14's keyword naming nothing keeps the manual's note.
    mail = parse_mail(text_mail("Auftrags-ID 90210"))
    table = decide(mail, keywords_of(mail), Facts())
    assert any("order 90210" in note for note in table.notes)


def test_a_ticket_alias_appends_only_to_a_ticket_that_exists() -> None:
    book = phrasebook(ticket=("Vorgang",))
    mail = parse_mail(text_mail("Re: Vorgang 12"))
    keys = keywords_of(mail, book)
    assert keys.ticket_id is None and keys.ticket_phrases == (12,)
    found = decide(mail, keys, Facts(phrase_ticket_id=12))
    assert (found.action, found.rule, found.ticket_id) == ("append", "ticket_phrase", 12)
    assert decide(mail, keys, Facts()).rule == "new_ticket"


@sqlite_only
async def test_mails_with_phrases_are_linked_through_the_pipeline(
    make_config: Callable[..., Config]
) -> None:
    config = make_config(accounts=[account("support", 1)],
                         routing={"order_aliases": ["Vorgangsnummer"]})
    acc = config.account("support")
    assert acc is not None
    raws = [
        text_mail("Bestellnummer 90210", "Wo bleibt das Paket?", sender="a@example.org"),
        text_mail("Frage", "Bestell-Nr. 90211 ist nicht angekommen", sender="b@example.org"),
        text_mail("Auftrags-ID 90211", "Hallo", sender="c@example.org"),
        text_mail("Vorgangsnummer 90210", "Hallo", sender="d@example.org"),
        text_mail("Bestellung vom 12.03.", "Nr. 5 im Katalog fehlt", sender="e@example.org"),
    ]
    async with open_database(config.database_url):
        contact = await create_contact(NewContact(first_name="Erika", id=77))
        await create_order(NewOrder(id=90210, contact_id=contact.id))
        await create_order(NewOrder(id=5))
        store = TicketStore(config, event_hooks(config))
        outcomes = await import_batch(store, acc, [
            Prepared(Envelope("support", "INBOX", 7, 101 + n), raw, parse_mail(raw))
            for n, raw in enumerate(raws)])
        assert [o.rule for o in outcomes] == [
            "order_phrase", "new_ticket", "new_ticket", "order_phrase", "new_ticket"]
        tickets = [await Ticket.get(id=o.ticket_id) for o in outcomes]
        orders = [t.order_id for t in tickets]  # type: ignore[attr-defined]
        assert orders == [90210, None, None, 90210, None]
        assert tickets[0].contact_id == contact.id  # type: ignore[attr-defined]
        notes = [(await Message.get(id=o.message_id)).notes for o in outcomes]
        assert [n for n in notes[1] if n["kind"] == "routing"] == []  # a phrase: no note
        assert any("90211" in n["text"] for n in notes[2] if n["kind"] == "routing")


def test_trigger_words_never_hide_a_phrase() -> None:
    """On random texts of phrase words, separators, case variants and the characters that
    re.IGNORECASE folds specially, trying the phrases only at their trigger words finds
    exactly what trying them at every position finds."""
    import random

    book = phrasebook(order=("Vorgangs-Nr",))
    rng = random.Random(13)
    words = ["bestellung", "bestell", "auftrag", "auftrags", "order", "kd", "rg", "rechnung",
             "vorgangs", "customer", "invoice"]
    middles = ["nummer", "nr", "no", "id", "number", " mit der nummer", "#", "", ": "]
    separators = ["", " ", "-", ". ", ".: ", "#", "\n"]
    numbers = ["5", "90210", "12.03.", "49,90", "10115 Berlin", "123456 Stück", "٣", "x"]
    special = {"i": "İı", "s": "ſ", "k": "K"}

    def spell(word: str) -> str:
        return "".join(rng.choice(special[c]) if c in special and rng.random() < 0.08
                       else (c.upper() if rng.random() < 0.3 else c) for c in word)

    def everywhere(kind: str, text: str) -> tuple[str, ...]:
        """The reference: a phrase tried at every position of the text, no trigger words."""
        found: dict[str, None] = {}
        for position in range(len(text)):
            match = book.patterns[kind].match(text, position)
            if match and len(found) < 5:
                found.setdefault(next(g for g in match.groups() if g is not None), None)
        return tuple(found)

    matched = 0
    for _ in range(2000):
        text = " ".join(spell(rng.choice(words)) + rng.choice(separators)
                        + spell(rng.choice(middles)) + rng.choice(separators)
                        + rng.choice(numbers) for _ in range(rng.randint(1, 4)))
        keys = find_keywords("", text, book)
        expected = tuple(int(n) for n in everywhere("order", text) if int(n) < 2**31)
        assert keys.order_phrases == expected, text
        assert keys.customer_phrases == everywhere("customer", text), text
        assert keys.invoice_phrases == everywhere("invoice", text), text
        matched += bool(expected or keys.customer_phrases or keys.invoice_phrases)
    assert matched > 200


@sqlite_only
def test_aliases_are_checked(make_config: Callable[..., Config]) -> None:
    from gatewayd.config import ConfigError, check_semantics

    config = make_config(routing={"order_aliases": ["Vorgangsnummer", "Nr"]})
    (short,) = [p for p in check_semantics(config) if p.key.startswith("routing.")]
    assert (short.key, short.severity) == ("routing.order_aliases[1]", "warning")
    with pytest.raises(ConfigError) as caught:
        make_config(routing={"invoice_aliases": ["Beleg 4711"]})
    (problem,) = caught.value.problems
    assert problem.key == "routing.invoice_aliases[0]" and "Vorgangsnummer" in problem.fix
