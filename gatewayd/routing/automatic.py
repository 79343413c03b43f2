"""Automatic mail: auto-replies, bounces, complaint and read reports, list-manager notices and
SMS-gateway answers. Such mail is imported (a person may want to read it) but never answered
automatically: a receipt to a bounce or an auto-reply starts a mail loop, one to an SMS gateway
costs the customer a text message.

Each rule is a small named pure function over an InboundMail; the first that fires gives the
reason, which the message's notes and the log line show. The headers the rules read are kept by
ingest.parse (ingest.bounces.AUTOMATIC_HEADERS). Signs that a *person* wrote are never enough to
undo a rule, but a person forwarding a bounce ("Fwd: Undelivered Mail ...") sends none of these
signs: the bounce detectors are not run on forwards (ingest.bounces.may_be_bounce) and the report
is looked for in the mail's own parts only, not in an attached mail.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from gatewayd.mail import InboundMail

# Local parts (lower-case, without . - _) of the senders MTAs and list managers use.
AUTOMATIC_SENDERS = frozenset({
    "mailerdaemon", "maildaemon", "postmaster", "noreply", "donotreply", "bounce", "bounces",
    "majordomo", "listserv", "listproc", "mailman", "ezmlm", "sympa", "lyris", "ecartis",
    "smartlist", "autoresponder", "autoreply", "vacation",
})
_AUTOMATIC_SENDER_PREFIXES = ("noreply", "donotreply", "mailerdaemon", "bounces+", "bounce+",
                              "owner-", "sympa-")
# Mailing-list conventions (RFC 2142 / Mailman / Majordomo / Sympa / ezmlm): list-bounces@,
# list-request@, list-owner@, owner-list@ are the list manager, never a person.
_LIST_MANAGER_SUFFIXES = ("-bounces", "-bounce", "-request", "-owner", "-errors")
# Display names of senders that have no address at all (`From: MAILER-DAEMON <>`).
_AUTOMATIC_NAMES = ("mailer-daemon", "mailer daemon", "mail delivery system",
                    "mail delivery subsystem", "mail administrator", "postmaster")

# Carriers' e-mail-to-SMS/MMS gateways (the domains the carriers publish for texting by mail):
# a "Re:" from one of them is a phone's text answer or the gateway's own notice, and an
# automatic answer to it would be texted to the customer.
SMS_GATEWAYS = frozenset({
    "vtext.com", "vzwpix.com", "mypixmessages.com", "txt.att.net", "mms.att.net",
    "tmomail.net", "messaging.sprintpcs.com", "pm.sprint.com", "sms.cricketwireless.net",
    "mms.cricketwireless.net", "mymetropcs.com", "sms.myboostmobile.com", "myboostmobile.com",
    "email.uscc.net", "mms.uscc.net", "vmobl.com", "vmpix.com", "msg.fi.google.com",
    "text.republicwireless.com", "txt.bell.ca", "txt.bellmobility.ca", "pcs.rogers.com",
    "mms.rogers.com", "msg.telus.com", "mms.telusmobility.com", "sms.ecall.ch",
})

_SUBJECT_PREFIXES = (
    # auto-replies (Outlook/Exchange in English, German, French, Italian, Spanish, Dutch, Nordic)
    "auto reply", "auto-reply", "autoreply", "auto response", "automatic reply",
    "automatische antwort", "abwesenheitsnotiz", "abwesend:", "out of office",
    "out-of-office", "réponse automatique", "risposta automatica", "respuesta automática",
    "automatisch antwoord", "autosvar", "automatisk svar",
    # bounces and delay notices
    "undeliverable", "unzustellbar", "nicht zustellbar", "delivery status notification",
    "returned mail:", "undelivered mail returned to sender", "mail delivery failed",
    "failure notice", "delivery failure", "delivery_failure", "delivery notification",
    "mail system error", "message status - undeliverable", "nondeliverable mail",
    "delayed mail (still being retried)", "warning: message",
)
_SUBJECT_NOTICES = re.compile(
    r"awaits moderator approval|you are not a member|not a member of the list|loop alert|"
    r"mail loop detected|majordomo results|ezmlm response|message distribution: "
    r"authorization denied",
    re.IGNORECASE)
FORWARD_SUBJECT = re.compile(r"^\s*(fwd?|wg|wtr|tr|rv|enc|doorst|vs|vb|i|fs)\s*:", re.IGNORECASE)


def normalised_local(address: str | None) -> str:
    """The local part without case, dots, dashes or underscores: `Post_Master`, `post.master`
    and `postmaster` are one name to an MTA's administrator, and to us."""
    local = (address or "").partition("@")[0].lower()
    return re.sub(r"[._-]", "", local)


def _domain(address: str | None) -> str:
    return (address or "").rpartition("@")[2].lower().rstrip(".")


# ---------------------------------------------------------------------------- the rules

Rule = Callable[[InboundMail, Sequence[str]], "str | None"]


