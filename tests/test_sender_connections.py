"""Several SMTP connections per account and group commit, against aiosmtpd: no row is sent twice
(SQLite and PostgreSQL), test mode holds on every connection, outcomes share commits, and a
sender killed with SIGKILL mid-batch repeats at most the mails its connections had on the wire."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from gatewayd.config import Config, config_from_dict
from gatewayd.loopback.smtp import SmtpSink, smtp_sink
from gatewayd.outbound import sender
from gatewayd.outbound.outcomes import Outcome
from gatewayd.outbound.recorder import OutcomeRecorder
from gatewayd.store.db import open_database
from gatewayd.store.models import Outbox
from tests.conftest import skeleton_data
from tests.test_sender import account_data, live, queue

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)


@pytest.fixture
async def sink() -> AsyncIterator[SmtpSink]:
    async with smtp_sink() as server:
        yield server


class Overlap:
    """An `on_data` hook that holds each DATA a moment and counts how many overlap."""

    def __init__(self, hold: float = 0.01) -> None:
        self.hold = hold
        self.now = 0
        self.most = 0

    async def __call__(self) -> None:
        self.now += 1
        self.most = max(self.most, self.now)
        await asyncio.sleep(self.hold)
        self.now -= 1


async def drain(config: Config, instances: tuple[str, ...] = ("a",)) -> None:
    while sum(await asyncio.gather(*(sender.run_once(config, instance=i) for i in instances))):
        pass


def message_ids(sink: SmtpSink) -> Counter[str]:
    return Counter(str(r.message()["Message-ID"]) for r in sink.received)


def test_connections_grow_with_the_queue_up_to_the_setting() -> None:
    assert [sender.connections_for(rows, 2) for rows in (1, 4, 5, 50)] == [1, 1, 2, 2]
    assert sender.connections_for(12, 3) == 3
    assert sender.connections_for(50, 1) == 1


async def test_several_connections_never_send_a_row_twice(make_config: Callable[..., Config],
                                                          sink: SmtpSink) -> None:
    """Two instances, three connections each, on both engines: every row once."""
    config = live(make_config, account_data("support", sink),
                  outbound={"connections_per_account": 3, "batch_size": 10})
    overlap = Overlap()
    sink.on_data = overlap
    async with open_database(config.database_url):
        rows = [await queue(config, [f"k{n}@example.org"], subject=f"Mail {n}")
                for n in range(40)]
        await drain(config, ("a", "b"))
        statuses = Counter(await Outbox.all().values_list("status", flat=True))
        attempts = set(await Outbox.all().values_list("attempts", flat=True))
    assert message_ids(sink) == Counter({row.message_id: 1 for row in rows})
    assert statuses == {"sent": 40} and attempts == {1}
    assert overlap.most >= 3  # the connections really sent side by side


@sqlite_only
async def test_test_mode_diverts_on_every_connection(make_config: Callable[..., Config],
                                                     sink: SmtpSink) -> None:
    config = make_config(mode="test", test_recipient="qa@shop.example",
                         accounts=[account_data("support", sink)],
                         outbound={"connections_per_account": 3, "poll_seconds": 0.05})
    overlap = Overlap()
    sink.on_data = overlap
    async with open_database(config.database_url):
        for n in range(12):
            await queue(config, [f"kunde{n}@example.org"])
        await drain(config)
    assert len(sink.received) == 12 and overlap.most >= 2
    assert {r.rcpt_tos for r in sink.received} == {("qa@shop.example",)}


@sqlite_only
async def test_at_most_the_mails_on_the_wire_are_unrecorded(
        make_config: Callable[..., Config], sink: SmtpSink,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Whenever the server gets a mail, every mail it got before is recorded as sent, except
    at most one per other open connection (the duplicate window of a crash). Commits are made
    slow here, so a connection that ran ahead of its outcome's commit would be seen."""
    connections = 3
    config = live(make_config, account_data("support", sink),
                  outbound={"connections_per_account": connections})
    committed = 0
    real_commit = OutcomeRecorder._commit

    async def slow_commit(self: OutcomeRecorder, batch: list[Any]) -> None:
        nonlocal committed
        await asyncio.sleep(0.03)
        await real_commit(self, batch)
        committed += len(batch)

    monkeypatch.setattr(OutcomeRecorder, "_commit", slow_commit)
    unrecorded: list[int] = []
    overlap = Overlap(0.002)

    async def check() -> None:
        unrecorded.append(len(sink.received) - committed)
        await overlap()

    sink.on_data = check
    async with open_database(config.database_url):
        for n in range(24):
            await queue(config, [f"k{n}@example.org"])
        await drain(config)
        statuses = set(await Outbox.all().values_list("status", flat=True))
    assert len(unrecorded) == 24 and overlap.most >= 2 and statuses == {"sent"}
    assert max(unrecorded) <= connections - 1


