"""The configuration's schema: every key, its type, default and meaning, as pydantic models.

The whole file is `Config`; its tables live beside it by concern (`tickets`, `accounts`,
`rules`, `forms`) and are re-exported here. Each model forbids unknown keys and is frozen;
cross-references between tables are checked in `gatewayd.config.checks`, reading and resolving
the file in `gatewayd.config.load`. The docstring under each field is its documentation:
`python -m gatewayd.config.reference` turns them into docs/configuration.md (a paragraph
starting "Check:" says what `gatewayd check` reports about the key beyond its type). A new key
needs a docstring and an entry in gatewayd/skeleton/gatewayd.example.toml; tests/test_reference.py
fails until both are there and docs/configuration.md is regenerated.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gatewayd.config.accounts import Account, ImapSettings, SmtpSettings
from gatewayd.config.base import (
    ConfigError,
    Problem,
    StrictModel,
    check_listen,
    in_language,
    is_address,
    is_host_port,
    language_code,
    listen_host,
    listen_port,
)
from gatewayd.config.forms import Form, FormField
from gatewayd.config.oauth2 import OAuth2Settings, OAuthBinding
from gatewayd.config.rules import (
    EventAction,
    EventFilter,
    EventRule,
    Scheduled,
    ScheduledFilter,
)
from gatewayd.config.tickets import Owner, Role, Status, StatusGroup, TicketRef, TicketType

MAX_ACCOUNTS = 20
MAX_CONNECTIONS_PER_ACCOUNT = 10  # `[outbound] connections_per_account`
DEFAULT_SEARCH_PATHS = (Path("gatewayd.toml"), Path("/etc/gatewayd/gatewayd.toml"))
EVENT_NAMES = (
    "ticket_created", "customer_message", "staff_message", "comment_added", "status_changed"
)
SOURCES = ("mail", "form", "api")
NAMED_RECIPIENTS = (
    "customer",
    "order_billing",
    "order_delivery",
    "contact_private",
    "contact_business",
    "contact_paypal",
    "owners",
)

__all__ = [
    "DEFAULT_SEARCH_PATHS", "EVENT_NAMES", "MAX_ACCOUNTS", "NAMED_RECIPIENTS", "SOURCES",
    "Account", "Config", "ConfigError", "EventAction", "EventFilter", "EventRule", "Form",
    "FormField", "Http", "ImapSettings", "Lmtp", "Loopback", "OAuth2Settings", "OAuthBinding",
    "Outbound", "Owner", "Problem", "Role",
    "Routing", "Scheduled", "ScheduledFilter", "SmtpSettings", "Status", "StatusGroup",
    "TicketRef", "TicketType", "in_language", "is_address", "language_code",
]


class Routing(StrictModel):
    """`[routing]`: words this shop's customers write before a number, beside the manual's
    keywords (each is followed by the number, like "Vorgangsnummer 4711"). A number found
    through one of them links only what exists and adds no note (see docs/routing.md)."""

    ticket_aliases: list[str] = Field(default=[], examples=[["Vorgangsnummer"]])
    """More words for a ticket number.

    Check: an error for a value that is not a word (digits, no letters); a warning for one
    shorter than three letters."""
    customer_aliases: list[str] = Field(default=[], examples=[["Kundenkonto"]])
    """More words for a customer number (checked as `ticket_aliases`)."""
    order_aliases: list[str] = Field(default=[], examples=[["Bestellung Nr"]])
    """More words for an order number (checked as `ticket_aliases`)."""
    invoice_aliases: list[str] = Field(default=[], examples=[["Beleg"]])
    """More words for an invoice number (checked as `ticket_aliases`)."""


class Outbound(StrictModel):
    """`[outbound]`: the sender, loop protection and template limits (all optional)."""

    signature: str = Field(default="", examples=["Ihr Shop-Kundenservice"])
    """The system signature (`Signature`): manual sends and tickets without an owner."""
    greeting: str = Field(default="", examples=["Viele Grüße"])
    """The system greeting (`Greeting`): manual sends and tickets without an owner."""
    auto_reply_window_hours: float = Field(default=24.0, ge=0, le=87600)
    """At most one automatic mail per address and template within this many hours."""
    daily_cap: int = Field(default=40, ge=1)
    """At most this many automatic mails per recipient in 24 hours."""
    poll_seconds: float = Field(default=2.0, gt=0, le=3600)
    """How often the sender looks for due mail (it is also woken when a row is queued)."""
    batch_size: int = Field(default=50, ge=1, le=1000)
    """Rows claimed and sent per cycle."""
    max_attempts: int = Field(default=10, ge=1)
    """A mail is `failed` after this many temporary failures."""
    retry_base_seconds: float = Field(default=60.0, gt=0, le=2592000)
    """The first retry's delay; it doubles with each attempt."""
    retry_max_seconds: float = Field(default=6 * 3600.0, gt=0, le=2592000)
    """The longest delay between retries."""
    claim_timeout_seconds: float = Field(default=600.0, gt=0, le=86400)
    """A row left `sending` longer (its process died) is queued again."""
    connections_per_account: int = 2
    """SMTP connections one account may use at once when its queue is long.

    Check: an error outside 1–10 (2 suits most providers; many refuse more than a few
    connections from one client)."""
    render_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    """Longest time one template render may take."""
    max_render_bytes: int = Field(default=1_000_000, ge=1024)
    """Largest text one render may produce."""


