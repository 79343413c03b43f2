"""Group commit of send outcomes: the outcomes that arrive while one commit runs share the next.

Each SMTP connection hands the outcome of the mail it just sent to `OutcomeRecorder.record` and
waits until that outcome is durable before it starts its next mail. While a commit runs, the
other connections' outcomes collect; the next commit takes all of them in one transaction (one
UPDATE per row: on SQLite sent with the COMMIT in one call into the database thread, on
PostgreSQL as one `executemany` per set of columns). On SQLite the UPDATEs join the group commit
of ticket changes (`store.groups`) as its urgent part: the running group takes them after the
change in hand and commits at once, so they cost no transaction of their own. So several
connections cost fewer
commits than mails, and the duplicate window is unchanged: a process killed at any moment can
have sent, but not yet recorded, at most the one mail each open connection has on the wire (sent,
or answered and waiting for its commit). A restart sends those again; every other mail is
recorded as sent exactly once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

from tortoise.transactions import in_transaction

from gatewayd.config import Config
from gatewayd.logs import get_logger
from gatewayd.outbound.outcomes import Outcome, outcome_update
from gatewayd.store import groups as store_groups
from gatewayd.store import sql

log = get_logger("gatewayd.outbound.sender")

_Item = tuple[Any, Outcome, "asyncio.Future[None]"]


class OutcomeRecorder:
    """Records outcomes for one send cycle, grouping those that arrive during a commit."""

    def __init__(self, config: Config, *, retry: bool = True) -> None:
        self.config = config
        self.retry = retry  # False: an attempt that would be retried later fails instead
        self._pending: list[_Item] = []
        self._committer: asyncio.Task[None] | None = None
        self.commits = 0  # how many commits recorded how many outcomes: for tests and benches
        self.recorded = 0

    async def record(self, row: Any, outcome: Outcome) -> None:
        """Return once the outcome of `row` is committed; raise if its commit failed. A
        caller cancelled while it waits does not take the outcome back: it is still recorded."""
        if outcome.status == "queued" and not self.retry:
            outcome = Outcome("failed", outcome.error, outcome.recipient_results)
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((row, outcome, done))
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit_all(), name="outbox-recorder")
        await done

    async def record_all(self, items: list[tuple[Any, Outcome]]) -> None:
        """Record outcomes of rows nothing was sent for (e.g. the server was unreachable)."""
        await asyncio.gather(*(self.record(row, outcome) for row, outcome in items))

    async def _commit_all(self) -> None:
        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    await self._commit(batch)
                except Exception as exc:
                    for _row, _outcome, done in batch:
                        if not done.done():
                            done.set_exception(exc)
                else:
                    for _row, _outcome, done in batch:
                        if not done.done():
                            done.set_result(None)
        finally:
            self._committer = None

    async def _commit(self, batch: list[_Item]) -> None:
        now = dt.datetime.now(dt.UTC)
        groups: dict[tuple[str, ...], list[list[Any]]] = {}
        for row, outcome, _done in batch:
            update = outcome_update(row, outcome, self.config, now)
            groups.setdefault(tuple(update), []).append([*update.values(), row.id])
        statements = [(f"UPDATE outbox SET {', '.join(f'{c} = ?' for c in columns)} "
                       "WHERE id = ?", params) for columns, params in groups.items()]
        if sql.dialect() == "sqlite":
            # The UPDATEs join the transaction of the changes being committed (form
            # submissions, `store.groups`), which commits right after the change it is
            # running: no transaction, COMMIT and fsync of their own.
            async def updates() -> None:
                for statement, rows in statements:
                    for values in rows:
                        await sql.later(statement, values)

            await store_groups.shared().run(updates, urgent=True)
        else:
            async with in_transaction():
                for statement, rows in statements:
                    await sql.execute_many(statement, rows)
        self.commits += 1
        self.recorded += len(batch)
        for row, outcome, _done in batch:
            log.info("outbox row " + ("sent" if outcome.status == "sent" else
                                      "will be retried" if outcome.status == "queued" else
                                      "failed"),
                     outbox_id=row.id, ticket_id=row.ticket_id, account=row.account,
                     attempts=row.attempts + 1, error=outcome.error)
