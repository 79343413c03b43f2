"""Poison input: every charset name Python knows, in a body and in an RFC 2047 word, and any bytes
at all give an InboundMail or a ParseError (the quarantine reason), never another exception;
such a mail is quarantined on its own while the mails behind it are imported."""

from __future__ import annotations

import base64
import codecs
import dataclasses
import encodings
import encodings.aliases
import pkgutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gatewayd.config import Config
from gatewayd.ingest.parse import ParseError, parse_mail
from gatewayd.ingest.text import codec_for, decode_bytes, decode_header_value
from gatewayd.loopback.imap import start_imap_server
from gatewayd.mail import InboundMail
from gatewayd.store.models import InboundReceipt, Message, Quarantine
from tests.test_ingest_imap import USERS, account, poll, running, text_mail

MAILS = Path(__file__).parent / "mails"
# Every name Python resolves to a codec: the alias table (both sides) and the codec modules.
CODEC_NAMES = sorted(
    set(encodings.aliases.aliases) | set(encodings.aliases.aliases.values())
    | {m.name for m in pkgutil.iter_modules(encodings.__path__) if m.name != "aliases"}
    | {"unknown-8bit", "x-user-defined", "x-unknown", "utf-8*en", "no-such-charset", ""}
)
# Bytes that trip codecs: 8-bit Latin, a lone UTF-8 lead byte, punycode's delimiter with 8-bit
# data, an ISO-2022 escape, backslash escapes (unicode_escape) and a UTF-7 shift.
NASTY = b"M\xfcller \xe4\x80\xc3 abc-\xff \x1b$B\x1b(B \\N{x \\u12 +AGE- \x00end"


def _texts(value: object, where: str = "mail") -> Iterator[tuple[str, str]]:
    """Every text a parsed mail carries, with where it sits (fields, lists, dicts, nested)."""
    if isinstance(value, str):
        yield where, value
    elif dataclasses.is_dataclass(value) and not isinstance(value, type):
        for item in dataclasses.fields(value):
            yield from _texts(getattr(value, item.name), f"{where}.{item.name}")
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            yield from _texts(item, f"{where}[{index}]")
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _texts(key, f"{where} key")
            yield from _texts(item, f"{where}[{key!r}]")


def _safe(mail: InboundMail) -> None:
    """Every text of the mail can be stored: no lone surrogates, no NUL (PostgreSQL refuses
    both, in text and in JSON columns)."""
    for where, value in _texts(mail):
        value.encode("utf-8")  # no lone surrogates
        assert "\x00" not in value, where


def test_every_codec_python_knows_decodes_or_falls_back() -> None:
    assert len(CODEC_NAMES) > 300
    for name in CODEC_NAMES:
        text = decode_bytes(NASTY, name)
        assert isinstance(text, str), name
        header = decode_header_value(f"=?{name}?q?M=FCller_abc-=FF?=")
        assert isinstance(header, str), name


@pytest.mark.parametrize("name", CODEC_NAMES)
def test_every_codec_as_body_and_rfc2047_charset_gives_a_mail(name: str) -> None:
    word = base64.b64encode(NASTY).decode()
    raw = (f"From: =?{name}?B?{word}?= <a@example.org>\r\nTo: support@shop.example\r\n"
           f"Subject: =?{name}?Q?Gr=FC=DFe_abc-=FF?= =?{name}?B?{word}?=\r\n"
           f"MIME-Version: 1.0\r\nContent-Type: multipart/alternative; boundary=b\r\n\r\n"
           f"--b\r\nContent-Type: text/plain; charset=\"{name}\"\r\n"
           f"Content-Transfer-Encoding: 8bit\r\n\r\n").encode() + NASTY + (
           f"\r\n--b\r\nContent-Type: text/html; charset={name}\r\n\r\n").encode() + NASTY + (
           b"\r\n--b--\r\n")
    try:
        mail = parse_mail(raw)
    except ParseError as exc:  # a quarantine reason is an allowed answer, with a text
        assert str(exc)
        return
    _safe(mail)
    assert mail.text  # some text, in whatever the label says (EBCDIC gives other letters)


