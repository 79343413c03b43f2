"""The LMTP listener: the shop's own MTA hands each mail to gatewayd, no polling.

aiosmtpd's LMTP protocol on the daemon's own loop (`loop.create_server` / `create_unix_server`,
or a socket systemd passed in, named `lmtp`). RCPT TO is accepted only for the accounts'
addresses and aliases (550 5.1.1 otherwise: no relay); after DATA one reply per recipient, 250
only once the mail has committed (see `lmtp_delivery`). Bounded: the mail size (552 5.3.4, early
on MAIL FROM SIZE=), the recipients per transaction, the concurrent sessions (421 above), and
every connection's silence (dropped after `timeout_seconds` without a byte).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import stat
from pathlib import Path
from typing import Any

from aiosmtpd.lmtp import LMTP
from aiosmtpd.smtp import Envelope as SmtpEnvelope
from aiosmtpd.smtp import Session

from gatewayd import __version__
from gatewayd.config import Account, Config
from gatewayd.ingest.lmtp_delivery import (
    Delivery,
    LmtpCounts,
    Reply,
    declared_size,
    lmtp_settings,
    recipient_table,
    size_limit,
)
from gatewayd.ingest.lmtp_socket import host_port, inherited_socket, unix_listener
from gatewayd.logs import get_logger
from gatewayd.ops.lifecycle import on_reload, remove_reload_listener
from gatewayd.runtime import Runtime

log = get_logger("gatewayd.lmtp")

# Longer lines than RFC 5321's 1000 do arrive (some mailers write whole HTML parts on one line);
# refusing them would bounce real mail. The size limit still bounds the whole mail.
LINE_LIMIT = 1 << 20
FLUSH_SECONDS = 2.0
STOP_GRACE_SECONDS = 20.0  # deliveries in progress may finish, within the shutdown budget


class _Envelope(SmtpEnvelope):
    """aiosmtpd's envelope plus the account each accepted recipient belongs to."""

    def __init__(self) -> None:
        super().__init__()
        self.accounts: list[Account] = []


class _Protocol(LMTP):
    """aiosmtpd's LMTP with a session cap, a silence timeout and one reply per recipient even
    for the errors aiosmtpd answers itself after DATA (too much data, a line too long)."""

    line_length_limit = LINE_LIMIT

    def __init__(self, listener: LmtpListener, **kwargs: Any) -> None:
        super().__init__(_Handler(listener), **kwargs)
        self.listener = listener
        self.refused = False
        self._after_354 = False

    def _create_envelope(self) -> _Envelope:
        return _Envelope()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self.listener.admit(self):
            self.refused = True
            transport.write(b"421 4.3.2 too many connections, try again later\r\n")  # type: ignore[attr-defined]
            transport.close()
            return
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        if self.refused:
            return
        self.listener.sessions.discard(self)
        super().connection_lost(error)

    def data_received(self, data: bytes) -> None:
        if self.refused:
            return
        self._reset_timeout()  # the timeout is for silence: a client that sends is not idle
        super().data_received(data)

    def handler_answers(self) -> None:
        """handle_DATA was reached: its reply has a line per recipient already."""
        self._after_354 = False

    def pause_timeout(self) -> None:
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()

    def resume_timeout(self) -> None:
        if self.transport is not None:
            self._reset_timeout()

    async def smtp_MAIL(self, arg: str | None) -> None:
        # SIZE= above every account's limit: refuse before the data (RFC 1870), with the
        # enhanced status code MTAs log.
        options = (arg or "").upper().split()[1:]
        if any(o.startswith("SIZE=") and not (o[5:].isascii() and o[5:].isdigit())
               for o in options):
            # aiosmtpd takes str.isdigit() for a number: int('²') raised, the MTA heard 451.
            await self.push("501 5.5.4 SIZE= takes the message's size in bytes (digits 0-9)")
            return
        size = declared_size(options)
        if (self.session is not None and self.session.extended_smtp and size is not None
                and self.data_size_limit and size > self.data_size_limit):
            await self.push(f"552 5.3.4 the message is {size} bytes, more than the largest "
                            f"limit here ({self.data_size_limit} bytes)")
            return
        await super().smtp_MAIL(arg)

    async def smtp_DATA(self, arg: str) -> None:
        self._after_354 = False
        self.listener.in_data += 1
        self.listener.quiet.clear()
        try:
            await super().smtp_DATA(arg)
        finally:
            self._after_354 = False
            self.listener.in_data -= 1
            if not self.listener.in_data:
                self.listener.quiet.set()

    async def push(self, status: Any) -> None:
        if not isinstance(status, str):
            pass
        elif status.startswith("354"):
            self._after_354 = True
        elif (self._after_354 and "\r\n" not in status
              and isinstance(self.envelope, _Envelope) and self.envelope.accounts):
            # aiosmtpd's own verdict on the data: LMTP wants it once per recipient.
            accounts = self.envelope.accounts
            if status.startswith("552"):
                status = "552 5.3.4 the message exceeds the size limit"
                for account in accounts:
                    self.listener.counts.add(account.name, "refused_size")
            status = "\r\n".join([status] * len(accounts))
            self._after_354 = False
        await super().push(status)


