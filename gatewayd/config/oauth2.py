"""The configuration of OAuth2 logins: `[accounts.oauth2]`, used by `auth = "oauth2"` in an
account's `[accounts.imap]` and `[accounts.smtp]` (see docs/providers.md)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr

from gatewayd.config.base import StrictModel


@dataclass(frozen=True)
class OAuthBinding:
    """What a login step needs to get an account's OAuth2 token: set when the file is read
    (never a key of the file), so the IMAP and SMTP clients need no more arguments."""

    account: str
    settings: OAuth2Settings
    data_dir: Path


class OAuth2Settings(StrictModel):
    """`[accounts.oauth2]`: where and how the account gets its OAuth2 access tokens (Microsoft
    365, Google Workspace or another provider). Refresh tokens live in
    `data_dir/oauth/<account>.json`; `gatewayd oauth login ACCOUNT` gets one,
    `gatewayd oauth status` shows their state."""

    provider: Literal["microsoft", "google", "custom"]
    """The identity provider: `microsoft`, `google`, or `custom` (give its endpoints)."""
    flow: Literal["client_credentials", "refresh_token"] | None = None
    """How tokens are obtained: `client_credentials` (app-only, no sign-in) or `refresh_token`
    (a person signs in once with `gatewayd oauth login`). Unset: `client_credentials` for
    microsoft, `refresh_token` otherwise.

    Check: google with `client_credentials` is an error (Google grants no mail scope to it)."""
    tenant: str | None = Field(default=None, examples=["contoso.onmicrosoft.com"])
    """Microsoft: the Entra directory, a verified domain or the tenant ID.

    Check: an error when missing for microsoft; a warning when set for another provider."""
    client_id: str | None = Field(default=None,
                                  examples=["00000000-0000-0000-0000-000000000000"])
    """The application (client) ID registered at the provider.

    Check: an error when missing."""
    client_secret: SecretStr | None = None
    """The client secret, written into the file. Prefer `client_secret_file`.

    Check: an error when `client_secret_file` is set too."""
    client_secret_file: Path | None = Field(default=None,
                                            examples=["credentials/support-oauth2"])
    """A file holding the client secret (relative to the configuration file); a missing file
    falls back to the systemd credential of that file name, and without either the credential
    `<account>-oauth2` is used if present. Required for `client_credentials`.

    Check: an error when it cannot be read, or when app-only has no secret."""
    token_url: str | None = Field(default=None,
                                  examples=["https://login.example/oauth2/token"])
    """The token endpoint; unset: the provider's own.

    Check: required for custom; an error when not https (plain http on loopback only)."""
    device_authorization_url: str | None = None
    """The device authorization endpoint (RFC 8628) `gatewayd oauth login` uses; unset: the
    provider's own.

    Check: not https is an error; a warning when custom with `refresh_token` has neither this
    nor `authorization_url`."""
    authorization_url: str | None = None
    """The authorization endpoint of the browser sign-in (`gatewayd oauth login --browser`,
    and Google's); unset: the provider's own.

    Check: not https is an error."""
    scopes: list[str] | None = Field(default=None,
                                     examples=[["https://outlook.office365.com/.default"]])
    """The scopes requested; unset: the provider's for the flow."""
    timeout_seconds: float = Field(default=30.0, gt=0, le=600)
    """Limit of each request to the identity provider."""
    refresh_margin_seconds: float = Field(default=300.0, ge=0, le=86400)
    """Renew a token this long before it expires (at most half its lifetime)."""

    @property
    def effective_flow(self) -> Literal["client_credentials", "refresh_token"]:
        if self.flow is not None:
            return self.flow
        return "client_credentials" if self.provider == "microsoft" else "refresh_token"