_PARTS = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
          b"Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n"
          b"Content-Type: text/plain\r\n\r\nhi\r\n--b\r\n%s\r\n\r\nJVBERi0=\r\n--b--\r\n")


@pytest.mark.parametrize("bad", [b"\x00", b"\xff\xfe", b"\x01"], ids=["nul", "8bit", "control"])
@pytest.mark.parametrize("raw", [
    b"Message-ID: <a@@b@x>\r\nFrom: a@example.org\r\nSubject: s@@\r\n\r\nx",
    b"In-Reply-To: <a@@b@x>\r\nReferences: <c@@@x>\r\nFrom: a@example.org\r\n\r\nx",
    b"From: \"n@@\" <a@@b@example.org>\r\nTo: s@@@x\r\nReply-To: r@@@x\r\n\r\nx",
    b"From: a@x\r\nContent-Type: text/pl@@ain; charset=ut@@f-8\r\n\r\nx",
    b"From: a@x\r\nAuto-Submitted: auto@@-replied\r\nX-Mailer: m@@\r\n\r\nx",
    _PARTS % b"Content-Type: application/pdf@@; name=a.pdf",
    _PARTS % b"Content-Type: @@/",
    _PARTS % b"Content-Type: application/pdf\r\nContent-Disposition: attachment; "
             b"filename=\"a@@.pdf\"",
    _PARTS % b"Content-Type: image/png\r\nContent-Disposition: inl@@ine",
], ids=["message-id", "references", "addresses", "content-type", "automatic", "part-type",
        "part-type-no-name", "file-name", "disposition"])
def test_odd_bytes_in_any_header_give_a_mail_that_can_be_stored(raw: bytes, bad: bytes) -> None:
    """A NUL in an attachment's Content-Type reached the message's notes (JSON) and PostgreSQL
    refused the whole mail again at every poll."""
    _safe(parse_mail(raw.replace(b"@@", bad)))


@pytest.mark.parametrize("name", ["idna", "punycode", "undefined", "unknown-8bit",
                                  "x-user-defined", "no-such-charset"])
def test_bogus_charset_labels_are_read_by_detection(name: str) -> None:
    assert codec_for(name) is None
    body = "Grüße aus Köln, die Größe passt nicht".encode("cp1252")
    raw = (f"From: a@example.org\r\nSubject: =?{name}?q?Gr=FC=DFe?=\r\n"
           f"Content-Type: text/plain; charset={name}\r\n\r\n").encode() + body
    mail = parse_mail(raw)
    assert mail.text == "Grüße aus Köln, die Größe passt nicht"
    assert mail.subject == "Grüße"


def test_iso_2022_jp_without_a_label_is_japanese_not_mojibake() -> None:
    body = "ご注文の件でお問い合わせします。".encode("iso2022_jp")
    raw = b"From: a@example.org\r\nSubject: =?unknown-8bit?q?x?=\r\n\r\n" + body
    assert parse_mail(raw).text == "ご注文の件でお問い合わせします。"


def test_undeclared_cyrillic_is_detected_and_german_stays_cp1252() -> None:
    russian = "Здравствуйте, где мой заказ? Спасибо большое за помощь".encode("cp1251")
    assert decode_bytes(russian, None) == (
        "Здравствуйте, где мой заказ? Спасибо большое за помощь")
    assert decode_bytes("Müller".encode("cp1252"), None) == "Müller"
    assert decode_bytes("Preis € 50, Grüße".encode("cp1252"), "x-user-defined") == (
        "Preis € 50, Grüße")


def test_sendgrid_bounce_mail_parser_raised_on_is_read(capfd: pytest.CaptureFixture[str]) -> None:
    """mail-parser 4.8 raises AttributeError ('NoneType' object has no attribute 'index') on
    this bounce (an unclosed report whose inner part lacks its boundary) and prints "Email
    content ... not handled" lines; the standard library reads it and nothing is printed."""
    mail = parse_mail((MAILS / "sendgrid_bounce_broken_boundary.eml").read_bytes())
    assert mail.content_type == "multipart/report"
    assert mail.from_address == "mailer-daemon@sendgrid.net"
    assert mail.bounced == ("kunde@example.org",)  # the bounce is recognised, not quarantined
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_any_exception_while_parsing_is_a_parse_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in a library the parser calls becomes the mail's quarantine reason."""
    import gatewayd.ingest.parse as parse_module

    def broken(_html: str) -> str:
        raise AttributeError("'NoneType' object has no attribute 'index'")

    monkeypatch.setattr(parse_module, "html_to_text", broken)
    with pytest.raises(ParseError, match="the parser failed: AttributeError"):
        parse_mail((MAILS / "html_only.eml").read_bytes())


