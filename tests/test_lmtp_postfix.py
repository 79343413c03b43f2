"""Interoperability with a real MTA: Debian's Postfix (a private instance, tests/postfix.py)
takes mail over SMTP and hands it to gatewayd's LMTP listener (`virtual_transport =
lmtp:inet:...` or `lmtp:unix:...`, as docs/lmtp.md shows).

- Mail ends up as tickets, one per account however many of its addresses a mail names.
- With the database down Postfix defers (451 4.3.0) and keeps the mail; once the database is
  back, `postqueue -f` delivers it: nothing lost, nothing doubled. "Down" is PostgreSQL behind a
  proxy that is cut, or SQLite whose write lock another process holds.
- A reply lost after DATA (Postfix gives up waiting) makes Postfix deliver again: the second
  delivery is answered 250 and stores nothing.

About 10 s per test on the project machine, most of it Postfix starting and stopping.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import aiosmtplib
import pytest

from gatewayd import daemon
from gatewayd.config import Config
from gatewayd.runtime import Runtime
from gatewayd.store.models import InboundReceipt, Message, Quarantine, Ticket
from tests.db_proxy import DatabaseProxy
from tests.postfix import PrivatePostfix, private_postfix, unavailable_reason
from tests.test_lmtp import accounts, address, mail

pytestmark = pytest.mark.skipif(unavailable_reason() is not None,
                                reason=unavailable_reason() or "")


async def submit(postfix: PrivatePostfix, raw: bytes, recipients: list[str]) -> None:
    """Hand a mail to Postfix over SMTP, as a customer's mail server would."""
    errors, _ = await aiosmtplib.send(raw, sender="kunde@kunde.example", recipients=recipients,
                                      hostname="127.0.0.1", port=postfix.smtp_port,
                                      start_tls=False, timeout=30)
    assert all(r.code == 250 for r in errors.values()), errors