@sqlite_only
async def test_outcomes_that_arrive_during_a_commit_share_the_next(
        make_config: Callable[..., Config]) -> None:
    config = live(make_config, account_data("support", None))
    async with open_database(config.database_url):
        rows = [await queue(config, [f"k{n}@example.org"]) for n in range(6)]
        recorder = OutcomeRecorder(config)
        await asyncio.gather(*(recorder.record(row, Outcome("sent")) for row in rows))
        statuses = await Outbox.all().values_list("status", flat=True)
    assert set(statuses) == {"sent"}
    assert recorder.recorded == 6 and recorder.commits == 1  # handed in together: one commit


_CHILD = """
import asyncio, json, sys
from pathlib import Path
from gatewayd.config import config_from_dict
from gatewayd.outbound import sender
from gatewayd.store.db import open_database

config = config_from_dict(json.loads(sys.argv[1]), Path(sys.argv[2]))

async def main():
    async with open_database(config.database_url):
        print("ready", flush=True)
        while True:
            await sender.run_once(config)
            await asyncio.sleep(0.01)

asyncio.run(main())
"""


@sqlite_only
async def test_sigkill_mid_batch_repeats_at_most_the_mails_on_the_wire(
        tmp_path: Path, db_url: str, sink: SmtpSink) -> None:
    """A sender process with three connections is SIGKILLed while it sends; after a restart
    every mail has gone out, and at most three (one per connection) went out twice."""
    connections, count = 3, 30
    data = skeleton_data()
    data.update(mode="live", database_url=db_url, data_dir=str(tmp_path / "data"),
                templates_dir=str(tmp_path), accounts=[account_data("support", sink)],
                outbound={"connections_per_account": connections, "batch_size": 50},
                http={"listen": "127.0.0.1:0", "api_tokens": ["sigkill-test-token-0123456789"]})
    config = config_from_dict(data, tmp_path / "gatewayd.toml")
    sink.on_data = Overlap(0.01)
    async with open_database(config.database_url):
        rows = [await queue(config, [f"k{n}@example.org"], subject=f"Mail {n}")
                for n in range(count)]
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, json.dumps(data), str(tmp_path / "gatewayd.toml"),
        stdout=asyncio.subprocess.PIPE)
    try:
        assert child.stdout is not None
        await asyncio.wait_for(child.stdout.readline(), 60)
        for _ in range(3000):
            if len(sink.received) >= 10:
                break
            await asyncio.sleep(0.005)
    finally:
        child.send_signal(signal.SIGKILL)
        await child.wait()
    killed_after = len(sink.received)
    assert 10 <= killed_after < count, "the kill must land mid-batch"
    async with open_database(config.database_url):
        assert await sender.requeue_orphans(f"{sender.INSTANCE.rpartition(':')[0]}:{os.getpid()}")
        await drain(config)
        statuses = Counter(await Outbox.all().values_list("status", flat=True))
    received = message_ids(sink)
    assert set(received) == {row.message_id for row in rows}  # nothing lost
    assert sum(received.values()) - count <= connections     # at most the ones on the wire
    assert statuses == {"sent": count}


async def test_urgent_waiters_get_the_sqlite_connection_first() -> None:
    """The sender's turn at SQLite's one connection comes before queued form transactions."""
    from gatewayd.store.sqlite_backend import URGENT, PriorityLock

    lock = PriorityLock()
    order: list[str] = []

    async def take(name: str, urgent: bool) -> None:
        URGENT.set(urgent)
        async with lock:
            order.append(name)
            await asyncio.sleep(0)

    await lock.acquire()
    tasks = [asyncio.create_task(take(name, name.startswith("u")))
             for name in ("n1", "n2", "u1", "n3", "u2")]
    cancelled = asyncio.create_task(take("n-cancelled", False))
    await asyncio.sleep(0.01)
    cancelled.cancel()
    lock.release()
    await asyncio.gather(*tasks)
    assert order == ["u1", "u2", "n1", "n2", "n3"]
    assert not lock.locked()


@sqlite_only
def test_connections_per_account_is_checked(make_config: Callable[..., Config]) -> None:
    from gatewayd.config import ConfigError

    for wrong in (0, 11):
        with pytest.raises(ConfigError, match=r"outbound\.connections_per_account"):
            make_config(outbound={"connections_per_account": wrong})
    assert make_config().outbound.connections_per_account == 2
