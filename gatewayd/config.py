"""The configuration file: one TOML file, validated with pydantic.

Every problem is reported as `file:key: what is wrong — how to fix`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import ipaddress
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

MAX_ACCOUNTS = 20
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


class ImapSettings(_Model):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
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

    @property
    def effective_port(self) -> int:
        return self.port or (993 if self.security == "tls" else 143)


class SmtpSettings(_Model):
    host: str = Field(min_length=1)
    port: int | None = Field(default=None, ge=1, le=65535)
    security: Literal["tls", "starttls", "none"] = "tls"
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    sender_name: str = ""
    reply_to: str | None = None
    timeout_seconds: float = Field(default=60.0, gt=0)
    cafile: Path | None = None

    @property
    def effective_port(self) -> int:
        return self.port or {"tls": 465, "starttls": 587, "none": 25}[self.security]


class Account(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    address: str
    active: bool = True
    language: str | None = None
    new_ticket: TicketRef
    imap: ImapSettings | None = None
    smtp: SmtpSettings | None = None


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
    label: str | None = None
    max_length: int | None = Field(default=None, ge=1)


class Form(_Model):
    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$")
    ticket: TicketRef
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


# --------------------------------------------------------------------------- loading


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The contract's search order: --config, $GATEWAYD_CONFIG, ./gatewayd.toml, /etc/gatewayd/."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("GATEWAYD_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_SEARCH_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_SEARCH_PATHS[0]


def load_config(path: str | os.PathLike[str], *, read_secrets: bool = True) -> Config:
    """Read, validate and resolve a configuration file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path,
            [Problem("-", "the configuration file does not exist",
                     "create it with `gatewayd init DIR` or pass --config PATH")],
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            path,
            [Problem("-", f"cannot read the file ({exc})", "check its permissions and encoding")],
        ) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        key = f"line {where.group(1)}" if where else "-"
        raise ConfigError(
            path, [Problem(key, f"not valid TOML: {exc}",
                           "fix the syntax there (strings need quotes, tables [name], "
                           "lists [a, b])")]
        ) from None
    return config_from_dict(data, path, read_secrets=read_secrets)


def config_from_dict(
    data: dict[str, Any], path: Path, *, read_secrets: bool = True
) -> Config:
    base = path.resolve().parent
    if "source" in data:
        raise ConfigError(path, [Problem("source", "unknown key", "remove it")])
    dated = list(_toml_dates(data, ()))
    if dated:
        raise ConfigError(path, [
            Problem(_key_path(loc, data), f"a TOML date/time is not allowed here (got {v})",
                    f'write it as a quoted string, e.g. "{v}"') for loc, v in dated
        ])
    try:
        # Strict, as JSON: TOML has types, so "993" for a port or "yes" for a flag is reported
        # instead of silently converted; strings still become paths and secrets.
        config = Config.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        raise ConfigError(path, [_problem_from_pydantic(e, data) for e in exc.errors()]) from None
    config = _resolve_paths(config, base, path.resolve())
    problems = [p for p in check_semantics(config) if p.severity == "error"]
    if read_secrets:
        config, secret_problems = _load_secrets(config)
        problems += secret_problems
    if problems:
        raise ConfigError(path, problems)
    return config


_FIXES = {
    "extra_forbidden": "remove it or correct its spelling (see gatewayd.example.toml)",
    "missing": "add it (see gatewayd.example.toml)",
    "int_type": "use a whole number",
    "int_parsing": "use a whole number",
    "bool_type": "use true or false",
    "bool_parsing": "use true or false",
    "string_type": "use a quoted string",
    "list_type": "use a list, e.g. [\"a\", \"b\"]",
    "model_type": "use a table",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "greater_than": "use a larger value",
    "too_short": "add at least one entry",
    "string_too_short": "give it a non-empty value",
    "string_pattern_mismatch": "use only letters, digits, '.', '_' and '-' (or the format shown)",
    "float_type": "use a number",
    "float_parsing": "use a number",
}


Loc = tuple[int | str, ...]


