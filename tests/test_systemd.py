"""The service unit passes systemd's own checks: `verify` clean, `security` 2.5 or better."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SYSTEMD = Path(__file__).resolve().parents[1] / "systemd"


def _unit() -> dict[str, list[str]]:
    values: dict[str, list[str]] = {}
    for line in (SYSTEMD / "gatewayd.service").read_text("utf-8").splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            values.setdefault(key, []).append(value)
    return values


def test_unit_has_the_service_contract() -> None:
    unit = _unit()
    assert unit["Type"] == ["notify"]
    assert unit["Restart"] == ["on-failure"]
    assert unit["DynamicUser"] == ["yes"]
    assert unit["StateDirectory"] == ["gatewayd"] and unit["ConfigurationDirectory"] == ["gatewayd"]
    assert any(v.startswith("api-tokens:") for v in unit["LoadCredential"])
    assert re.fullmatch(r"\d+s", unit["WatchdogSec"][0])
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # the command line the unit runs is one the CLI accepts
    exec_start = unit["ExecStart"][0].split()
    assert exec_start[0] == "/usr/local/bin/gatewayd" and exec_start[-1] == "run"
    tmpfiles = (SYSTEMD / "gatewayd.tmpfiles").read_text("utf-8")
    assert "d /etc/gatewayd/credentials 0700 root root" in tmpfiles


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed (Debian: apt-get install systemd)")
def test_systemd_analyze_verify_and_security() -> None:
    gatewayd_bin = Path(sys.executable).with_name("gatewayd")
    assert gatewayd_bin.exists(), "install the project (pip install -e .) for the gatewayd command"
    result = subprocess.run(
        [str(SYSTEMD / "verify")], env=dict(os.environ, GATEWAYD_BIN=str(gatewayd_bin)),
        capture_output=True, text=True, timeout=120, check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    score = re.search(r"exposure level for gatewayd.service: ([\d.]+) (\w+)", result.stdout)
    assert score is not None, result.stdout
    assert float(score.group(1)) <= 2.5 and score.group(2) == "OK"
