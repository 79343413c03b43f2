"""A private Dovecot (Debian's dovecot-imapd) on free loopback ports, for tests and benchmarks.

Started as root from its own config in a temporary folder: plain IMAP and implicit TLS (a test
CA), any user name logs in with the one password (static passdb) and gets an empty Maildir, so
each test can take a mailbox of its own; optionally OAuth2 logins too (XOAUTH2, OAUTHBEARER),
their tokens validated by an identity provider's introspection endpoint. Faults are real:
`kick` ends a user's connections (`doveadm kick`), `restart` stops and starts the server on the
same ports, `freeze` stops the user's imap processes with SIGSTOP (the TCP connection stays open
and nothing answers).
`deliver_files` writes mails straight into a Maildir (`new/`), thousands per second, where
APPEND would take one round trip per mail.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from gatewayd.loopback.ports import free_port, wait_listening
from gatewayd.loopback.smtp import TestCA

DOVECOT = shutil.which("dovecot") or "/usr/sbin/dovecot"
DOVEADM = shutil.which("doveadm") or "/usr/bin/doveadm"
PASSWORD = "dove-secret"


def unavailable() -> str | None:
    """Why a private Dovecot cannot run here, or None when it can."""
    if not Path(DOVECOT).exists():
        return "needs Debian's dovecot-imapd (apt-get install dovecot-imapd)"
    if os.geteuid() != 0:
        return "needs root to start Dovecot from a private config"
    return None


def _quiet(*args: str) -> subprocess.CompletedProcess[bytes]:
    # The daemon keeps inherited pipes open: give it no pipes to wait on.
    return subprocess.run(list(args), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, timeout=30, check=False)


@dataclass
class DovecotServer:
    base: Path
    port: int
    tls_port: int
    ca: TestCA
    password: str = PASSWORD
    _serial: int = field(default=0, repr=False)

    @property
    def conf(self) -> Path:
        return self.base / "dovecot.conf"

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""

    # ------------------------------------------------------------------ life

    def start(self) -> None:
        _quiet(DOVECOT, "-c", str(self.conf))
        wait_listening(self.port, 20, lambda: f"dovecot did not start on port {self.port}: "
                       f"{self.log()[-2000:]}")

    def stop(self) -> None:
        """Stop the server and every process it started at once, as systemd's stop does
        (KillMode=control-group): `doveadm stop` alone leaves running imap sessions behind."""
        pid_file = self.base / "run" / "master.pid"
        if pid_file.exists():
            for pid in [int(pid_file.read_text().strip()), *self._children()]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGCONT)  # a frozen one must be able to end
                    os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while pid_file.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        # The listening socket is gone once the master has exited.
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
            except OSError:
                return
            time.sleep(0.05)

    def restart(self) -> None:
        self.stop()
        self.start()

    # ------------------------------------------------------------------ faults

    def kick(self, user: str) -> None:
        """End every IMAP connection of `user` (the server closes them: `* BYE`, then FIN)."""
        _quiet(DOVEADM, "-c", str(self.conf), "kick", user)

    def imap_pids(self, user: str) -> list[int]:
        """The imap processes serving `user` (verbose_proctitle: "dovecot/imap [user ...]")."""
        pids = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            with contextlib.suppress(OSError):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    errors="replace")
                if cmdline.startswith("dovecot/imap [") and f"[{user} " in cmdline \
                        and self._ours(int(entry.name)):
                    pids.append(int(entry.name))
        return sorted(pids)

    def _children(self) -> list[int]:
        pids = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                with contextlib.suppress(OSError, IndexError, ValueError):
                    if self._ours(int(entry.name)):
                        pids.append(int(entry.name))
        return pids

    def _ours(self, pid: int) -> bool:
        """Whether a process belongs to this instance (a child of its master)."""
        master = (self.base / "run" / "master.pid").read_text().strip()
        stat = Path(f"/proc/{pid}/stat").read_text()
        parent = stat.rsplit(")", 1)[1].split()[1]
        return parent == master

    def freeze(self, user: str) -> list[int]:
        """SIGSTOP the user's imap processes: connections stay open, nothing answers."""
        pids = self.imap_pids(user)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        return pids

    def thaw(self, pids: Iterable[int]) -> None:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    # ------------------------------------------------------------------ mail

    def maildir(self, user: str, folder: str = "INBOX") -> Path:
        root = self.base / "mail" / user / "Maildir"
        return root if folder == "INBOX" else root / f".{folder}"

    def deliver_files(self, user: str, mails: Iterable[bytes], folder: str = "INBOX") -> int:
        """Write mails straight into the user's Maildir as new, unseen mail; returns how many.
        Dovecot gives them UIDs in file-name order when the folder is next opened."""
        target = self.maildir(user, folder)
        for sub in ("cur", "new", "tmp"):
            (target / sub).mkdir(parents=True, exist_ok=True)
        count = 0
        stamp = int(time.time())
        for raw in mails:
            self._serial += 1
            name = f"{stamp}.M{self._serial:08d}P{os.getpid()}.gatewayd,S={len(raw)}"
            (target / "new" / name).write_bytes(raw)
            count += 1
        owner = self.base / "mail" / user
        _chown_tree(owner)
        return count


