"""An embedded IMAP server (pymap, in-memory) on 127.0.0.1 for tests, benchmarks and `demo`.

It is a real IMAP server speaking to real clients over a socket; only the storage is a dict.
Several users, server-side append of raw mails (clients in IDLE are told), folders, and switches
that hide IDLE or MOVE from the capability list so clients take their fallback paths.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
from argparse import Namespace
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from proxyprotocol.reader import ProxyProtocolReader
from pymap.backend.dict import Config as _DictConfig
from pymap.backend.dict import DictBackend, Identity, Login
from pymap.config import BackendCapability
from pymap.imap import IMAPServer
from pymap.parsing.message import AppendMessage
from pymap.parsing.specials.flag import Flag
from pymap.user import Passwords, UserMetadata


class _LoopbackConfig(_DictConfig):
    """pymap's dict-backend config with IDLE and MOVE switchable."""

    def __init__(self, args: Namespace, *, offer_idle: bool = True, offer_move: bool = True,
                 **kwargs: Any) -> None:
        super().__init__(args, **kwargs)
        self.offer_idle = offer_idle
        self.offer_move = offer_move

    @property
    def backend_capability(self) -> BackendCapability:
        return BackendCapability(idle=self.offer_idle, object_id=True, multi_append=True)

    @property
    def login_capability(self) -> Sequence[bytes]:
        caps = list(super().login_capability)
        return [c for c in caps if self.offer_move or c != b"MOVE"]


def _args(host: str) -> Namespace:
    return Namespace(
        host=host, port=0, debug=False, cert=None, key=None, tls=False, passlib_cfg=None,
        proxy_protocol=None, inherited_sockets=None, demo_data=False,
        demo_user="gatewayd-loopback", demo_password="unused-" + os.urandom(8).hex(),
    )


@dataclass
class LoopbackImap:
    """A running embedded IMAP server. Use `start_imap_server()` to get one."""

    host: str
    port: int
    backend: DictBackend
    config: _LoopbackConfig
    users: dict[str, str] = field(default_factory=dict)

    def _identity(self, user: str) -> Identity:
        return Identity(user, self.backend.login, None, frozenset())

    async def add_user(self, user: str, password: str) -> None:
        hashed = await Passwords(self.config).hash_password(password)
        await self._identity(user).set(UserMetadata(self.config, user, password=hashed))
        self.users[user] = password

    async def _mailbox(self, user: str, folder: str, *, create: bool = False) -> Any:
        async with self._identity(user).new_session() as session:
            mailbox_set = session.mailbox_set
            try:
                return await mailbox_set.get_mailbox(folder)
            except KeyError:
                if not create:
                    raise
                await mailbox_set.add_mailbox(folder)
                return await mailbox_set.get_mailbox(folder)

    async def create_folder(self, user: str, folder: str) -> None:
        await self._mailbox(user, folder, create=True)

    async def append(self, user: str, raw: bytes, folder: str = "INBOX",
                     flags: Iterable[str] = (), when: dt.datetime | None = None) -> int:
        """Deliver one raw mail into a folder; returns its UID."""
        mailbox = await self._mailbox(user, folder, create=True)
        message = await mailbox.append(AppendMessage(
            raw, when or dt.datetime.now(dt.UTC), frozenset(Flag(f.encode()) for f in flags)
        ))
        return int(message.uid)

    async def uids(self, user: str, folder: str = "INBOX") -> list[int]:
        """UIDs currently in a folder (expunged mails are gone)."""
        try:
            mailbox = await self._mailbox(user, folder)
        except KeyError:
            return []
        return sorted(mailbox._messages)

    async def flags(self, user: str, uid: int, folder: str = "INBOX") -> set[str]:
        mailbox = await self._mailbox(user, folder)
        message = mailbox._messages[uid]
        return {bytes(f).decode() for f in message.permanent_flags}

    async def contents(self, user: str, folder: str = "INBOX") -> list[bytes]:
        try:
            mailbox = await self._mailbox(user, folder)
        except KeyError:
            return []
        return [bytes(mailbox._messages[uid].get_body(binary=True))
                for uid in sorted(mailbox._messages)]

    async def set_uids(self, user: str, *, uidvalidity: int, last_uid: int,
                       folder: str = "INBOX") -> None:
        """Make a folder report this UIDVALIDITY and continue after `last_uid` (edge tests)."""
        mailbox = await self._mailbox(user, folder, create=True)
        mailbox._uid_validity = uidvalidity
        mailbox._max_uid = last_uid

    async def uidvalidity(self, user: str, folder: str = "INBOX") -> int:
        mailbox = await self._mailbox(user, folder)
        return int(mailbox.uid_validity)


@contextlib.asynccontextmanager
async def start_imap_server(
    users: dict[str, str] | None = None, *, host: str = "127.0.0.1", port: int = 0,
    idle: bool = True, move: bool = True,
) -> AsyncIterator[LoopbackImap]:
    """Run an IMAP server on loopback (a free port unless given) until the block ends.

    `users` maps user names to passwords. `idle=False` / `move=False` hide those capabilities.
    """
    os.environ.setdefault("FQDN", "localhost")  # else the greeting asks DNS for the host name
    args = _args(host)
    config = _LoopbackConfig.from_args(args, offer_idle=idle, offer_move=move,
                                       invalid_user_sleep=0.0)
    backend = DictBackend(Login(config), config)
    # pymap's own wiring: the PROXY-protocol reader hands each connection to IMAPServer.
    callback = ProxyProtocolReader(config.proxy_protocol).get_callback(
        IMAPServer(backend.login, config))
    server = await asyncio.start_server(callback, host=host, port=port)
    bound = server.sockets[0].getsockname()[1]
    imap = LoopbackImap(host=host, port=bound, backend=backend, config=config)
    for user, password in (users or {}).items():
        await imap.add_user(user, password)
    try:
        async with server:
            yield imap
    finally:
        server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.wait_closed(), timeout=2)


async def _serve(users: dict[str, str], port: int, idle: bool, move: bool) -> None:
    async with start_imap_server(users, port=port, idle=idle, move=move) as server:
        print(f"listening 127.0.0.1:{server.port}", flush=True)
        await asyncio.Event().wait()


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m gatewayd.loopback.imap --user NAME:PASSWORD ...`: a loopback IMAP server in
    its own process (benchmarks measure the daemon's memory without the server's)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m gatewayd.loopback.imap")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--user", action="append", default=[], metavar="NAME:PASSWORD")
    parser.add_argument("--no-idle", action="store_true")
    parser.add_argument("--no-move", action="store_true")
    args = parser.parse_args(argv)
    users = dict(u.split(":", 1) for u in args.user)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_serve(users, args.port, not args.no_idle, not args.no_move))


if __name__ == "__main__":
    main()
