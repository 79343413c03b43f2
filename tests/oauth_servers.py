"""Fixtures for the OAuth2 tests: the local identity provider (tests/oauth_idp.py) in a process
of its own on a free port, and a private Dovecot (gatewayd.loopback.dovecot) whose oauth2 passdb
validates tokens against it by introspection (XOAUTH2 and OAUTHBEARER), beside its password
logins for delivering."""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from gatewayd.loopback.dovecot import DovecotServer, dovecot_server, unavailable
from gatewayd.loopback.ports import free_port

ROOT = Path(__file__).resolve().parents[1]
needs_dovecot = pytest.mark.skipif(unavailable() is not None,
                                   reason=f"{unavailable()} (.ci/run installs it)")


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
    port = free_port()
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


@pytest.fixture(scope="module")
def dovecot_oauth(idp: IdP) -> Iterator[DovecotServer]:
    """A private Dovecot whose oauth2 passdb asks the identity provider about every token."""
    host_port = idp.url.removeprefix("http://")
    with dovecot_server(oauth2_introspection_url=(
            f"http://dovecot:idp-dovecot-secret-77@{host_port}/introspect")) as server:
        yield server
