"""The configuration's schema: every key, its type and default, as pydantic models.

Each model forbids unknown keys and is frozen; cross-references between tables are checked in
`gatewayd.config.checks`, reading and resolving the file in `gatewayd.config.load`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, SecretStr, field_validator

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
_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")  # de, en, pt-br: template names
_ADDRESS_RE = re.compile(r"^[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: where, what, and how to fix it."""

    key: str
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def format(self, file: Path | str) -> str:
        return f"{file}:{self.key}: {self.message} — {self.fix}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` says why, each with its key and fix."""

    def __init__(self, file: Path | str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.format(file) for p in problems))


def is_address(value: str) -> bool:
    return bool(_ADDRESS_RE.match(value))


def language_code(value: str | None) -> str | None:
    """A validator: a language code as the templates' file names use it."""
    if value is not None and not _LANGUAGE_RE.match(value):
        raise ValueError(f"{value!r} is not a language code — use e.g. \"de\" or \"en\" "
                         "(lower case, as the templates' file names)")
    return value


def in_language(value: str | dict[str, str] | None, languages: list[str]) -> str | None:
    """A text given once or per language (`{ de = "...", en = "..." }`): the first of
    `languages` it has, else its first translation."""
    if value is None or isinstance(value, str):
        return value
    for language in languages:
        if language in value:
            return value[language]
    return next(iter(value.values()), None)


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusGroup(_Model):
    name: str = Field(min_length=1)


class Status(_Model):
    name: str = Field(min_length=1)
    progress: int = Field(ge=0, le=100)
    group: str = Field(min_length=1)


class TicketType(_Model):
    name: str = Field(min_length=1)
    statuses: list[Status] = Field(min_length=1)

    def status(self, name: str) -> Status | None:
        return next((s for s in self.statuses if s.name == name), None)


class Role(_Model):
    name: str = Field(min_length=1)


class Owner(_Model):
    name: str = Field(min_length=1)
    email: str | None = None
    role: str | None = None
    greeting: str = ""
    signature: str = ""


class TicketRef(_Model):
    type: str
    status: str


@dataclass(frozen=True)
class OAuthBinding:
    """What a login step needs to get an account's OAuth2 token: set when the file is read
    (never a key of the file), so the IMAP and SMTP clients need no more arguments."""

    account: str
    settings: OAuth2Settings
    data_dir: Path


class OAuth2Settings(_Model):
    """`[accounts.oauth2]`: where and how the account gets its OAuth2 access tokens."""

    provider: Literal["microsoft", "google", "custom"]
    # Default by provider: microsoft → client_credentials (app-only), others → refresh_token.
    flow: Literal["client_credentials", "refresh_token"] | None = None
    tenant: str | None = None  # microsoft: the directory (tenant) ID or a verified domain
    client_id: str | None = None
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    token_url: str | None = None  # the provider's own by default
    device_authorization_url: str | None = None  # the provider's own by default
    authorization_url: str | None = None  # the browser login (google); the provider's own
    scopes: list[str] | None = None  # the provider's defaults for the flow when unset
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)  # every token request
    refresh_margin_seconds: float = Field(default=300.0, ge=0)  # renew this long before expiry

    @property
    def effective_flow(self) -> Literal["client_credentials", "refresh_token"]:
        if self.flow is not None:
            return self.flow
        return "client_credentials" if self.provider == "microsoft" else "refresh_token"