class _Handler:
    """aiosmtpd hooks: which recipients are accepted, and the delivery after DATA."""

    def __init__(self, listener: LmtpListener) -> None:
        self.listener = listener

    async def handle_RCPT(self, server: _Protocol, session: Session, envelope: _Envelope,
                          address: str, rcpt_options: list[str]) -> str:
        listener = self.listener
        config = listener.runtime.config
        account = listener.recipients(config).get(address.lower())
        shown = ascii(address)[1:-1]  # a reply is ASCII: no undecodable byte, no control
        if account is None:
            listener.counts.add("", "refused_unknown")
            log.info("lmtp: unknown recipient refused", recipient=address)
            return f"550 5.1.1 <{shown}>: no such recipient here"
        if not account.active:
            listener.counts.add(account.name, "deferred")
            return f"450 4.2.1 <{shown}>: account {account.name} is switched off, try later"
        if len(envelope.rcpt_tos) >= lmtp_settings(config).max_recipients:
            return "452 4.5.3 too many recipients in this transaction"
        size, limit = declared_size(envelope.mail_options), size_limit(config, account)
        if size is not None and size > limit:
            listener.counts.add(account.name, "refused_size")
            return (f"552 5.3.4 <{shown}>: the message is {size} bytes, more than "
                    f"{account.name}'s limit of {limit} bytes")
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        envelope.accounts.append(account)
        return f"250 2.1.5 <{shown}> OK"

    async def handle_DATA(self, server: _Protocol, session: Session,
                          envelope: _Envelope) -> str:
        server.handler_answers()
        try:
            return await self._data(server, envelope)
        except Exception as exc:  # one reply per recipient whatever happens, or the MTA and
            # we would be out of step; the MTA keeps the mail
            log.exception("lmtp: delivery failed", error=f"{type(exc).__name__}: {exc}"[:300])
            return "\r\n".join(["451 4.3.0 internal error, try again later"]
                                * len(envelope.accounts))

    async def _data(self, server: _Protocol, envelope: _Envelope) -> str:
        content = envelope.original_content or b""
        # We make the final delivery: the envelope sender goes on top as Return-Path (RFC 5321
        # 4.4); an empty one is how the routing rules recognise a bounce.
        sender = envelope.mail_from if envelope.mail_from not in (None, "<>") else ""
        raw = b"Return-Path: <" + (sender or "").encode("utf-8", "surrogateescape") + b">\r\n"
        raw += content
        config = self.listener.runtime.config
        unique = {a.name: a for a in envelope.accounts}.values()
        fitting = [a for a in unique if len(content) <= size_limit(config, a)]
        # The timeout is for a silent client; while we store, the client waits for us.
        server.pause_timeout()
        try:
            replies = await self.listener.deliver(raw, fitting) if fitting else {}
        finally:
            server.resume_timeout()
        lines = []
        for account in envelope.accounts:
            reply = replies.get(account.name)
            if reply is None:
                self.listener.counts.add(account.name, "refused_size")
                reply = Reply(f"552 5.3.4 the message is {len(content)} bytes, more than "
                              f"{account.name}'s limit of {size_limit(config, account)} "
                              "bytes", "refused_size")
            lines.append(reply.text)
        return "\r\n".join(lines)

    async def handle_exception(self, error: Exception) -> str:
        log.error("lmtp: session error", error=f"{type(error).__name__}: {error}"[:300])
        return "451 4.3.0 internal error, try again later"


