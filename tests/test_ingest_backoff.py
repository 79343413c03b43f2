"""Pure decisions of the poller: backoff with jitter and a cap; the server action per outcome."""

from __future__ import annotations

import random

from gatewayd.config import Account
from gatewayd.ingest.drain import server_action
from gatewayd.ingest.imap_wire import parse_fetch
from gatewayd.ingest.poller import BACKOFF_CAP, backoff_delay


def test_backoff_grows_with_jitter_and_is_capped() -> None:
    rng = random.Random(1)
    first = [backoff_delay(1, rng=rng) for _ in range(50)]
    assert all(1.0 <= d <= 2.0 for d in first) and len(set(first)) > 1
    assert all(8.0 <= backoff_delay(4, rng=rng) <= 16.0 for _ in range(50))
    assert all(BACKOFF_CAP / 2 <= backoff_delay(40, rng=rng) <= BACKOFF_CAP for _ in range(50))


def _account(**imap: object) -> Account:
    return Account.model_validate({
        "name": "a", "address": "a@shop.example",
        "new_ticket": {"type": "T", "status": "S"},
        "imap": {"host": "127.0.0.1", "username": "a", **imap},
    })


def test_server_action_per_outcome() -> None:
    moving = _account(move_to="Archiv")
    assert server_action(moving, "imported") == ("move", "Archiv")
    assert server_action(moving, "duplicate") == ("move", "Archiv")
    assert server_action(moving, "oversized") == ("flag", None)
    assert server_action(moving, "quarantined") == ("flag", None)
    deleting = _account(after_import="delete", quarantine_folder="Quarantäne")
    assert server_action(deleting, "own_mail") == ("delete", None)
    assert server_action(deleting, "quarantined") == ("move", "Quarantäne")


def test_parse_fetch_uid_before_or_after_the_literal() -> None:
    lines = [b"1 FETCH (UID 101 BODY[] {3}", bytearray(b"abc"), b")",
             b"2 FETCH (BODY[] {2}", bytearray(b"de"), b" UID 4294967295)", b"done"]
    assert parse_fetch(lines) == {101: b"abc", 4294967295: b"de"}
