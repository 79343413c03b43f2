"""The values every stage shares: one inbound mail, as parsed from IMAP or LMTP or built from a
shop form, with its attachments. Plain frozen data; no stage touches raw MIME or HTTP after
ingest has made one of these."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass


@dataclass(frozen=True)
class MailAttachment:
    filename: str
    content_type: str
    content: bytes
    inline: bool = False

    @property
    def size(self) -> int:
        return len(self.content)


@dataclass(frozen=True)
class RejectedAttachment:
    filename: str
    content_type: str
    size: int
    reason: str


@dataclass(frozen=True)
class InboundMail:
    """Everything downstream needs from one mail; nothing downstream touches raw MIME."""

    content_hash: str  # SHA-256 of the raw bytes
    size: int
    message_id: str | None
    in_reply_to: str | None
    references: tuple[str, ...]
    subject: str
    from_address: str | None
    from_name: str | None
    from_raw: str
    reply_to: str | None
    to: tuple[str, ...]
    cc: tuple[str, ...]
    date: dt.datetime | None
    text: str  # every text part in order, or the HTML as text when there is no plain part
    html: str | None
    reply_text: str | None  # the newest reply without the quoted history
    attachments: tuple[MailAttachment, ...] = ()
    rejected: tuple[RejectedAttachment, ...] = ()
    # Header facts the routing rules need (lower-case names, decoded values).
    headers: tuple[tuple[str, str], ...] = ()
    content_type: str = "text/plain"
    report_type: str | None = None
    defects: tuple[str, ...] = ()
    headers_only: bool = False  # an oversized mail: headers kept, body not fetched
    bounced: tuple[str, ...] = ()  # failed recipients when the mail is a bounce (flufl.bounce)

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def header_all(self, name: str) -> list[str]:
        name = name.lower()
        return [v for k, v in self.headers if k == name]