class Http(StrictModel):
    """`[http]`: the JSON API, the shop forms, `/healthz` and `/metrics`."""

    listen: str = "127.0.0.1:8080"
    """`HOST:PORT` to listen on (`[::1]:8080` for IPv6). Needs a restart to change.

    Check: an error when it is not HOST:PORT."""
    api_tokens: list[SecretStr] = Field(default=[])
    """Bearer tokens for `/api`, written into the file. Prefer `api_tokens_file`.

    Check: a token shorter than 16 characters is an error."""
    api_tokens_file: Path | None = Field(default=None, examples=["api-tokens"])
    """A file with one token a line (`#` starts a comment), or the systemd credential of that
    file name; without either, the credential `api-tokens` is used.

    Check: an error when it cannot be read."""

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, value: str) -> str:
        return check_listen(value)

    @property
    def host(self) -> str:
        return listen_host(self.listen)

    @property
    def port(self) -> int:
        return listen_port(self.listen)


class Lmtp(StrictModel):
    """`[lmtp]`: the shop's own MTA (Postfix, Exim) hands mail to gatewayd over LMTP, no
    polling: each recipient gets 250 only once the mail is stored (docs/lmtp.md). Recipients
    are the accounts' `address` and `aliases`; any other gets 550. Absent: no listener.

    Check: a warning when no account is active (every recipient would be refused)."""

    listen: str = Field(default="127.0.0.1:2424", examples=["unix:/run/gatewayd/lmtp.sock"])
    """`HOST:PORT` or `unix:PATH` (relative to the configuration file). When systemd passes a
    socket named `lmtp` (systemd/gatewayd.socket), that one is served and this is not bound.
    Needs a restart to change.

    Check: an error when it is neither; an error when the host is not loopback and
    `allow_remote` is false."""
    allow_remote: bool = False
    """Allow a `listen` address other machines can reach (firewall it to your MTA)."""
    socket_mode: int = Field(default=0o660, ge=0, le=0o777)
    """The mode of a unix socket gatewayd creates itself, written as an octal TOML number:
    `0o660` (= 432: read and write for owner and group). The MTA's user needs write permission
    on it."""
    max_sessions: int = Field(default=20, ge=1, le=1000)
    """Concurrent LMTP sessions; one more is told 421 and closed (the MTA tries again)."""
    timeout_seconds: float = Field(default=300.0, gt=0, le=3600)
    """A client that sends nothing for this long is dropped (time spent storing its mail does
    not count)."""
    max_recipients: int = Field(default=100, ge=1, le=10000)
    """Recipients per transaction; more are told 452 (the MTA sends them again)."""
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    """The size limit of an account without `[accounts.imap]` (which has its own); a larger
    mail is refused with 552, on `SIZE=` before its data."""

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, value: str) -> str:
        if value.startswith("unix:"):
            if len(value) == len("unix:"):
                raise ValueError("unix: needs a path — use e.g. \"unix:/run/gatewayd/lmtp.sock\"")
            return value
        if not is_host_port(value):
            raise ValueError(f"{value!r} is neither HOST:PORT nor unix:PATH — use e.g. "
                             "\"127.0.0.1:2424\" or \"unix:/run/gatewayd/lmtp.sock\"")
        return value

    @property
    def unix_path(self) -> Path | None:
        return Path(self.listen[len("unix:"):]) if self.listen.startswith("unix:") else None

    @property
    def host(self) -> str:
        return listen_host(self.listen)

    @property
    def port(self) -> int:
        return listen_port(self.listen)


