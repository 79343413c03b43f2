"""Parsing off the event loop: a few worker processes with a hard time limit per mail.

A worker process (not a thread) because parsing is CPU work that would otherwise hold the GIL
the event loop needs, and because a pathological mail can be stopped only by killing the process
that parses it. Each worker is `python -m gatewayd.ingest.worker` (it imports only the parser)
fed by a thread of the daemon over pipes: the mails that callers hand over in the same turn of
the event loop (a fetched batch) travel together, one write of their raw bytes and one reply per
mail (gatewayd.ingest.worker describes the protocol). A mail's clock starts when its worker
starts on it; after a timeout the worker is killed, the mail fails with ParseTimeout and the rest
of its batch goes to a fresh worker. A mail whose worker dies under it twice fails with
WorkerCrashed; both are the mail's own fault and quarantine it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import queue
import select
import subprocess
import sys
import threading
import time
import weakref
from concurrent.futures import Future
from dataclasses import dataclass, field

from gatewayd.ingest.parse import ParseError
from gatewayd.ingest.worker import BATCH, MAIL, REPLY
from gatewayd.mail import InboundMail

WORKERS = max(1, min(4, os.cpu_count() or 1))
_STOP = None


class ParseTimeout(Exception):
    """Parsing took longer than the limit; the worker that tried was killed."""


class WorkerCrashed(Exception):
    """The worker process died twice while parsing this mail."""


class ParserStopped(Exception):
    """The parser pool was shut down before this mail was parsed: not the mail's fault."""


@dataclass
class _Job:
    raw: bytes
    headers_only: bool
    limit: float
    future: Future[InboundMail]
    crashes: int = 0


class _Dead(Exception):
    """The worker process ended (or closed its pipe) under a batch."""


