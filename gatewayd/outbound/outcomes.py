"""What one SMTP attempt means for its outbox row: pure decisions, no I/O.

`classify_*` turn an answer into an `Outcome`: 4xx and connection errors are retried with
exponential backoff (the stored message keeps its Message-ID), 5xx fail with the server's answer,
partial refusals are recorded per recipient; `outcome_update` gives the columns an outcome sets.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import aiosmtplib

from gatewayd.config import Config
from gatewayd.store import sql


@dataclass(frozen=True)
class Outcome:
    """What to do with a row after one attempt."""

    status: str  # sent | queued (retry) | failed
    error: str | None = None
    recipient_results: dict[str, Any] = field(default_factory=dict)


def backoff_seconds(attempts: int, base: float, cap: float) -> float:
    """Exponential: base, 2·base, 4·base, ... capped. `attempts` counts the tries made so far."""
    return float(min(cap, base * (2 ** max(0, attempts - 1))))


def retry_or_fail(error: str, attempts: int, max_attempts: int) -> Outcome:
    if attempts >= max_attempts:
        return Outcome("failed", f"{error} (gave up after {attempts} attempts)")
    return Outcome("queued", error)


def classify_exception(exc: BaseException, attempts: int, max_attempts: int) -> Outcome:
    """An exception from connecting or sending: 5xx answers fail, everything else retries."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        results = {r.recipient: {"code": r.code, "message": r.message}
                   for r in exc.recipients}
        codes = [r.code for r in exc.recipients]
        text = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
        if codes and all(500 <= c < 600 for c in codes):
            return Outcome("failed", f"every recipient refused: {text}", results)
        outcome = retry_or_fail(f"recipients refused for now: {text}", attempts, max_attempts)
        return Outcome(outcome.status, outcome.error, results)
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        # The account's password, not the mail, is wrong: keep the mail until it is fixed.
        return retry_or_fail(f"SMTP login refused: {exc.code} {exc.message}", attempts,
                             max_attempts)
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        if 500 <= exc.code < 600:
            return Outcome("failed", f"server refused the mail: {exc.code} {exc.message}")
        return retry_or_fail(f"server answered {exc.code} {exc.message}", attempts, max_attempts)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return retry_or_fail(f"TLS certificate not accepted: {exc.verify_message}", attempts,
                             max_attempts)
    if isinstance(exc, aiosmtplib.SMTPException | OSError | asyncio.TimeoutError):
        return retry_or_fail(f"{type(exc).__name__}: {exc}", attempts, max_attempts)
    return retry_or_fail(f"unexpected {type(exc).__name__}: {exc}", attempts, max_attempts)


def classify_partial(refused: dict[str, Any], recipients: Sequence[str]) -> Outcome:
    """The server took the mail for some recipients: sent, with each refusal recorded."""
    results: dict[str, Any] = {r: {"code": 250, "message": "accepted"} for r in recipients}
    for address, response in refused.items():
        results[address] = {"code": response.code, "message": response.message}
    error = None
    if refused:
        error = "some recipients refused: " + "; ".join(
            f"{a}: {r.code} {r.message}" for a, r in refused.items())
    return Outcome("sent", error, results)


def outcome_update(row: Any, outcome: Outcome, config: Config,
                   now: dt.datetime) -> dict[str, Any]:
    """The columns one attempt's outcome sets on its row. Pure."""
    attempts = row.attempts + 1
    update: dict[str, Any] = {
        "status": outcome.status, "attempts": attempts, "last_error": outcome.error,
        "claimed_at": None, "claimed_by": None,
    }
    if outcome.recipient_results:
        update["recipient_results"] = sql.json_text(outcome.recipient_results)
    if outcome.status == "sent":
        update["sent_at"] = now
    elif outcome.status == "queued":
        delay = backoff_seconds(attempts, config.outbound.retry_base_seconds,
                                config.outbound.retry_max_seconds)
        update["next_attempt_at"] = now + dt.timedelta(seconds=delay)
    return update
