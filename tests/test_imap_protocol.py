"""aioimaplib 2.0.3's three traps, each shown on the stock client (expected to fail: strict
xfail, so an upstream fix shows here) and fixed by gatewayd.ingest.imap_protocol, against a real
Dovecot: a 3,000-line answer, commands without a timeout on a server that stopped answering
(its imap process SIGSTOPped: the TCP connection stays open), and a connection lost while
commands are pending (the process killed)."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import AsyncIterator, Callable
from typing import Any

import aioimaplib
import pytest

from gatewayd.config.schema import ImapSettings
from gatewayd.ingest.imap import ImapError, ImapSession
from gatewayd.ingest.imap_protocol import ConnectionLost, GatewayImap
from gatewayd.ingest.imap_wire import chunks, uid_set
from gatewayd.loopback.dovecot import DovecotServer
from tests.conftest import fresh_user

Client = Callable[..., Any]


def stock(host: str, port: int, *, timeout: float) -> aioimaplib.IMAP4:
    return aioimaplib.IMAP4(host=host, port=port, timeout=timeout)


def ours(host: str, port: int, *, timeout: float) -> GatewayImap:
    return GatewayImap(host, port, timeout=timeout)


def trap(reason: str) -> Any:
    return pytest.param(stock, id="stock-aioimaplib",
                        marks=pytest.mark.xfail(strict=True, reason=reason))


def small_mails(count: int) -> list[bytes]:
    return [f"From: k{n}@example.org\r\nSubject: Nr. {n}\r\nMessage-ID: <n{n}@example.org>\r\n"
            f"\r\nHallo {n}\r\n".encode() for n in range(count)]


async def logged_in(make: Client, dovecot: DovecotServer, user: str, *,
                    command_timeout: float) -> Any:
    client = make("127.0.0.1", dovecot.port, timeout=command_timeout)
    await client.wait_hello_from_server()
    assert (await client.login(user, dovecot.password)).result == "OK"
    await client.protocol.capability()
    assert (await client.select("INBOX")).result == "OK"
    return client


@pytest.fixture
async def frozen_user(dovecot: DovecotServer) -> AsyncIterator[tuple[str, list[int]]]:
    """A fresh mailbox with 3 mails; the test freezes its server process (thawed afterwards)."""
    user = fresh_user()
    dovecot.deliver_files(user, small_mails(3))
    pids: list[int] = []
    yield user, pids
    dovecot.thaw(pids)


# ------------------------------------------------------------------------------ trap 1


@pytest.mark.parametrize("make", [
    pytest.param(ours, id="gatewayd"),
    trap("aioimaplib recurses once per answer line: RecursionError inside data_received"),
])
async def test_an_answer_of_3000_lines_is_read(make: Client, dovecot: DovecotServer) -> None:
    user = fresh_user()
    dovecot.deliver_files(user, small_mails(3000))
    failures: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: failures.append(context["message"]))
    client = await logged_in(make, dovecot, user, command_timeout=4)
    try:
        async with asyncio.timeout(4):  # ours reads it in well under a second
            response = await client.uid("fetch", "1:3000", "(UID RFC822.SIZE)")
    finally:
        loop.set_exception_handler(None)
        client.protocol.transport.abort()
    assert response.result == "OK", failures
    assert sum(b" FETCH " in bytes(line) for line in response.lines) == 3000
    assert failures == []


# ------------------------------------------------------------------------------ trap 2


@pytest.mark.parametrize(("make", "command"), [
    *[pytest.param(ours, c, id=f"gatewayd-{c}") for c in ("move", "store", "copy", "expunge")],
    # The same holds for STORE, COPY and EXPUNGE; one stock case keeps the suite short.
    pytest.param(stock, "move", id="stock-aioimaplib-move", marks=pytest.mark.xfail(
        strict=True, reason="aioimaplib gives UID MOVE/STORE/COPY/EXPUNGE no timeout")),
])
async def test_a_command_to_a_server_that_stopped_answering_times_out(
    make: Client, command: str, dovecot: DovecotServer, frozen_user: tuple[str, list[int]]
) -> None:
    user, pids = frozen_user
    client = await logged_in(make, dovecot, user, command_timeout=0.5)
    pids += dovecot.freeze(user)
    assert pids, "no imap process to freeze"
    args = {"move": ("1", "Archiv"), "store": ("1", "+FLAGS.SILENT", r"(\Seen)"),
            "copy": ("1", "Archiv"), "expunge": ("1",)}[command]
    task = asyncio.ensure_future(client.uid(command, *args))
    try:
        done, _ = await asyncio.wait({task}, timeout=3)  # six times the timeout
        assert task in done, f"UID {command.upper()} still waiting after 3 s"
        assert isinstance(task.exception(), aioimaplib.CommandTimeout | ConnectionLost)
    finally:
        task.cancel()
        client.protocol.transport.abort()


@pytest.mark.parametrize("step", ["select", "unseen", "sizes", "fetch", "move", "copy", "flag",
                                  "delete", "ensure_folder", "noop", "idle", "close"])
async def test_every_session_command_is_bounded(
    step: str, dovecot: DovecotServer, frozen_user: tuple[str, list[int]]
) -> None:
    """ImapSession (what the poller uses): with the server frozen, each step ends within the
    timeout with ImapError (close: returns), instead of waiting forever."""
    user, pids = frozen_user
    settings = ImapSettings(host="127.0.0.1", port=dovecot.port, security="none", username=user,
                            timeout_seconds=0.5)
    session = ImapSession(settings, dovecot.password)
    await session.connect()
    await session.select("INBOX")
    if step == "copy":  # the path for servers without MOVE: UID COPY, STORE, EXPUNGE
        session.capabilities = session.capabilities - {"MOVE"}
    pids += dovecot.freeze(user)
    calls = {
        "select": lambda: session.select("INBOX"), "unseen": session.unseen,
        "sizes": lambda: session.sizes([1, 2, 3]), "fetch": lambda: session.fetch([1]),
        "move": lambda: session.move([1], "Archiv"), "copy": lambda: session.move([1], "Archiv"),
        "flag": lambda: session.flag([1], "\\Seen"), "delete": lambda: session.delete([1]),
        "ensure_folder": lambda: session.ensure_folder("Archiv"), "noop": session.noop,
        "idle": lambda: session.idle(60, asyncio.Event()), "close": session.close,
    }
    task = asyncio.ensure_future(calls[step]())
    try:
        done, _ = await asyncio.wait({task}, timeout=5)
        assert task in done, f"{step} still waiting after 5 s"
        if step == "close":
            assert task.exception() is None and session.client is None
        else:
            assert isinstance(task.exception(), ImapError), task.exception()
            # The connection was given up: the next command fails at once, unwritten, with the
            # reason of the first failure (not after a timeout of its own).
            with pytest.raises(ImapError) as after:
                await asyncio.wait_for(session.noop(), 1)
            assert "to NOOP" not in str(after.value)
            assert str(after.value).startswith("NOOP failed: ")
    finally:
        task.cancel()
        await session.close()


# ------------------------------------------------------------------------------ trap 3


@pytest.mark.parametrize("make", [
    pytest.param(ours, id="gatewayd"),
    trap("aioimaplib fails no pending command when the connection is lost"),
])
async def test_a_lost_connection_fails_every_pending_command_at_once(
    make: Client, dovecot: DovecotServer, frozen_user: tuple[str, list[int]]
) -> None:
    user, pids = frozen_user
    client = await logged_in(make, dovecot, user, command_timeout=60)  # plays no part here
    pids += dovecot.freeze(user)
    move = asyncio.ensure_future(client.uid("move", "1", "Archiv"))
    store = asyncio.ensure_future(client.uid("store", "2", "+FLAGS.SILENT", r"(\Seen)"))
    await asyncio.sleep(0.2)  # both written (STORE waits behind MOVE in the library)
    for pid in pids:
        os.kill(pid, signal.SIGKILL)  # the kernel closes the socket: the client sees EOF
    try:
        done, _ = await asyncio.wait({move, store}, timeout=3)
        assert done == {move, store}, "pending commands still waiting 3 s after the loss"
        assert all(isinstance(t.exception(), ConnectionLost) for t in done)
        # A command after the loss fails before it is written (not into a closed socket).
        with pytest.raises(ConnectionLost):
            await asyncio.wait_for(client.uid("store", "3", "+FLAGS.SILENT", r"(\Seen)"), 1)
    finally:
        for task in (move, store):
            task.cancel()
        client.protocol.transport.abort()


# ------------------------------------------------------------------------------ pure parts


def test_uid_sets_are_compact_and_chunks_bounded() -> None:
    assert uid_set([5, 1, 2, 3, 9, 10, 12]) == "1:3,5,9:10,12"
    assert uid_set([7]) == "7"
    parts = list(chunks(list(range(1, 1201))))
    assert [len(p) for p in parts] == [500, 500, 200]
    assert [uid_set(p) for p in parts] == ["1:500", "501:1000", "1001:1200"]


@pytest.mark.parametrize("ending", ["cancelled", "connection-lost"])
async def test_an_idle_that_ends_early_leaves_no_failure_unretrieved(
    ending: str, dovecot: DovecotServer, frozen_user: tuple[str, list[int]]
) -> None:
    """An IDLE cut short (its caller cancelled, as the supervisor and shutdown do, or the
    connection lost under it) must not leave the IDLE command's failure in a task nobody
    reads: asyncio would log "Task exception was never retrieved" when the task is collected,
    and Python 3.11 formats that traceback with ast.parse from inside the garbage collector,
    which breaks an ast.parse the collection interrupted (SystemError "AST constructor
    recursion depth mismatch", as once seen in tortoise's migrate at start)."""
    user, pids = frozen_user
    settings = ImapSettings(host="127.0.0.1", port=dovecot.port, security="none", username=user,
                            timeout_seconds=0.5)
    session = ImapSession(settings, dovecot.password)
    failures: list[str] = []
    loop = asyncio.get_running_loop()
    loop.set_exception_handler(lambda _loop, context: failures.append(context["message"]))
    try:
        await session.connect()
        await session.select("INBOX")
        task = asyncio.ensure_future(session.idle(60, asyncio.Event()))
        await asyncio.sleep(0.3)  # the server said "+ idling"
        assert not task.done()
        if ending == "cancelled":
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await session.close()  # the IDLE command fails with the connection
        else:
            pids += dovecot.freeze(user)
            for pid in pids:
                os.kill(pid, signal.SIGKILL)
            with pytest.raises(ImapError):
                await asyncio.wait_for(task, 3)
            await session.close()
        del task
        await asyncio.sleep(0.1)
        gc.collect()
        await asyncio.sleep(0)
    finally:
        loop.set_exception_handler(None)
        await session.close()
    assert failures == []
