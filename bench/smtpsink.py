"""An SMTP sink for the benches, in its own process: aiosmtpd accepting every mail, counting.

Run in a separate process (`bench.httpload.server(serve_sink)`) so that what it spends per mail
never counts against the process measured, as with a real mail server on another machine.
"""

from __future__ import annotations

import asyncio
from typing import Any

from bench.httpload import serve_until_stopped


def serve_sink(ready: Any, control: Any) -> None:
    """Accept every mail, count it; answers ("received",) with the count."""
    from aiosmtpd.smtp import SMTP

    received = 0

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
            nonlocal received
            received += 1
            return "250 OK"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: SMTP(Handler(), hostname="sink.local"),
                                          "127.0.0.1", 0)
        ready.put(server.sockets[0].getsockname()[1])

        async def answer(question: str, *args: Any) -> int:
            return received

        await serve_until_stopped(control, answer)
        server.close()

    asyncio.run(main())