def _toml_dates(node: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every TOML date, time or datetime value with its location (no key of ours takes one)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _toml_dates(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _toml_dates(value, (*loc, index))
    elif isinstance(node, dt.date | dt.time):
        yield loc, node.isoformat()


def _keys_at(loc: Loc) -> list[str]:
    """The keys the configuration accepts at a location (for "did you mean"). Pure."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = None
        for candidate in (field.annotation, *_type_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        if model is None:
            return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _type_args(annotation: Any) -> list[Any]:
    found: list[Any] = []
    for arg in typing.get_args(annotation):
        found += [arg, *_type_args(arg)]
    return found


def _is_secret_key(loc: Loc) -> bool:
    return any(isinstance(p, str) and ("password" in p or "token" in p or "secret" in p)
               for p in loc)


def _key_path(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f"({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "-"


def _problem_from_pydantic(error: Any, data: dict[str, Any]) -> Problem:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = error["type"]
    got = error.get("input")
    # Never echo what was given for a password, token or secret, even when it is the wrong type.
    shown = "a value that is not shown (secret)" if _is_secret_key(loc) else repr(got)
    fix = _FIXES.get(kind, "correct the value (see gatewayd.example.toml)")
    message = error["msg"]
    if kind == "literal_error":
        message = f"{shown} is not allowed here"
        fix = f"use one of {error.get('ctx', {}).get('expected', '')}"
    elif kind == "extra_forbidden":
        message = "unknown key"
        known = _keys_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        if close:
            fix = f"did you mean {close[0]!r}? Otherwise remove it"
        elif known:
            fix = f"remove it, or use one of the keys here: {', '.join(known)}"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "string_pattern_mismatch":
        message = f"{shown} does not have the expected form"
        if loc and loc[-1] == "at":
            fix = 'use a 24-hour time HH:MM in quotes, e.g. "03:00"'
    elif kind == "value_error":
        # Validators write "what is wrong — how to fix".
        text = str(error.get("ctx", {}).get("error", message))
        message, _, own_fix = text.partition(" — ")
        fix = own_fix or fix
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {shown}"
        if isinstance(got, str) and kind.split("_")[0] in ("int", "bool", "float"):
            fix = f"{fix}, without quotes"
        elif kind == "string_type":
            fix = "put the value in double quotes"
    elif not isinstance(got, dict | list):
        message = f"{message} (got {shown})"
    return Problem(_key_path(loc, data), message, fix)


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a quoted string",
    "list_type": "a list",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
    "float_type": "a number",
    "float_parsing": "a number",
}


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (base / value)


def _resolve_paths(config: Config, base: Path, source: Path) -> Config:
    db = config.database_url
    if db.startswith("sqlite://") and db != "sqlite://:memory:":
        rest = db[len("sqlite://"):]
        db_path, sep, query = rest.partition("?")
        if not Path(db_path).is_absolute():
            db = "sqlite://" + str(base / db_path) + (sep + query if sep else "")
    accounts = []
    for account in config.accounts:
        update: dict[str, Any] = {}
        if account.imap:
            update["imap"] = account.imap.model_copy(update={
                "password_file": _resolve(base, account.imap.password_file),
                "cafile": _resolve(base, account.imap.cafile),
            })
        if account.smtp:
            update["smtp"] = account.smtp.model_copy(update={
                "password_file": _resolve(base, account.smtp.password_file),
                "cafile": _resolve(base, account.smtp.cafile),
            })
        accounts.append(account.model_copy(update=update))
    return config.model_copy(update={
        "database_url": db,
        "data_dir": _resolve(base, config.data_dir),
        "templates_dir": _resolve(base, config.templates_dir),
        "http": config.http.model_copy(
            update={"api_tokens_file": _resolve(base, config.http.api_tokens_file)}
        ),
        "accounts": accounts,
        "forms": [f.model_copy(update={"hmac_secret_file": _resolve(base, f.hmac_secret_file)})
                  for f in config.forms],
        "source": source,
    })


def _read_secret_file(path: Path, key: str) -> tuple[str | None, Problem | None]:
    try:
        value = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        return None, Problem(
            key, f"cannot read {path} ({reason})",
            "create the file, fix its permissions, or give the secret through "
            "$CREDENTIALS_DIRECTORY (systemd LoadCredential)",
        )
    if not value:
        return None, Problem(key, f"{path} is empty", "put the secret into the file")
    return value, None


def _credential(name: str) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = Path(directory) / name
    return candidate if candidate.exists() else None


def _load_secrets(config: Config) -> tuple[Config, list[Problem]]:
    """Fill passwords and tokens from `*_file` keys or systemd credentials.

    A `*_file` whose file is missing falls back to the credential of the same file name in
    $CREDENTIALS_DIRECTORY, so a config that names /run/credentials/... works under systemd.
    """
    problems: list[Problem] = []
    accounts = []
    for index, account in enumerate(config.accounts):
        update: dict[str, Any] = {}
        if not account.active:  # an inactive account is not contacted: its secrets may be absent
            accounts.append(account)
            continue
        for proto in ("imap", "smtp"):
            settings: ImapSettings | SmtpSettings | None = getattr(account, proto)
            if settings is None or settings.password is not None:
                continue
            key = f"accounts[{index}]({account.name}).{proto}.password_file"
            source = settings.password_file
            if source is not None and not source.exists():
                source = _credential(source.name) or source
            if source is None:
                source = _credential(f"{account.name}-{proto}")
            if source is None:
                if proto == "imap" or settings.username:
                    problems.append(Problem(
                        f"accounts[{index}]({account.name}).{proto}.password",
                        "no password given",
                        f"set password_file, or provide the credential '{account.name}-{proto}' "
                        "in $CREDENTIALS_DIRECTORY",
                    ))
                continue
            value, problem = _read_secret_file(source, key)
            if problem:
                problems.append(problem)
                continue
            update[proto] = settings.model_copy(update={"password": SecretStr(value or "")})
        accounts.append(account.model_copy(update=update) if update else account)

    tokens = list(config.http.api_tokens)
    token_file = config.http.api_tokens_file
    if token_file is not None and not token_file.exists():
        token_file = _credential(token_file.name) or token_file
    if token_file is None:
        token_file = _credential("api-tokens")
    if token_file is not None:
        try:
            lines = token_file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            problems.append(Problem(
                "http.api_tokens_file", f"cannot read {token_file} ({exc.strerror})",
                "create the file with one token a line, or use http.api_tokens",
            ))
            lines = []
        tokens += [SecretStr(t.strip()) for t in lines if t.strip() and not t.startswith("#")]
    for token in tokens:
        if len(token.get_secret_value()) < 16:
            problems.append(Problem(
                "http.api_tokens", "an API token is shorter than 16 characters",
                "use long random tokens, e.g. from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`",
            ))
            break
    http = config.http.model_copy(update={"api_tokens": tokens})
    forms, form_problems = _load_form_secrets(config.forms)
    problems += form_problems
    return config.model_copy(update={"accounts": accounts, "http": http, "forms": forms}), problems


def _load_form_secrets(forms: list[Form]) -> tuple[list[Form], list[Problem]]:
    """A form's HMAC secret from `hmac_secret_file` (or the systemd credential of that name)."""
    problems: list[Problem] = []
    loaded = []
    for index, form in enumerate(forms):
        source = form.hmac_secret_file
        if form.hmac_secret is not None or source is None:
            loaded.append(form)
            continue
        if not source.exists():
            source = _credential(source.name) or source
        value, problem = _read_secret_file(source, f"forms[{index}]({form.name}).hmac_secret_file")
        if problem:
            problems.append(problem)
            loaded.append(form)
            continue
        loaded.append(form.model_copy(update={"hmac_secret": SecretStr(value or "")}))
    return loaded, problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_semantics(config: Config) -> list[Problem]:
    """Cross-references and rules pydantic cannot see on one field. Pure: no file access."""
    problems: list[Problem] = []
    add = problems.append
    groups = {g.name for g in config.status_groups}
    type_names = [t.name for t in config.ticket_types]

    if config.mode == "test" and not config.test_recipient:
        add(Problem("test_recipient", 'mode = "test" needs a test address',
                    'set test_recipient = "qa@your-shop.example" (or mode = "live")'))
    for key in ("test_recipient", "merchant_address"):
        value = getattr(config, key)
        if value and not is_address(value):
            add(Problem(key, f"{value!r} is not an e-mail address", "use name@domain.example"))
    if not config.ticket_types:
        add(Problem("ticket_types", "no ticket type is configured",
                    "add at least one [[ticket_types]] with its statuses"))
    if "{id}" not in config.backend_ticket_url:
        add(Problem("backend_ticket_url", "the URL has no {id} placeholder",
                    'use e.g. "https://backend.shop.example/tickets/{id}"'))
    if config.customer_ticket_url and "{id}" not in config.customer_ticket_url:
        add(Problem("customer_ticket_url", "the URL has no {id} placeholder",
                    'use e.g. "https://shop.example/my-account/tickets/{id}"'))
    if not re.match(r"^[A-Za-z0-9.-]+$", config.message_id_domain):
        add(Problem("message_id_domain", "not a domain name", 'use e.g. "tickets.shop.example"'))
    if not config.database_url.startswith(
        ("sqlite://", "postgres://", "postgresql://", "asyncpg://")
    ):
        scheme = config.database_url.split(":")[0]
        add(Problem("database_url", f"unsupported database URL scheme {scheme!r}",
                    'use "sqlite://PATH" or "postgres://user@host:5432/db"'))

    for key, names in (("status_groups", [g.name for g in config.status_groups]),
                       ("ticket_types", type_names),
                       ("roles", [r.name for r in config.roles]),
                       ("owners", [o.name for o in config.owners]),
                       ("accounts", [a.name for a in config.accounts]),
                       ("events", [e.name for e in config.events]),
                       ("forms", [f.name for f in config.forms]),
                       ("scheduled", [s.name for s in config.scheduled])):
        seen: set[str] = set()
        for index, name in enumerate(names):
            if name in seen:
                add(Problem(f"{key}[{index}]({name}).name", f"duplicate name {name!r}",
                            "give every entry a unique name"))
            seen.add(name)

    for ti, ticket_type in enumerate(config.ticket_types):
        seen_status: set[str] = set()
        for si, status in enumerate(ticket_type.statuses):
            key = f"ticket_types[{ti}]({ticket_type.name}).statuses[{si}]"
            if status.group not in groups:
                add(Problem(f"{key}.group", f"unknown status group {status.group!r}",
                            f"use one of {sorted(groups)} or add it under [[status_groups]]"))
            if status.name in seen_status:
                add(Problem(f"{key}.name", f"duplicate status {status.name!r}",
                            "give every status of a type a unique name"))
            seen_status.add(status.name)

    def check_ref(key: str, ref: TicketRef) -> None:
        ticket_type = config.ticket_type(ref.type)
        if ticket_type is None:
            add(Problem(f"{key}.type", f"unknown ticket type {ref.type!r}",
                        f"use one of {type_names}"))
        elif ticket_type.status(ref.status) is None:
            add(Problem(f"{key}.status", f"type {ref.type!r} has no status {ref.status!r}",
                        f"use one of {[s.name for s in ticket_type.statuses]}"))

    role_names = {r.name for r in config.roles}
    for oi, owner in enumerate(config.owners):
        if owner.role and owner.role not in role_names:
            add(Problem(f"owners[{oi}]({owner.name}).role", f"unknown role {owner.role!r}",
                        f"use one of {sorted(role_names)} or add it under [[roles]]"))
        if owner.email and not is_address(owner.email):
            add(Problem(f"owners[{oi}]({owner.name}).email", f"{owner.email!r} is not an address",
                        "use name@domain.example"))

    if len(config.accounts) > MAX_ACCOUNTS:
        add(Problem("accounts", f"{len(config.accounts)} accounts configured, at most "
                    f"{MAX_ACCOUNTS} are supported", "remove or merge accounts"))
    for ai, account in enumerate(config.accounts):
        key = f"accounts[{ai}]({account.name})"
        check_ref(f"{key}.new_ticket", account.new_ticket)
        if not is_address(account.address):
            add(Problem(f"{key}.address", f"{account.address!r} is not an e-mail address",
                        "use the mailbox's address, e.g. support@shop.example"))
        for proto in ("imap", "smtp"):
            settings = getattr(account, proto)
            if settings is not None and settings.security == "none" and not _is_loopback(
                settings.host
            ):
                add(Problem(f"{key}.{proto}.security",
                            f'security = "none" on the non-loopback host {settings.host!r} '
                            "would send the password in plain text",
                            'use "tls" or "starttls" (plain text is for 127.0.0.1 only)'))
        if account.imap and account.imap.after_import == "move" and not account.imap.move_to:
            add(Problem(f"{key}.imap.move_to", 'after_import = "move" needs a folder',
                        'set move_to = "Imported" or use after_import = "delete"'))
        if account.smtp and account.smtp.reply_to and not is_address(account.smtp.reply_to):
            add(Problem(f"{key}.smtp.reply_to", f"{account.smtp.reply_to!r} is not an address",
                        "use name@domain.example"))

    all_statuses = {s.name for t in config.ticket_types for s in t.statuses}
    owner_names = {o.name for o in config.owners}
    account_names = {a.name for a in config.accounts}
    for ei, event in enumerate(config.events):
        key = f"events[{ei}]({event.name})"
        flt = event.filter
        for ti, type_name in enumerate(flt.types):
            if config.ticket_type(type_name) is None:
                add(Problem(f"{key}.filter.types[{ti}]", f"unknown ticket type {type_name!r}",
                            f"use one of {type_names}"))
        for si, status_name in enumerate(flt.statuses):
            if status_name not in all_statuses:
                add(Problem(f"{key}.filter.statuses[{si}]", f"unknown status {status_name!r}",
                            f"use one of {sorted(all_statuses)}"))
        for gi, group in enumerate(flt.status_groups):
            if group not in groups:
                add(Problem(f"{key}.filter.status_groups[{gi}]", f"unknown status group {group!r}",
                            f"use one of {sorted(groups)}"))
        for ni, name in enumerate(flt.accounts):
            if name not in account_names:
                add(Problem(f"{key}.filter.accounts[{ni}]", f"unknown account {name!r}",
                            f"use one of {sorted(account_names)}"))
        for ni, name in enumerate(flt.owners):
            if name not in owner_names:
                add(Problem(f"{key}.filter.owners[{ni}]", f"unknown owner {name!r}",
                            f"use one of {sorted(owner_names)}"))
        for ai, action in enumerate(event.actions):
            akey = f"{key}.actions[{ai}]"
            chosen = [k for k in ("send_template", "set_status", "set_owner")
                      if getattr(action, k) is not None]
            if len(chosen) != 1:
                add(Problem(akey, "an action needs exactly one of send_template, set_status, "
                            "set_owner", 'e.g. { send_template = "staff_reply", to = "customer" }'))
                continue
            if action.send_template is not None:
                if not action.to:
                    add(Problem(f"{akey}.to", "send_template needs a recipient",
                                f"set to = one of {list(NAMED_RECIPIENTS)} or an address"))
                elif action.to not in NAMED_RECIPIENTS and not is_address(action.to):
                    add(Problem(f"{akey}.to", f"unknown recipient {action.to!r}",
                                f"use one of {list(NAMED_RECIPIENTS)} or an e-mail address"))
            elif action.to is not None:
                add(Problem(f"{akey}.to", "'to' belongs only to send_template actions",
                            "remove it"))
            if action.set_status is not None and action.set_status not in all_statuses:
                add(Problem(f"{akey}.set_status", f"unknown status {action.set_status!r}",
                            f"use one of {sorted(all_statuses)}"))
            if action.set_owner is not None and action.set_owner not in owner_names:
                add(Problem(f"{akey}.set_owner", f"unknown owner {action.set_owner!r}",
                            f"use one of {sorted(owner_names)} or add it under [[owners]]"))

    for fi, form in enumerate(config.forms):
        key = f"forms[{fi}]({form.name})"
        check_ref(f"{key}.ticket", form.ticket)
        emails = [f for f in form.fields if f.type == "email"]
        if len(emails) != 1:
            add(Problem(f"{key}.fields", f"a form needs exactly one field of type 'email' "
                        f"(found {len(emails)})", "the email field identifies the customer"))
        seen_fields: set[str] = set()
        for fi, form_field in enumerate(form.fields):
            if form_field.name in seen_fields:
                add(Problem(f"{key}.fields[{fi}]({form_field.name}).name",
                            f"duplicate field name {form_field.name!r}",
                            "give every field a unique name"))
            seen_fields.add(form_field.name)
        problems += form_protection_problems(config, key, form)

    for si, job in enumerate(config.scheduled):
        key = f"scheduled[{si}]({job.name})"
        for ti, type_name in enumerate(job.filter.types):
            if config.ticket_type(type_name) is None:
                add(Problem(f"{key}.filter.types[{ti}]", f"unknown ticket type {type_name!r}",
                            f"use one of {type_names}"))
        for ti, status_name in enumerate(job.filter.statuses):
            if status_name not in all_statuses:
                add(Problem(f"{key}.filter.statuses[{ti}]", f"unknown status {status_name!r}",
                            f"use one of {sorted(all_statuses)}"))
        for gi, group in enumerate(job.filter.status_groups):
            if group not in groups:
                add(Problem(f"{key}.filter.status_groups[{gi}]", f"unknown status group {group!r}",
                            f"use one of {sorted(groups)}"))
        if job.action == "set_status" and (job.status is None or job.status not in all_statuses):
            add(Problem(f"{key}.status", "set_status needs a known status",
                        f"set status = one of {sorted(all_statuses)}"))
        if job.action == "move_to_folder" and not job.folder:
            add(Problem(f"{key}.folder", "move_to_folder needs a folder", 'set folder = "Archiv"'))
    return problems


def form_protection_problems(config: Config, key: str, form: Form) -> list[Problem]:
    """A form's abuse-protection keys: proxies, origins, honeypot, signature, success URL. Pure."""
    problems: list[Problem] = []
    add = problems.append
    for pi, proxy in enumerate(form.trusted_proxies):
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            add(Problem(f"{key}.trusted_proxies[{pi}]",
                        f"{proxy!r} is not an IP address or network",
                        'use e.g. "127.0.0.1" or "10.0.0.0/8"'))
    for oi, origin in enumerate(form.allowed_origins):
        if not re.match(r"^https?://[A-Za-z0-9.\[\]:-]+$", origin):
            add(Problem(f"{key}.allowed_origins[{oi}]", f"{origin!r} is not an origin",
                        'use scheme://host[:port] without path, e.g. "https://shop.example"'))
    if form.honeypot and form.honeypot in {f.name for f in form.fields}:
        add(Problem(f"{key}.honeypot", f"the honeypot {form.honeypot!r} is also a field name",
                    "give the honeypot a name no real field uses, or set honeypot = \"\" to "
                    "switch it off"))
    if form.require_signature and form.hmac_secret is None and form.hmac_secret_file is None:
        add(Problem(f"{key}.require_signature", "signatures are required but no secret is set",
                    "set hmac_secret_file (or hmac_secret), or require_signature = false"))
    if form.success_url and not re.match(r"^(https?://|/)", form.success_url):
        add(Problem(f"{key}.success_url", f"{form.success_url!r} is not an http(s) URL or path",
                    'use e.g. "https://shop.example/kontakt/danke"'))
    if form.max_attachment_bytes > form.max_body_bytes:
        add(Problem(f"{key}.max_attachment_bytes", "larger than max_body_bytes, so never reached",
                    "raise max_body_bytes or lower max_attachment_bytes", "warning"))
    if not config.accounts:
        add(Problem(f"{key}", "no [[accounts]] is configured, so answers to form tickets "
                    "cannot be sent", "configure an account (the first one answers forms)",
                    "warning"))
    if not config.merchant_address:
        add(Problem("merchant_address", f"form {form.name!r} has no one to send its info mail to",
                    'set merchant_address = "owner@shop.example"', "warning"))
    return problems
