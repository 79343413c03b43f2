"""The account's supervisor (gatewayd.ingest.supervisor): a session with work in hand and no
progress is cancelled, shown in /healthz and reconnected, with the mails going in exactly once;
a slow session that keeps moving and the wait for new mail are spared; a session that ignores
its cancellation is reported as wedged."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from gatewayd.api.app import create_app
from gatewayd.config import Config
from gatewayd.ingest.pipeline import Envelope, Outcome
from gatewayd.ingest.poller import run_account
from gatewayd.ingest.supervisor import Progress, Stalled, Wedged, supervise
from gatewayd.loopback.imap import start_imap_server
from gatewayd.runtime import Runtime
from gatewayd.store.models import InboundReceipt, Ticket
from tests.conftest import until
from tests.test_ingest_faults import account_view
from tests.test_ingest_imap import running, text_mail


@pytest.fixture
def db_url(sqlite_url: str) -> str:
    return sqlite_url


async def test_a_stall_outside_imap_is_cancelled_shown_and_reconnected(
    make_config: Callable[..., Config]
) -> None:
    """A step that hangs without an IMAP command pending (here: the hook after the commit, as a
    stuck database call would): the supervisor cancels the session after stall_seconds, logs
    why, shows it in /healthz (state, last_error, stalled_since), reconnects, and the mails go
    in exactly once."""
    async with start_imap_server({"support": "secret-1"}) as imap:
        for n in range(6):
            await imap.append("support", text_mail(f"Frage {n}", message_id=f"<st-{n}@x>"))
        config = make_config(accounts=[{
            "name": "support", "address": "support@shop.example", "language": "de",
            "new_ticket": {"type": "Kundenanfrage", "status": "Neu"},
            "imap": {"host": "127.0.0.1", "port": imap.port, "security": "none",
                     "username": "support", "password": "secret-1", "poll_seconds": 60,
                     "timeout_seconds": 1, "parse_timeout_seconds": 2, "stall_seconds": 3}}])
        hung = asyncio.Event()

        async def hang_once(env: Envelope, outcome: Outcome) -> None:
            if not hung.is_set():
                hung.set()
                await asyncio.Event().wait()  # never returns: only cancellation ends it

        async with running(config) as runtime:
            app = create_app(runtime)
            http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                     base_url="http://gatewayd")
            acc = config.account("support")
            assert acc is not None
            stop = asyncio.Event()
            with capture_logs() as logs:
                task = asyncio.create_task(run_account(runtime, acc, stop, hang_once))
                await until(lambda: _state(runtime, "stalled"), 20, "the stall found")
                view = await account_view(http, "support")
                await until(lambda: _imported(imap, 6), 20, "the mails imported after it")
                after = await account_view(http, "support")
                stop.set()
                await asyncio.wait_for(task, 15)
            await http.aclose()
            assert await Ticket.all().count() == 6
            assert await InboundReceipt.filter(server_action_done=True).count() == 6
    assert view["state"] == "stalled" and not view["healthy"]
    assert view["stalled_since"] is not None
    assert re.match(r"no progress for \d+ s while storing 6 mails", view["last_error"])
    assert after["stalled_since"] is None and after["healthy"]
    stalled = [e for e in logs if e["event"].startswith("account stalled")]
    assert stalled and "no progress for" in stalled[0]["reason"]


async def _state(runtime: Runtime, state: str) -> bool:
    health = runtime.health.get("support")
    return health is not None and health.state == state


async def _imported(imap: Any, count: int) -> bool:
    return not await imap.uids("support") and await Ticket.all().count() == count


async def test_supervise_cancels_a_stalled_session_and_spares_a_slow_one() -> None:
    progress = Progress()

    async def slow_but_moving() -> None:
        for _ in range(8):  # 0.4 s in all, never 0.2 s without progress
            await asyncio.sleep(0.05)
            progress.advanced()

    progress.working("moving slowly")
    await supervise(slow_but_moving(), progress, 0.2, check_seconds=0.02)

    cancelled = asyncio.Event()

    async def stuck() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    progress.working("waiting for a lock")
    with pytest.raises(Stalled, match="no progress for 0 s while waiting for a lock"):
        await supervise(stuck(), progress, 0.2, check_seconds=0.02)
    assert cancelled.is_set()
    # Waiting for new mail (IDLE, the pause between polls) is no stall, however long.
    progress.waiting()
    waited = asyncio.create_task(supervise(asyncio.sleep(0.5), progress, 0.1,
                                           check_seconds=0.02))
    await asyncio.wait_for(waited, 5)


async def test_supervise_reports_a_session_that_ignores_cancellation_as_wedged() -> None:
    progress = Progress()
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                continue  # swallowed: the supervisor cannot end this session

    progress.working("in a C call that never returns")
    with pytest.raises(Wedged) as wedged:
        await supervise(stubborn(), progress, 0.1, check_seconds=0.02, cancel_grace=0.2)
    assert not wedged.value.task.done()
    released.set()
    await asyncio.wait_for(wedged.value.task, 5)

