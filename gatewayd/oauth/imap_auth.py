"""IMAP AUTHENTICATE with an OAuth2 bearer token over aioimaplib.

aioimaplib's own `xoauth2()` knows only XOAUTH2, needs SASL-IR, and on a refused token leaves
the server's error challenge unanswered (the command then hangs until the timeout); its debug
log would also show the base64 line that holds the token. This command answers continuations:
the initial response when the server has no SASL-IR, and the mechanism's closing response
after an error challenge, so a refusal comes back at once as a tagged NO.
"""

from __future__ import annotations

import asyncio
from typing import Any

import aioimaplib

from gatewayd.oauth import sasl


class _SaslCommand(aioimaplib.Command):
    """AUTHENTICATE whose continuation requests are answered here, not appended and ignored."""

    def __init__(self, protocol: Any, mechanism: str, response: str, inline: bool) -> None:
        args = (mechanism, response) if inline else (mechanism,)
        super().__init__("AUTHENTICATE", protocol.new_tag(), *args, loop=protocol.loop)
        self._protocol = protocol
        self._pending: bytes | None = None if inline else response.encode("ascii")
        self._closing = sasl.after_error_challenge(mechanism)
        self.challenge = b""

    def flush(self) -> None:  # called by aioimaplib after each "+ ..." line
        transport = self._protocol.transport
        if self._pending is not None:
            data, self._pending = self._pending, None
        else:
            self.challenge = bytes(self._resp_lines[-1]) if self._resp_lines else b""
            data = self._closing
        # Written directly: aioimaplib would log the line, and it holds the token.
        transport.write(data + b"\r\n")


async def authenticate(client: aioimaplib.IMAP4, mechanism: str, user: str, token: str,
                       host: str, port: int, seconds: float) -> tuple[bool, str]:
    """(accepted, the server's text on refusal). Moves the protocol to AUTH when accepted."""
    protocol = client.protocol
    response = sasl.encoded_response(mechanism, user, token, host, port)
    inline = "SASL-IR" in {c.upper() for c in protocol.capabilities}
    command = _SaslCommand(protocol, mechanism, response, inline)
    # `scrub` keeps the base64 response (which holds the token) out of aioimaplib's debug log.
    result = await asyncio.wait_for(protocol.execute(command, scrub=response), seconds)
    if result.result == "OK":
        async with protocol.state_condition:
            protocol.state = aioimaplib.AUTH
            protocol.state_condition.notify_all()
        return True, ""
    text = " ".join(
        bytes(line).decode("utf-8", "replace") for line in result.lines
        if isinstance(line, bytes | bytearray) and not bytes(line).startswith(b"+"))
    why = sasl.describe_challenge(command.challenge)
    return False, (f"{text.strip()} ({why})" if why else text.strip())[:300]