class ImapSettings(_Model):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    auth: Literal["password", "oauth2"] = "password"
    username: str = Field(min_length=1)
    password: SecretStr | None = None
    password_file: Path | None = None
    folder: str = "INBOX"
    after_import: Literal["move", "delete"] = "move"
    move_to: str = "Imported"
    quarantine_folder: str | None = None
    poll_seconds: int = Field(default=60, ge=1, le=86400)
    idle: bool = True
    max_message_bytes: int = Field(default=25 * 1024 * 1024, ge=1024)
    timeout_seconds: float = Field(default=60.0, gt=0)
    cafile: Path | None = None
    # A mail whose import fails this often is quarantined; parsing one mail may take this long.
    max_attempts: int = Field(default=3, ge=1, le=100)
    parse_timeout_seconds: float = Field(default=30.0, gt=0)
    # An account with work in hand that makes no progress this long is reconnected by its
    # supervisor; unset: twice the longer of timeout_seconds and parse_timeout_seconds.
    stall_seconds: float | None = Field(default=None, gt=0)
    _oauth: OAuthBinding | None = PrivateAttr(default=None)

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)

    @property
    def oauth(self) -> OAuthBinding | None:
        """The account's OAuth2 settings when `auth = "oauth2"` (bound when the file is read)."""
        return self._oauth

    @property
    def effective_stall_seconds(self) -> float:
        if self.stall_seconds is not None:
            return self.stall_seconds
        return 2 * max(self.timeout_seconds, self.parse_timeout_seconds)


class SmtpSettings(_Model):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    auth: Literal["password", "oauth2"] = "password"
    username: str | None = None  # with auth = "oauth2": the account's address when unset
    password: SecretStr | None = None
    password_file: Path | None = None
    sender_name: str = ""
    reply_to: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    cafile: Path | None = None
    _oauth: OAuthBinding | None = PrivateAttr(default=None)

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587, "none": 25}[self.security]

    @property
    def oauth(self) -> OAuthBinding | None:
        """The account's OAuth2 settings when `auth = "oauth2"` (bound when the file is read)."""
        return self._oauth