def _chown_tree(path: Path) -> None:
    shutil.chown(path, "dovecot", "dovecot")
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), _DOVECOT_IDS[0], _DOVECOT_IDS[1])


def _dovecot_ids() -> tuple[int, int]:
    import grp
    import pwd

    try:
        return pwd.getpwnam("dovecot").pw_uid, grp.getgrnam("dovecot").gr_gid
    except KeyError:
        return 0, 0


_DOVECOT_IDS = _dovecot_ids()


def _config(base: Path, port: int, tls_port: int, ca: TestCA, password: str,
            oauth2: bool) -> str:
    mechanisms = "plain login xoauth2 oauthbearer" if oauth2 else "plain login"
    # With OAuth2, tokens go to the oauth2 passdb only, and refusing them costs no delay or
    # penalty (tests refuse tokens on purpose, all from one address).
    only_passwords = "  mechanisms = plain login\n" if oauth2 else ""
    no_delay = "auth_failure_delay = 0\n" if oauth2 else ""
    oauth2_passdb = f"""passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/dovecot-oauth2.conf.ext
}}
""" if oauth2 else ""
    no_penalty = """  unix_listener anvil-auth-penalty {
    mode = 0
  }
""" if oauth2 else ""
    return f"""
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
verbose_proctitle = yes
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
first_valid_uid = 100
disable_plaintext_auth = no
auth_mechanisms = {mechanisms}
{no_delay}ssl = yes
ssl_cert = <{ca.cert}
ssl_key = <{ca.key}
mail_location = maildir:~/Maildir
passdb {{
  driver = static
{only_passwords}  args = password={password}
}}
{oauth2_passdb}userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={base}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = {tls_port}
    ssl = yes
  }}
}}
service anvil {{
  chroot =
{no_penalty}}}
"""


def _oauth2_config(introspection_url: str) -> str:
    """The oauth2 passdb's settings: every token is checked at the identity provider's
    introspection endpoint (RFC 7662), whose `username` names the mailbox."""
    return f"""
introspection_mode = post
introspection_url = {introspection_url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
"""


@contextlib.contextmanager
def dovecot_server(*, oauth2_introspection_url: str | None = None) -> Iterator[DovecotServer]:
    """A running private Dovecot until the block ends (then stopped and its files removed).
    With `oauth2_introspection_url`, it also takes XOAUTH2 and OAUTHBEARER logins, validating
    each token at that URL."""
    reason = unavailable()
    if reason:
        raise RuntimeError(reason)
    # Not a 0700 temporary folder: Dovecot's unprivileged workers must reach the files.
    base = Path(tempfile.mkdtemp(prefix="gatewayd-dovecot-"))
    base.chmod(0o755)
    ca = TestCA(base / "ca")
    (base / "mail").mkdir()
    shutil.chown(base / "mail", "dovecot", "dovecot")
    server = DovecotServer(base, free_port(), free_port(), ca)
    oauth2 = oauth2_introspection_url is not None
    if oauth2_introspection_url is not None:
        (base / "dovecot-oauth2.conf.ext").write_text(_oauth2_config(oauth2_introspection_url))
    server.conf.write_text(_config(base, server.port, server.tls_port, ca, PASSWORD, oauth2))
    try:
        server.start()
        yield server
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
