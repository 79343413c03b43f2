"""Fixtures for the OAuth2 tests: the local identity provider (tests/oauth_idp.py) in a process
of its own on a free port, and a private Dovecot whose oauth2 passdb validates tokens against
it by introspection (XOAUTH2 and OAUTHBEARER), beside a passwd-file passdb for delivering."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.test_dovecot import DOVECOT, _free_port

ROOT = Path(__file__).resolve().parents[1]
needs_dovecot = pytest.mark.skipif(
    not Path(DOVECOT).exists() or os.geteuid() != 0,
    reason="needs Debian's dovecot-imapd (.ci/run installs it) and root to start it with a "
    "private config",
)


@dataclass
class IdP:
    url: str

    def admin(self, action: str, **data: Any) -> Any:
        with httpx.Client(base_url=self.url, timeout=10) as client:
            response = client.post(f"/admin/{action}", json=data)
            response.raise_for_status()
            return response.json()

    def stats(self) -> dict[str, int]:
        return dict(self.admin("stats"))

    def refresh_token_for(self, username: str, client_id: str = "public-app") -> str:
        return str(self.admin("refresh", client_id=client_id, username=username)["refresh_token"])

    def oauth2(self, client_id: str, flow: str, **extra: Any) -> dict[str, Any]:
        """An [accounts.oauth2] table for a custom provider at this IdP."""
        table: dict[str, Any] = {
            "provider": "custom", "flow": flow, "client_id": client_id,
            "token_url": f"{self.url}/token",
            "device_authorization_url": f"{self.url}/device",
            "authorization_url": f"{self.url}/authorize",
            "scopes": ["mail", "offline_access"], "timeout_seconds": 10,
        }
        if client_id != "public-app":
            table["client_secret"] = "idp-app-secret-5f2a9c"
        table.update(extra)
        return table


@pytest.fixture(scope="module")
def idp() -> Iterator[IdP]:
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.oauth_idp", str(port)], cwd=ROOT,
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/admin/stats", timeout=1).status_code == 200:
                    break
            if process.poll() is not None or time.monotonic() > deadline:
                error = process.stderr.read().decode() if process.stderr else ""
                pytest.fail(f"the test identity provider did not start: {error[-2000:]}")
            time.sleep(0.1)
        yield IdP(url)
    finally:
        process.terminate()
        process.wait(10)


@dataclass
class OAuthDovecot:
    port: int
    base: Path
    conf: Path

    def kick(self, user: str) -> None:
        """End the user's sessions, as a provider does when their token expires."""
        subprocess.run(["doveadm", "-c", str(self.conf), "kick", user], check=True,
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def dovecot_oauth(idp: IdP) -> Iterator[OAuthDovecot]:
    base = Path(tempfile.mkdtemp(prefix="gatewayd-dovecot-oauth-"))
    base.chmod(0o755)
    port = _free_port()
    users = ["support", "sales"]
    (base / "passwd").write_text("".join(f"{u}:{{PLAIN}}dove-secret\n" for u in users))
    (base / "mail").mkdir()
    shutil.chown(base / "mail", "dovecot", "dovecot")
    host_port = idp.url.removeprefix("http://")
    (base / "dovecot-oauth2.conf.ext").write_text(f"""
introspection_mode = post
introspection_url = http://dovecot:idp-dovecot-secret-77@{host_port}/introspect
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 10000
""")
    conf = base / "dovecot.conf"
    conf.write_text(f"""
protocols = imap
listen = 127.0.0.1
base_dir = {base}/run
state_dir = {base}/state
log_path = {base}/dovecot.log
default_login_user = dovenull
default_internal_user = dovecot
default_internal_group = dovecot
first_valid_uid = 100
disable_plaintext_auth = no
auth_mechanisms = plain login xoauth2 oauthbearer
auth_failure_delay = 0
ssl = no
mail_location = maildir:~/Maildir
passdb {{
  driver = passwd-file
  mechanisms = plain login
  args = scheme=PLAIN username_format=%u {base}/passwd
}}
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {base}/dovecot-oauth2.conf.ext
}}
userdb {{
  driver = static
  args = uid=dovecot gid=dovecot home={base}/mail/%u
}}
service imap-login {{
  chroot =
  inet_listener imap {{
    port = {port}
  }}
  inet_listener imaps {{
    port = 0
  }}
}}
service anvil {{
  chroot =
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
""")  # no auth penalty: the tests refuse tokens on purpose, from one address
    subprocess.run([DOVECOT, "-c", str(conf)], check=True, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
    try:
        deadline = time.monotonic() + 20
        while True:
            with contextlib.suppress(OSError):
                import socket

                with socket.create_connection(("127.0.0.1", port), 1):
                    break
            if time.monotonic() > deadline:
                log = (base / "dovecot.log").read_text() if (base / "dovecot.log").exists() else ""
                pytest.fail(f"dovecot did not start on port {port}: {log[-2000:]}")
            time.sleep(0.1)
        yield OAuthDovecot(port, base, conf)
    finally:
        subprocess.run(["doveadm", "-c", str(conf), "stop"], stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=30)
        shutil.rmtree(base, ignore_errors=True)
