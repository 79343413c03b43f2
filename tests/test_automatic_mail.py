"""Automatic mail (bounces, auto-replies, complaint reports, list-manager notices, SMS-gateway
answers) is recognised and never answered; a person's mail, also one that forwards a bounce,
stays answerable.

tests/mails/automatic/ holds one mail per MTA / autoresponder format (its README names the source
format of each); tests/mails/person/ holds person mail that looks like it (forwards of bounces, a
customer writing about a bounce). The recognition rate is measured over the whole folder; the
import test runs the real pipeline: pymap → poller → store → event actions → sender → aiosmtpd,
in live mode.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config
from gatewayd.daemon import event_hooks
from gatewayd.ingest.parse import parse_mail
from gatewayd.ingest.pipeline import bounced_addresses
from gatewayd.ingest.poller import AccountPoller
from gatewayd.loopback.imap import start_imap_server
from gatewayd.loopback.smtp import SmtpSink, smtp_sink
from gatewayd.outbound import sender
from gatewayd.routing.rules import automatic_reason
from gatewayd.runtime import Runtime
from gatewayd.store.db import open_database
from gatewayd.store.models import InboundReceipt, Message, Outbox
from gatewayd.store.tickets import TicketStore
from tests.conftest import SHARED
from tests.test_outbound import RECEIVED
from tests.test_sender import account_data

MAILS = Path(__file__).parent / "mails"
AUTOMATIC = sorted((MAILS / "automatic").glob("*.eml"))
PERSON = sorted((MAILS / "person").glob("*.eml"))
GOAL = 0.98


def reason_for(path: Path) -> str | None:
    mail = parse_mail(path.read_bytes())
    return automatic_reason(mail, bounced_addresses(mail))


def test_the_sample_covers_every_class_and_the_readme_lists_each_file() -> None:
    assert len(AUTOMATIC) >= 60 and len(PERSON) >= 8
    readme = (MAILS / "automatic" / "README.md").read_text("utf-8")
    listed = set(re.findall(r"`([\w.-]+\.eml)`", readme))
    assert listed == {p.name for p in AUTOMATIC} | {p.name for p in PERSON}


def test_recognition_rate_of_automatic_mail_is_at_least_98_percent() -> None:
    missed = [p.name for p in AUTOMATIC if reason_for(p) is None]
    rate = 1 - len(missed) / len(AUTOMATIC)
    print(f"automatic mail recognised: {len(AUTOMATIC) - len(missed)}/{len(AUTOMATIC)} "
          f"= {rate:.1%}")
    assert rate >= GOAL, f"{rate:.1%} < {GOAL:.0%}; missed: {', '.join(missed)}"


@pytest.mark.parametrize("path", PERSON, ids=lambda p: p.name)
def test_person_mail_that_looks_automatic_stays_answerable(path: Path) -> None:
    assert reason_for(path) is None


@pytest.mark.parametrize(("name", "fragment"), [
    # The classes the 2026-12 corpus run missed, each by the rule meant for it.
    ("mailer_daemon_empty_address_plain.eml", "sender without an address"),
    ("postmaster_underscore_sender.eml", "automatic sender post_master@"),
    ("sms_vtext_re.eml", "SMS/MMS gateway"),
    ("majordomo_loop_alert.eml", "owner-haendler@"),
    ("mailman3_not_a_member.eml", "haendler-owner@"),
    ("arf_multipart_mixed.eml", "complaint report (feedback-report)"),
    ("arf_feedback_report.eml", "complaint report (feedback-report)"),
    ("jmrp_complaint_mixed.eml", "complaint report"),
    ("mdn_read_receipt_outlook.eml", "read receipt"),
])
def test_each_missed_class_has_its_rule(name: str, fragment: str) -> None:
    assert fragment in (reason_for(MAILS / "automatic" / name) or "")


def test_subject_and_sender_rules_alone() -> None:
    """The rules that need no header: a list notice subject, and a forward that is not one."""
    def mail(subject: str, sender: str = "kunde@example.org") -> str | None:
        raw = f"From: {sender}\r\nSubject: {subject}\r\n\r\nx\r\n".encode()
        return automatic_reason(parse_mail(raw))

    assert mail("Loop Alert: Bestellung") is not None
    assert mail("Message rejected: you are not a member of shop-l") is not None
    assert mail("Fwd: Out of Office: Erika") is None
    assert mail("WG: Unzustellbar: Rechnung") is None
    assert mail("Auto: Reifen passen nicht") is None  # a car-parts customer, not RFC 5230
    assert mail("Frage", "Post.Master@isp.example") is not None
    assert mail("Frage", "shop-l-request@lists.example.org") is not None
    assert mail("Frage", "post.office@dorf.example") is None


@pytest.mark.skipif(not (SHARED / "corpus").is_dir(), reason=f"no shared corpus at {SHARED}")
def test_shared_corpus_delivery_report_stays_automatic_and_person_mail_stays_person() -> None:
    corpus = SHARED / "corpus"
    assert "delivery report" in (reason_for(corpus / "rt" / "multipart-report.eml") or "") or (
        "Auto-Submitted" in (reason_for(corpus / "rt" / "multipart-report.eml") or ""))
    for name in ("lorem-ipsum.eml", "multipart-alternative-with-umlaut.eml",
                 "email-file-attachment.eml", "nested-rfc-822.eml"):
        assert reason_for(corpus / "rt" / name) is None, name


# ------------------------------------------------------------------ through the real pipeline


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


def _sender(path: Path) -> str | None:
    mail = parse_mail(path.read_bytes())
    return mail.from_address


async def test_automatic_mail_is_imported_as_auto_reply_and_never_answered_in_live_mode(
    make_config: Callable[..., Config], sink: SmtpSink
) -> None:
    """Every automatic mail becomes a ticket message with auto_reply = true, and the receipt
    event action writes no sendable outbox row for it (only a `suppressed` one saying why);
    the sender delivers nothing to any of them. The person mails beside them get their
    receipt: the guard is not simply refusing everything."""
    async with start_imap_server({"support": "pw"}) as imap:
        account: dict[str, Any] = account_data("support", sink)
        account["imap"] = {"host": "127.0.0.1", "port": imap.port, "security": "none",
                           "username": "support", "password": "pw", "after_import": "delete"}
        config = make_config(mode="live", accounts=[account], events=[RECEIVED],
                             message_id_domain="tickets.shop.example")
        names: dict[int, Path] = {}
        for path in [*AUTOMATIC, *PERSON]:
            names[await imap.append("support", path.read_bytes())] = path
        async with open_database(config.database_url):
            runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
            support = config.account("support")
            assert support is not None
            poller = AccountPoller(runtime, support, asyncio.Event())
            assert await poller.poll_now() == len(names)
            while await sender.run_once(config):
                pass
            receipts = {r.uid: r for r in await InboundReceipt.all()}
            wrong: list[str] = []
            answered_people = 0
            for uid, path in names.items():
                receipt = receipts[uid]
                assert receipt.outcome == "imported", (path.name, receipt.outcome)
                message = await Message.get(id=receipt.ticket_message_id)  # type: ignore[attr-defined]
                rows = await Outbox.filter(ticket_id=receipt.ticket_id)  # type: ignore[attr-defined]
                automatic = path.parent.name == "automatic"
                if message.auto_reply is not automatic:
                    wrong.append(f"{path.name}: auto_reply={message.auto_reply}")
                if automatic:
                    sendable = [r for r in rows if r.status != "suppressed"]
                    if sendable:
                        wrong.append(f"{path.name}: outbox rows {[r.status for r in sendable]}")
                elif any(r.status == "sent" for r in rows):
                    answered_people += 1
            assert not wrong, "\n".join(wrong)
            assert answered_people == len(PERSON)
        automatic_senders = {a for p in AUTOMATIC if (a := _sender(p))}
        reached = sink.envelope_recipients()
        assert not reached & automatic_senders, reached & automatic_senders
        assert len(sink.received) == len(PERSON)
