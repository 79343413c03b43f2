"""aioimaplib 2.0.3's client protocol with its three traps fixed at the source (a subclass).

1. Responses are read in a loop, not by recursing once per line: a response of more than ~1,000
   lines no longer raises RecursionError inside `data_received` (which killed the protocol and
   left the command waiting forever; upstream issue iroco-co/aioimaplib#118).
2. Every command runs under the client's timeout, counted from the moment it is sent and
   restarted by every line of its answer (an inactivity timeout: a long FETCH that keeps
   arriving is making progress). The library gives UID MOVE/STORE/COPY/EXPUNGE none, and a
   command its wrappers cut off with `wait_for` stays pending and blocks the ones after it. A
   command that times out aborts the connection: its answer could still arrive and be taken for
   the next command's.
3. A lost connection fails every pending command at once (`ConnectionLost`), and any command
   issued afterwards fails before it is written; the library kept them waiting forever (and
   `idle_start` never returned, iroco-co/aioimaplib#110). A response the library cannot read
   aborts the connection with the reason instead of leaving a half-read stream behind.

Two costs of the library's reader are removed on the way: it copied the rest of the buffer for
every line, and FETCH checked completeness by rescanning every line received so far (quadratic:
with the recursion removed, a 20,000-line answer still did not finish within 10 s).

TCP keepalive is switched on, so a peer that vanished without a FIN (a dead NAT entry, a
powered-off host) is noticed within about two minutes even in IDLE.

Only what these fixes need is overridden; the rest is aioimaplib's own code. The subclass relies
on aioimaplib 2.0.x internals (pyproject pins <2.1); tests/test_imap_protocol.py shows each trap
on the stock library beside the fix, so an upgrade that changes them fails there first.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections.abc import Callable
from typing import Any

import aioimaplib
from aioimaplib.aioimaplib import (
    CRLF,
    STOP_WAIT_SERVER_PUSH,
    Command,
    Commands,
    Exec,
    FetchCommand,
    IncompleteRead,
    literal_data_re,
)

# Probe an idle connection after 60 s, then every 15 s; give up after 4 unanswered probes.
KEEPALIVE = {"TCP_KEEPIDLE": 60, "TCP_KEEPINTVL": 15, "TCP_KEEPCNT": 4}


class ConnectionLost(aioimaplib.AioImapException):
    """The connection is gone (closed by the server, reset, or aborted after a fault)."""


def _keepalive(transport: asyncio.BaseTransport) -> None:
    sock = transport.get_extra_info("socket")
    if sock is None:
        return
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for name, value in KEEPALIVE.items():
            if hasattr(socket, name):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, name), value)
    except OSError:
        pass  # not a TCP socket (tests over a pipe): nothing to tune


class _FetchCommand(FetchCommand):
    """FETCH whose "is the answer complete?" check costs O(1) per line: the library's scanned
    every line received so far for each new one (O(n²))."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._balance = 0  # "(" minus ")" in the text lines since the last "n FETCH (" line
        super().__init__(*args, **kwargs)

    def append_to_resp(self, line: bytes, result: str = "Pending") -> None:
        super().append_to_resp(line, result)
        if type(line) is bytes:  # literal data comes as bytearray and is not counted
            if self.FETCH_MESSAGE_DATA_RE.match(line):
                self._balance = 0
            self._balance += line.count(b"(") - line.count(b")")

    def wait_data(self) -> bool:
        return self._balance != 0


class GatewayImapProtocol(aioimaplib.IMAP4ClientProtocol):
    """aioimaplib's protocol with bounded commands and loss handling (see the module text)."""

    # Set by the library's __init__ without annotations mypy could use.
    incomplete_line: bytes
    current_command: Command | None
    pending_sync_command: Command | None

    def __init__(self, loop: asyncio.AbstractEventLoop, *, command_timeout: float,
                 on_progress: Callable[[], None] | None = None) -> None:
        super().__init__(loop, None)
        self.command_timeout = command_timeout
        self.on_progress = on_progress or (lambda: None)
        self.lost: ConnectionLost | None = None
        self.closed: asyncio.Future[ConnectionLost] = loop.create_future()

    # ------------------------------------------------------------------ transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        _keepalive(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        why = f"connection lost: {exc}" if exc else "the server closed the connection"
        self.fail(why)

    def data_received(self, d: bytes) -> None:
        if self.lost is not None:
            return
        self.on_progress()
        try:
            self._handle_responses(self.incomplete_line + d, self._handle_line,
                                   self.current_command)
            self.incomplete_line = b""
            self.current_command = None
        except IncompleteRead as incomplete:
            self.current_command = incomplete.cmd
            self.incomplete_line = incomplete.data
        except Exception as exc:  # an unreadable answer: the stream cannot be trusted any more
            self.fail(f"cannot read the server's answer ({type(exc).__name__}: {exc})")

    def fail(self, why: str) -> None:
        """Fail every pending command with ConnectionLost(why) and abort the connection."""
        if self.lost is None:
            self.lost = ConnectionLost(why)
            if not self.closed.done():
                self.closed.set_result(self.lost)
        pending = [c for c in self.pending_async_commands.values() if c is not None]
        if self.pending_sync_command is not None:
            pending.append(self.pending_sync_command)
        self.pending_async_commands.clear()
        self.pending_sync_command = None
        for command in pending:
            command._exception = ConnectionLost(str(self.lost))
            command.close(str(self.lost).encode(), "KO")
        self.idle_queue.put_nowait(STOP_WAIT_SERVER_PUSH)  # wake a wait_server_push
        if self.transport is not None and not self.transport.is_closing():
            self.transport.abort()

    def hurry(self, seconds: float) -> None:
        """From now on no command (IDLE aside) waits longer than `seconds` for the next line of
        its answer, the pending ones included: at shutdown a hanging server costs seconds."""
        self.command_timeout = min(self.command_timeout, seconds)
        pending = [c for c in self.pending_async_commands.values() if c is not None]
        if self.pending_sync_command is not None:
            pending.append(self.pending_sync_command)
        for command in pending:
            if command.name != "IDLE" and (command._timeout or seconds + 1) > seconds:
                command._timeout = seconds
                command._reset_timer()

    # ------------------------------------------------------------------ reading

    def _handle_responses(self, data: bytes, line_handler: Callable[..., Any],
                          current_cmd: Command | None = None) -> None:
        """The library's reader as a loop over the lines (it recursed once per line), walking
        an offset instead of copying the rest of the buffer for every line."""
        pos = 0
        while True:
            if pos >= len(data):
                if self.pending_sync_command is not None:
                    self.pending_sync_command.flush()
                if current_cmd is not None and current_cmd.wait_data():
                    raise IncompleteRead(current_cmd)
                return
            if current_cmd is not None and current_cmd.wait_literal_data():
                data, pos = current_cmd.append_literal_data(data[pos:]), 0
                if current_cmd.wait_literal_data():
                    raise IncompleteRead(current_cmd)
            end = data.find(CRLF, pos)
            if end < 0:
                raise IncompleteRead(current_cmd, data[pos:])
            line = data[pos:end]
            pos = end + len(CRLF)
            cmd = line_handler(line, current_cmd)
            begin_literal = literal_data_re.match(line)
            if begin_literal:
                if cmd is None:
                    cmd = Command("NIL", "unused", loop=self.loop)
                cmd.begin_literal_data(int(begin_literal.group("size")))
                current_cmd = cmd
            elif cmd is not None and cmd.wait_data():
                current_cmd = cmd
            else:
                current_cmd = None

    # ------------------------------------------------------------------ commands

    async def fetch(self, message_set: str, message_parts: str, by_uid: bool = False,
                    timeout: float | None = None) -> Any:  # noqa: ASYNC109 (the library's signature)
        return await self.execute(_FetchCommand(
            self.new_tag(), message_set, message_parts, prefix="UID" if by_uid else "",
            loop=self.loop, timeout=timeout))

    async def wait_async_pending_commands(self) -> None:
        # The library's version left the failures of these waits unretrieved.
        await asyncio.gather(*(c.wait() for c in self.pending_async_commands.values()),
                             return_exceptions=True)

    def send(self, line: str, scrub: str | None = None) -> None:
        if self.lost is not None or self.transport is None or self.transport.is_closing():
            return  # execute() has failed the command already; IDLE's DONE has nowhere to go
        super().send(line, scrub=scrub)

    async def execute(self, command: Command, scrub: str | None = None) -> Any:
        """The library's execute with a timeout on every command but IDLE (bounded by the
        session instead) and loss checks before and after waiting for the command's turn."""
        if self.lost is not None:
            raise ConnectionLost(str(self.lost))
        spec = Commands.get(command.name)
        if self.state not in spec.valid_states:
            raise aioimaplib.Abort(f"command {command.name} illegal in state {self.state}")
        if self.pending_sync_command is not None:
            await self.pending_sync_command.wait()
        if spec.exec == Exec.is_sync:
            if self.pending_async_commands:
                await self.wait_async_pending_commands()
            if self.lost is None:
                self.pending_sync_command = command
        else:
            previous = self.pending_async_commands.get(command.untagged_resp_name)
            if previous is not None:
                await previous.wait()
            if self.lost is None:
                self.pending_async_commands[command.untagged_resp_name] = command
        if self.lost is not None:
            raise ConnectionLost(str(self.lost))
        if command.name != "IDLE":
            command._timeout = command._timeout or self.command_timeout
        command._reset_timer()  # the clock starts when the command is sent
        self.send(str(command), scrub=scrub)
        try:
            await command.wait()
        except aioimaplib.CommandTimeout:
            # The commands failed with it say the same as the one that timed out (ImapSession:
            # "no answer within N s"): whichever of them reaches the poller first, /healthz
            # and the log read alike.
            self.fail(f"no answer within {command._timeout:g} s to {command.name}")
            raise
        finally:
            if command.name == "IDLE":
                self._idle_event.clear()
        return command.response


class GatewayImap(aioimaplib.IMAP4):
    """aioimaplib's client on GatewayImapProtocol (plain or implicit TLS by `ssl_context`)."""

    def __init__(self, host: str, port: int, *, timeout: float,
                 ssl_context: ssl.SSLContext | None = None,
                 on_progress: Callable[[], None] | None = None) -> None:
        self._on_progress = on_progress
        super().__init__(host=host, port=port, timeout=timeout, ssl_context=ssl_context)

    def create_client(self, host: str, port: int, loop: asyncio.AbstractEventLoop | None,
                      conn_lost_cb: Any = None, ssl_context: ssl.SSLContext | None = None) -> None:
        running = loop or asyncio.get_running_loop()
        self.protocol = GatewayImapProtocol(running, command_timeout=self.timeout,
                                            on_progress=self._on_progress)
        self._client_task = running.create_task(running.create_connection(
            lambda: self.protocol, host, port, ssl=ssl_context))

    async def _wait_connection_and_hello(self) -> None:
        await self._client_task
        hello = asyncio.ensure_future(self.protocol.wait("AUTH|NONAUTH"))
        hello.add_done_callback(read_outcome)
        closed = self.protocol.closed
        await asyncio.wait({hello, closed}, return_when=asyncio.FIRST_COMPLETED)
        if not hello.done():  # e.g. "* BYE too many connections", then the server closed
            hello.cancel()
            raise ConnectionLost(f"no greeting: {closed.result()}")

    async def idle(self) -> aioimaplib.Response:
        """The IDLE command. aioimaplib's idle_start runs it as a task of its own, which its
        caller never sees when idle_start is cut short (a timeout waiting for "+ idling"): its
        failure is read here, so it is not left for the garbage collector to log."""
        task = asyncio.current_task()
        if task is not None:
            task.add_done_callback(read_outcome)
        return await super().idle()

    def abort(self, why: str) -> None:
        """Give up on the connection now: pending commands fail, the socket is closed."""
        if not self._client_task.done():
            self._client_task.cancel()
        self.protocol.fail(why)


def read_outcome(future: asyncio.Future[Any]) -> None:
    """A done callback that reads a future's outcome: a task whose caller went away (cancelled,
    or ended by something else first) is not logged as "exception was never retrieved" when
    it is collected. (Python 3.11 formats that log's traceback with ast.parse from inside the
    garbage collector, which breaks an ast.parse the collection interrupted.)"""
    if not future.cancelled():
        future.exception()
