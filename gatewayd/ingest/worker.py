"""A parser worker process: mails in on stdin, parsed InboundMail values out on stdout.

Started by gatewayd.ingest.parsers as `python -m gatewayd.ingest.worker DAEMON_PID`; it imports
the parser and nothing else of gatewayd (no CLI, no database, no web stack), so it starts in a
fraction of the daemon's import time and memory.

The protocol, on pipes: a batch is a header (the number of mails) and each mail as its length,
a headers-only flag and its raw bytes, unpickled (no copy of a raw mail beyond the pipe). The
worker reads the whole batch before it answers, so neither side can block the other on a full
pipe; then it writes one reply per mail, in order, each a pickled ("ok", InboundMail) or
("error", reason). The daemon times each mail from the reply before it.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import sys
import threading
from typing import Any, BinaryIO

from gatewayd.ingest.parse import ParseError, parse_mail

BATCH = struct.Struct("!I")  # mails in the batch
MAIL = struct.Struct("!IB")  # raw length, headers-only flag
REPLY = struct.Struct("!I")  # length of the pickled reply


def end_with(daemon_pid: int) -> None:
    """End this worker when the daemon ends, however it ends.

    An idle worker sees end-of-file on stdin when the daemon is gone; a worker busy with a long
    mail would not, so a pidfd of the daemon (readable when the daemon exits; Linux 5.3+) is
    watched in a thread. Without pidfds only the end-of-file remains.
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


def _read(stream: BinaryIO, size: int) -> bytes | None:
    data = stream.read(size)
    if len(data) < size:
        return None  # end of file: the daemon closed the pipe or is gone
    return data


def parse_one(raw: bytes, headers_only: bool) -> tuple[str, Any]:
    try:
        return ("ok", parse_mail(raw, headers_only=headers_only))
    except ParseError as exc:
        return ("error", str(exc))
    except Exception as exc:  # parse_mail turns every exception into a ParseError; be sure
        return ("error", f"the parser failed: {type(exc).__name__}: {exc}"[:500])


def serve(requests: BinaryIO, replies: BinaryIO) -> None:
    while True:
        head = _read(requests, BATCH.size)
        if head is None:
            return
        (count,) = BATCH.unpack(head)
        batch: list[tuple[bytes, bool]] = []
        for _ in range(count):
            mail_head = _read(requests, MAIL.size)
            if mail_head is None:
                return
            length, flags = MAIL.unpack(mail_head)
            raw = _read(requests, length)
            if raw is None:
                return
            batch.append((raw, bool(flags)))
        for raw, headers_only in batch:
            data = pickle.dumps(parse_one(raw, headers_only), protocol=pickle.HIGHEST_PROTOCOL)
            replies.write(REPLY.pack(len(data)))
            replies.write(data)
            replies.flush()


def main() -> None:
    if len(sys.argv) > 1:
        end_with(int(sys.argv[1]))
    # The protocol owns the original stdout; anything a library prints goes to stderr instead.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
