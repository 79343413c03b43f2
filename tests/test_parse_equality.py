"""The parser reads mails with the standard library alone and separates the newest reply with
a prefiltered header split: the results equal those of the parser built on mail-parser and
mail-parser-reply (tests/legacy_parse.py) on every real-world and test mail."""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from mailparser_reply import EmailReplyParser

from bench.ingest import make_mail
from gatewayd.ingest import replies
from gatewayd.ingest.parse import parse_mail
from tests import legacy_parse

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "corpus"
TEST_MAILS = Path(__file__).parent / "mails"
REAL = sorted(CORPUS.glob("*/*.eml")) if CORPUS.is_dir() else []
OURS = sorted(TEST_MAILS.rglob("*.eml"))


def _library_reply(text: str) -> str:
    return (EmailReplyParser(languages=["de", "en"]).read(text).latest_reply or "").strip()


@pytest.mark.skipif(not REAL, reason=f"the shared corpus is not at {CORPUS}")
def test_corpus_is_there() -> None:
    assert len(REAL) >= 40  # the comparison below runs over real mails, not over nothing


@pytest.mark.parametrize("path", REAL + OURS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_same_mail_as_the_mail_parser_based_parser(path: Path) -> None:
    raw = path.read_bytes()
    try:
        before = legacy_parse.parse_mail(raw)
    except legacy_parse.ParseError:
        # mail-parser raised on it (e.g. a SendGrid bounce): the standard library reads it.
        assert parse_mail(raw).content_hash
        return
    assert parse_mail(raw) == before
    assert parse_mail(raw, headers_only=True) == legacy_parse.parse_mail(raw, headers_only=True)


def test_same_mail_on_the_benchmark_mails() -> None:
    rng = random.Random(5)
    for n in range(60):
        raw = make_mail(n, rng)
        assert parse_mail(raw) == legacy_parse.parse_mail(raw), n


@pytest.mark.parametrize("path", REAL + OURS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_reply_split_equals_the_library_on_every_text(path: Path) -> None:
    mail = parse_mail(path.read_bytes())
    for text in (mail.text, mail.html or ""):
        assert replies.latest_reply(text) == _library_reply(text)


def test_the_characters_that_fold_into_ascii_letters_are_all_known() -> None:
    """may_have_header's str.lower() shortcut is exact only if no other character outside ASCII
    matches an ASCII letter under re.IGNORECASE."""
    letter = re.compile("[a-z]", re.IGNORECASE)
    folding = tuple(chr(c) for c in range(0x80, sys.maxunicode + 1) if letter.fullmatch(chr(c)))
    assert folding == replies._FOLDS_TO_ASCII


# Texts made of lines the header pattern and the prefilter care about: reply headers in both
# languages, quote marks, separators, case variants and the characters that fold into ASCII
# under re.IGNORECASE (long s, Kelvin sign).
_LINES = st.sampled_from([
    "Danke für die schnelle Antwort.", "Hallo", "", " ", "schrieb", "wrote:", "On ", "Am", ":",
    "Am 20.11.2026 um 10:00 schrieb Shop <s@shop.example>:", "SCHRIEB x:",
    "On Mon, Nov 23, 2026 at 10:00 AM Jane <j@x.example> wrote:", "on x WROTE:",
    "Von: Jane", "An: support@shop.example", "Gesendet: Montag", "Betreff: Re: Frage",
    "From: Jane", "To: Support", "Sent: Monday", "Subject: Re: hi", "Date: today",
    "cc: x", "ſubject: x", "\u212ao: x", "Organisation: y", "*From:* Jane",
    "-----Original Message-----", "----- Original Message -----", "original message",
    "_" * 32, "-" * 40, "Mit freundlichen Grüßen", "Best regards,", "Sent from my iPhone",
    "Wichtiger Hinweis: vertraulich", "Termin um 10:00, Preis: 5 €",
])
_LINE = st.tuples(st.sampled_from(["", "> ", ">", "> > ", "* ", "  "]), _LINES).map("".join)
_TEXT = st.tuples(st.lists(_LINE, max_size=25),
                  st.sampled_from(["\n", "\r\n", "\n\n"])).map(lambda t: t[1].join(t[0]))


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_TEXT)
@example("Hallo\nTo: a\nto: b\n> alt")
@example("Hallo\n* Von: a\n** An: b\nalt")
@example("Hallo\n> > ſubject: a\n\u212ao: b")
@example("Hallo\n\nAm 1. Mai ſchrieb Jane:\n> alt")
@example("Hallo\n\nOn Monday Jane WROTE:\n> alt")
@example("Hallo\n-----ORIGINAL MEſſAGE-----\nalt")
def test_reply_split_equals_the_library_on_generated_texts(text: str) -> None:
    assert replies.latest_reply(text) == _library_reply(text)


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300))
def test_reply_split_equals_the_library_on_any_text(text: str) -> None:
    assert replies.latest_reply(text) == _library_reply(text)
