"""SMTP AUTH with an OAuth2 bearer token over aiosmtplib: XOAUTH2 (aiosmtplib's own
`auth_xoauth2`) or OAUTHBEARER (RFC 7628), by what the server's EHLO advertises; a refused
token is renewed once and tried again."""

from __future__ import annotations

import aiosmtplib

from gatewayd.config.schema import SmtpSettings
from gatewayd.oauth import sasl
from gatewayd.oauth.tokens import AccessToken, GrantRefused, TokenError, token_source


class OAuthLoginRefused(aiosmtplib.SMTPAuthenticationError):
    """No usable grant (revoked refresh token, wrong client credentials): the text says what the
    operator must do. A 535 like a refused password: the mail waits in the outbox."""

    def __init__(self, message: str) -> None:
        super().__init__(535, message)


class OAuthTokenUnavailable(aiosmtplib.SMTPException):
    """The token endpoint could not be asked now: the mail is retried later."""


async def _auth_oauthbearer(client: aiosmtplib.SMTP, user: str, token: str, host: str,
                            port: int) -> None:
    encoded = sasl.encoded_response("OAUTHBEARER", user, token, host, port).encode("ascii")
    response = await client.execute_command(b"AUTH", b"OAUTHBEARER", encoded)
    if response.code == 334:  # the error challenge: answer %x01 to get the final reply
        response = await client.execute_command(sasl.after_error_challenge("OAUTHBEARER"))
    if response.code != 235:
        raise aiosmtplib.SMTPAuthenticationError(response.code, response.message)


async def login(client: aiosmtplib.SMTP, smtp: SmtpSettings, address: str) -> AccessToken:
    """Authenticate the connected client with the account's token; returns the token used."""
    if smtp.oauth is None:
        raise OAuthLoginRefused('auth = "oauth2" but the account has no [accounts.oauth2]')
    if client.last_ehlo_response is None:  # connect() says EHLO already, except on plain text
        await client.ehlo()
    offered = [m.upper() for m in client.server_auth_methods]
    mechanism = sasl.choose_mechanism(offered)
    if mechanism is None:
        raise aiosmtplib.SMTPException(
            f"{smtp.host} offers neither AUTH XOAUTH2 nor AUTH OAUTHBEARER "
            f"(offers {', '.join(offered) or 'no AUTH'})")
    user = smtp.username or address

    async def attempt(token: AccessToken) -> aiosmtplib.SMTPAuthenticationError | None:
        """None when the server accepts the token, else its refusal."""
        try:
            if mechanism == "XOAUTH2":
                await client.auth_xoauth2(user, token.value)
            else:
                await _auth_oauthbearer(client, user, token.value, smtp.host, smtp.effective_port)
        except aiosmtplib.SMTPAuthenticationError as exc:
            return exc
        return None

    try:
        token, refused = await token_source(smtp.oauth).login("smtp", mechanism, attempt)
    except GrantRefused as exc:
        raise OAuthLoginRefused(str(exc)) from None
    except TokenError as exc:
        raise OAuthTokenUnavailable(str(exc)) from None
    if refused is not None:
        raise aiosmtplib.SMTPAuthenticationError(
            refused.code, f"{smtp.host} refused the OAuth2 token ({mechanism}) of {user}: "
            f"{refused.message} — check the app's send permission (docs/providers.md)")
    return token
