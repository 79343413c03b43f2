"""Bounces: cheap signs that a mail may be one, and the failed recipients GNU Mailman's
detectors (flufl.bounce) read from it. Pure functions over the standard library's message."""

from __future__ import annotations

import re
from email.message import Message as StdMessage

from flufl.bounce import all_failures

from gatewayd.ingest.text import clean_text, raw_header

_BOUNCE_SENDERS = ("mailer-daemon", "postmaster", "mail-daemon", "bounce")
_BOUNCE_SUBJECT = re.compile(
    r"undeliver|unzustellbar|delivery (status|fail)|returned mail|failure notice|"
    r"nicht zugestellt|mail delivery|non.?delivery|rejected", re.IGNORECASE)
_PLAIN_ADDRESS = re.compile(r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)+$")


def may_be_bounce(message: StdMessage, content_type: str, sender: str | None,
                   return_path: str | None, subject: str | None) -> bool:
    """Cheap signs of a bounce; only then do the (slow) bounce detectors run."""
    local = (sender or "").partition("@")[0].lower()
    return (content_type == "multipart/report" or local.startswith(_BOUNCE_SENDERS)
            or (return_path is not None and return_path.strip() in ("<>", ""))
            or bool(subject and _BOUNCE_SUBJECT.search(subject))
            or raw_header(message, "X-Failed-Recipients") is not None)


def bounced(message: StdMessage) -> tuple[str, ...]:
    """Failed recipients as GNU Mailman's bounce detectors read them (empty for normal mail)."""
    try:
        temporary, permanent = all_failures(message)
    except Exception:  # a detector tripping over a broken mail must not cost us the mail
        return ()
    found = {clean_text(a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).lower()
             for a in (*permanent, *temporary)}
    return tuple(sorted(a for a in found if _PLAIN_ADDRESS.match(a)))[:50]
