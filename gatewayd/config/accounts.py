"""The configuration of a support mailbox: `[[accounts]]` with `[accounts.imap]` and
`[accounts.smtp]`."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, PrivateAttr, SecretStr

from gatewayd.config.base import StrictModel
from gatewayd.config.oauth2 import OAuth2Settings, OAuthBinding
from gatewayd.config.tickets import TicketRef


class _ServerLogin(StrictModel):
    """What `[accounts.imap]` and `[accounts.smtp]` share beyond their keys: the account's
    OAuth2 settings, bound to the login when the file is read (config.load.bind_oauth)."""

    _oauth: OAuthBinding | None = PrivateAttr(default=None)

    @property
    def oauth(self) -> OAuthBinding | None:
        """The account's OAuth2 settings when `auth = "oauth2"`."""
        return self._oauth


class ImapSettings(_ServerLogin):
    """`[accounts.imap]`: where and how the account's mailbox is read."""

    host: str = Field(min_length=1, examples=["imap.shop.example"])
    """The IMAP server's host name or address."""
    port: int | None = Field(default=None, ge=1, le=65535, examples=[993])
    """The server's port; unset: 993 for `tls`, 143 otherwise."""
    security: Literal["tls", "starttls", "none"] = "tls"
    """`tls` (implicit TLS), `starttls` (required: never continues in plain text) or `none`.
    Certificates are always verified.

    Check: `none` on a host that is not loopback is an error (the password would travel in
    plain text)."""
    auth: Literal["password", "oauth2"] = "password"
    """How gatewayd logs in: `password`, or `oauth2` with a token from the account's
    `[accounts.oauth2]` (SASL XOAUTH2 or OAUTHBEARER).

    Check: `oauth2` without `[accounts.oauth2]`, or with a password set, is an error."""
    username: str = Field(min_length=1, examples=["support@shop.example"])
    """The login name."""
    password: SecretStr | None = None
    """The password, written into the file. Prefer `password_file` or a systemd credential."""
    password_file: Path | None = Field(default=None, examples=["credentials/support-imap"])
    """A file holding the password (relative to the configuration file). A missing file falls
    back to the systemd credential of the same file name; with neither `password` nor
    `password_file`, the credential `<account>-imap` is used.

    Check: an error when an active account's password cannot be read (missing, unreadable or
    empty file); inactive accounts need none."""
    folder: str = "INBOX"
    """The folder whose unseen mails are imported."""
    after_import: Literal["move", "delete"] = "move"
    """What happens to a mail on the server after its import is committed: moved to
    `move_to`, or deleted (`\\Deleted` + UID EXPUNGE)."""
    move_to: str = "Imported"
    """The folder imported mails are moved to (created when missing).

    Check: an error when empty while `after_import = "move"`."""
    quarantine_folder: str | None = Field(default=None, examples=["Quarantine"])
    """Where a mail that cannot be imported is moved; unset: it stays, flagged
    `\\Flagged \\Seen`. The raw mail is kept under `data_dir/quarantine/` either way."""
    poll_seconds: int = Field(default=60, ge=1, le=86400)
    """Seconds between polls when the server has no IDLE; with IDLE, how often IDLE is
    re-issued (at most 25 minutes)."""
    idle: bool = True
    """Wait in IMAP IDLE when the server offers it (new mail arrives within a second)."""
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """A larger mail becomes a ticket with its headers and a note, and stays on the server
    flagged."""
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Timeout of every IMAP command and of the connection."""
    cafile: Path | None = Field(default=None, examples=["private-ca.pem"])
    """A CA certificate file for a server with a private CA (else the system's CAs)."""
    max_attempts: int = Field(default=3, ge=1, le=100)
    """A mail whose import fails this often (a database constraint, a failing event action)
    is quarantined."""
    parse_timeout_seconds: float = Field(default=30.0, gt=0, le=3600)
    """Parsing one mail may take this long; the parser process is killed after it and the
    mail quarantined."""
    stall_seconds: float | None = Field(default=None, gt=0, le=86400, examples=[240.0])
    """An account with work in hand that makes no progress this long is reconnected by its
    supervisor; unset: twice the longer of `timeout_seconds` and `parse_timeout_seconds`.

    Check: an error when it is not above `timeout_seconds` and `parse_timeout_seconds`."""

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    @property
    def effective_stall_seconds(self) -> float:
        if self.stall_seconds is not None:
            return self.stall_seconds
        return 2 * max(self.timeout_seconds, self.parse_timeout_seconds)


class SmtpSettings(_ServerLogin):
    """`[accounts.smtp]`: how the account's mail is sent."""

    host: str = Field(min_length=1, examples=["smtp.shop.example"])
    """The SMTP server's host name or address."""
    port: int | None = Field(default=None, ge=1, le=65535, examples=[465])
    """The server's port; unset: 465 for `tls`, 587 for `starttls`, 25 for `none`."""
    security: Literal["tls", "starttls", "none"] = "tls"
    """`tls` (implicit TLS), `starttls` (required: never continues in plain text) or `none`.
    Certificates are always verified.

    Check: `none` on a host that is not loopback is an error."""
    auth: Literal["password", "oauth2"] = "password"
    """How gatewayd logs in: `password`, or `oauth2` with a token from the account's
    `[accounts.oauth2]`.

    Check: `oauth2` without `[accounts.oauth2]`, or with a password set, is an error."""
    username: str | None = Field(default=None, examples=["support@shop.example"])
    """The login name; unset: no SMTP AUTH (with `auth = "oauth2"`: the account's address)."""
    password: SecretStr | None = None
    """The password, written into the file. Prefer `password_file` or a systemd credential."""
    password_file: Path | None = Field(default=None, examples=["credentials/support-smtp"])
    """A file holding the password; as for IMAP, a missing file falls back to the systemd
    credential of that name, and no password key to the credential `<account>-smtp`.

    Check: an error when an active account with a `username` has no readable password."""
    sender_name: str = Field(default="", examples=["Shop Kundenservice"])
    """The display name in the From header (the address is the account's `address`)."""
    reply_to: str | None = Field(default=None, examples=["support@shop.example"])
    """The Reply-To address of the account's mails.

    Check: an error when it is not an e-mail address."""
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    """Timeout of the connection and every SMTP command."""
    cafile: Path | None = Field(default=None, examples=["private-ca.pem"])
    """A CA certificate file for a server with a private CA (else the system's CAs)."""

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587, "none": 25}[self.security]