async def until(condition: Callable[[], Any], what: str, postfix: PrivatePostfix,
                seconds: float = 60) -> None:
    """Wait for a condition (a bounded wait for Postfix's queue manager, not a speed claim)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while asyncio.get_running_loop().time() < deadline:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}\nqueue: {postfix.queue()}\n"
                         f"maillog:\n{postfix.log()[-4000:]}")


async def queue_empty(postfix: PrivatePostfix) -> bool:
    return not await asyncio.to_thread(postfix.queue)


async def tickets(n: int) -> bool:
    return await Ticket.all().count() == n


@contextlib.contextmanager
def sqlite_write_lock(db_url: str) -> Iterator[None]:
    """Another process holding SQLite's write lock: gatewayd cannot store anything."""
    holder = sqlite3.connect(db_url[len("sqlite://"):].partition("?")[0], isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.execute("ROLLBACK")
        holder.close()


@contextlib.asynccontextmanager
async def gateway_with_outage(make_config: Callable[..., Config], db_url: str,
                              lmtp: dict[str, Any]) -> AsyncIterator[tuple[Runtime, Any]]:
    """The daemon, and an async context manager that takes its database away for a while."""
    if db_url.startswith("sqlite"):
        # 0.3 s busy timeout instead of 5 s: each refused delivery is quicker, nothing else.
        config = make_config(database_url=f"{db_url}?busy_timeout=300", accounts=accounts(),
                             lmtp=lmtp)

        @contextlib.asynccontextmanager
        async def outage() -> AsyncIterator[None]:
            with sqlite_write_lock(db_url):
                yield

        async with daemon.start(config) as runtime:
            yield runtime, outage
        return
    async with DatabaseProxy.before(db_url) as proxy:
        config = make_config(database_url=proxy.url(db_url), accounts=accounts(), lmtp=lmtp)

        @contextlib.asynccontextmanager
        async def outage() -> AsyncIterator[None]:
            await proxy.down()
            try:
                yield
            finally:
                await proxy.up()

        async with daemon.start(config) as runtime:
            yield runtime, outage


async def test_postfix_delivers_defers_while_the_database_is_down_and_delivers_after(
        make_config: Callable[..., Config], db_url: str) -> None:
    async with gateway_with_outage(make_config, db_url, {"listen": "127.0.0.1:0"}) as (
            runtime, outage):
        with private_postfix(f"lmtp:inet:{address(runtime)}") as postfix:
            # One mail to both accounts (and an alias of one), one to an alias only.
            await submit(postfix, mail(subject="A", message_id="<a@kunde.example>"),
                         ["support@shop.example", "sales@shop.example", "info@shop.example"])
            await submit(postfix, mail(subject="B", message_id="<b@kunde.example>"),
                         ["hilfe@shop.example"])
            await until(lambda: queue_empty(postfix), "the first mails", postfix)
            assert await Ticket.all().count() == 3

            async with outage():
                await submit(postfix, mail(subject="C", message_id="<c@kunde.example>"),
                             ["support@shop.example"])
                await submit(postfix, mail(subject="D", message_id="<d@kunde.example>"),
                             ["sales@shop.example"])

                def deferred() -> bool:
                    queued = postfix.queue()
                    reasons = [r.get("delay_reason", "") for m in queued
                               for r in m["recipients"]]
                    return len(reasons) == 2 and all("451 4.3.0" in r for r in reasons)

                await until(deferred, "Postfix to defer both mails with 451 4.3.0", postfix)
            assert await Ticket.all().count() == 3  # nothing stored while it was down

            postfix.flush()
            await until(lambda: queue_empty(postfix), "the deferred mails", postfix)
            await until(lambda: tickets(5), "five tickets", postfix)
            rows = await Message.all().values_list("message_id", "ticket__account")
            assert sorted(rows) == [("<a@kunde.example>", "sales"),
                                    ("<a@kunde.example>", "support"),
                                    ("<b@kunde.example>", "support"),
                                    ("<c@kunde.example>", "support"),
                                    ("<d@kunde.example>", "sales")]
            assert await Quarantine.all().count() == 0
            log = postfix.log()
            # one line per recipient: A's three (two of them support's), B, C and D
            assert log.count("status=sent (250 2.0.0 delivered to") == 6
            assert log.count("said: 451 4.3.0") >= 2
            if not db_url.startswith("sqlite"):  # the server gone, not merely busy
                assert "451 4.3.0 the database is unavailable" in log


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_postfix_redelivers_after_a_lost_reply_and_nothing_is_doubled(
        make_config: Callable[..., Config], tmp_path: Any) -> None:
    """Postfix waits 2 s for the reply after DATA; gatewayd's first delivery takes 4 s (an
    event action that is slow this once). Postfix gives up ("may be sent more than once") and
    delivers again through the unix socket: answered 250 "already delivered". (A try that comes
    while the first delivery is still committing waits for it and may time out as well; the
    next one is answered at once.)"""
    slow_once = asyncio.Event()

    async def slow_hook(store: Any, event: Any) -> None:
        if not slow_once.is_set():
            slow_once.set()
            await asyncio.sleep(4)

    with private_postfix("lmtp:unix:PLACEHOLDER") as postfix:
        socket_path = postfix.base / "gatewayd-lmtp.sock"
        config = make_config(accounts=accounts(), lmtp={"listen": f"unix:{socket_path}",
                                                        "socket_mode": 0o666})
        postfix.extra.update({"virtual_transport": f"lmtp:unix:{socket_path}",
                              "lmtp_data_done_timeout": "2s"})
        (postfix.conf / "main.cf").write_text(postfix.main_cf(), "utf-8")
        postfix.postfix("reload")
        async with daemon.start(config) as runtime:
            runtime.store.hooks.append(slow_hook)
            await submit(postfix, mail(subject="Langsam", message_id="<slow@kunde.example>"),
                         ["support@shop.example"])
            await until(lambda: "may be sent more than once" in postfix.log(),
                        "Postfix to give up waiting for the reply", postfix)
            await until(InboundReceipt.exists, "the first delivery to commit", postfix)
            assert postfix.queue(), "Postfix still holds the mail"

            async def redelivered() -> bool:
                # Postfix may already be trying again (its try waits for the first commit and
                # may time out too): flush whenever the mail is back in the deferred queue.
                queued = await asyncio.to_thread(postfix.queue)
                if any(m["queue_name"] == "deferred" for m in queued):
                    await asyncio.to_thread(postfix.flush)
                return not queued

            await until(redelivered, "the redelivery", postfix)
            assert "status=sent (250 2.0.0 already delivered to support" in postfix.log()
            assert await Ticket.all().count() == 1 and await Message.all().count() == 1