class Loopback(StrictModel):
    """`[loopback]`: try gatewayd without a mail server. When the table is present, `gatewayd
    run` starts an embedded IMAP server (in memory) and an SMTP sink on loopback. Accounts whose
    IMAP `host:port` is `imap_listen` are its mailboxes (their username and password), and mail
    the sink receives for one of their addresses lands in that mailbox; every other mail it
    receives is written to `sink_folder`. `gatewayd init --loopback DIR` writes a configuration
    that uses it. Changes to it, and accounts added to it, apply at the next start (not at a
    reload).

    Check: an error when a listen address is not on loopback; a warning in live mode."""

    imap_listen: str = "127.0.0.1:10143"
    """`HOST:PORT` of the embedded IMAP server (plain text: loopback only)."""
    smtp_listen: str = "127.0.0.1:10025"
    """`HOST:PORT` of the SMTP sink (plain text, no login)."""
    sink_folder: Path = Path("var/loopback-sink")
    """Where the sink writes each mail it receives as a `.eml` file (relative to the
    configuration file); `gatewayd status` counts them."""
    sample_mails: bool = True
    """At the first start (per `data_dir`), deliver sample mails into the first mailbox and
    add the order they name (a contact with order 1001)."""

    @field_validator("imap_listen", "smtp_listen")
    @classmethod
    def _listen_form(cls, value: str) -> str:
        return check_listen(value)

    @property
    def imap_host(self) -> str:
        return listen_host(self.imap_listen)

    @property
    def imap_port(self) -> int:
        return listen_port(self.imap_listen)

    @property
    def smtp_host(self) -> str:
        return listen_host(self.smtp_listen)

    @property
    def smtp_port(self) -> int:
        return listen_port(self.smtp_listen)


