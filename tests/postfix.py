"""A private Postfix instance for interoperability tests: Debian's Postfix, run as root from a
configuration directory of its own (`postfix -c DIR`), its queue and data directories in a
temporary folder, smtpd on a free loopback port, and mail for shop.example handed to gatewayd
over LMTP. It needs the `postfix` user and the `postdrop` group the package creates; the
folder is world-traversable (0755) because Postfix's daemons run as `postfix`."""

from __future__ import annotations

import contextlib
import grp
import json
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from gatewayd.loopback.ports import free_port, wait_listening

POSTFIX = Path("/usr/sbin/postfix")

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


def unavailable_reason() -> str | None:
    """Why a private Postfix cannot run here, or None."""
    if not POSTFIX.exists():
        return "Postfix is not installed (Debian: apt-get install postfix)"
    if os.geteuid() != 0:
        return "a private Postfix instance needs root (its daemons switch to the postfix user)"
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError:
        return "the postfix user or postdrop group is missing (the Debian package creates them)"
    return None


class PrivatePostfix:
    def __init__(self, base: Path, transport: str, extra: dict[str, str]) -> None:
        self.base = base
        self.conf = base / "conf"
        self.smtp_port = free_port()
        self.transport = transport
        self.extra = extra

    def main_cf(self) -> str:
        settings = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.base / "queue"),
            "data_directory": str(self.base / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "myhostname": "mx.shop.example",
            "mydomain": "shop.example",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "mydestination": "",
            "local_recipient_maps": "",
            "alias_maps": "",
            "alias_database": "",
            "relay_domains": "",
            # The lines of docs/lmtp.md: shop.example's mail goes to gatewayd over LMTP.
            "virtual_mailbox_domains": "shop.example",
            "virtual_transport": self.transport,
            # Nothing leaves this machine: any other destination fails at once.
            "default_transport": "error:this test instance delivers to gatewayd only",
            "maillog_file": str(self.base / "maillog"),
            "maillog_file_prefixes": str(self.base),
            "notify_classes": "",
            "delay_warning_time": "0",
            # Postfix retries only when the test says so (postqueue -f).
            "minimal_backoff_time": "1h",
            "maximal_backoff_time": "1h",
            "queue_run_delay": "1h",
            **self.extra,
        }
        return "".join(f"{key} = {value}\n" for key, value in settings.items())

    def start(self) -> None:
        self.conf.mkdir(parents=True)
        (self.base / "queue").mkdir()
        (self.base / "data").mkdir()
        shutil.chown(self.base / "data", "postfix")
        (self.conf / "main.cf").write_text(self.main_cf(), "utf-8")
        (self.conf / "master.cf").write_text(MASTER_CF.format(port=self.smtp_port), "utf-8")
        self.postfix("start")
        wait_listening(self.smtp_port, 30,
                       lambda: f"Postfix did not listen on {self.smtp_port}:\n{self.log()}")

    def postfix(self, *args: str) -> str:
        result = subprocess.run([str(POSTFIX), "-c", str(self.conf), *args],
                                capture_output=True, text=True, timeout=60, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"postfix {' '.join(args)} failed: {result.stdout}"
                               f"{result.stderr}\n{self.log()}")
        return result.stdout

    def flush(self) -> None:
        """`postqueue -f`: deliver the deferred mail now."""
        subprocess.run(["postqueue", "-c", str(self.conf), "-f"], check=True, timeout=60)

    def queue(self) -> list[dict[str, Any]]:
        """The queue as `postqueue -j` reports it: one dict per mail, with its recipients."""
        out = subprocess.run(["postqueue", "-c", str(self.conf), "-j"], capture_output=True,
                             text=True, check=True, timeout=60).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def log(self) -> str:
        path = self.base / "maillog"
        return path.read_text("utf-8", "replace") if path.exists() else "(no maillog)"

    def stop(self) -> None:
        pid_file = self.base / "queue" / "pid" / "master.pid"
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        with contextlib.suppress(RuntimeError):
            self.postfix("abort")
        deadline = time.monotonic() + 20
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


@contextlib.contextmanager
def private_postfix(transport: str, **extra: str) -> Iterator[PrivatePostfix]:
    base = Path(tempfile.mkdtemp(prefix="gatewayd-postfix-"))
    base.chmod(0o755)
    instance = PrivatePostfix(base, transport, extra)
    try:
        instance.start()
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(base, ignore_errors=True)