class Account(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    address: str
    active: bool = True
    language: str | None = None
    new_ticket: TicketRef
    imap: ImapSettings | None = None
    smtp: SmtpSettings | None = None
    oauth2: OAuth2Settings | None = None


class EventFilter(_Model):
    types: list[str] = []
    statuses: list[str] = []
    status_groups: list[str] = []
    sources: list[Literal["mail", "form", "api"]] = []
    accounts: list[str] = []
    owners: list[str] = []
    priorities: list[int] = []
    confidential: bool | None = None

    @field_validator("priorities")
    @classmethod
    def _priority_range(cls, value: list[int]) -> list[int]:
        for p in value:
            if not 0 <= p <= 5:
                raise ValueError(f"priority {p} is outside 0–5 — use priorities from 0 to 5")
        return value


class EventAction(_Model):
    send_template: str | None = None
    to: str | None = None
    set_status: str | None = None
    set_owner: str | None = None


class EventRule(_Model):
    name: str = Field(min_length=1)
    on: Literal[
        "ticket_created", "customer_message", "staff_message", "comment_added", "status_changed"
    ]
    active: bool = True
    filter: EventFilter = EventFilter()
    actions: list[EventAction] = Field(min_length=1)


class FormField(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    type: Literal[
        "email", "text", "textarea", "subject", "message", "order_id", "attachment", "phone", "name"
    ]
    required: bool = False
    label: str | dict[str, str] | None = None  # one text, or one per language
    max_length: int | None = Field(default=None, ge=1)


class Form(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ticket: TicketRef
    # The language of the form's pages, texts and ticket; unset: the post's `lang` field, else
    # the browser's Accept-Language, else default_language.
    language: str | None = None
    # The page's heading: one text, or one per language ({ de = "Kontakt", en = "Contact" }).
    title: str | dict[str, str] | None = None
    success_url: str | None = None
    allowed_origins: list[str] = []
    fields: list[FormField] = Field(min_length=1)
    # Abuse protection (see README "Shop forms"); every limit has a safe default.
    max_body_bytes: int = Field(default=12 * 1024 * 1024, ge=1024)  # 413 above, before parsing
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)  # per file
    max_attachments: int = Field(default=5, ge=0)  # files per submission
    honeypot: str = Field(default="website", pattern=r"^([A-Za-z0-9_.-]+)?$")  # "" switches off
    rate_limit: int = Field(default=10, ge=0)  # posts per client IP and window; 0 switches off
    rate_limit_window_seconds: int = Field(default=600, ge=1)
    trusted_proxies: list[str] = []  # IPs/CIDRs whose X-Forwarded-For is believed
    hmac_secret: SecretStr | None = None  # signed server-to-server posts
    hmac_secret_file: Path | None = None
    require_signature: bool = False  # refuse unsigned posts (401)
    signature_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    recipient_daily_cap: int = Field(default=5, ge=0)  # submissions per e-mail address a day; 0 off

    _language = field_validator("language")(language_code)


class ScheduledFilter(_Model):
    types: list[str] = []
    statuses: list[str] = []
    status_groups: list[str] = []
    folders: list[str] = []
    tags: list[str] = []
    last_status_change_days: int | None = Field(default=None, ge=0)


class Scheduled(_Model):
    name: str = Field(min_length=1)
    at: str = Field(pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    active: bool = True
    filter: ScheduledFilter = ScheduledFilter()
    action: Literal["delete", "set_status", "move_to_folder"]
    status: str | None = None
    folder: str | None = None


class Routing(_Model):
    """`[routing]`: words this shop's customers write before a number, beside the manual's
    keywords (each is followed by the number, like "Vorgangsnummer 4711"). A number found
    through one of them links only what exists and adds no note."""

    ticket_aliases: list[str] = []
    customer_aliases: list[str] = []
    order_aliases: list[str] = []
    invoice_aliases: list[str] = []


class Outbound(_Model):
    """`[outbound]`: the sender, loop protection and template limits (all optional)."""

    signature: str = ""  # the system signature: manual sends and tickets without an owner
    greeting: str = ""
    # at most one automatic mail per address and template within this window
    auto_reply_window_hours: float = Field(default=24.0, ge=0)
    daily_cap: int = Field(default=40, ge=1)  # automatic mails per recipient in 24 hours
    poll_seconds: float = Field(default=2.0, gt=0)
    batch_size: int = Field(default=50, ge=1, le=1000)
    max_attempts: int = Field(default=10, ge=1)
    retry_base_seconds: float = Field(default=60.0, gt=0)
    retry_max_seconds: float = Field(default=6 * 3600.0, gt=0)
    claim_timeout_seconds: float = Field(default=600.0, gt=0)  # a `sending` row older is re-queued
    # SMTP connections one account may use at once when its queue is long (see sender).
    connections_per_account: int = 2
    render_timeout_seconds: float = Field(default=2.0, gt=0)
    max_render_bytes: int = Field(default=1_000_000, ge=1024)


class Http(_Model):
    listen: str = "127.0.0.1:8080"
    api_tokens: list[SecretStr] = []
    api_tokens_file: Path | None = None

    @field_validator("listen")
    @classmethod
    def _listen_form(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"{value!r} is not HOST:PORT — use e.g. \"127.0.0.1:8080\"")
        return value

    @property
    def host(self) -> str:
        return self.listen.rpartition(":")[0].strip("[]")

    @property
    def port(self) -> int:
        return int(self.listen.rpartition(":")[2])


class Config(_Model):
    """The whole validated configuration. Paths are absolute; secrets are loaded."""

    mode: Literal["test", "live"] = "test"
    test_recipient: str | None = None
    database_url: str = "sqlite://var/gatewayd.sqlite3"
    data_dir: Path = Path("var")
    default_language: str = "de"
    language_fallback: list[str] = ["de", "en"]
    templates_dir: Path = Path("templates")
    merchant_address: str | None = None
    # the merchant's info mails about form submissions; unset: default_language
    merchant_language: str | None = None
    backend_ticket_url: str = "http://127.0.0.1:8080/tickets/{id}"
    customer_ticket_url: str = ""
    message_id_domain: str = "gatewayd.invalid"
    http: Http = Http()
    status_groups: list[StatusGroup] = []
    ticket_types: list[TicketType] = []
    roles: list[Role] = []
    owners: list[Owner] = []
    accounts: list[Account] = []
    events: list[EventRule] = []
    forms: list[Form] = []
    scheduled: list[Scheduled] = []
    outbound: Outbound = Outbound()
    routing: Routing = Routing()

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
