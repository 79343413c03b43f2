"""The identity providers gatewayd knows: their token, device and browser endpoints and the
default scopes of each flow. Pure: settings in, endpoints out."""

from __future__ import annotations

from dataclasses import dataclass

from gatewayd.config.schema import OAuth2Settings

MICROSOFT_LOGIN = "https://login.microsoftonline.com"
# App-only (client credentials): one `.default` scope names the Exchange Online resource; the
# permissions (IMAP.AccessAsApp, SMTP.SendAsApp) are granted to the app in Entra ID.
MICROSOFT_APP_SCOPES = ("https://outlook.office365.com/.default",)
# Delegated: the scopes with the resource prefix Microsoft documents for IMAP and SMTP AUTH;
# offline_access for a refresh token.
MICROSOFT_DELEGATED_SCOPES = (
    "https://outlook.office.com/IMAP.AccessAsUser.All",
    "https://outlook.office.com/SMTP.Send",
    "offline_access",
)
GOOGLE_SCOPES = ("https://mail.google.com/",)
GOOGLE_TOKEN_URL = "https://oauth2.googleapis.com/token"
GOOGLE_DEVICE_URL = "https://oauth2.googleapis.com/device/code"
GOOGLE_AUTHORIZATION_URL = "https://accounts.google.com/o/oauth2/v2/auth"


@dataclass(frozen=True)
class Endpoints:
    token_url: str | None
    device_authorization_url: str | None
    authorization_url: str | None
    scopes: tuple[str, ...]
    # Google's device flow grants only a short list of scopes, and the mail scope is not on
    # it: its refresh token comes from the browser (authorization code) login instead.
    device_flow_allowed: bool = True


def endpoints(settings: OAuth2Settings) -> Endpoints:
    """The endpoints and scopes for these settings: explicit keys win over the provider's."""
    flow = settings.effective_flow
    if settings.provider == "microsoft":
        base = f"{MICROSOFT_LOGIN}/{settings.tenant or 'organizations'}/oauth2/v2.0"
        default = Endpoints(
            f"{base}/token", f"{base}/devicecode", f"{base}/authorize",
            MICROSOFT_APP_SCOPES if flow == "client_credentials" else MICROSOFT_DELEGATED_SCOPES)
    elif settings.provider == "google":
        default = Endpoints(GOOGLE_TOKEN_URL, GOOGLE_DEVICE_URL, GOOGLE_AUTHORIZATION_URL,
                            GOOGLE_SCOPES, device_flow_allowed=False)
    else:
        default = Endpoints(None, None, None, ())
    return Endpoints(
        token_url=settings.token_url or default.token_url,
        device_authorization_url=settings.device_authorization_url
        or default.device_authorization_url,
        authorization_url=settings.authorization_url or default.authorization_url,
        scopes=tuple(settings.scopes) if settings.scopes is not None else default.scopes,
        device_flow_allowed=default.device_flow_allowed or bool(
            settings.device_authorization_url),
    )
