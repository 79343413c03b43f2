"""`compose_mail` writes RFC 5322 text directly; the standard library's parser must read back
exactly what went in (headers decoded, bodies byte for byte), and nothing may add a header."""

from __future__ import annotations

import email
from email import policy
from email.header import decode_header, make_header
from email.message import EmailMessage

import pytest

from gatewayd.outbound.mails import Envelope, MailError, compose_mail, header_value


def envelope(**changes: object) -> Envelope:
    values: dict[str, object] = {
        "from_address": "support@shop.example", "from_name": "Shop", "to": ["k@example.org"],
        "subject": "Ihre Anfrage", "message_id": "<t1.abc@shop.example>", "ticket_id": 7,
    }
    values.update(changes)
    return Envelope(**values)  # type: ignore[arg-type]


def parse(content: str) -> EmailMessage:
    message = email.message_from_bytes(content.encode("ascii"), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def body(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    return str(part.get_content()).replace("\r\n", "\n")


SUBJECTS = [
    "Ihre Anfrage",
    "Ihre Anfrage zur Lieferung – wir kümmern uns",
    "Grüße aus Köln " * 20,
    "=?utf-8?q?looks_encoded?= but is not",
    "日本語の件名とEnglish words mixed together in one rather long subject line here",
    "x" * 300,
    "ü",
]


@pytest.mark.parametrize("subject", SUBJECTS)
def test_subject_round_trips(subject: str) -> None:
    mail = compose_mail(envelope(subject=subject), "Hallo\n")
    message = parse(mail.content)
    expected = f"[Ticket-ID 7] {' '.join(subject.split())}"
    assert str(message["Subject"]) == expected
    assert mail.subject == expected
    assert all(len(line) <= 998 for line in mail.content.split("\r\n"))


@pytest.mark.parametrize("name", ["Shop", "Müller & Söhne Kundenservice", 'Shop "Nord", Team'])
def test_display_name_round_trips(name: str) -> None:
    message = parse(compose_mail(envelope(from_name=name), "x\n").content)
    assert message["From"].addresses[0].display_name == name
    assert message["From"].addresses[0].addr_spec == "support@shop.example"


def test_long_display_name_is_split_into_valid_encoded_words() -> None:
    name = "Ünïcödé " * 30
    mail = compose_mail(envelope(from_name=name), "x\n")
    raw = mail.content.split("\r\nTo:")[0].removeprefix("From:").replace("\r\n", "")
    words = [w for w in raw.split() if w.startswith("=?")]
    assert len(words) > 1 and all(len(w) <= 75 for w in words)
    # RFC 2047 decoding drops the space between adjacent encoded-words (the header registry of
    # CPython does not in display names, for its own output as for ours: decode per RFC here).
    decoded = str(make_header(decode_header(raw)))
    assert decoded == f"{header_value(name, limit=200)} <support@shop.example>"


def test_bodies_round_trip_byte_for_byte() -> None:
    text = ("Grüße,\n.\nFrom the shop\ntrailing spaces   \n\ttab\n" + "lang " * 60 + "\n"
            "=?utf-8?q?x?= and = signs\n")
    html = "<p>Grüße &amp; mehr</p>\n<p>" + "wort " * 50 + "</p>\n"
    mail = compose_mail(envelope(), text, html)
    message = parse(mail.content)
    assert message.get_content_type() == "multipart/alternative"
    assert body(message, "plain") == text
    assert body(message, "html") == html
    assert all(len(line) <= 78 for line in mail.content.split("\r\n"))
    assert "\n" not in mail.content.replace("\r\n", "")  # CRLF line ends only


def test_injection_in_every_header_value_adds_nothing() -> None:
    bad = "Hallo\r\nBcc: x@example.org\r\n\r\nbody"
    mail = compose_mail(envelope(subject=bad, from_name=bad, language="de\r\nBcc: y@e.org"),
                        "text\n")
    message = parse(mail.content)
    assert message["Bcc"] is None
    assert "Bcc" in str(message["Subject"])  # kept as text on the one subject line
    assert list(message.keys()) == ["From", "To", "Subject", "Date", "Message-ID",
                                    "Content-Language", "MIME-Version", "Content-Type",
                                    "Content-Transfer-Encoding"]
    with pytest.raises(MailError):
        compose_mail(envelope(to=["k@example.org\r\nBcc: x@example.org"]), "x")
    with pytest.raises(MailError):
        compose_mail(envelope(reply_to="a@example.org, b@example.org"), "x")
    with pytest.raises(MailError):
        compose_mail(envelope(message_id="not an id"), "x")


def test_threading_headers_keep_root_and_newest() -> None:
    refs = [f"<r{i}@c.example>" for i in range(40)]
    message = parse(compose_mail(envelope(references=refs, in_reply_to="<r39@c.example>",
                                          auto_submitted="auto-replied",
                                          loop_marker="support@shop.example"), "x").content)
    kept = str(message["References"]).split()
    assert kept[0] == "<r0@c.example>" and kept[-1] == "<r39@c.example>" and len(kept) == 20
    assert str(message["In-Reply-To"]) == "<r39@c.example>"
    assert str(message["Auto-Submitted"]) == "auto-replied"
    assert str(message["X-Loop"]) == "support@shop.example"
    assert str(message["Message-ID"]) == "<t1.abc@shop.example>"


def test_header_value_shortcut_equals_the_full_cleaning() -> None:
    """Plain printable ASCII skips the regex; the result is the same as cleaning it fully."""
    import itertools
    import re

    control = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")
    pieces = [" ", "  ", "a", "=?", "\t", "\n", "\r", "\x00", "\x1c", "\x7f", "\x85", "\xa0",
              "ä", "\u2028", "\u3000"]
    for size in range(4):
        for combo in itertools.product(pieces, repeat=size):
            value = "".join(combo)
            for limit in (2, 900):
                assert header_value(value, limit=limit) == \
                    " ".join(control.sub(" ", value).split())[:limit], repr(value)


def test_body_cleaning_on_bytes_equals_the_text_rules() -> None:
    """Newlines (CRLF and CR become LF) and tabs stay, other control characters go, any
    other character stays, whatever its UTF-8 bytes."""
    import re

    from gatewayd.outbound.mails import _clean_body

    control = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
    text = "".join(chr(c) for c in [*range(0x300), 0x2028, 0xfeff, 0x1f600]) + "a\r\nb\rc\n\r"
    expected = control.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    assert _clean_body(text) == expected.encode("utf-8")
