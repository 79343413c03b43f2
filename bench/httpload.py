"""The forms benches' load generator and server processes: plain HTTP/1.1 on asyncio streams.

An HTTP client library (httpx) spent about 4 ms of CPU per request on this machine class and, on
two cores, capped a bare server at 200-550 req/s while the server could answer ~1,300: the shares
were then shares of the client. This writes each request as one prepared byte string on a
kept-alive connection and reads the answer by its Content-Length, nothing more.

Each server runs in its own process (`server`), so the load generator's CPU never counts against
it; `cpu_seconds` reads a process's CPU time from /proc (Linux), which moves far less with the
background load of a shared machine than the rates do.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Figures:
    """One server's figures over one or several rounds."""

    name: str
    requests: int
    errors: int
    seconds: float
    latencies: list[float]
    cpu_seconds: float = float("nan")  # the server process's CPU time during the round
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def cpu_ms(self) -> float:
        """Server CPU per answered request (all of it: HTTP, database, background work)."""
        answered = self.requests + self.errors
        return self.cpu_seconds / answered * 1000 if answered else float("nan")

    def percentile(self, p: float) -> float:
        return percentile(self.latencies, p) * 1000


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))]


def merge(name: str, rounds: list[Figures]) -> Figures:
    return Figures(name, sum(r.requests for r in rounds), sum(r.errors for r in rounds),
                   sum(r.seconds for r in rounds), [x for r in rounds for x in r.latencies],
                   sum(r.cpu_seconds for r in rounds))


def post(path: str, port: int, body: bytes, headers: str = "") -> bytes:
    """One urlencoded POST as a browser sends it (JSON answer wanted)."""
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            "Accept: application/json\r\nContent-Type: application/x-www-form-urlencoded\r\n"
            f"{headers}Content-Length: {len(body)}\r\n\r\n").encode() + body


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                    request: bytes) -> tuple[int, bool]:
    """Send one request on a kept-alive connection and read the whole answer: its status, and
    whether the server closes the connection after it (gunicorn's sync workers do)."""
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    length, close = 0, False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection":
            close = value.strip().lower() == b"close"
    await reader.readexactly(length)
    return int(head.split(b" ", 2)[1]), close


async def load(name: str, server: tuple[int, int], seconds: float, concurrency: int,
               make_request: Callable[[int], bytes], ok: tuple[int, ...] = (201,),
               warm_up: float = 2.0) -> Figures:
    """Keep `concurrency` requests in flight, one kept-alive connection each, for `seconds`
    after a warm-up; `make_request(port)` gives each request's bytes."""
    port, pid = server
    latencies: list[float] = []
    errors = 0

    async def connect() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        # One write per request, but keep the kernel from holding a small segment back.
        writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return reader, writer

    async def worker(until: float, record: bool) -> None:
        nonlocal errors
        reader, writer = await connect()
        try:
            while time.perf_counter() < until:
                request = make_request(port)
                started = time.perf_counter()
                status, close = await _exchange(reader, writer, request)
                if close:  # a new connection for the next request (counted in its latency)
                    writer.close()
                    reader, writer = await connect()
                if record:
                    if status in ok:
                        latencies.append(time.perf_counter() - started)
                    else:
                        errors += 1
        finally:
            writer.close()

    warm_until = time.perf_counter() + min(warm_up, seconds / 4)
    await asyncio.gather(*(worker(warm_until, False) for _ in range(concurrency)))
    cpu_before = cpu_seconds(pid)
    wall_started, started = time.time(), time.perf_counter()
    await asyncio.gather(*(worker(started + seconds, True) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(pid) - cpu_before
    # The wall-clock window of the measured part, for questions to the server about it.
    return Figures(name, len(latencies), errors, elapsed, latencies, cpu,
                   {"window": (wall_started, time.time())})


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc; NaN elsewhere)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rpartition(")")[2].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A server process: its port, pid and a pipe for questions (see `server`)."""

    port: int
    pid: int
    control: Any

    @property
    def address(self) -> tuple[int, int]:
        return self.port, self.pid

    def ask(self, *question: Any, timeout: float = 120.0) -> Any:
        self.control.send(question)
        if not self.control.poll(timeout):
            raise TimeoutError(f"no answer to {question[0]!r} within {timeout:.0f} s")
        return self.control.recv()


@contextlib.contextmanager
def server(target: Callable[..., None], *args: Any) -> Iterator[Server]:
    """Run `target(ready, control, *args)` in a new process; it puts its port on `ready` and
    answers questions on `control` until it receives ("stop",)."""
    context = multiprocessing.get_context("spawn")
    ready = context.Queue()
    here, there = context.Pipe()
    process = context.Process(target=target, args=(ready, there, *args), daemon=True)
    process.start()
    try:
        port = ready.get(timeout=90)
        assert process.pid is not None
        yield Server(port, process.pid, here)
    finally:
        with contextlib.suppress(Exception):
            here.send(("stop",))
        process.join(timeout=30)
        with contextlib.suppress(Exception):
            process.kill()


async def serve_until_stopped(control: Any, answer: Callable[..., Any] | None = None) -> None:
    """In a server process: answer questions from the pipe until ("stop",). `answer` is an
    async function taking the question's name and arguments."""
    while True:
        question = await asyncio.to_thread(control.recv)
        if question[0] == "stop":
            return
        if answer is None:
            control.send(None)
        else:
            control.send(await answer(*question))


def machine() -> str:
    """The machine in a few words: cores and CPU model (Linux), for the figures' record."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            model = next((line.split(":", 1)[1].strip() for line in handle
                          if line.startswith("model name")), "")
    except OSError:
        pass
    return f"{os.cpu_count()} cores {model}".strip()
