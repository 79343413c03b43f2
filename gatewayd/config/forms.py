"""The configuration of shop forms: `[[forms]]` with their fields and abuse limits."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gatewayd.config.base import StrictModel, language_code
from gatewayd.config.tickets import TicketRef


class FormField(StrictModel):
    """One field of a shop form."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", examples=["email"])
    """The field's name in the posted form.

    Check: duplicates within the form are an error."""
    type: Literal[
        "email", "text", "textarea", "subject", "message", "order_id", "attachment", "phone", "name"
    ]
    """`email` (identifies and answers the customer), `name`, `subject` (the ticket's title),
    `message`, `text`, `textarea`, `phone`, `order_id` (links the order when it belongs to
    the address) or `attachment`.

    Check: a form needs exactly one field of type `email`."""
    required: bool = False
    """A submission without it is refused (422, naming the field)."""
    label: str | dict[str, str] | None = Field(
        default=None, examples=["E-Mail", {"de": "Nachricht", "en": "Message"}])
    """The label on gatewayd's own form page, in the ticket's first message and in the
    merchant's info mail (else the name): one text, or one per language
    (`{ de = "Nachricht", en = "Message" }`).

    Check: a warning when a configured language has no translation (its first one is shown)."""
    max_length: int | None = Field(default=None, ge=1, examples=[500])
    """Most characters accepted; unset: email 254, subject and name 200, phone 64, order_id 32,
    text 1000, message and textarea 20000, attachment file names 255."""


class Form(StrictModel):
    """`[[forms]]`: a shop form posted to `POST /forms/<name>`; every abuse limit has a safe
    default."""

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9_.-]+$", examples=["contact"])
    """The form's name, in its URL `/forms/<name>`.

    Check: duplicates are an error."""
    ticket: TicketRef
    """Type and status of the tickets it makes, e.g. `{ type = "Kundenanfrage", status = "Neu" }`.
    Answers go through the first active account with SMTP.

    Check: `check` names the account that answers forms, and warns when none can send or when
    no `merchant_address` gets the info mail."""
    language: str | None = Field(default=None, examples=["de"])
    """The language of the form's pages, texts and tickets; unset: the post's `lang` field,
    else the browser's Accept-Language, else `default_language` (see docs/templates.md).

    Check: an error when it is not a language code (lower case, as the templates' names)."""
    title: str | dict[str, str] | None = Field(
        default=None, examples=[{"de": "Kontakt", "en": "Contact"}])
    """The heading of gatewayd's form page: one text, or one per language; unset: the form's
    name."""
    success_url: str | None = Field(default=None, examples=["https://shop.example/kontakt/danke"])
    """Where a browser goes after a good submission (303); unset: gatewayd's own thank-you page
    `/forms/<name>/thanks`.

    Check: an error when it is not an http(s) URL or a path."""
    allowed_origins: list[str] = Field(default=[], examples=[["https://shop.example"]])
    """Origins (scheme://host[:port]) whose pages may post the form, besides gatewayd's own;
    another `Origin` gets 403.

    Check: an error for a value that is not an origin."""
    fields: list[FormField] = Field(min_length=1)
    """The form's fields, `{ name, type, required?, label?, max_length? }` each."""
    max_body_bytes: int = Field(default=12 * 1024 * 1024, ge=1024)
    """A larger body is refused with 413, from Content-Length before reading, else while
    reading."""
    max_attachment_bytes: int = Field(default=10 * 1024 * 1024, ge=1)
    """Largest attachment file accepted (422 naming the field).

    Check: a warning when larger than `max_body_bytes` (never reached)."""
    max_attachments: int = Field(default=5, ge=0)
    """Most files per submission."""
    honeypot: str = Field(default="website", pattern=r"^([A-Za-z0-9_.-]+)?$")
    """A hidden field people leave empty; a filled one is answered as if accepted and makes no
    ticket. `""` switches it off.

    Check: an error when a real field has the same name."""
    rate_limit: int = Field(default=10, ge=0)
    """Submissions per client IP and window (429 beyond); 0 switches it off. Kept in memory per
    instance."""
    rate_limit_window_seconds: int = Field(default=600, ge=1, le=604800)
    """The rate limit's window."""
    trusted_proxies: list[str] = Field(default=[], examples=[["127.0.0.1", "10.0.0.0/8"]])
    """IPs or networks whose `X-Forwarded-For` is believed (read from the right).

    Check: an error for a value that is not an IP address or network."""
    hmac_secret: SecretStr | None = None
    """The secret of signed server-to-server posts (`X-Gatewayd-Signature`), written into the
    file. Prefer `hmac_secret_file`."""
    hmac_secret_file: Path | None = Field(default=None, examples=["credentials/contact-hmac"])
    """A file holding the HMAC secret (or the systemd credential of that file name).

    Check: an error when it cannot be read."""
    require_signature: bool = False
    """Refuse unsigned posts (401).

    Check: an error when no secret is set."""
    signature_tolerance_seconds: int = Field(default=300, ge=1, le=3600)
    """How far a signed post's timestamp may be from now."""
    recipient_daily_cap: int = Field(default=5, ge=0)
    """Submissions per e-mail address in 24 hours (429 beyond; counted in the database);
    0 switches it off."""

    _language = field_validator("language")(language_code)