class Config(StrictModel):
    """The whole validated configuration. Paths are absolute; secrets are loaded."""

    mode: Literal["test", "live"] = "test"
    """`test`: every outbound mail goes to `test_recipient` only, whatever its recipients;
    `live`: mail goes to its real recipients. Live mode is switched on explicitly."""
    test_recipient: str | None = Field(default=None, examples=["qa@shop.example"])
    """The only address that receives mail in test mode.

    Check: required in test mode; an error when it is not an e-mail address."""
    database_url: str = Field(default="sqlite://var/gatewayd.sqlite3",
                              examples=["postgres://gatewayd@127.0.0.1:5432/gatewayd"])
    """`sqlite://PATH` (relative to the configuration file; one instance) or
    `postgres://user@host:5432/db` (several instances may share it). Needs a restart.

    Check: an error for another scheme."""
    data_dir: Path = Path("var")
    """Attachments (`blobs/`), quarantined mails (`quarantine/`) and other files (relative to
    the configuration file). Needs a restart."""
    default_language: str = "de"
    """The language of tickets, contacts and orders that have none."""
    language_fallback: list[str] = Field(default=["de", "en"])
    """Languages tried in order when a template lacks the wanted one (the fallback is logged).

    Check: every template is rendered in every configured language; a missing translation is
    a warning when a fallback exists, else an error."""
    templates_dir: Path = Path("templates")
    """The templates: `<template>/<lang>.subject`, `<lang>.txt`, optional `<lang>.html`, and
    `_header/` and `_footer/` per language (relative to the configuration file).

    Check: missing or empty headers and footers, undefined variables, syntax errors and
    sandbox violations are reported."""
    merchant_address: str | None = Field(default=None, examples=["owner@shop.example"])
    """Receives the info mail about every form submission.

    Check: an error when it is not an address; a warning when forms exist without it."""
    merchant_language: str | None = Field(default=None, examples=["de"])
    """The language of the merchant's info mails about form submissions; unset:
    `default_language`.

    Check: an error when it is not a language code."""
    backend_ticket_url: str = Field(default="",
                                    examples=["https://backend.shop.example/tickets/{id}"])
    """The staff's page of a ticket, `{id}` replaced by its number: the `TicketBackendURL`
    variable and the link in the merchant's info mail. Unset: mails carry no link.

    Check: an error without `{id}`; a warning when unset."""
    customer_ticket_url: str = Field(default="",
                                     examples=["https://shop.example/my-account/tickets/{id}"])
    """The customer's page of a ticket (`TicketURL`), `{id}` replaced; unset: empty.

    Check: an error without `{id}`."""
    message_id_domain: str = Field(default="gatewayd.invalid", examples=["tickets.shop.example"])
    """The domain of the Message-IDs gatewayd writes; mail coming back with such an ID is
    gatewayd's own and is not imported.

    Check: an error when it is not a domain name."""
    http: Http = Http()
    """The HTTP listener and API tokens."""
    status_groups: list[StatusGroup] = Field(default=[])
    """The status groups."""
    ticket_types: list[TicketType] = Field(default=[])
    """The ticket types with their statuses."""
    roles: list[Role] = Field(default=[])
    """Owner roles."""
    owners: list[Owner] = Field(default=[])
    """Ticket owners."""
    accounts: list[Account] = Field(default=[])
    """The support mailboxes, at most 20. Forms and API tickets are answered through the
    first active account with SMTP (the manual's "first configured account")."""
    events: list[EventRule] = Field(default=[])
    """Event actions."""
    forms: list[Form] = Field(default=[])
    """Shop forms."""
    scheduled: list[Scheduled] = Field(default=[])
    """Scheduled actions."""
    outbound: Outbound = Outbound()
    """Sender and loop-protection settings."""
    routing: Routing = Routing()
    """This shop's own words before ticket, customer, order and invoice numbers."""
    loopback: Loopback | None = None
    """Embedded IMAP server and SMTP sink for trying gatewayd out; absent: off."""
    lmtp: Lmtp | None = None
    """The LMTP listener for mail the shop's own MTA hands over; absent: off."""

    _merchant_language = field_validator("merchant_language")(language_code)

    # The file the configuration came from (not a key of the file).
    source: Path | None = Field(default=None, exclude=True)

    def ticket_type(self, name: str) -> TicketType | None:
        return next((t for t in self.ticket_types if t.name == name), None)

    def status(self, type_name: str, status_name: str) -> Status | None:
        ticket_type = self.ticket_type(type_name)
        return ticket_type.status(status_name) if ticket_type else None

    def account(self, name: str) -> Account | None:
        return next((a for a in self.accounts if a.name == name), None)

    def form(self, name: str) -> Form | None:
        return next((f for f in self.forms if f.name == name), None)

    def owner(self, name: str) -> Owner | None:
        return next((o for o in self.owners if o.name == name), None)

    @property
    def answering_account(self) -> Account | None:
        """The account that sends for tickets without one of their own (forms, API): the
        manual's "first configured account", skipping accounts that are inactive or have no
        SMTP. When none can send, the first active account, else the first: its mail then
        waits in the outbox saying why (see `gatewayd.outbound.waiting`)."""
        for candidates in ([a for a in self.accounts if a.active and a.smtp is not None],
                           [a for a in self.accounts if a.active], self.accounts):
            if candidates:
                return candidates[0]
        return None

    @property
    def default_ticket(self) -> TicketRef:
        """Type and status for tickets created without one (API): the first configured."""
        first = self.ticket_types[0]
        return TicketRef(type=first.name, status=first.statuses[0].name)

    @property
    def api_token_values(self) -> list[str]:
        return [t.get_secret_value() for t in self.http.api_tokens]

    @property
    def languages(self) -> list[str]:
        """Every language the configuration names, default first, without repeats."""
        found = [self.default_language, *self.language_fallback]
        found += [a.language for a in self.accounts if a.language]
        return list(dict.fromkeys(found))
