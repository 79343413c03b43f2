"""A thin IMAP client for one account (aioimaplib): connect securely, select, search unseen,
fetch by UID, move / delete / flag, and IDLE. Knows IMAP, not tickets.

Security: implicit TLS, required STARTTLS (abort when the server does not offer it; never go on
in plain text) or none (loopback only, enforced by `gatewayd check`); certificates verified.

Bounded: every command runs under `timeout_seconds` (imap_protocol: restarted by each line of the
answer), no command names more than MAX_UIDS_PER_COMMAND UIDs, and any fault of the connection
(timeout, loss, an unreadable answer) aborts it and raises ImapError: the poller reconnects.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import ssl
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import aioimaplib

from gatewayd.config import ImapSettings
from gatewayd.ingest.imap_protocol import ConnectionLost, GatewayImap, read_outcome
from gatewayd.ingest.imap_wire import (
    chunks,
    parse_fetch,
    read_sizes,
    response_text,
    uid_set,
)

T = TypeVar("T")
LOGOUT_SECONDS = 2.0  # a polite LOGOUT on close; the socket is closed after it either way

_UIDVALIDITY = re.compile(rb"UIDVALIDITY (\d+)")


class ImapError(Exception):
    """The server refused or broke a command; the account backs off and retries."""


class AuthFailed(ImapError):
    """The server refused the credentials: retrying soon would only hammer it."""


class OAuthLoginRequired(AuthFailed):
    """The identity provider refused the account's OAuth2 grant (a revoked or expired refresh
    token, wrong client credentials): parked until an operator acts, as the text says."""


class TlsRequired(ImapError):
    """STARTTLS was required but not offered or failed: never continue in plain text."""


@dataclass(frozen=True)
class Selected:
    folder: str
    uidvalidity: int
    exists: int


def ssl_context(settings: ImapSettings) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(settings.cafile) if settings.cafile else None)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def _quote(folder: str) -> str:
    return '"' + folder.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _uids(uids: int | Sequence[int]) -> list[int]:
    return [uids] if isinstance(uids, int) else list(uids)


def _why(exc: BaseException, timeout: float) -> str:
    if isinstance(exc, aioimaplib.CommandTimeout | TimeoutError):
        return f"no answer within {timeout:g} s"
    return str(exc) or type(exc).__name__


class ImapSession:
    """One logged-in connection with a selected folder."""

    def __init__(self, settings: ImapSettings, password: str,
                 on_progress: Callable[[], None] | None = None) -> None:
        self.settings = settings
        self._password = password
        self._on_progress = on_progress
        self.client: GatewayImap | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.tls: str = "none"
        self.selected: Selected | None = None
        self.auth_mechanism = "LOGIN"  # or the SASL mechanism of an OAuth2 login
        self.token_expires_at: dt.datetime | None = None  # the OAuth2 access token's end

    @property
    def _c(self) -> GatewayImap:
        if self.client is None:
            raise ImapError("not connected")
        return self.client

    async def _call(self, what: str, call: Awaitable[T]) -> T:
        """Await one command; any fault of the connection aborts it and raises ImapError."""
        try:
            return await call
        except ImapError:
            raise
        except (aioimaplib.AioImapException, TimeoutError, OSError) as exc:
            why = _why(exc, self.settings.timeout_seconds)
            self.abort(f"connection given up after {what}: {why}")
            raise ImapError(f"{what} failed: {why}") from exc

    def abort(self, why: str) -> None:
        """Drop the connection at once (no LOGOUT): pending commands fail."""
        if self.client is not None:
            self.client.abort(why)

    def hurry(self, seconds: float) -> None:
        """Shutdown: no command waits more than `seconds` for a line of its answer any more."""
        if self.client is not None:
            self.client.protocol.hurry(seconds)

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        s = self.settings
        context = ssl_context(s) if s.security == "tls" else None
        self.client = GatewayImap(s.host, s.effective_port, timeout=s.timeout_seconds,
                                  ssl_context=context, on_progress=self._on_progress)
        try:
            await self.client.wait_hello_from_server()
        except ssl.SSLError as exc:
            self.abort("TLS handshake failed")
            raise TlsRequired(f"TLS handshake with {s.host}:{s.effective_port} failed: "
                              f"{exc.reason or exc}") from exc
        except (OSError, TimeoutError, ConnectionLost) as exc:
            self.abort("no greeting")
            why = (exc.strerror if isinstance(exc, OSError) and exc.strerror
                   else _why(exc, s.timeout_seconds))
            raise ImapError(f"cannot connect to {s.host}:{s.effective_port}: {why}") from exc
        if s.security == "tls":
            self.tls = self._tls_description()
        elif s.security == "starttls":
            await self._call("STARTTLS", self._starttls())
        await self._call("LOGIN", self._login())

    def _tls_description(self) -> str:
        transport = self._c.protocol.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport else None
        if ssl_object is None:
            return "none"
        cipher = ssl_object.cipher()
        return f"{ssl_object.version()} {cipher[0] if cipher else ''}".strip()

    async def _starttls(self) -> None:
        s = self.settings
        protocol = self._c.protocol
        if "STARTTLS" not in protocol.capabilities:
            raise TlsRequired(f"{s.host} does not offer STARTTLS; refusing to log in in plain "
                              'text (use security = "tls" if the server speaks implicit TLS)')
        command = aioimaplib.Command("STARTTLS", protocol.new_tag(), loop=protocol.loop)
        response = await asyncio.wait_for(protocol.execute(command), s.timeout_seconds)
        if response.result != "OK":
            raise TlsRequired(f"{s.host} refused STARTTLS: {response_text(response.lines)}")
        loop = asyncio.get_running_loop()
        try:
            transport = await loop.start_tls(protocol.transport, protocol, ssl_context(s),
                                             server_hostname=s.host)
        except (ssl.SSLError, OSError) as exc:
            raise TlsRequired(f"STARTTLS with {s.host} failed: {exc}") from exc
        protocol.transport = transport
        await protocol.capability()
        self.tls = self._tls_description()

    async def _login(self) -> None:
        s = self.settings
        if s.auth == "oauth2":
            await self._login_oauth2()
        else:
            try:
                response = await self._c.login(s.username, self._password)
            except aioimaplib.Abort as exc:
                raise ImapError(f"login to {s.host} broke off: {exc}") from exc
            if response.result != "OK":
                raise AuthFailed(f"{s.host} refused the login of {s.username!r}: "
                                 f"{response_text(response.lines)[:200]}")
        # aioimaplib reads junk tokens into the capabilities from the login reply, and its
        # idle() and move() check that set: ask the server again.
        await asyncio.wait_for(self._c.protocol.capability(), s.timeout_seconds)
        self.capabilities = frozenset(c.upper() for c in self._c.protocol.capabilities)

    async def _login_oauth2(self) -> None:
        """AUTHENTICATE with the account's access token, by the mechanism the server offers;
        a refused token is renewed once and tried again before the login counts as refused."""
        from gatewayd.oauth.imap_auth import authenticate
        from gatewayd.oauth.sasl import choose_mechanism
        from gatewayd.oauth.tokens import AccessToken, GrantRefused, TokenError, token_source

        s = self.settings
        if s.oauth is None:
            raise OAuthLoginRequired(f'auth = "oauth2" but no [accounts.oauth2] for {s.username}')
        offered = [c[5:] for c in self._c.protocol.capabilities if c.upper().startswith("AUTH=")]
        mechanism = choose_mechanism(offered)
        if mechanism is None:
            raise AuthFailed(f"{s.host} offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER "
                             f"(offers {', '.join(offered) or 'no SASL mechanism'})")

        async def attempt(token: AccessToken) -> str | None:
            """None when the server accepts the token, else its refusal."""
            try:
                accepted, why = await authenticate(self._c, mechanism, s.username, token.value,
                                                   s.host, s.effective_port, s.timeout_seconds)
            except (aioimaplib.Abort, TimeoutError) as exc:
                raise ImapError(f"AUTHENTICATE {mechanism} with {s.host} broke off: "
                                f"{type(exc).__name__}") from None
            return None if accepted else why

        try:
            token, refusal = await token_source(s.oauth).login("imap", mechanism, attempt)
        except GrantRefused as exc:
            raise OAuthLoginRequired(str(exc)) from None
        except TokenError as exc:
            raise ImapError(str(exc)) from None
        if refusal is not None:
            raise AuthFailed(f"{s.host} refused the OAuth2 token ({mechanism}) of "
                             f"{s.username!r}: {refusal} — check the app's mailbox permission "
                             "(docs/providers.md)")
        self.auth_mechanism, self.token_expires_at = mechanism, token.expires

    async def close(self) -> None:
        """LOGOUT (briefly) when the connection is sound, then close the socket in any case."""
        client, self.client = self.client, None
        if client is None:
            return
        try:
            if client.protocol.lost is None and client.get_state() in ("AUTH", "SELECTED"):
                await asyncio.wait_for(client.logout(), min(LOGOUT_SECONDS,
                                                            self.settings.timeout_seconds))
        except (aioimaplib.AioImapException, TimeoutError, OSError):
            pass  # leaving anyway
        finally:
            client.abort("closed")

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    # ------------------------------------------------------------------ folder

    async def select(self, folder: str) -> Selected:
        response = await self._call(f"SELECT {folder!r}", self._c.select(_quote(folder)))
        if response.result != "OK":
            raise ImapError(f"cannot select folder {folder!r}: {response_text(response.lines)}")
        uidvalidity = 0
        exists = 0
        for line in response.lines:
            if isinstance(line, bytes | bytearray):
                match = _UIDVALIDITY.search(bytes(line))
                if match:
                    uidvalidity = int(match.group(1))
                if bytes(line).endswith(b" EXISTS"):
                    exists = int(bytes(line).split()[0])
        if not uidvalidity:
            raise ImapError(f"the server reported no UIDVALIDITY for {folder!r}")
        self.selected = Selected(folder, uidvalidity, exists)
        return self.selected

    async def ensure_folder(self, folder: str) -> None:
        # NO [ALREADYEXISTS] is fine; anything else shows at the COPY/MOVE that follows.
        await self._call(f"CREATE {folder!r}", self._c.create(_quote(folder)))

    async def unseen(self) -> list[int]:
        # One answer line whatever the count (20,000 UIDs: ~120 KB, read as one line).
        response = await self._call("UID SEARCH UNSEEN",
                                    self._c.uid_search("UNSEEN", charset=None))
        if response.result != "OK":
            raise ImapError(f"UID SEARCH UNSEEN failed: {response_text(response.lines)}")
        uids: list[int] = []
        for line in response.lines:
            text = bytes(line).decode("ascii", "replace").strip()
            if text and all(part.isdigit() for part in text.split()):
                uids.extend(int(part) for part in text.split())
        return sorted(set(uids))

    async def sizes(self, uids: Sequence[int]) -> dict[int, tuple[int, frozenset[str]]]:
        """UID → (RFC822.SIZE, flags) for the given UIDs (one command per 500)."""
        result: dict[int, tuple[int, frozenset[str]]] = {}
        for chunk in chunks(uids):
            response = await self._call("UID FETCH RFC822.SIZE", self._c.uid(
                "fetch", uid_set(chunk), "(UID RFC822.SIZE FLAGS)"))
            if response.result != "OK":
                raise ImapError(f"UID FETCH RFC822.SIZE failed: {response_text(response.lines)}")
            read_sizes(response.lines, result)
        return result

    async def fetch(self, uids: Sequence[int], *, headers_only: bool = False) -> dict[int, bytes]:
        """UID → raw bytes (BODY.PEEK: \\Seen stays unset until we decide)."""
        item = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        result: dict[int, bytes] = {}
        for chunk in chunks(uids):
            response = await self._call("UID FETCH", self._c.uid(
                "fetch", uid_set(chunk), f"(UID {item})"))
            if response.result != "OK":
                raise ImapError(f"UID FETCH failed: {response_text(response.lines)}")
            result.update(parse_fetch(response.lines))
        return result

    # ------------------------------------------------------------------ actions

    async def move(self, uids: int | Sequence[int], folder: str) -> None:
        """UID MOVE; without MOVE: UID COPY, \\Deleted, UID EXPUNGE (never a bare EXPUNGE)."""
        for chunk in chunks(_uids(uids)):
            await self._move(chunk, folder)

    async def _move(self, uids: list[int], folder: str) -> None:
        uid_text = uid_set(uids)
        if self.has("MOVE"):
            response = await self._call("UID MOVE", self._c.uid("move", uid_text, _quote(folder)))
            if response.result != "OK":
                raise ImapError(f"UID MOVE {uid_text} to {folder!r} failed: "
                                f"{response_text(response.lines)}")
            return
        response = await self._call("UID COPY", self._c.uid("copy", uid_text, _quote(folder)))
        if response.result != "OK":
            raise ImapError(f"UID COPY {uid_text} to {folder!r} failed: "
                            f"{response_text(response.lines)}")
        await self.delete(uids)

    async def delete(self, uids: int | Sequence[int]) -> None:
        for chunk in chunks(_uids(uids)):
            await self.flag(chunk, "\\Deleted", "\\Seen")
            if self.has("UIDPLUS"):
                uid_text = uid_set(chunk)
                response = await self._call("UID EXPUNGE", self._c.uid("expunge", uid_text))
                if response.result != "OK":
                    raise ImapError(f"UID EXPUNGE {uid_text} failed: "
                                    f"{response_text(response.lines)}")
        # Without UIDPLUS the mail stays flagged \Deleted: a bare EXPUNGE could remove mail
        # another client flagged, so we never send one.

    async def flag(self, uids: int | Sequence[int], *flags: str) -> None:
        for chunk in chunks(_uids(uids)):
            uid_text = uid_set(chunk)
            response = await self._call("UID STORE", self._c.uid(
                "store", uid_text, "+FLAGS.SILENT", f"({' '.join(flags)})"))
            if response.result != "OK":
                raise ImapError(f"UID STORE {uid_text} failed: {response_text(response.lines)}")

    # ------------------------------------------------------------------ waiting

    async def idle(self, seconds: float, stop: asyncio.Event) -> bool:
        """IDLE up to `seconds` (or until stop); True when the server pushed something.
        A lost connection ends the wait at once (the IDLE command fails)."""
        client = self._c
        idle_task = await self._call("IDLE", asyncio.wait_for(
            client.idle_start(timeout=seconds), self.settings.timeout_seconds))
        # Cut short (cancelled, a fault), the IDLE command still ends, with the connection at
        # the latest: GatewayImap.idle reads its outcome then (no "exception was never
        # retrieved" from the garbage collector).
        pushed = await self._wait_in_idle(idle_task, seconds, stop)
        client.idle_done()
        await self._call("IDLE", asyncio.wait_for(idle_task, self.settings.timeout_seconds))
        return pushed

    async def _wait_in_idle(self, idle_task: asyncio.Future[object], seconds: float,
                            stop: asyncio.Event) -> bool:
        """Wait for a push, the stop event or the end of IDLE; True when the server pushed."""
        push = asyncio.ensure_future(self._c.wait_server_push(timeout=seconds + 5))
        push.add_done_callback(read_outcome)
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({push, stopper, idle_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not push.done():
                push.cancel()
        if push.done() and not push.cancelled() and push.exception() is None:
            lines = push.result()
            return any(isinstance(x, bytes | bytearray) and bytes(x) != b"stop_wait_server_push"
                       for x in (lines if isinstance(lines, list) else [lines]))
        return False

    async def noop(self) -> None:
        await self._call("NOOP", self._c.noop())

