"""A local OAuth2 identity provider for the tests (authlib's server side on Starlette, served by
uvicorn in a process of its own, so its logs never mix with gatewayd's):

- token endpoint: client_credentials, refresh_token (rotating when asked), device_code and
  authorization_code with PKCE grants;
- device authorization endpoint (RFC 8628) and an authorization endpoint that signs in
  the configured user at once;
- introspection endpoint (RFC 7662) for Dovecot's oauth2 passdb and the test SMTP server;
- /admin/*: the test's controls (token lifetime, rotation, approve a device code, issue or
  revoke refresh tokens, revoke access tokens) and counters.

Run: `python -m tests.oauth_idp PORT`. Not a production server: everything is in memory.
"""

from __future__ import annotations

import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar

os.environ.setdefault("AUTHLIB_INSECURE_TRANSPORT", "1")  # plain http on loopback

from authlib.common.security import generate_token
from authlib.oauth2 import AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Request, grants
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from authlib.oauth2.rfc8628 import (
    DeviceAuthorizationEndpoint,
    DeviceCodeGrant,
    DeviceCredentialDict,
)
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

APP_SECRET = "idp-app-secret-5f2a9c"
DOVECOT_SECRET = "idp-dovecot-secret-77"
# Client id → (secret or None for a public client, mailbox of its app-only tokens).
CLIENTS: dict[str, tuple[str | None, str | None]] = {
    "support-app": (APP_SECRET, "support"),
    "sales-app": (APP_SECRET, "sales"),
    "public-app": (None, None),
    "dovecot": (DOVECOT_SECRET, None),
}


@dataclass
class Client:
    client_id: str
    secret: str | None
    mailbox: str | None

    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str:
        return "http://127.0.0.1/"

    def get_allowed_scope(self, scope: str) -> str:
        return scope

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri.startswith("http://127.0.0.1:")

    def check_client_secret(self, secret: str) -> bool:
        return self.secret is not None and secret == self.secret

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.secret is None:
            return method == "none"
        return method in ("client_secret_post", "client_secret_basic")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        return True


@dataclass
class User:
    name: str

    def get_user_id(self) -> str:
        return self.name


@dataclass
class Token:
    client_id: str
    username: str
    scope: str
    access_token: str
    refresh_token: str | None
    issued_at: float
    expires_in: int
    revoked: bool = False
    refresh_revoked: bool = False

    def check_client(self, client: Client) -> bool:
        return self.client_id == client.client_id

    def get_scope(self) -> str:
        return self.scope

    def get_expires_in(self) -> int:
        return self.expires_in

    def is_expired(self) -> bool:
        return time.time() >= self.issued_at + self.expires_in

    def is_revoked(self) -> bool:
        return self.revoked

    def get_user(self) -> User:
        return User(self.username)


@dataclass
class State:
    lifetime: int = 3600
    rotate: bool = False
    slow_down_once: bool = False
    browser_user: str = "support"
    tokens: list[Token] = field(default_factory=list)
    devices: dict[str, DeviceCredentialDict] = field(default_factory=dict)
    approvals: dict[str, User] = field(default_factory=dict)
    codes: dict[str, dict[str, Any]] = field(default_factory=dict)
    stats: Counter[str] = field(default_factory=Counter)


STATE = State()


class Req(OAuth2Request):
    def __init__(self, method: str, uri: str, headers: dict[str, str], form: dict[str, str],
                 args: dict[str, str]) -> None:
        super().__init__(method, uri, headers=headers)
        self._form, self._args = form, args
        self.payload = BasicOAuth2Payload({**args, **form})

    @property
    def form(self) -> dict[str, str]:
        return self._form

    @property
    def args(self) -> dict[str, str]:
        return self._args


