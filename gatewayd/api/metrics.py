"""GET /metrics: Prometheus text exposition, derived from the database so every instance agrees.

The figures are counted from the shared tables (inbound receipts, tickets by source, the outbox by
state, the held quarantine, each account's last poll), not from per-process counters: behind a
load balancer any instance answers the same, and a restart loses nothing. Public, like /healthz.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from tortoise.functions import Count
from tortoise.queryset import QuerySet

from gatewayd import __version__
from gatewayd.api.deps import runtime_of
from gatewayd.config import Config
from gatewayd.ingest.lmtp_delivery import LMTP_FOLDER
from gatewayd.logs import get_logger
from gatewayd.runtime import Runtime
from gatewayd.store.models import (
    AccountState,
    InboundReceipt,
    LmtpCount,
    Outbox,
    Quarantine,
    Ticket,
)

router = APIRouter()
log = get_logger("gatewayd.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OUTBOX_STATES = ("queued", "sending", "sent", "failed", "suppressed")
SOURCES = ("mail", "form", "api")

Labels = tuple[tuple[str, str], ...]


@dataclass(frozen=True)
class Metric:
    """One metric family: name, type, help text and its samples (labels → value)."""

    name: str
    kind: str  # counter | gauge
    help: str
    samples: Sequence[tuple[Labels, float]] = field(default_factory=tuple)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _number(value: float) -> str:
    if value == int(value):
        return str(int(value))
    return repr(float(value))


def render(metrics: Iterable[Metric]) -> str:
    """The Prometheus text format (version 0.0.4) for these families. Pure."""
    lines: list[str] = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {metric.help.replace(chr(10), ' ')}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            label_text = ",".join(f'{k}="{_escape(v)}"' for k, v in labels)
            suffix = f"{{{label_text}}}" if label_text else ""
            lines.append(f"{metric.name}{suffix} {_number(value)}")
    return "\n".join(lines) + "\n"


async def _count_by(rows: QuerySet[Any], column: str) -> dict[str, int]:
    """How many of `rows` there are per value of `column`, in one query."""
    found = await rows.group_by(column).annotate(n=Count("id")).values(column, "n")
    return {str(row[column]): int(row["n"]) for row in found}


def poll_lag(config: Config, last_polls: Mapping[str, dt.datetime | None],
             now: dt.datetime) -> list[tuple[Labels, float]]:
    """Seconds since each active account was last polled (by any instance). Pure.

    An active account that was never polled has no lag sample; `gatewayd_account_polled` says 0
    for it, so an alert can catch both cases.
    """
    samples: list[tuple[Labels, float]] = []
    for account in config.accounts:
        last = last_polls.get(account.name)
        if account.active and last is not None:
            samples.append(((("account", account.name),),
                            round(max(0.0, (now - last).total_seconds()), 3)))
    return samples


async def collect(config: Config, now: dt.datetime | None = None) -> list[Metric]:
    """Read the figures from the database (raises when the database does not answer)."""
    now = now or dt.datetime.now(dt.UTC)
    fetched = await _count_by(InboundReceipt.exclude(folder=LMTP_FOLDER), "account")
    tickets = await _count_by(Ticket.all(), "source")
    outbox = await _count_by(Outbox.all(), "status")
    held = await Quarantine.filter(status="held").count()
    states = {s.account: s for s in await AccountState.all()}

    accounts = [a.name for a in config.accounts]
    accounts += sorted(set(fetched) - set(accounts))
    return [
        Metric("gatewayd_mails_fetched_total", "counter",
               "Mails imported from IMAP (inbound receipts, LMTP's not included), by account.",
               [((("account", name),), fetched.get(name, 0)) for name in accounts]),
        Metric("gatewayd_tickets_created_total", "counter",
               "Tickets in the store by source (mail, form, api); deleted tickets drop out.",
               [((("source", s),), tickets.get(s, 0))
                for s in list(SOURCES) + sorted(set(tickets) - set(SOURCES))]),
        Metric("gatewayd_mails_sent_total", "counter", "Outbound mails sent (outbox state sent).",
               [((), outbox.get("sent", 0))]),
        Metric("gatewayd_mails_failed_total", "counter",
               "Outbound mails failed permanently (outbox state failed).",
               [((), outbox.get("failed", 0))]),
        Metric("gatewayd_outbox", "gauge", "Outbox rows by state.",
               [((("status", s),), outbox.get(s, 0))
                for s in list(OUTBOX_STATES) + sorted(set(outbox) - set(OUTBOX_STATES))]),
        Metric("gatewayd_quarantine_size", "gauge", "Mails held in quarantine.", [((), held)]),
        Metric("gatewayd_poll_lag_seconds", "gauge",
               "Seconds since the account was last polled by any instance.",
               poll_lag(config, {n: s.last_poll_at for n, s in states.items()}, now)),
        Metric("gatewayd_account_polled", "gauge",
               "1 when an active account has been polled at least once, else 0.",
               [((("account", a.name),),
                 1 if states.get(a.name) and states[a.name].last_poll_at else 0)
                for a in config.accounts if a.active]),
        *lmtp_metrics(config, await LmtpCount.all().values_list("account", "outcome", "count")),
    ]


# outcome in the lmtp_count table → (metric, reason label or None)
LMTP_FAMILIES: dict[str, tuple[str, str | None]] = {
    "delivered": ("gatewayd_lmtp_delivered_total", None),
    "quarantined": ("gatewayd_lmtp_quarantined_total", None),
    "duplicate": ("gatewayd_lmtp_duplicates_total", None),
    "deferred": ("gatewayd_lmtp_deferred_total", None),
    "refused_unknown": ("gatewayd_lmtp_refused_total", "unknown_recipient"),
    "refused_size": ("gatewayd_lmtp_refused_total", "too_big"),
}
LMTP_HELP = {
    "gatewayd_lmtp_delivered_total": "Mails delivered over LMTP and stored (250 after the commit), "
    "by account.",
    "gatewayd_lmtp_quarantined_total": "Mails delivered over LMTP and set aside in quarantine, "
    "by account.",
    "gatewayd_lmtp_duplicates_total": "LMTP redeliveries of a mail already stored (250, no second "
    "ticket), by account.",
    "gatewayd_lmtp_deferred_total": "LMTP replies 450/451 (database unavailable, a failure to "
    "retry, account switched off), by account.",
    "gatewayd_lmtp_refused_total": "LMTP recipients refused for good (550 unknown recipient: "
    "account empty; 552 too big), by account and reason.",
}


def lmtp_metrics(config: Config, rows: Iterable[tuple[Any, Any, Any]]) -> list[Metric]:
    """The LMTP families from the lmtp_count rows (account, outcome, count). Pure. Every
    account has its samples once [lmtp] is configured, so a rate() starts from 0."""
    counts: dict[tuple[str, str, str | None], float] = {}
    if config.lmtp is not None:
        for account in config.accounts:
            for name, reason in LMTP_FAMILIES.values():
                if reason != "unknown_recipient":
                    counts[(name, account.name, reason)] = 0
        counts[("gatewayd_lmtp_refused_total", "", "unknown_recipient")] = 0
    for account, outcome, n in rows:
        if str(outcome) in LMTP_FAMILIES:
            name, reason = LMTP_FAMILIES[str(outcome)]
            key = (name, str(account), reason)
            counts[key] = counts.get(key, 0) + int(n)
    families = []
    for name, help_text in LMTP_HELP.items():
        samples = [(((("account", a),) + ((("reason", r),) if r else ())), v)
                   for (n, a, r), v in counts.items() if n == name]
        if samples:
            families.append(Metric(name, "counter", help_text, samples))
    return families


def _static(config: Config, database_up: bool) -> list[Metric]:
    return [
        Metric("gatewayd_info", "gauge", "Version and mode of this instance.",
               [((("version", __version__), ("mode", config.mode)), 1)]),
        Metric("gatewayd_database_up", "gauge", "1 when the database answered this scrape.",
               [((), 1 if database_up else 0)]),
    ]


def live(runtime: Runtime) -> list[Metric]:
    """What only this instance knows, from its memory: each polled account's unseen backlog
    and import rate, and whether its writes find room on disk. Pure over the runtime."""
    polled = sorted(runtime.health.values(), key=lambda h: h.account)
    return [
        Metric("gatewayd_account_backlog", "gauge",
               "Unseen mails found by the account's last search and not yet handled "
               "(this instance's accounts).",
               [((("account", h.account),), h.backlog) for h in polled]),
        Metric("gatewayd_account_import_rate", "gauge",
               "Mails handled per second lately (this instance's accounts).",
               [((("account", h.account),), round(h.import_rate(), 3)) for h in polled]),
        Metric("gatewayd_storage_ok", "gauge",
               "0 while a write of this instance failed for lack of disk.",
               [((), 1 if runtime.storage.ok else 0)]),
    ]


@router.get("/metrics", include_in_schema=False)
async def metrics(request: Request) -> PlainTextResponse:
    runtime = runtime_of(request)
    config = runtime.config
    try:
        families = await collect(config)
    except Exception as exc:  # the scrape still answers: database_up 0 is the alert
        log.warning("metrics: database unavailable", error=type(exc).__name__)
        return PlainTextResponse(render([*_static(config, False), *live(runtime)]),
                                 media_type=CONTENT_TYPE)
    return PlainTextResponse(render([*_static(config, True), *families, *live(runtime)]),
                             media_type=CONTENT_TYPE)
