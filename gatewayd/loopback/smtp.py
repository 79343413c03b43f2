"""An aiosmtpd SMTP sink on loopback that records envelopes: for tests, benchmarks and the demo.

Runs on the caller's event loop (`loop.create_server`, no thread). Three modes: `plain`,
`starttls` (STARTTLS required before MAIL, AUTH PLAIN/LOGIN required) and `tls` (implicit TLS).
`TestCA` makes a throw-away certificate authority and a server certificate for 127.0.0.1 and
localhost with the openssl command line, so clients can verify certificates for real.

Failures can be scripted: `sink.fail_data.append("451 4.3.0 try later")` answers the next DATA
with that reply; `sink.refuse_rcpt[address] = "550 5.1.1 no such user"` refuses one recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import ssl
import subprocess
import tempfile
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from email import message_from_bytes
from email.message import EmailMessage
from pathlib import Path
from typing import Any, Literal

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

Mode = Literal["plain", "starttls", "tls"]


@dataclass(frozen=True)
class Received:
    """One mail as the server saw it."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    content: bytes
    login: str | None = None
    tls: bool = False

    def message(self) -> EmailMessage:
        parsed = message_from_bytes(self.content, policy=email.policy.default)
        assert isinstance(parsed, EmailMessage)
        return parsed


class TestCA:
    """A temporary CA and a server certificate for 127.0.0.1/localhost (openssl CLI)."""

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path | None = None):
        self._tmp = None if directory else tempfile.TemporaryDirectory(prefix="gatewayd-ca-")
        self.directory = directory or Path(self._tmp.name)  # type: ignore[union-attr]
        self.directory.mkdir(parents=True, exist_ok=True)
        self.ca_cert = self.directory / "ca.pem"
        self.cert = self.directory / "server.pem"
        self.key = self.directory / "server.key"
        if not self.cert.exists():
            self._make()

    def _run(self, *args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=self.directory)

    def _make(self) -> None:
        d = self.directory
        self._run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                  "-keyout", str(d / "ca.key"), "-out", str(self.ca_cert),
                  "-subj", "/CN=gatewayd test CA",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")
        self._run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(self.key),
                  "-out", str(d / "server.csr"), "-subj", "/CN=localhost")
        (d / "ext.cnf").write_text(
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n"
            "extendedKeyUsage=serverAuth\n", encoding="ascii")
        self._run("x509", "-req", "-in", str(d / "server.csr"), "-CA", str(self.ca_cert),
                  "-CAkey", str(d / "ca.key"), "-CAcreateserial", "-days", "2",
                  "-out", str(self.cert), "-extfile", str(d / "ext.cnf"))

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert, self.key)
        return context

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()


class _Handler:
    def __init__(self, sink: SmtpSink):
        self.sink = sink

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        refusal = self.sink.refuse_rcpt.get(address.lower())
        if refusal:
            return refusal
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if self.sink.on_data is not None:
            await self.sink.on_data()
        if self.sink.fail_data:
            return self.sink.fail_data.pop(0)
        login = session.auth_data if session.authenticated else None
        content = envelope.original_content or b""
        item = Received(
            mail_from=envelope.mail_from or "", rcpt_tos=tuple(envelope.rcpt_tos),
            content=content, login=login, tls=session.ssl is not None,
        )
        if self.sink.on_received is not None:
            await self.sink.on_received(item)  # 250 only once it is kept
        else:
            self.sink.received.append(item)
        self.sink.arrived.set()
        return "250 2.0.0 OK queued"


@dataclass
class SmtpSink:
    """Recorded mail in `received`; `host`/`port` after `start()`."""

    mode: Mode = "plain"
    ca: TestCA | None = None
    users: dict[str, str] = field(default_factory=dict)  # username -> password (starttls/tls)
    host: str = "127.0.0.1"
    port: int = 0
    received: list[Received] = field(default_factory=list)
    fail_data: list[str] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    on_data: Callable[[], Awaitable[None]] | None = None  # awaited before each DATA is answered
    # Takes each mail instead of `received` (a long-running sink keeps nothing in memory).
    on_received: Callable[[Received], Awaitable[None]] | None = None
    _server: asyncio.base_events.Server | None = None

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope,
                      mechanism: str, auth_data: Any) -> AuthResult:
        if isinstance(auth_data, LoginPassword):
            user = auth_data.login.decode()
            if self.users.get(user) == auth_data.password.decode():
                return AuthResult(success=True, auth_data=user)
        # handled=False: aiosmtpd answers 535 itself (True would leave the client waiting).
        return AuthResult(success=False, handled=False)

    def _factory(self) -> SMTP:
        handler = _Handler(self)
        kwargs: dict[str, Any] = {"hostname": "localhost", "ident": "gatewayd-sink"}
        if self.mode == "starttls":
            assert self.ca is not None, "starttls needs a TestCA"
            kwargs.update(tls_context=self.ca.server_context(), require_starttls=True,
                          authenticator=self._authenticate, auth_required=True,
                          auth_require_tls=True)
        elif self.mode == "tls":
            kwargs.update(authenticator=self._authenticate, auth_required=bool(self.users),
                          auth_require_tls=False)
        with warnings.catch_warnings():
            # Implicit TLS: AUTH is protected by the TLS layer, which aiosmtpd cannot see.
            warnings.simplefilter("ignore", UserWarning)
            return SMTP(handler, **kwargs)

    async def start(self) -> SmtpSink:
        loop = asyncio.get_running_loop()
        ssl_context = None
        if self.mode == "tls":
            assert self.ca is not None, "implicit TLS needs a TestCA"
            ssl_context = self.ca.server_context()
        self._server = await loop.create_server(self._factory, self.host, self.port,
                                                ssl=ssl_context)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)
            self._server = None

    async def wait_for(self, count: int, seconds: float = 10.0) -> list[Received]:
        """Wait until at least `count` mails arrived (raises TimeoutError otherwise)."""
        async with asyncio.timeout(seconds):
            while len(self.received) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.received

    def envelope_recipients(self) -> set[str]:
        return {r for item in self.received for r in item.rcpt_tos}


@contextlib.asynccontextmanager
async def smtp_sink(mode: Mode = "plain", *, ca: TestCA | None = None,
                    users: dict[str, str] | None = None) -> AsyncIterator[SmtpSink]:
    sink = SmtpSink(mode=mode, ca=ca, users=dict(users or {}))
    await sink.start()
    try:
        yield sink
    finally:
        await sink.stop()