# ------------------------------------------------------------------------------ any bytes

_SEEDS = [p.read_bytes() for p in sorted(MAILS.glob("*.eml"))]


def _parse_or_reason(raw: bytes) -> InboundMail | str:
    try:
        mail = parse_mail(raw)
    except ParseError as exc:
        assert str(exc)
        return str(exc)
    _safe(mail)
    return mail


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=3000))
def test_any_bytes_give_a_mail_or_a_quarantine_reason(raw: bytes) -> None:
    assert isinstance(_parse_or_reason(raw), InboundMail | str)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(_SEEDS), st.lists(st.tuples(st.integers(0, 10**6), st.binary(max_size=8)),
                                          max_size=6), st.integers(0, 10**6))
def test_damaged_real_mails_give_a_mail_or_a_quarantine_reason(
    seed: bytes, edits: list[tuple[int, bytes]], cut: int
) -> None:
    raw = bytearray(seed)
    for position, data in edits:
        at = position % (len(raw) + 1)
        raw[at:at + len(data)] = data
    raw = raw[:max(1, cut % (len(raw) + 1))] if cut % 3 == 0 else raw
    assert isinstance(_parse_or_reason(bytes(raw)), InboundMail | str)


# ------------------------------------------------------------------------------ the poller


async def _imported_between_two_mails(make_config: Callable[..., Config], raw: bytes,
                                      message_id: str) -> Message:
    """`raw` between two plain mails in one IMAP batch: all three imported in one poll, none
    quarantined; the stored message of `raw`."""
    async with start_imap_server(USERS) as imap, running(
            make_config(accounts=[account("support", imap.port)])) as runtime:
        before = await imap.append("support", text_mail("Vorher", message_id="<before@x>"))
        middle = await imap.append("support", raw)
        after = await imap.append("support", text_mail("Nachher", message_id="<after@x>"))
        assert await poll(runtime, "support") == 3
        receipts = {r.uid: r.outcome for r in await InboundReceipt.all()}
        assert receipts == {before: "imported", middle: "imported", after: "imported"}
        assert not await Quarantine.exists()
        return await Message.get(message_id=message_id)


async def test_poison_charset_is_read_and_the_mails_behind_it_flow(
    make_config: Callable[..., Config]
) -> None:
    """Before, a charset named `undefined` or `idna` raised UnicodeError, which was no
    ParseError: the poller fetched the same batch again and again."""
    poison = (b"From: a@example.org\r\nSubject: =?idna?q?M=FCller?=\r\n"
              b"Message-ID: <poison@x>\r\nContent-Type: text/plain; charset=undefined\r\n\r\n"
              b"Gr\xfc\xdfe abc-\xff\r\n")
    stored = await _imported_between_two_mails(make_config, poison, "<poison@x>")
    assert stored.subject == "Müller" and "Grüße" in stored.text
    assert codecs.lookup("idna")  # the label is a real codec that cannot "replace"


async def test_a_nul_in_an_attachments_type_is_imported_in_one_batch_on_every_database(
    make_config: Callable[..., Config]
) -> None:
    """The NUL reached the message's notes (the rejected attachment's type): PostgreSQL refused
    the batch, then the mail alone at every poll, until it was quarantined."""
    nul = (_PARTS % b"Content-Type: application/pdf\x00; name=a.pdf").replace(
        b"From: a@example.org\r\n", b"From: a@example.org\r\nMessage-ID: <nul@x>\r\n")
    stored = await _imported_between_two_mails(make_config, nul, "<nul@x>")
    assert stored.text == "hi"
