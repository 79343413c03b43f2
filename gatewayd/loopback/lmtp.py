"""A small LMTP client on asyncio streams, for tests and benchmarks: it speaks to gatewayd's
listener as an MTA does (LHLO, MAIL FROM with SIZE, RCPT TO each, DATA) and returns the reply
for each recipient exactly as sent, so a test sees every code and never a summary."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def text(self) -> str:
        return " ".join(self.lines)

    def __str__(self) -> str:
        return f"{self.code} {self.text}"


def dot_stuffed(raw: bytes) -> bytes:
    """The mail as DATA carries it: CRLF lines, leading dots doubled, ending CRLF.CRLF."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    body = b"".join((b"." + line if line.startswith(b".") else line) + b"\r\n" for line in lines)
    return body + b".\r\n"


class LmtpClient:
    """One LMTP session. `timeout` (seconds) bounds every reply awaited."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout
        self.greeting: Reply | None = None

    @classmethod
    async def connect(cls, address: str, *, reply_seconds: float = 30.0,
                      lhlo: str | None = "mx.test.invalid") -> LmtpClient:
        """Connect to `HOST:PORT` or `unix:PATH`, read the greeting, and say LHLO."""
        if address.startswith("unix:"):
            connecting = asyncio.open_unix_connection(address[len("unix:"):], limit=1 << 22)
        else:
            host, _, port = address.rpartition(":")
            connecting = asyncio.open_connection(host.strip("[]"), int(port), limit=1 << 22)
        reader, writer = await asyncio.wait_for(connecting, reply_seconds)
        client = cls(reader, writer, reply_seconds)
        client.greeting = await client.reply()
        if lhlo is not None and client.greeting.code == 220:
            await client.command(f"LHLO {lhlo}")
        return client

    async def reply(self) -> Reply:
        lines: list[str] = []
        while True:
            line = await asyncio.wait_for(self.reader.readline(), self.timeout)
            if not line:
                raise ConnectionError("the server closed the connection")
            text = line.decode("utf-8", "replace").rstrip("\r\n")
            lines.append(text[4:])
            if len(text) < 4 or text[3] != "-":
                return Reply(int(text[:3]), tuple(lines))

    async def command(self, line: str) -> Reply:
        self.writer.write(line.encode("utf-8") + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(self, sender: str, recipients: list[str], raw: bytes, *,
                   size: bool = True) -> dict[str, Reply]:
        """One transaction: the reply to each RCPT TO, replaced by the recipient's reply after
        DATA for those the server accepted. A refused MAIL FROM is the reply for everyone."""
        option = f" SIZE={len(raw)}" if size else ""
        mail = await self.command(f"MAIL FROM:<{sender}>{option}")
        if mail.code != 250:
            return {r: mail for r in recipients}
        replies = {r: await self.command(f"RCPT TO:<{r}>") for r in recipients}
        accepted = [r for r, reply in replies.items() if reply.code == 250]
        if not accepted:
            await self.command("RSET")
            return replies
        start = await self.command("DATA")
        if start.code != 354:
            return {**replies, **{r: start for r in accepted}}
        self.writer.write(dot_stuffed(raw))
        await self.writer.drain()
        for recipient in accepted:
            replies[recipient] = await self.reply()
        return replies

    async def close(self) -> None:
        try:
            if not self.writer.is_closing():
                await self.command("QUIT")
        except (ConnectionError, TimeoutError, OSError):
            pass
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def deliver(address: str, sender: str, recipients: list[str], raw: bytes,
                  reply_seconds: float = 30.0) -> dict[str, Reply]:
    """Connect, deliver one mail, quit: the reply for each recipient."""
    client = await LmtpClient.connect(address, reply_seconds=reply_seconds)
    try:
        return await client.send(sender, recipients, raw)
    finally:
        await client.close()
