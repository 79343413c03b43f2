"""The `gatewayd` command as users run it: the installed console script and `python -m gatewayd`,
as subprocesses (exit codes, stdout/stderr, signals); a few fast cases run `cli.main` in-process."""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from gatewayd import cli, logs

BIN = Path(sys.executable).parent
SCRIPT = BIN / "gatewayd"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("GATEWAYD_CONFIG", "CREDENTIALS_DIRECTORY")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def gatewayd(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    assert SCRIPT.exists(), f"the console script {SCRIPT} is not installed (pip install -e .)"
    return subprocess.run([str(SCRIPT), *args], capture_output=True, text=True, cwd=cwd,
                          env=env or _env(), timeout=timeout, check=False)


@pytest.fixture(scope="module")
def initialised(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`gatewayd init DIR` once for the module: the config every other test starts from."""
    target = tmp_path_factory.mktemp("cli") / "site"
    result = gatewayd("init", str(target))
    assert result.returncode == 0, result.stderr
    assert "wrote" in result.stdout and "next: gatewayd --config" in result.stdout
    return target / "gatewayd.toml"


# ------------------------------------------------------------------------------ help, usage


async def test_help_for_the_command_and_every_subcommand() -> None:
    commands = sorted(next(a.choices for a in cli.build_parser()._actions
                           if isinstance(a, argparse._SubParsersAction)))
    assert {"run", "check", "init", "migrate", "status"} <= set(commands)
    invocations = [[str(SCRIPT), "--help"], [sys.executable, "-m", "gatewayd", "--help"]]
    invocations += [[str(SCRIPT), name, "--help"] for name in commands]

    async def run(argv: list[str]) -> tuple[list[str], int, str, str]:
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
        out, err = await asyncio.wait_for(process.communicate(), timeout=60)
        assert process.returncode is not None
        return argv, process.returncode, out.decode(), err.decode()

    results = await asyncio.gather(*(run(argv) for argv in invocations))
    for argv, code, out, err in results:
        assert (code, err) == (0, ""), argv
        assert out.startswith("usage: gatewayd"), argv
    top = results[0][2]
    for name in ("run", "check", "init", "migrate", "status"):
        assert re.search(rf"^\s+{name}\s+\S", top, re.M), f"{name} is not explained"
    assert "Exit codes" in top and "GATEWAYD_CONFIG" in top
    assert results[1][2] == top  # python -m gatewayd is the same command


@pytest.mark.parametrize("argv", [[], ["nosuchcommand"], ["status", "--bogus"],
                                  ["--log-level", "LOUD", "check"], ["init", "a", "b"]])
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(argv)
    assert exited.value.code == 2
    assert "usage: gatewayd" in capsys.readouterr().err


def test_usage_error_exits_2_from_the_console_script() -> None:
    result = gatewayd("frobnicate")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr and result.stdout == ""


# ------------------------------------------------------------------------------ init, check


def test_init_then_check_is_ok(initialised: Path) -> None:
    site = initialised.parent
    assert (site / "templates" / "staff_reply" / "de.txt").exists()
    assert (site / "api-tokens").stat().st_mode & 0o077 == 0  # the token file is private
    assert (site / "var" / "gatewayd.sqlite3").exists()
    result = gatewayd("--config", str(initialised), "check")
    assert result.returncode == 0, result.stderr
    assert "ok" in result.stdout
    # Only what a new installation still has to fill in: its backend's ticket page, and its
    # mailbox, inactive until it has real hosts and passwords (so form answers wait).
    warnings = result.stderr.splitlines()
    assert [w.split(".toml:", 1)[1].split(":", 1)[0] for w in warnings] == [
        "backend_ticket_url", "accounts[0](support)"], warnings
    assert all(w.startswith("warning: ") for w in warnings)
    assert "wait in the outbox: account support is inactive — set active = true" in warnings[1]


def test_init_refuses_to_overwrite(initialised: Path) -> None:
    result = gatewayd("init", str(initialised.parent))
    assert result.returncode == 1
    assert "already exists" in result.stderr and "--force" in result.stderr


def test_config_is_found_by_env_and_in_the_working_directory(initialised: Path) -> None:
    by_env = gatewayd("check", env=_env(GATEWAYD_CONFIG=str(initialised)))
    assert by_env.returncode == 0, by_env.stderr
    in_cwd = gatewayd("check", cwd=initialised.parent)
    assert in_cwd.returncode == 0, in_cwd.stderr


def test_check_on_a_broken_config_exits_1_with_file_key_and_fix(
    initialised: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "gatewayd.toml"
    text = initialised.read_text(encoding="utf-8")
    text = 'modus = "live"\n' + text
    text = text.replace("port = 993", 'port = "993"')
    text = text.replace('test_recipient = "qa@shop.example"\n', "")
    text = text.replace('api_tokens_file = "api-tokens"', 'api_tokens_file = "missing-tokens"')
    broken.write_text(text, encoding="utf-8")
    result = gatewayd("--config", str(broken), "check")
    assert result.returncode == 1
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert lines[-1] == f"{len(lines) - 1} problem(s) found"
    for line in lines[:-1]:
        assert re.match(rf"^{re.escape(str(broken))}:\S.*?: .+ — .+$", line), line
    keys = {line[len(str(broken)) + 1:].split(": ")[0] for line in lines[:-1]}
    assert {"modus", "accounts[0](support).imap.port"} <= keys

    # Fixing the types shows the next layer of problems: the semantic ones and the secrets.
    text = text.replace('modus = "live"\n', "").replace('port = "993"', "port = 993")
    broken.write_text(text, encoding="utf-8")
    result = gatewayd("--config", str(broken), "check")
    assert result.returncode == 1
    keys = {line[len(str(broken)) + 1:].split(": ")[0] for line in result.stderr.splitlines()}
    assert {"test_recipient", "http.api_tokens_file"} <= keys


def test_missing_config_file_is_exit_1_with_a_hint(tmp_path: Path) -> None:
    result = gatewayd("check", cwd=tmp_path)
    assert result.returncode == 1
    assert "does not exist" in result.stderr and "gatewayd init" in result.stderr


# ------------------------------------------------------------------------------ migrate, status


def test_migrate_and_status(initialised: Path) -> None:
    for _ in range(2):  # idempotent
        result = gatewayd("--config", str(initialised), "migrate")
        assert result.returncode == 0, result.stderr
        assert "up to date" in result.stdout

    as_json = gatewayd("--config", str(initialised), "status", "--json")
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["mode"] == "test"
    (account,) = report["accounts"]
    assert {k: account[k] for k in ("account", "active", "state", "last_poll_at",
                                    "last_error")} == {
        "account": "support", "active": False, "state": "disabled", "last_poll_at": None,
        "last_error": None}
    assert report["quarantine"] == 0
    assert isinstance(report["outbox"], dict)

    text = gatewayd("--config", str(initialised), "status")
    assert text.returncode == 0, text.stderr
    assert "mode: test" in text.stdout and "support" in text.stdout
    assert "quarantine: 0" in text.stdout
    token = (initialised.parent / "api-tokens").read_text().strip()
    assert token not in as_json.stdout + text.stdout + text.stderr


# ------------------------------------------------------------------------------ run


@pytest.fixture
def run_config(initialised: Path, tmp_path: Path) -> Iterator[Path]:
    """The init config on a port of its own, with its own database, beside the shared one."""
    text = initialised.read_text(encoding="utf-8")
    text = text.replace('listen = "127.0.0.1:8080"', 'listen = "127.0.0.1:0"')
    text = text.replace('database_url = "sqlite://var/gatewayd.sqlite3"',
                        f'database_url = "sqlite://{tmp_path}/run.sqlite3"')
    text = text.replace('data_dir = "var"', f'data_dir = "{tmp_path}/data"')
    path = initialised.parent / f"run-{tmp_path.name}.toml"
    path.write_text(text, encoding="utf-8")
    yield path
    path.unlink()


async def test_run_answers_healthz_logs_json_and_stops_on_sigterm(run_config: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        str(SCRIPT), "--config", str(run_config), "run",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=_env())
    assert process.stdout is not None and process.stderr is not None
    lines: list[str] = []
    try:
        port = None
        while port is None:  # stdout is a pipe, not a terminal: one JSON object a line
            raw = await asyncio.wait_for(process.stdout.readline(), timeout=60)
            assert raw, "gatewayd run exited early: " + (await process.stderr.read()).decode()
            lines.append(raw.decode())
            entry = json.loads(raw)
            if entry.get("event") == "http listening":
                port = int(entry["port"])
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            health = await client.get("/healthz")
            assert health.status_code == 200
            assert health.json()["database"] is True
            token = (run_config.parent / "api-tokens").read_text().strip()
            tickets = await client.get("/api/tickets",
                                       headers={"Authorization": f"Bearer {token}"})
            assert tickets.status_code == 200
        process.send_signal(signal.SIGTERM)
        out, err = await asyncio.wait_for(process.communicate(), timeout=30)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode == 0, err.decode()
    lines += out.decode().splitlines()
    entries = [json.loads(line) for line in lines if line.strip()]
    events = [e["event"] for e in entries]
    assert "stopping" in events and events[-1] == "stopped"
    assert all({"event", "level", "timestamp"} <= set(e) for e in entries)
    assert token not in "".join(lines)


def test_run_on_a_busy_port_exits_1(run_config: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        text = run_config.read_text(encoding="utf-8")
        run_config.write_text(text.replace("127.0.0.1:0", f"127.0.0.1:{port}"), "utf-8")
        result = gatewayd("--config", str(run_config), "run")
    assert result.returncode == 1
    assert "cannot start" in result.stderr and "http.listen" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_console_logs_on_a_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    import structlog

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    terminal = Terminal()
    monkeypatch.setattr(sys, "stdout", terminal)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        logs.configure("INFO")
        logs.get_logger("gatewayd.test").info("readable line", account="support")
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)
        structlog.reset_defaults()
    output = terminal.getvalue()
    assert "readable line" in output and "account" in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(output.splitlines()[0])


def test_unreachable_database_is_one_line_without_the_password(
    initialised: Path, tmp_path: Path
) -> None:
    config = tmp_path / "gatewayd.toml"
    text = initialised.read_text(encoding="utf-8").replace(
        'database_url = "sqlite://var/gatewayd.sqlite3"',
        'database_url = "postgres://gw:pw-Geheim-9@127.0.0.1:1/gatewayd"')
    config.write_text(text.replace('api_tokens_file = "api-tokens"',
                                   f'api_tokens_file = "{initialised.parent}/api-tokens"'))
    for command in ("migrate", "status"):
        result = gatewayd("--config", str(config), command)
        assert result.returncode == 1
        (line,) = result.stderr.splitlines()
        assert line.startswith(f"gatewayd {command}: ") and "database_url" in line
        assert "pw-Geheim-9" not in result.stderr + result.stdout