class Server(AuthorizationServer):
    def query_client(self, client_id: str) -> Client | None:
        if client_id not in CLIENTS:
            return None
        secret, mailbox = CLIENTS[client_id]
        return Client(client_id, secret, mailbox)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        client = request.client
        user = request.user.name if request.user else client.mailbox or client.client_id
        STATE.tokens.append(Token(client.client_id, user, token.get("scope", ""),
                                  token["access_token"], token.get("refresh_token"),
                                  time.time(), int(token["expires_in"])))

    def create_oauth2_request(self, request: Any) -> Req:
        return request  # built by the route (Starlette reads the body asynchronously)

    def create_json_request(self, request: Any) -> Any:
        return request

    def handle_response(self, status: int, body: Any, headers: Any) -> Response:
        headers = dict(headers)
        if isinstance(body, dict):
            headers.pop("Content-Type", None)
            return JSONResponse(body, status_code=status, headers=headers)
        return Response(body or "", status_code=status, headers=headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass


class ClientCredentials(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = ["client_secret_basic", "client_secret_post"]


class RefreshGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic", "client_secret_post", "none"]

    @property
    def INCLUDE_NEW_REFRESH_TOKEN(self) -> bool:  # authlib's name
        return STATE.rotate

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        for token in STATE.tokens:
            if token.refresh_token == refresh_token and not token.refresh_revoked:
                return token
        return None

    def authenticate_user(self, refresh_token: Token) -> User:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: Token) -> None:
        if STATE.rotate:  # a rotated refresh token is spent
            refresh_token.refresh_revoked = True


class DeviceGrant(DeviceCodeGrant):
    def query_device_credential(self, device_code: str) -> DeviceCredentialDict | None:
        return STATE.devices.get(device_code)

    def query_user_grant(self, user_code: str) -> tuple[User, bool] | None:
        user = STATE.approvals.get(user_code)
        return (user, True) if user else None

    def should_slow_down(self, credential: DeviceCredentialDict) -> bool:
        if STATE.slow_down_once:
            STATE.slow_down_once = False
            return True
        return False


class DeviceEndpoint(DeviceAuthorizationEndpoint):
    INTERVAL = 1

    def get_verification_uri(self) -> str:
        return "http://127.0.0.1/device"

    def save_device_credential(self, client_id: str, scope: str, data: dict[str, Any]) -> None:
        STATE.devices[data["device_code"]] = DeviceCredentialDict(
            client_id=client_id, scope=scope, user_code=data["user_code"],
            expires_at=time.time() + data["expires_in"])


class CodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS: ClassVar[list[str]] = [
        "client_secret_basic", "client_secret_post", "none"]

    def save_authorization_code(self, code: str, request: Any) -> None:
        STATE.codes[code] = {
            "client_id": request.client.client_id, "redirect_uri": request.payload.redirect_uri,
            "scope": request.payload.scope or "", "user": request.user,
            "code_challenge": request.payload.data.get("code_challenge"),
            "code_challenge_method": request.payload.data.get("code_challenge_method"),
        }

    def query_authorization_code(self, code: str, client: Client) -> Any:
        item = STATE.codes.get(code)
        if item and item["client_id"] == client.client_id:
            return _Code(code, item)
        return None

    def delete_authorization_code(self, authorization_code: Any) -> None:
        STATE.codes.pop(authorization_code.code, None)

    def authenticate_user(self, authorization_code: Any) -> User:
        return authorization_code.item["user"]


@dataclass
class _Code:
    code: str
    item: dict[str, Any]

    def get_redirect_uri(self) -> str:
        return str(self.item["redirect_uri"])

    def get_scope(self) -> str:
        return str(self.item["scope"])

    @property
    def code_challenge(self) -> str | None:
        return self.item["code_challenge"]

    @property
    def code_challenge_method(self) -> str | None:
        return self.item["code_challenge_method"]


class Introspection(IntrospectionEndpoint):
    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return next((t for t in STATE.tokens if t.access_token == token_string), None)

    def check_permission(self, token: Token, client: Client, request: Any) -> bool:
        return True

    def introspect_token(self, token: Token) -> dict[str, Any]:
        return {"active": True, "username": token.username, "client_id": token.client_id,
                "scope": token.scope, "exp": int(token.issued_at + token.expires_in)}

    def create_introspection_payload(self, token: Token | None) -> dict[str, Any]:
        payload = super().create_introspection_payload(token)
        STATE.stats["introspect_" + ("active" if payload.get("active") else "inactive")] += 1
        return dict(payload)


SERVER = Server()
SERVER.register_token_generator("default", BearerTokenGenerator(
    access_token_generator=lambda *a, **k: "at-" + generate_token(32),
    refresh_token_generator=lambda *a, **k: "rt-" + generate_token(32),
    expires_generator=lambda client, grant_type: STATE.lifetime,
))
SERVER.register_grant(ClientCredentials)
SERVER.register_grant(RefreshGrant)
SERVER.register_grant(DeviceGrant)
SERVER.register_grant(CodeGrant, [CodeChallenge(required=True)])
SERVER.register_endpoint(DeviceEndpoint)
SERVER.register_endpoint(Introspection)


async def _request(request: Request) -> Req:
    form = {k: str(v) for k, v in (await request.form()).items()}
    return Req(request.method, str(request.url), request.headers, form,  # type: ignore[arg-type]
               dict(request.query_params))


async def token(request: Request) -> Response:
    req = await _request(request)
    grant = req.payload.data.get("grant_type", "?")
    response: Response = SERVER.create_token_response(req)
    STATE.stats[f"token_{grant.rsplit(':', 1)[-1]}_{response.status_code}"] += 1
    return response


async def device(request: Request) -> Response:
    response: Response = SERVER.create_endpoint_response("device_authorization",
                                                        await _request(request))
    return response


async def introspect(request: Request) -> Response:
    response: Response = SERVER.create_endpoint_response("introspection",
                                                        await _request(request))
    return response


async def authorize(request: Request) -> Response:
    req = await _request(request)
    SERVER.get_consent_grant(req)  # validates client, redirect URI, PKCE
    response: Response = SERVER.create_authorization_response(
        req, grant_user=User(STATE.browser_user))
    return response


async def admin(request: Request) -> Response:
    action = request.path_params["action"]
    data = await request.json() if request.method == "POST" else {}
    if action == "config":
        for key in ("lifetime", "rotate", "slow_down_once", "browser_user"):
            if key in data:
                setattr(STATE, key, data[key])
    elif action == "approve":
        STATE.approvals[data["user_code"]] = User(data["username"])
    elif action == "refresh":  # a refresh token as if the user had signed in
        rt = "rt-" + generate_token(32)
        STATE.tokens.append(Token(data["client_id"], data["username"],
                                  data.get("scope", "mail offline_access"),
                                  "at-" + generate_token(32), rt, time.time(), 0))
        return JSONResponse({"refresh_token": rt})
    elif action == "revoke":
        for t in STATE.tokens:
            if t.username == data["username"]:
                t.refresh_revoked = t.revoked = True
    elif action == "revoke-access":
        for t in STATE.tokens:
            t.revoked = True
    elif action == "secrets":
        return JSONResponse({
            "access": [t.access_token for t in STATE.tokens],
            "refresh": [t.refresh_token for t in STATE.tokens if t.refresh_token],
            "client_secrets": [APP_SECRET, DOVECOT_SECRET]})
    elif action == "live-refresh":  # which refresh tokens the IdP still accepts
        return JSONResponse([t.refresh_token for t in STATE.tokens
                             if t.refresh_token and not t.refresh_revoked])
    return JSONResponse(dict(STATE.stats))


app = Starlette(routes=[
    Route("/token", token, methods=["POST"]),
    Route("/device", device, methods=["POST"]),
    Route("/introspect", introspect, methods=["POST"]),
    Route("/authorize", authorize, methods=["GET"]),
    Route("/admin/{action}", admin, methods=["GET", "POST"]),
])


if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
