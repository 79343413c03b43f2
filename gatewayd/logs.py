"""Logging: structlog JSON lines on stdout for systemd, a readable console on a terminal."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

_SECRET_KEYS = frozenset({"password", "token", "secret", "authorization", "api_token"})


def _drop_secrets(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "***"
    return event


def configure(level: str = "INFO", *, json: bool | None = None) -> None:
    """Route structlog and the standard library (aioimaplib, uvicorn, tortoise) to one renderer."""
    if json is None:
        json = not sys.stdout.isatty()
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _drop_secrets,
    ]
    # Umlauts stay readable in JSON; a stdout that cannot encode them gets \u escapes.
    utf8 = (getattr(sys.stdout, "encoding", "") or "").lower().replace("-", "") == "utf8"
    renderer: Any = (
        structlog.processors.JSONRenderer(ensure_ascii=not utf8) if json
        else structlog.dev.ConsoleRenderer(colors=True)
    )
    structlog.configure(
        # filter_by_level first: a message below the level is dropped before the time stamp
        # and the rest are made for it (each cost a few microseconds per line).
        processors=[structlog.stdlib.filter_by_level, *shared,
                    structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=shared,
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info if json else (lambda _l, _n, e: e),
            renderer,
        ],
    ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # Libraries that chat at INFO about every command or query.
    for noisy in ("aioimaplib", "tortoise", "tortoise.db_client", "asyncio", "mail-parser",
                  "mailparser", "uvicorn.access", "aiosqlite", "pymap", "mail.log"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))


def get_logger(name: str = "gatewayd", **bound: Any) -> Any:
    """A lazy logger: safe to create at import time, before configure() runs."""
    return structlog.get_logger(name, **bound)
