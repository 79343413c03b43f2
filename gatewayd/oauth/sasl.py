"""The SASL mechanisms for OAuth2 bearer tokens: XOAUTH2 (Google, Microsoft) and OAUTHBEARER
(RFC 7628). Pure: what to send, which mechanism to pick, what a refusal says."""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable

MECHANISMS = ("OAUTHBEARER", "XOAUTH2")  # preferred first: OAUTHBEARER is the standard one


def choose_mechanism(offered: Iterable[str]) -> str | None:
    """The mechanism to use among those the server offers (names as in `AUTH=...`)."""
    names = {name.upper() for name in offered}
    return next((m for m in MECHANISMS if m in names), None)


def initial_response(mechanism: str, user: str, token: str, host: str, port: int) -> bytes:
    """The client's first message, raw (not yet base64)."""
    if mechanism == "XOAUTH2":
        return f"user={user}\x01auth=Bearer {token}\x01\x01".encode()
    if mechanism == "OAUTHBEARER":
        # RFC 7628 3.1: gs2 header with the authorization identity, then key=value pairs.
        saslname = user.replace("=", "=3D").replace(",", "=2C")
        return (f"n,a={saslname},\x01host={host}\x01port={port}\x01"
                f"auth=Bearer {token}\x01\x01").encode()
    raise ValueError(f"unknown SASL mechanism {mechanism!r}")


def encoded_response(mechanism: str, user: str, token: str, host: str, port: int) -> str:
    return base64.b64encode(initial_response(mechanism, user, token, host, port)).decode("ascii")


def after_error_challenge(mechanism: str) -> bytes:
    """What the client sends after the server's error challenge so the server ends the exchange
    with its failure reply: an empty response for XOAUTH2, a single %x01 for OAUTHBEARER
    (RFC 7628 3.2.3). Already base64, as sent on the wire."""
    return b"AQ==" if mechanism == "OAUTHBEARER" else b""


def describe_challenge(challenge: bytes | str) -> str:
    """The server's error challenge (base64 JSON) as a short text, e.g. `invalid_token (401)`.
    It carries the server's status, never the token."""
    text = challenge.decode("ascii", "replace") if isinstance(challenge, bytes) else challenge
    text = text.strip().removeprefix("+").strip()
    if not text:
        return ""
    try:
        data = json.loads(base64.b64decode(text, validate=True))
    except (binascii.Error, ValueError):
        return ""
    if not isinstance(data, dict):
        return ""
    parts = [str(data.get("status", "")).strip()]
    if data.get("scope"):
        parts.append(f"scope {data['scope']}")
    return ", ".join(p for p in parts if p)
