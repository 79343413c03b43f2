"""A thin IMAP client for one account (aioimaplib): connect securely, select, search unseen,
fetch by UID, move / delete / flag, and IDLE. Knows IMAP, not tickets.

Security: implicit TLS, required STARTTLS (abort when the server does not offer it; never go on
in plain text) or none (loopback only, enforced by `gatewayd check`); certificates verified.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aioimaplib

from gatewayd.config import ImapSettings

_FETCH_UID = re.compile(rb"UID (\d+)")
_FETCH_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")
_FETCH_FLAGS = re.compile(rb"FLAGS \(([^)]*)\)")
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


def _uid_set(uids: Sequence[int]) -> str:
    return ",".join(str(u) for u in uids)


class ImapSession:
    """One logged-in connection with a selected folder."""

    def __init__(self, settings: ImapSettings, password: str) -> None:
        self.settings = settings
        self._password = password
        self.client: aioimaplib.IMAP4 | None = None
        self.capabilities: frozenset[str] = frozenset()
        self.tls: str = "none"
        self.selected: Selected | None = None
        self.auth_mechanism = "LOGIN"  # or the SASL mechanism of an OAuth2 login
        self.token_expires_at: dt.datetime | None = None  # the OAuth2 access token's end

    @property
    def _c(self) -> aioimaplib.IMAP4:
        if self.client is None:
            raise ImapError("not connected")
        return self.client

    # ------------------------------------------------------------------ connection

    async def connect(self) -> None:
        s = self.settings
        timeout = s.timeout_seconds
        if s.security == "tls":
            context = ssl_context(s)
            self.client = aioimaplib.IMAP4_SSL(host=s.host, port=s.effective_port,
                                               timeout=timeout, ssl_context=context)
        else:
            self.client = aioimaplib.IMAP4(host=s.host, port=s.effective_port, timeout=timeout)
        try:
            await self.client.wait_hello_from_server()
        except ssl.SSLError as exc:
            raise TlsRequired(f"TLS handshake with {s.host}:{s.effective_port} failed: "
                              f"{exc.reason or exc}") from exc
        except (OSError, TimeoutError) as exc:
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
            raise ImapError(f"cannot connect to {s.host}:{s.effective_port}: {why}") from exc
        if s.security == "tls":
            self.tls = self._tls_description()
        elif s.security == "starttls":
            await self._starttls()
        await self._login()

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
            raise TlsRequired(f"{s.host} refused STARTTLS: {_text(response.lines)}")
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
                                 f"{_text(response.lines)[:200]}")
        # The login reply's capability list can hold junk: ask again (LIBRARY-NOTES).
        await asyncio.wait_for(self._c.protocol.capability(), s.timeout_seconds)
        self.capabilities = frozenset(c.upper() for c in self._c.protocol.capabilities)

    async def _login_oauth2(self) -> None:
        """AUTHENTICATE with the account's access token, by the mechanism the server offers;
        a refused token is renewed once and tried again before the login counts as refused."""
        from gatewayd.oauth import GrantRefused, TokenError, token_source
        from gatewayd.oauth.imap_auth import authenticate
        from gatewayd.oauth.sasl import choose_mechanism

        s = self.settings
        if s.oauth is None:
            raise OAuthLoginRequired(f'auth = "oauth2" but no [accounts.oauth2] for {s.username}')
        offered = [c[5:] for c in self._c.protocol.capabilities if c.upper().startswith("AUTH=")]
        mechanism = choose_mechanism(offered)
        if mechanism is None:
            raise AuthFailed(f"{s.host} offers neither AUTH=XOAUTH2 nor AUTH=OAUTHBEARER "
                             f"(offers {', '.join(offered) or 'no SASL mechanism'})")
        source = token_source(s.oauth)
        why = ""
        for attempt in (1, 2):
            try:
                token = await source.token(force=attempt == 2)
            except GrantRefused as exc:
                raise OAuthLoginRequired(str(exc)) from None
            except TokenError as exc:
                raise ImapError(str(exc)) from None
            try:
                accepted, why = await authenticate(self._c, mechanism, s.username, token.value,
                                                   s.host, s.effective_port, s.timeout_seconds)
            except (aioimaplib.Abort, TimeoutError) as exc:
                raise ImapError(f"AUTHENTICATE {mechanism} with {s.host} broke off: "
                                f"{type(exc).__name__}") from None
            if accepted:
                source.mechanisms["imap"] = mechanism
                self.auth_mechanism, self.token_expires_at = mechanism, token.expires
                return
            source.invalidate(token)
        raise AuthFailed(f"{s.host} refused the OAuth2 token ({mechanism}) of {s.username!r}: "
                         f"{why} — check the app's mailbox permission (docs/providers.md)")

    async def close(self) -> None:
        if self.client is None:
            return
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.logout(), 5)
        with contextlib.suppress(Exception):
            transport = self.client.protocol.transport
            if transport is not None:
                transport.close()
        self.client = None

    def has(self, capability: str) -> bool:
        return capability.upper() in self.capabilities

    # ------------------------------------------------------------------ folder

    async def select(self, folder: str) -> Selected:
        response = await self._c.select(_quote(folder))
        if response.result != "OK":
            raise ImapError(f"cannot select folder {folder!r}: {_text(response.lines)}")
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
        await asyncio.wait_for(self._c.create(_quote(folder)), self.settings.timeout_seconds)

    async def unseen(self) -> list[int]:
        response = await self._c.uid_search("UNSEEN", charset=None)
        if response.result != "OK":
            raise ImapError(f"UID SEARCH UNSEEN failed: {_text(response.lines)}")
        uids: list[int] = []
        for line in response.lines:
            text = bytes(line).decode("ascii", "replace").strip()
            if text and all(part.isdigit() for part in text.split()):
                uids.extend(int(part) for part in text.split())
        return sorted(set(uids))

    async def sizes(self, uids: Sequence[int]) -> dict[int, tuple[int, frozenset[str]]]:
        """UID → (RFC822.SIZE, flags) for the given UIDs."""
        if not uids:
            return {}
        response = await self._c.uid("fetch", _uid_set(uids), "(UID RFC822.SIZE FLAGS)")
        if response.result != "OK":
            raise ImapError(f"UID FETCH RFC822.SIZE failed: {_text(response.lines)}")
        result: dict[int, tuple[int, frozenset[str]]] = {}
        for line in response.lines:
            raw = bytes(line)
            uid, size = _FETCH_UID.search(raw), _FETCH_SIZE.search(raw)
            if uid and size:
                flags = _FETCH_FLAGS.search(raw)
                result[int(uid.group(1))] = (
                    int(size.group(1)),
                    frozenset(flags.group(1).decode().split()) if flags else frozenset(),
                )
        return result

    async def fetch(self, uids: Sequence[int], *, headers_only: bool = False) -> dict[int, bytes]:
        """UID → raw bytes (BODY.PEEK: \\Seen stays unset until we decide)."""
        if not uids:
            return {}
        item = "BODY.PEEK[HEADER]" if headers_only else "BODY.PEEK[]"
        response = await self._c.uid("fetch", _uid_set(uids), f"(UID {item})")
        if response.result != "OK":
            raise ImapError(f"UID FETCH failed: {_text(response.lines)}")
        return parse_fetch(response.lines)

    # ------------------------------------------------------------------ actions

    async def move(self, uids: int | Sequence[int], folder: str) -> None:
        """UID MOVE; without MOVE: UID COPY, \\Deleted, UID EXPUNGE (never a bare EXPUNGE)."""
        uid_set = _uid_set([uids] if isinstance(uids, int) else uids)
        if self.has("MOVE"):
            response = await self._c.uid("move", uid_set, _quote(folder))
            if response.result != "OK":
                raise ImapError(f"UID MOVE {uid_set} to {folder!r} failed: "
                                f"{_text(response.lines)}")
            return
        response = await self._c.uid("copy", uid_set, _quote(folder))
        if response.result != "OK":
            raise ImapError(f"UID COPY {uid_set} to {folder!r} failed: {_text(response.lines)}")
        await self.delete(uids)

    async def delete(self, uids: int | Sequence[int]) -> None:
        uid_set = _uid_set([uids] if isinstance(uids, int) else uids)
        await self.flag(uids, "\\Deleted", "\\Seen")
        if self.has("UIDPLUS"):
            response = await self._c.uid("expunge", uid_set)
            if response.result != "OK":
                raise ImapError(f"UID EXPUNGE {uid_set} failed: {_text(response.lines)}")
        # Without UIDPLUS the mail stays flagged \Deleted: a bare EXPUNGE could remove mail
        # another client flagged, so we never send one.

    async def flag(self, uids: int | Sequence[int], *flags: str) -> None:
        uid_set = _uid_set([uids] if isinstance(uids, int) else uids)
        response = await self._c.uid("store", uid_set, "+FLAGS.SILENT", f"({' '.join(flags)})")
        if response.result != "OK":
            raise ImapError(f"UID STORE {uid_set} failed: {_text(response.lines)}")

    # ------------------------------------------------------------------ waiting

    async def idle(self, seconds: float, stop: asyncio.Event) -> bool:
        """IDLE up to `seconds` (or until stop); True when the server pushed something."""
        client = self._c
        idle_task = await client.idle_start(timeout=seconds)
        push = asyncio.ensure_future(client.wait_server_push(timeout=seconds + 5))
        stopper = asyncio.ensure_future(stop.wait())
        try:
            await asyncio.wait({push, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopper.cancel()
            if not push.done():
                push.cancel()
        pushed = False
        if push.done() and not push.cancelled() and push.exception() is None:
            lines = push.result()
            pushed = any(isinstance(x, bytes | bytearray) and bytes(x) != b"stop_wait_server_push"
                         for x in (lines if isinstance(lines, list) else [lines]))
        client.idle_done()
        try:
            await asyncio.wait_for(idle_task, self.settings.timeout_seconds)
        except TimeoutError as exc:
            raise ImapError("the server did not end IDLE") from exc
        return pushed

    async def noop(self) -> None:
        await self._c.noop()


def parse_fetch(lines: Sequence[object]) -> dict[int, bytes]:
    """UID → literal bytes from a UID FETCH response (the UID may come before or after)."""
    result: dict[int, bytes] = {}
    pending: bytes | None = None
    uid: int | None = None
    for line in lines:
        if isinstance(line, bytearray):
            pending = bytes(line)
            if uid is not None:
                result[uid] = pending
                pending, uid = None, None
            continue
        raw = bytes(line) if isinstance(line, bytes) else b""
        match = _FETCH_UID.search(raw)
        if b" FETCH " in raw:
            uid = int(match.group(1)) if match else None
            pending = None
        elif match and pending is not None:
            result[int(match.group(1))] = pending
            pending, uid = None, None
    return result


def _text(lines: Sequence[object]) -> str:
    return " ".join(bytes(x).decode("utf-8", "replace") if isinstance(x, bytes | bytearray)
                    else str(x) for x in lines)[:300]
