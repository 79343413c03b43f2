"""Parsing off the event loop: a small pool of worker processes with a hard time limit.

A worker process (not a thread) because parsing is CPU work that would otherwise hold the GIL
the event loop needs, and because a pathological mail can be stopped only by killing the process
that parses it. After a timeout the pool is killed and replaced; mails that were parsing in it
at that moment are parsed again in the new pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import select
import threading
import weakref
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from gatewayd.ingest.parse import parse_mail
from gatewayd.logs import get_logger
from gatewayd.mail import InboundMail

log = get_logger("gatewayd.ingest")

WORKERS = max(1, min(4, os.cpu_count() or 1))
# Mails handed to the pool at once. More would only queue inside the pool, where the waiting
# would count against the parse time limit of the mails behind; fewer could leave a worker idle.
IN_FLIGHT = 2 * WORKERS
_slots: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Semaphore] = (
    weakref.WeakKeyDictionary())


def _slot() -> asyncio.Semaphore:
    loop = asyncio.get_running_loop()
    slot = _slots.get(loop)
    if slot is None:
        slot = _slots[loop] = asyncio.Semaphore(IN_FLIGHT)
    return slot


class ParseTimeout(Exception):
    """Parsing took longer than the limit; the worker that tried was killed."""


def end_with(daemon_pid: int) -> None:
    """Worker initializer: end this worker when the daemon ends, however it ends.

    A SIGKILLed daemon (outside systemd, which kills the whole control group) left its workers
    behind: each holds both ends of its task queue and the forkserver's "alive" pipe, so none of
    them ever sees end-of-file, and the forkserver and the resource tracker waited for them. The
    worker's parent is the forkserver, so PR_SET_PDEATHSIG would not help; a pidfd of the daemon
    becomes readable when the daemon exits (Linux 5.3+; elsewhere nothing changes).
    """
    try:
        pidfd = os.pidfd_open(daemon_pid)
    except ProcessLookupError:  # gone already
        os._exit(1)
    except (AttributeError, OSError):  # no pidfd here
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name="gatewayd-daemon-watch", daemon=True).start()


class _Pool:
    def __init__(self) -> None:
        self._executor: ProcessPoolExecutor | None = None
        self._lock = threading.Lock()

    def get(self) -> ProcessPoolExecutor:
        with self._lock:
            if self._executor is None:
                # forkserver: never fork the daemon itself (its threads, sockets, database).
                # Preload only the parser: the default would re-import the __main__ script.
                context = multiprocessing.get_context("forkserver")
                context.set_forkserver_preload(["gatewayd.ingest.parse"])
                self._executor = ProcessPoolExecutor(
                    max_workers=WORKERS, mp_context=context, initializer=end_with,
                    initargs=(os.getpid(),))
            return self._executor

    def kill(self, executor: ProcessPoolExecutor) -> None:
        """Stop a pool whose worker hangs: kill its processes and forget it."""
        with self._lock:
            if self._executor is executor:
                self._executor = None
        processes = list(getattr(executor, "_processes", {}).values())
        for process in processes:
            with contextlib.suppress(Exception):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def shutdown(self) -> None:
        with self._lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)


POOL = _Pool()


async def parse_in_worker(raw: bytes, *, headers_only: bool, limit: float) -> InboundMail:
    """parse_mail(raw) in a worker process; ParseTimeout after `limit` seconds.

    ParseError and other exceptions of the parser come back as they were raised. Any number of
    callers may wait here at once (a whole batch, every account): at most IN_FLIGHT mails are
    in the pool, and the clock of each starts when it is handed over.
    """
    async with _slot():
        return await _parse_in_pool(raw, headers_only=headers_only, limit=limit)


async def _parse_in_pool(raw: bytes, *, headers_only: bool, limit: float) -> InboundMail:
    loop = asyncio.get_running_loop()
    for attempt in (1, 2):
        executor = POOL.get()
        try:
            future = loop.run_in_executor(executor, _parse, raw, headers_only)
        except RuntimeError:  # the pool was shut down meanwhile
            POOL.kill(executor)
            continue
        try:
            return await asyncio.wait_for(future, limit)
        except TimeoutError as exc:
            POOL.kill(executor)
            raise ParseTimeout(f"parsing took longer than {limit:g} s") from exc
        except BrokenProcessPool:
            # Another mail's timeout killed the pool under this one: parse it again once.
            POOL.kill(executor)
            if attempt == 2:
                raise
    raise BrokenProcessPool("the parser pool broke twice")


def _parse(raw: bytes, headers_only: bool) -> InboundMail:
    return parse_mail(raw, headers_only=headers_only)
