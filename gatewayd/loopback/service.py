"""`[loopback]` in `gatewayd run`: the embedded IMAP server and SMTP sink beside the daemon, so
a new installation shows mail flowing before any real mailbox is configured.

The IMAP server (pymap, in memory) serves every active account whose IMAP `host:port` is
`loopback.imap_listen`, with that account's username and password. The SMTP sink takes what
gatewayd sends: a mail for one of those accounts' addresses is delivered into its mailbox (so
any SMTP client can write to the support address), every other mail is written to
`loopback.sink_folder` as a `.eml` file, which `gatewayd status` counts. At the first start
per `data_dir` the demo's sample mails arrive in the mailboxes, and the order they name.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from email import message_from_bytes
from email.utils import getaddresses
from pathlib import Path
from typing import Any

from gatewayd.config import Account, Config, Loopback
from gatewayd.logs import get_logger

log = get_logger("gatewayd.loopback")

SAMPLES_MARKER = Path("loopback") / "samples-delivered"


def mailbox_accounts(config: Config) -> list[Account]:
    """Active accounts whose IMAP server is the embedded one."""
    loopback = config.loopback
    if loopback is None:
        return []
    return [a for a in config.accounts
            if a.active and a.imap is not None and a.imap.host == loopback.imap_host
            and a.imap.effective_port == loopback.imap_port]


def runs_inside_run(config: Config, account: Account, proto: str) -> str:
    """A hint for `test-fetch` / `test-send` when the account's IMAP ("imap") or SMTP ("smtp")
    server is the embedded one, which exists only while `gatewayd run` does; else ""."""
    loopback = config.loopback
    settings = getattr(account, proto)
    if loopback is None or settings is None:
        return ""
    host, port = ((loopback.imap_host, loopback.imap_port) if proto == "imap"
                  else (loopback.smtp_host, loopback.smtp_port))
    if settings.host == host and settings.effective_port == port:
        server = "IMAP server" if proto == "imap" else "SMTP sink"
        return (f" (this is the embedded [loopback] {server}: it runs only while `gatewayd run` "
                "does)")
    return ""


def sink_files(loopback: Loopback) -> list[Path]:
    """The mails the sink wrote, oldest first."""
    try:
        return sorted(loopback.sink_folder.glob("*.eml"))
    except OSError:
        return []


def sink_summary(config: Config) -> dict[str, Any] | None:
    """What `status` shows about the loopback servers (None without `[loopback]`)."""
    loopback = config.loopback
    if loopback is None:
        return None
    return {
        "imap": loopback.imap_listen,
        "smtp": loopback.smtp_listen,
        "mailboxes": [a.name for a in mailbox_accounts(config)],
        "sink_folder": str(loopback.sink_folder),
        "sink_mails": len(sink_files(loopback)),
    }


def _sink_name(sequence: int) -> str:
    return time.strftime("%Y%m%dT%H%M%S") + f"-{sequence:04d}.eml"


def _write_mail(folder: Path, name: str, mail_from: str, rcpt_tos: tuple[str, ...],
                content: bytes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    # The envelope, which test mode changes and the headers do not show, goes first.
    envelope = (f"X-Envelope-From: <{mail_from}>\r\n"
                f"X-Envelope-To: {', '.join(f'<{r}>' for r in rcpt_tos)}\r\n").encode()
    path = folder / name
    path.write_bytes(envelope + content)
    return path


async def deliver_samples(config: Config, imap: Any, users: dict[str, str]) -> int:
    """The demo's sample mails into the mailboxes (the one each is addressed to, else the
    first), and the contact and order one of them names. Returns the number of mails."""
    from gatewayd.demo import FIRST_MAILS, add_sample_order

    first = next(iter(users.values()))
    await add_sample_order()
    for _user, raw in FIRST_MAILS:
        to = [a.lower() for _, a in getaddresses(message_from_bytes(raw).get_all("To", []))]
        await imap.append(next((users[a] for a in to if a in users), first), raw)
    return len(FIRST_MAILS)


def _busy(exc: OSError, listen: str, key: str) -> OSError:
    return OSError(exc.errno, f"cannot listen on {listen} for [loopback] "
                   f"({exc.strerror or exc}) — free the port or change loopback.{key}")


async def loopback_worker(stack: contextlib.AsyncExitStack, runtime: Any) -> None:
    """Daemon worker (started before the pollers): the IMAP server, the sink, the samples."""
    from gatewayd.loopback.imap import start_imap_server
    from gatewayd.loopback.smtp import Received, SmtpSink

    config: Config = runtime.config
    loopback = config.loopback
    assert loopback is not None
    accounts = [a for a in mailbox_accounts(config) if a.imap and a.imap.password]
    passwords = {a.imap.username: a.imap.password.get_secret_value()  # type: ignore[union-attr]
                 for a in accounts}
    try:
        imap = await stack.enter_async_context(start_imap_server(
            passwords, host=loopback.imap_host, port=loopback.imap_port))
    except OSError as exc:
        raise _busy(exc, loopback.imap_listen, "imap_listen") from None
    # address → mailbox: the sink delivers mail for these addresses into the mailbox
    local = {a.address.lower(): a.imap.username for a in accounts}  # type: ignore[union-attr]
    sequence = len(sink_files(loopback))

    async def received(item: Received) -> None:
        nonlocal sequence
        others = []
        for rcpt in item.rcpt_tos:
            user = local.get(rcpt.lower())
            if user is not None:
                await imap.append(user, item.content)
            else:
                others.append(rcpt)
        if others:
            sequence += 1
            path = await asyncio.to_thread(_write_mail, loopback.sink_folder,
                                           _sink_name(sequence), item.mail_from,
                                           tuple(others), item.content)
            log.info("loopback sink received a mail", to=others, file=str(path))

    # aiosmtpd logs every SMTP line at INFO under "mail.log": one line per mail is ours.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink = SmtpSink(host=loopback.smtp_host, port=loopback.smtp_port, on_received=received)
    try:
        await sink.start()
    except OSError as exc:
        raise _busy(exc, loopback.smtp_listen, "smtp_listen") from None
    stack.push_async_callback(sink.stop)
    log.info("loopback servers started", imap=loopback.imap_listen, smtp=loopback.smtp_listen,
             mailboxes=sorted(passwords), sink_folder=str(loopback.sink_folder))
    marker = config.data_dir / SAMPLES_MARKER
    if loopback.sample_mails and passwords and not marker.exists():
        count = await deliver_samples(config, imap, local)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text("sample mails were delivered once; remove this file to get them "
                          "again\n", encoding="utf-8")
        log.info("loopback sample mails delivered", mails=count)
