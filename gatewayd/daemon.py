"""The daemon: start-up in one AsyncExitStack (database, HTTP, then workers), clean shutdown.

Shutdown is start-up in reverse: SIGTERM/SIGINT set the stop event and the stack unwinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import uvicorn

from gatewayd.api.app import create_app
from gatewayd.config import Config
from gatewayd.ingest.parsers import POOL
from gatewayd.logs import get_logger
from gatewayd.ops.instance import single_instance
from gatewayd.ops.lifecycle import Lifecycle, on_reload, remove_reload_listener
from gatewayd.runtime import SHUTDOWN_BUDGET, Runtime
from gatewayd.store.db import open_database
from gatewayd.store.tickets import EventHook, TicketStore

log = get_logger("gatewayd.daemon")

# A worker starts its tasks on the stack and registers their cleanup there.
Worker = Callable[[contextlib.AsyncExitStack, Runtime], Awaitable[None]]


class _Server(uvicorn.Server):
    """uvicorn inside our loop: the daemon, not uvicorn, owns SIGTERM/SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Any:
        yield


def event_hooks(config: Config) -> list[EventHook]:
    """The hooks every ticket change runs through inside its transaction."""
    from gatewayd.outbound.actions import event_action_hook

    return [event_action_hook]


def workers(config: Config) -> list[Worker]:
    """Background workers started after HTTP is bound: pollers, sender, scheduler, and the LMTP
    listener when [lmtp] is configured (started last, so it stops taking mail first)."""
    from gatewayd.ingest.lmtp import lmtp_worker
    from gatewayd.ops.leases import account_pollers_worker
    from gatewayd.ops.scheduler import scheduler_worker
    from gatewayd.outbound.sender import sender_worker

    found: list[Worker] = []
    if config.loopback is not None:  # the embedded IMAP server and SMTP sink, before pollers
        from gatewayd.loopback.service import loopback_worker

        found.append(loopback_worker)
    found.append(account_pollers_worker)  # ingest's run_account per leased account
    found.append(scheduler_worker)
    found.append(sender_worker)
    if config.lmtp is not None:
        found.append(lmtp_worker)
    return found


def bind_socket(host: str, port: int, key: str = "http.listen") -> socket.socket:
    """A listening TCP socket on host:port (IPv4 or IPv6); OSError says why it cannot bind."""
    family, _, _, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    # proto must say TCP: asyncio sets TCP_NODELAY only on accepted sockets whose proto is
    # IPPROTO_TCP, and without it every keep-alive response waited ~40 ms for a delayed ACK.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        raise OSError(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror}) — "
                      f"free the port or change {key}") from None
    sock.set_inheritable(True)
    return sock


@contextlib.asynccontextmanager
async def serve_http(runtime: Runtime) -> AsyncIterator[_Server]:
    config = runtime.config
    server = _Server(uvicorn.Config(
        create_app(runtime), host=config.http.host, port=config.http.port,
        log_config=None, access_log=False, lifespan="off", server_header=False,
        # The client address stays the TCP peer: X-Forwarded-For is believed only from the
        # proxies a form lists in `trusted_proxies` (uvicorn would trust it from 127.0.0.1).
        proxy_headers=False,
    ))
    # Bind here, not in uvicorn: a busy port is then an OSError the CLI reports (exit 1), where
    # uvicorn would log and call sys.exit(3) from inside its task.
    sock = bind_socket(config.http.host, config.http.port)
    task = asyncio.create_task(server.serve(sockets=[sock]), name="http")
    try:
        while not server.started:
            if task.done():
                task.result()  # raises why it could not bind
                raise RuntimeError(f"HTTP server stopped while starting on {config.http.listen}")
            await asyncio.sleep(0.02)
        # With port 0 (tests) the kernel chose the port: record the real one.
        runtime.http_port = server.servers[0].sockets[0].getsockname()[1]
        log.info("http listening", host=config.http.host, port=runtime.http_port)
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            # Open requests may finish within what is left of the shutdown budget.
            await asyncio.wait_for(task, timeout=max(1.0, runtime.grace(10)))


@contextlib.asynccontextmanager
async def start(config: Config, stop: asyncio.Event | None = None) -> AsyncIterator[Runtime]:
    """Bring everything up in order; yield the runtime; tear down in reverse on exit."""
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(single_instance(config.database_url))  # SQLite: one instance only
        await stack.enter_async_context(open_database(config.database_url))
        config.data_dir.mkdir(parents=True, exist_ok=True)
        runtime = Runtime(config=config, store=TicketStore(config, event_hooks(config)))
        from gatewayd.outbound.actions import forget_templates

        on_reload(forget_templates)
        stack.callback(remove_reload_listener, forget_templates)
        await stack.enter_async_context(serve_http(runtime))
        # After every worker has stopped (the stack unwinds in reverse): the parser processes.
        stack.push_async_callback(asyncio.to_thread, POOL.shutdown)
        for worker in workers(config):
            await worker(stack, runtime)
        yield runtime


def freeze_startup_objects() -> None:
    """Put what start-up made (modules, configuration, compiled templates, the app: ~150,000
    objects) out of the cyclic garbage collector's reach. A full collection walked all of them
    and stopped the daemon for ~140 ms on the project machine (HTTP, IMAP and SMTP alike), about
    every 30 s under form load; after this it walks only what was made since. They live as long
    as the process anyway; objects freed by reference counting are still freed."""
    gc.collect()
    gc.freeze()


async def run(config: Config) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with start(config, stop) as runtime, Lifecycle(runtime).running():
        freeze_startup_objects()
        # READY=1 has gone out: the database answers and HTTP is bound. SIGHUP reloads.
        log.info("gatewayd running", mode=config.mode, accounts=len(config.accounts))
        await stop.wait()
        log.info("stopping")
        runtime.request_stop()  # all at once; the stack then waits for each in reverse order
        late = asyncio.create_task(_late_shutdown(), name="shutdown-backstop")
    late.cancel()
    log.info("stopped")


async def _late_shutdown() -> None:
    """The backstop behind the shutdown budget: when the workers have not unwound a few seconds
    after it, say which tasks are still running (and where), then end the process before
    systemd's 30 s run out, so a stop never turns into a SIGKILL with nothing in the log."""
    await asyncio.sleep(SHUTDOWN_BUDGET + 3)
    current = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not current and not t.done()]
    log.error("shutdown is late: exiting with tasks still running",
              tasks=[f"{t.get_name()} at {_where(t)}" for t in pending][:20])
    logging.shutdown()
    os._exit(1)


def _where(task: asyncio.Task[Any]) -> str:
    frames = task.get_stack(limit=1)
    if not frames:
        return "?"
    code = frames[-1].f_code
    return f"{code.co_filename.rpartition('/')[2]}:{frames[-1].f_lineno} {code.co_name}"