@dataclass
class _Worker:
    """One worker process and the daemon thread that feeds it batches from the pool's queue."""

    jobs: queue.Queue[list[_Job] | None]
    process: subprocess.Popen[bytes] | None = None
    buffer: bytearray = field(default_factory=bytearray)
    thread: threading.Thread | None = None
    busy: bool = False  # a batch is in the worker process
    stopping: bool = False  # the pool is shutting down: no new process, no retry
    current: _Job | None = None  # the mail whose reply is awaited

    def start_process(self) -> subprocess.Popen[bytes]:
        if self.process is None or self.process.poll() is not None:
            self.buffer.clear()
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gatewayd.ingest.worker", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, close_fds=True)
        return self.process

    def kill(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            with contextlib.suppress(OSError):
                process.kill()
            with contextlib.suppress(Exception):
                process.wait(10)
            for pipe in (process.stdin, process.stdout):
                with contextlib.suppress(Exception):
                    if pipe is not None:
                        pipe.close()

    def run(self) -> None:
        while True:
            batch = self.jobs.get()
            if batch is _STOP:
                break
            try:
                self.busy = True
                self.parse([job for job in batch if job.future.set_running_or_notify_cancel()])
            except BaseException as exc:  # never leave a caller waiting
                self.kill()
                failure = ParserStopped("the parser was shut down") if self.stopping else exc
                for job in batch:
                    if not job.future.done():
                        job.future.set_exception(failure)
            finally:
                self.busy = False
                self.current = None
        self.kill()

    def parse(self, pending: list[_Job]) -> None:
        while pending:
            if self.stopping:
                for job in pending:
                    job.future.set_exception(ParserStopped("the parser was shut down"))
                return
            process = self.start_process()
            try:
                self.send(process, pending)
            except (BrokenPipeError, OSError):
                pending = self.crashed(pending)
                continue
            for index, job in enumerate(pending):
                self.current = job
                try:
                    status, value = self.reply(process, time.monotonic() + job.limit)
                except TimeoutError:
                    self.kill()
                    job.future.set_exception(
                        ParseTimeout(f"parsing took longer than {job.limit:g} s"))
                    pending = pending[index + 1:]
                    break
                except _Dead:
                    pending = self.crashed(pending[index:])
                    break
                if status == "ok" and isinstance(value, InboundMail):
                    job.future.set_result(value)
                else:
                    job.future.set_exception(ParseError(str(value)))
            else:
                pending = []

    def crashed(self, pending: list[_Job]) -> list[_Job]:
        """The worker died under pending[0]: that mail gets one more try, then fails."""
        self.kill()
        if self.stopping:
            return pending  # parse() fails them with ParserStopped
        job = pending[0]
        job.crashes += 1
        if job.crashes < 2:
            return pending
        job.future.set_exception(WorkerCrashed(
            "the parser process died twice while parsing this mail"))
        return pending[1:]

    @staticmethod
    def send(process: subprocess.Popen[bytes], jobs: list[_Job]) -> None:
        assert process.stdin is not None
        parts: list[bytes] = [BATCH.pack(len(jobs))]
        for job in jobs:
            parts += [MAIL.pack(len(job.raw), job.headers_only), job.raw]
        process.stdin.writelines(parts)
        process.stdin.flush()

    def reply(self, process: subprocess.Popen[bytes], deadline: float) -> tuple[str, object]:
        (length,) = REPLY.unpack(self.read(process, REPLY.size, deadline))
        status, value = pickle.loads(self.read(process, length, deadline))
        return str(status), value

    def read(self, process: subprocess.Popen[bytes], size: int, deadline: float) -> bytes:
        assert process.stdout is not None
        fd = process.stdout.fileno()
        while len(self.buffer) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                raise TimeoutError
            chunk = os.read(fd, max(1 << 16, size - len(self.buffer)))
            if not chunk:
                raise _Dead
            self.buffer += chunk
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data


class _Pool:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._jobs: queue.Queue[list[_Job] | None] = queue.Queue()
        self._workers: list[_Worker] = []

    def _ensure(self) -> None:
        with self._lock:
            if self._workers:
                return
            self._jobs = queue.Queue()
            for n in range(WORKERS):
                worker = _Worker(self._jobs)
                worker.thread = threading.Thread(target=worker.run, daemon=True,
                                                 name=f"gatewayd-parser-{n}")
                worker.thread.start()
                self._workers.append(worker)

    def start(self) -> None:
        """Start the worker processes now rather than with the first mail."""
        self._ensure()
        for worker in self._workers:
            worker.start_process()

    def submit(self, items: list[tuple[bytes, bool]], limit: float) -> list[Future[InboundMail]]:
        """Hand mails to the workers, split into one share per worker; one future per mail."""
        self._ensure()
        jobs = [_Job(raw, headers_only, limit, Future()) for raw, headers_only in items]
        share = -(-len(jobs) // WORKERS)
        for start in range(0, len(jobs), share or 1):
            self._jobs.put(jobs[start:start + share])
        return [job.future for job in jobs]

    def pids(self, *, busy: bool = False) -> list[int]:
        """The worker processes' ids (only those with a batch in hand if `busy`)."""
        return [w.process.pid for w in self._workers
                if w.process is not None and (w.busy or not busy)]

    def shutdown(self) -> None:
        """Stop the workers now: mails not yet parsed fail with ParserStopped (they stay unseen
        on the server); a later submit starts anew."""
        with self._lock:
            workers, self._workers = self._workers, []
            jobs = self._jobs
        for worker in workers:
            worker.stopping = True
        while True:
            try:
                batch = jobs.get_nowait()
            except queue.Empty:
                break
            for job in batch or ():
                job.future.cancel()
        for worker in workers:
            jobs.put(_STOP)
            process = worker.process
            if process is not None:  # a read in progress ends at once (end of file)
                with contextlib.suppress(OSError):
                    process.kill()
        for worker in workers:
            if worker.thread is not None:
                worker.thread.join(30)


POOL = _Pool()

# Mails handed over in one turn of the event loop go to the workers together.
_pending: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, list[tuple[bytes, bool, float, asyncio.Future[InboundMail]]]
] = weakref.WeakKeyDictionary()


def _flush(loop: asyncio.AbstractEventLoop) -> None:
    items = _pending.pop(loop, [])
    by_limit: dict[float, list[tuple[bytes, bool, asyncio.Future[InboundMail]]]] = {}
    for raw, headers_only, limit, waiter in items:
        by_limit.setdefault(limit, []).append((raw, headers_only, waiter))
    for limit, group in by_limit.items():
        futures = POOL.submit([(raw, headers_only) for raw, headers_only, _ in group], limit)
        for (_, _, waiter), future in zip(group, futures, strict=True):
            _link(future, waiter, loop)


def _link(future: Future[InboundMail], waiter: asyncio.Future[InboundMail],
          loop: asyncio.AbstractEventLoop) -> None:
    """The worker thread's outcome into the caller's loop; a cancelled caller cancels the mail
    if its worker has not started on it."""
    def settle(done: Future[InboundMail]) -> None:
        if waiter.done():
            return
        if done.cancelled():
            waiter.cancel()
        elif (exc := done.exception()) is not None:
            waiter.set_exception(exc)
        else:
            waiter.set_result(done.result())

    def from_thread(done: Future[InboundMail]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            loop.call_soon_threadsafe(settle, done)

    future.add_done_callback(from_thread)
    waiter.add_done_callback(lambda w: future.cancel() if w.cancelled() else None)


async def parse_in_worker(raw: bytes, *, headers_only: bool, limit: float) -> InboundMail:
    """parse_mail(raw) in a worker process; ParseTimeout after `limit` seconds of parsing.

    ParseError (the quarantine reason) comes back as the parser raised it; WorkerCrashed when
    the worker died twice under this mail. Any number of callers may wait here at once (a whole
    batch, every account); the mails of one turn of the event loop travel together.
    """
    loop = asyncio.get_running_loop()
    waiter: asyncio.Future[InboundMail] = loop.create_future()
    pending = _pending.get(loop)
    if pending is None:
        pending = _pending[loop] = []
        loop.call_soon(_flush, loop)
    pending.append((raw, headers_only, limit, waiter))
    return await waiter