class LmtpListener:
    """The listening socket, its sessions and the deliveries in progress."""

    # How long a session waits for its mail to be stored before it answers 451 (the delivery
    # goes on and may still commit). Below the MTAs' own wait for the reply (Postfix:
    # lmtp_data_done_timeout, 600 s), so the MTA hears why.
    delivery_seconds = 240.0

    def __init__(self, runtime: Runtime, counts: LmtpCounts | None = None) -> None:
        self.runtime = runtime
        self.counts = counts or LmtpCounts()
        self.delivery = Delivery(runtime.store, self.counts)
        self.sessions: set[_Protocol] = set()
        self.deliveries: set[asyncio.Task[dict[str, Reply]]] = set()
        self.in_data = 0  # sessions between DATA and their replies
        self.quiet = asyncio.Event()  # set while no session is
        self.quiet.set()
        self.server: asyncio.AbstractServer | None = None
        self.closing = False  # set at stop: new connections are refused
        self.address = ""  # where it listens: HOST:PORT, unix:PATH (port 0 resolved)
        self._unix_path: Path | None = None  # the socket file we made and remove at stop
        self._table: tuple[Config | None, dict[str, Account]] = (None, {})
        self._hostname = socket.gethostname()

    def recipients(self, config: Config) -> dict[str, Account]:
        """The recipient table of this configuration (made again after a reload)."""
        if self._table[0] is not config:
            self._table = (config, recipient_table(config))
        return self._table[1]

    def admit(self, session: _Protocol) -> bool:
        limit = lmtp_settings(self.runtime.config).max_sessions
        if self.closing or len(self.sessions) >= limit:
            log.warning("lmtp: connection refused", sessions=len(self.sessions),
                        reason="stopping" if self.closing else "too many sessions")
            return False
        self.sessions.add(session)
        return True

    def protocol(self) -> _Protocol:
        config = self.runtime.config
        lmtp = lmtp_settings(config)
        limits = [size_limit(config, a) for a in config.accounts] or [lmtp.max_message_bytes]
        return _Protocol(self, data_size_limit=max(limits), enable_SMTPUTF8=True,
                         hostname=self._hostname, ident=f"gatewayd {__version__} LMTP",
                         timeout=lmtp.timeout_seconds)

    async def deliver(self, raw: bytes, accounts: list[Account]) -> dict[str, Reply]:
        """The delivery runs as its own task: a client that hangs up does not cut a commit in
        half, and a stop waits for it (its MTA then gets no reply and delivers again: the
        receipt makes that a duplicate)."""
        task = asyncio.create_task(self.delivery.deliver(raw, accounts), name="lmtp-delivery")
        self.deliveries.add(task)
        task.add_done_callback(self.deliveries.discard)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self.delivery_seconds)
        except TimeoutError:
            # The database hangs: the MTA keeps the mail. If this delivery still commits, the
            # MTA's next try is recognised as a redelivery.
            log.error("lmtp: storing took too long, mail deferred", seconds=self.delivery_seconds)
            return {a.name: Reply("451 4.3.0 storing the mail took too long, try again later",
                                  "deferred") for a in accounts}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        lmtp = self.runtime.config.lmtp
        assert lmtp is not None
        sock = inherited_socket()
        if sock is not None:
            if sock.family == socket.AF_UNIX:
                self.server = await loop.create_unix_server(self.protocol, sock=sock)
                self.address = f"unix:{sock.getsockname()}"
            else:
                self.server = await loop.create_server(self.protocol, sock=sock)
                self.address = host_port(sock.getsockname())
            log.info("lmtp listening on the socket systemd passed", address=self.address)
            return
        if lmtp.unix_path is not None:
            sock = unix_listener(lmtp.unix_path, lmtp.socket_mode)
            self._unix_path = lmtp.unix_path
            self.server = await loop.create_unix_server(self.protocol, sock=sock)
            self.address = f"unix:{lmtp.unix_path}"
        else:
            from gatewayd.daemon import bind_socket

            sock = bind_socket(lmtp.host, lmtp.port, key="lmtp.listen")
            self.server = await loop.create_server(self.protocol, sock=sock)
            self.address = host_port(sock.getsockname())
        log.info("lmtp listening", address=self.address)

    def stop_accepting(self) -> None:
        self.closing = True
        if self.server is not None:
            self.server.close()

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop accepting, let deliveries in progress commit, close every session."""
        self.stop_accepting()
        # A delivery's replies are written by its session after the delivery: wait for both
        # (a delivery whose client hung up goes on alone, and still commits).
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace
        if self.deliveries:
            await asyncio.wait(list(self.deliveries), timeout=grace)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.quiet.wait(), max(0.0, deadline - loop.time()))
        for session in list(self.sessions):
            if session.transport is not None:
                session.transport.close()
        if self._unix_path is not None:
            with contextlib.suppress(OSError):
                if stat.S_ISSOCK(self._unix_path.lstat().st_mode):
                    self._unix_path.unlink()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.counts.flush(), max(1.0, self.runtime.grace(10)))


async def lmtp_worker(stack: contextlib.AsyncExitStack, runtime: Runtime) -> None:
    """Daemon worker: the LMTP listener and the task that writes its counts."""
    listener = LmtpListener(runtime)
    await listener.start()
    runtime.lmtp = listener
    runtime.stop_requests.append(listener.stop_accepting)

    async def flush_counts() -> None:
        while True:
            await asyncio.sleep(FLUSH_SECONDS)
            try:
                await listener.counts.flush()
            except Exception as exc:  # the database is down: the counts wait in memory
                log.debug("lmtp counts not written yet", error=type(exc).__name__)

    flusher = asyncio.create_task(flush_counts(), name="lmtp-counts")

    async def reloaded(old: Config, new: Config) -> None:
        if (old.lmtp and old.lmtp.listen) != (new.lmtp and new.lmtp.listen):
            log.warning("lmtp: the listener keeps its socket until restart",
                        listening=listener.address)

    on_reload(reloaded)

    async def stop() -> None:
        remove_reload_listener(reloaded)
        flusher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await flusher
        await listener.stop(runtime.grace(STOP_GRACE_SECONDS))

    stack.push_async_callback(stop)