class Account(StrictModel):
    """`[[accounts]]` (at most 20): a support mailbox. It imports mail when it has `[imap]`
    and sends its tickets' mail when it has `[smtp]`."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", examples=["support"])
    """The account's name (letters, digits, `.`, `_`, `-`): in tickets, logs, `status`,
    `test-fetch ACCOUNT` and credential names.

    Check: duplicates are an error; more than 20 accounts are an error."""
    address: str = Field(examples=["support@shop.example"])
    """The mailbox's address: the From of its mails.

    Check: an error when it is not an e-mail address."""
    active: bool = True
    """An inactive account is neither polled nor used for sending: its outgoing mail waits in
    the outbox (`status` and `GET /api/outbox` say so), and it needs no password.

    Check: a warning when mail would wait because of it (forms are answered through it, or
    it imports mail that event actions answer)."""
    language: str | None = Field(default=None, examples=["de"])
    """The language of its new tickets when the contact has none."""
    new_ticket: TicketRef
    """Type and status of tickets made from its mail, e.g.
    `{ type = "Kundenanfrage", status = "Neu" }`."""
    imap: ImapSettings | None = None
    """Where its mail is read; without it the account only sends."""
    smtp: SmtpSettings | None = None
    """How its mail is sent; without it, mail of its tickets waits in the outbox.

    Check: a warning when it is missing on an account that imports mail event actions
    answer."""
    oauth2: OAuth2Settings | None = None
    """OAuth2 for logins with `auth = "oauth2"` (Microsoft 365, Google); see
    docs/providers.md.

    Check: a warning when set but no login uses it."""
    aliases: list[str] = Field(default=[], examples=[["info@shop.example"]])
    """More addresses that lead to this account when the MTA hands mail over LMTP (`[lmtp]`,
    docs/lmtp.md); `address` always does. Compared without regard to case.

    Check: an error when one is not an e-mail address or is already an address of this or
    another account; with `[lmtp]`, two accounts sharing one `address` is an error too."""

    @property
    def polled(self) -> bool:
        """Whether a poller reads its mail: active, with `[accounts.imap]`."""
        return self.active and self.imap is not None

    @property
    def addresses(self) -> list[str]:
        """Every address of the account, lower-cased, the main address first."""
        return list(dict.fromkeys(a.lower() for a in [self.address, *self.aliases]))