def rule_auto_submitted(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    """RFC 3834: anything but `no` is automatic (Sieve vacation, Gmail, Zimbra, MTAs)."""
    value = (mail.header("auto-submitted") or "").strip().lower()
    if value and not value.startswith("no"):
        return f"Auto-Submitted: {value[:40]}"
    return None


def rule_precedence(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    for name in ("precedence", "x-precedence"):
        value = (mail.header(name) or "").strip().lower()
        if value in ("bulk", "junk", "list", "auto_reply", "auto-reply"):
            return f"Precedence: {value}"
    return None


def rule_list_headers(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    """List mail and list-manager notices (List-Id; ezmlm's Mailing-List; Mailman's
    X-List-Administrivia)."""
    for name, shown in (("list-id", "List-Id"), ("mailing-list", "Mailing-List"),
                        ("x-list-administrivia", "X-List-Administrivia")):
        if mail.header(name):
            return f"{shown} header"
    return None


def rule_autoreply_headers(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    """Headers autoresponders and Exchange set: X-Autoreply (Gmail, many), X-Autorespond
    (cPanel/Exim), X-MS-Exchange-Organization-AutoReply and X-Auto-Response-Suppress All/OOF
    (Outlook/Exchange out-of-office), X-Loop (procmail, list managers, helpdesks; our own X-Loop
    is caught before as own mail)."""
    for name in ("x-autoreply", "x-autorespond", "x-autoresponder", "x-autogenerated",
                 "x-ms-exchange-organization-autoreply", "x-loop"):
        if mail.header(name):
            return f"{name} header"
    suppress = (mail.header("x-auto-response-suppress") or "").strip().lower()
    if suppress in ("all", "oof"):
        return f"X-Auto-Response-Suppress: {suppress}"
    return None


def rule_report(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    """Machine reports: delivery status (bounces, delays), feedback reports (RFC 5965 abuse
    complaints, also when sent as multipart/mixed), read receipts; Exchange's NDR marker;
    Microsoft's junk-mail reports (JMRP)."""
    if mail.report_type or mail.content_type == "multipart/report":
        kind = mail.report_type or "report"
        label = {"delivery-status": "delivery report", "feedback-report": "complaint report",
                 "disposition-notification": "read receipt"}.get(kind, "report")
        return f"{label} ({kind})"
    if mail.header("x-ms-exchange-message-is-ndr") is not None:
        return "Exchange non-delivery report"
    if mail.header("x-hmxmroriginalrecipient") is not None or mail.header("feedback-type"):
        return "complaint report (feedback loop)"
    return None


def rule_bounce(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    """An empty Return-Path (the null sender only bounces use), or failed recipients found by
    the bounce detectors or named in X-Failed-Recipients."""
    return_path = mail.header("return-path")
    if return_path is not None and return_path.strip() in ("<>", ""):
        return "empty Return-Path (a bounce)"
    if bounced:
        return f"bounce for {', '.join(list(bounced)[:3])}"
    return None


def rule_automatic_sender(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    """MTA and list-manager senders: MAILER-DAEMON, postmaster (also post_master), no-reply,
    VERP bounce addresses, Majordomo, LISTSERV, list-bounces@ / list-owner@ / owner-list@; and
    a From with a display name only (`MAILER-DAEMON <>`)."""
    address = mail.from_address
    if address:
        local = address.partition("@")[0].lower()
        plain = normalised_local(address)
        if plain in AUTOMATIC_SENDERS or plain.startswith(_AUTOMATIC_SENDER_PREFIXES) \
                or local.startswith(_AUTOMATIC_SENDER_PREFIXES) \
                or local.endswith(_LIST_MANAGER_SUFFIXES):
            return f"automatic sender {local}@"
        return None
    raw = mail.from_raw.lower()
    if "<>" in raw or any(name in raw for name in _AUTOMATIC_NAMES):
        return f"sender without an address ({mail.from_raw[:40]})"
    return None


def rule_sms_gateway(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    domain = _domain(mail.from_address)
    if domain and any(domain == g or domain.endswith("." + g) for g in SMS_GATEWAYS):
        return f"carrier SMS/MMS gateway ({domain})"
    return None


def rule_automatic_subject(mail: InboundMail, bounced: Sequence[str]) -> str | None:
    subject = " ".join(mail.subject.split()).lower()
    if FORWARD_SUBJECT.match(subject):
        return None  # a person forwarding a bounce or an auto-reply
    if subject.startswith(_SUBJECT_PREFIXES) or _SUBJECT_NOTICES.search(subject):
        return f"automatic subject ({mail.subject[:40]})"
    return None


AUTOMATIC_RULES: tuple[Rule, ...] = (
    rule_auto_submitted, rule_precedence, rule_list_headers, rule_autoreply_headers,
    rule_report, rule_bounce, rule_automatic_sender, rule_sms_gateway, rule_automatic_subject,
)


def reason(mail: InboundMail, bounced: Sequence[str] = ()) -> str | None:
    for rule in AUTOMATIC_RULES:
        found = rule(mail, bounced)
        if found is not None:
            return found
    return None
