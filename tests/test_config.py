"""Configuration: every problem as `file:key: what is wrong — how to fix`, secrets kept secret.

The broken-config cases run the real `gatewayd check` command (in-process, for speed) on a TOML
file written to a temporary directory; tests/test_cli.py runs it once as a subprocess too.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from collections.abc import Callable, Iterator
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import structlog
from hypothesis import given, settings
from hypothesis import strategies as st

from gatewayd import cli, logs
from gatewayd.config import MAX_ACCOUNTS, ConfigError, check_semantics, is_address, load_config
from gatewayd.config.reference import toml_key, toml_value
from tests.conftest import SHARED, skeleton_data

TOKEN = "cfg-token-0123456789abcdef"
IMAP_SECRET = "imap-pass-Geheim-1"
SMTP_SECRET = "smtp-pass-Geheim-2"
SKELETON_TEMPLATES = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))


# ------------------------------------------------------------------------------ helpers


def to_toml(data: dict[str, Any]) -> str:
    """A minimal TOML writer for tests: every table inline (valid TOML 1.0)."""
    return "".join(f"{toml_key(k)} = {toml_value(v)}\n" for k, v in data.items())


def valid_data(tmp_path: Path) -> dict[str, Any]:
    """The `gatewayd init` config with its account switched on and every secret in a file."""
    (tmp_path / "secrets").mkdir(exist_ok=True)
    (tmp_path / "secrets" / "imap").write_text(IMAP_SECRET + "\n")
    (tmp_path / "secrets" / "smtp").write_text(SMTP_SECRET + "\n")
    (tmp_path / "api-tokens").write_text(f"# one token a line\n{TOKEN}\n")
    data = skeleton_data()
    data["database_url"] = f"sqlite://{tmp_path / 'db.sqlite3'}"
    data["templates_dir"] = str(SKELETON_TEMPLATES)
    data["backend_ticket_url"] = "https://backend.shop.example/tickets/{id}"
    account = data["accounts"][0]
    account["active"] = True
    account["imap"]["password_file"] = "secrets/imap"  # relative to the config file
    account["smtp"]["password_file"] = "secrets/smtp"
    return data


def write(tmp_path: Path, data: dict[str, Any] | str) -> Path:
    path = tmp_path / "gatewayd.toml"
    path.write_text(data if isinstance(data, str) else to_toml(data), encoding="utf-8")
    return path


def run_check(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(["--config", str(path), "check"])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------ valid files


def test_valid_config_loads_with_secrets_and_absolute_paths(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, valid_data(tmp_path)))
    account = config.accounts[0]
    assert account.imap is not None and account.smtp is not None
    assert account.imap.password is not None and account.smtp.password is not None
    assert account.imap.password.get_secret_value() == IMAP_SECRET  # stripped of the newline
    assert account.smtp.password.get_secret_value() == SMTP_SECRET
    assert account.imap.password_file == tmp_path / "secrets" / "imap"
    assert config.api_token_values == [TOKEN]  # the comment line is not a token
    assert config.data_dir == tmp_path / "var"
    assert config.source == tmp_path / "gatewayd.toml"
    assert account.imap.effective_port == 993


def test_check_ok_on_valid_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_check(write(tmp_path, valid_data(tmp_path)), capsys)
    assert (code, err) == (0, "")
    assert "ok" in out


def test_check_ok_on_the_reference_example(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The contract's example file passes as it is, secrets given as systemd credentials."""
    example = SHARED / "gatewayd.example.toml"
    if not example.exists():
        pytest.skip(f"{example} is not here (the shared folder is outside this checkout)")
    path = tmp_path / "gatewayd.toml"
    shutil.copy(example, path)
    shutil.copytree(SKELETON_TEMPLATES, tmp_path / "templates")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "support-imap").write_text(IMAP_SECRET)
    (credentials / "support-smtp").write_text(SMTP_SECRET)
    (credentials / "api-tokens").write_text(TOKEN)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    code, out, err = run_check(path, capsys)
    assert code == 0, err
    assert "ok" in out
    # The example's "Wieder öffnen" sets "Neu" for every type, which Beschwerde lacks: the one
    # contradiction `check` reports about it (a warning; the skeleton splits the rule by type).
    assert [line.split(": ", 2)[1] for line in err.splitlines()] == [
        f"{path}:events[2](Wieder öffnen).actions[0].set_status"]
    assert err.startswith("warning: ")
    config = load_config(path)
    imap = config.accounts[0].imap
    assert imap is not None and imap.password is not None
    assert imap.password.get_secret_value() == IMAP_SECRET
    assert config.api_token_values == [TOKEN]


# ------------------------------------------------------------------------------ broken files

Mutation = Callable[[dict[str, Any]], None]


def _set(path: str, value: Any) -> Mutation:
    """A mutation that sets a dotted path (list indexes as numbers): `accounts.0.imap.port`."""

    def apply(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return apply


def _drop(key: str) -> Mutation:
    return lambda data: data.pop(key)


def _many_accounts(data: dict[str, Any]) -> None:
    first = data["accounts"][0]
    data["accounts"] = [dict(copy.deepcopy(first), name=f"box{i}", address=f"box{i}@shop.example")
                        for i in range(MAX_ACCOUNTS + 1)]


def _duplicate_account(data: dict[str, Any]) -> None:
    data["accounts"].append(copy.deepcopy(data["accounts"][0]))


ACC = "accounts[0](support)"
CASES: list[tuple[str, Mutation, str, str, str]] = [
    # id, mutation, key, what is wrong (fragment), fix (fragment)
    ("unknown-key", _set("modus", "live"), "modus", "unknown key", "did you mean 'mode'?"),
    ("unknown-nested-key", _set("accounts.0.imap.hots", "x"), f"{ACC}.imap.hots",
     "unknown key", "did you mean 'host'?"),
    ("unknown-key-lists-keys", _set("ticket_types.0.colour", "red"),
     "ticket_types[0](Kundenanfrage).colour", "unknown key",
     "use one of the keys here: name, statuses"),
    ("wrong-type-int", _set("accounts.0.imap.port", "993"), f"{ACC}.imap.port",
     "expected a whole number, got '993'", "without quotes"),
    ("wrong-type-bool", _set("accounts.0.active", "yes"), f"{ACC}.active",
     "expected true or false", "use true or false"),
    ("wrong-type-string", _set("default_language", 7), "default_language",
     "expected a quoted string", "double quotes"),
    ("wrong-choice", _set("mode", "prod"), "mode", "'prod' is not allowed", "'test' or 'live'"),
    ("out-of-range", _set("ticket_types.0.statuses.0.progress", 101),
     "ticket_types[0](Kundenanfrage).statuses[0](Neu).progress", "101", "smaller value"),
    ("missing-key", lambda d: d["accounts"][0].pop("new_ticket"), f"{ACC}.new_ticket",
     "missing", "add it"),
    ("account-unknown-type", _set("accounts.0.new_ticket.type", "Reklamation"),
     f"{ACC}.new_ticket.type", "unknown ticket type 'Reklamation'", "Kundenanfrage"),
    ("account-unknown-status", _set("accounts.0.new_ticket.status", "Offen"),
     f"{ACC}.new_ticket.status", "has no status 'Offen'", "'Neu'"),
    ("event-unknown-status", _set("events.2.actions.0.set_status", "Zu"),
     "events[2](Wieder öffnen).actions[0].set_status", "unknown status 'Zu'", "'Neu'"),
    ("event-unknown-type", _set("events.0.filter", {"types": ["Lob"]}),
     "events[0](Eingangsbestätigung).filter.types[0]", "unknown ticket type 'Lob'",
     "Kundenanfrage"),
    ("event-unknown-group", _set("events.2.filter.status_groups", ["Zu"]),
     "events[2](Wieder öffnen).filter.status_groups[0]", "unknown status group 'Zu'",
     "Geschlossen"),
    ("form-unknown-type", _set("forms.0.ticket.type", "Lob"), "forms[0](contact).ticket.type",
     "unknown ticket type 'Lob'", "Kundenanfrage"),
    ("form-unknown-status", _set("forms.0.ticket.status", "Zu"),
     "forms[0](contact).ticket.status", "has no status 'Zu'", "'Neu'"),
    ("scheduled-unknown-status", _set("scheduled.0.filter.statuses", ["Zu"]),
     "scheduled[0](Erledigte nach 90 Tagen löschen).filter.statuses[0]",
     "unknown status 'Zu'", "Erledigt"),
    ("scheduled-unknown-type", _set("scheduled.0.filter.types", ["Lob"]),
     "scheduled[0](Erledigte nach 90 Tagen löschen).filter.types[0]",
     "unknown ticket type 'Lob'", "Kundenanfrage"),
    ("scheduled-bad-time", _set("scheduled.0.at", "25:00"),
     "scheduled[0](Erledigte nach 90 Tagen löschen).at", "'25:00'", 'e.g. "03:00"'),
    ("too-many-accounts", _many_accounts, "accounts", "21 accounts configured, at most 20",
     "remove or merge"),
    ("duplicate-account", _duplicate_account, "accounts[1](support).name",
     "duplicate name 'support'", "unique name"),
    ("test-mode-without-recipient", _drop("test_recipient"), "test_recipient",
     'mode = "test" needs a test address', "set test_recipient"),
    ("password-file-missing", _set("accounts.0.imap.password_file", "nowhere/imap"),
     f"{ACC}.imap.password_file", "cannot read", "$CREDENTIALS_DIRECTORY"),
    ("password-file-unreadable", _set("accounts.0.smtp.password_file", "secrets"),
     f"{ACC}.smtp.password_file", "Is a directory", "fix its permissions"),
    ("security-none-remote", _set("accounts.0.imap.security", "none"), f"{ACC}.imap.security",
     "non-loopback host 'imap.shop.example'", '"tls" or "starttls"'),
    ("security-none-remote-smtp", _set("accounts.0.smtp.security", "none"),
     f"{ACC}.smtp.security", "plain text", '"tls" or "starttls"'),
    ("bad-listen", _set("http", {"listen": "8080", "api_tokens_file": "api-tokens"}),
     "http.listen", "'8080' is not HOST:PORT", "127.0.0.1:8080"),
    ("duplicate-form-field", lambda d: d["forms"][0]["fields"].append(
        {"name": "name", "type": "text"}), "forms[0](contact).fields[6](name).name",
     "duplicate field name 'name'", "unique name"),
    ("stall-not-above-timeouts", _set("accounts.0.imap.stall_seconds", 30),
     f"{ACC}.imap.stall_seconds", "not longer than timeout_seconds (60)", "e.g. 120"),
    # Durations are bounded: beyond a year or a century, each of these overflowed a date
    # computation at run time (every new mail quarantined, the scheduled job failing daily).
    ("huge-auto-reply-window", lambda d: d.setdefault("outbound", {}).update(
        auto_reply_window_hours=1e8), "outbound.auto_reply_window_hours",
     "less than or equal to 87600", "smaller value"),
    ("huge-retry", lambda d: d.setdefault("outbound", {}).update(retry_max_seconds=1e12),
     "outbound.retry_max_seconds", "less than or equal to 2592000", "smaller value"),
    ("huge-status-age", _set("scheduled.0.filter.last_status_change_days", 1_000_000),
     "scheduled[0](Erledigte nach 90 Tagen löschen).filter.last_status_change_days",
     "less than or equal to 36500", "smaller value"),
    ("huge-imap-timeout", _set("accounts.0.imap.timeout_seconds", 1e9),
     f"{ACC}.imap.timeout_seconds", "less than or equal to 3600", "smaller value"),
    ("nul-in-a-path", _set("accounts.0.imap.password_file", "a\x00b"),
     f"{ACC}.imap.password_file", "NUL character", "remove it"),
    ("nul-in-templates-dir", _set("templates_dir", "t\x00"), "templates_dir", "NUL character",
     "remove it"),
    ("bad-listen-ipv6", _set("http", {"listen": "[::1:8080", "api_tokens_file": "api-tokens"}),
     "http.listen", "'[::1:8080' is not HOST:PORT", "127.0.0.1:8080"),
    ("data-dir-is-a-file", _set("data_dir", "api-tokens"), "data_dir", "is a file, not a folder",
     "point data_dir at a folder"),
    ("bad-recipient", _set("events.1.actions.0.to", "kunde"),
     "events[1](Antwort an Kunden).actions[0].to", "unknown recipient 'kunde'", "customer"),
]


@pytest.mark.parametrize(("mutate", "key", "what", "fix"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_check_reports_file_key_what_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
    mutate: Mutation, key: str, what: str, fix: str,
) -> None:
    data = valid_data(tmp_path)
    mutate(data)
    path = write(tmp_path, data)
    code, out, err = run_check(path, capsys)
    assert code == 1
    assert out == ""
    lines = err.splitlines()
    assert lines[-1].endswith("problem(s) found")
    pattern = re.compile(rf"^{re.escape(str(path))}:{re.escape(key)}: (.+) — (.+)$")
    matches = [m for m in map(pattern.match, lines) if m]
    assert matches, f"no line for key {key!r} in:\n{err}"
    assert any(what in m.group(1) and fix in m.group(2) for m in matches), err
    for line in lines[:-1]:  # every problem line has the form, not just the one we look for
        assert re.match(rf"^{re.escape(str(path))}:[^:]+: .+ — .+$", line), line
    assert IMAP_SECRET not in err and SMTP_SECRET not in err and TOKEN not in err


def test_bad_toml_names_the_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, 'mode = "test"\ntest_recipient = qa@shop.example\n')
    code, _, err = run_check(path, capsys)
    assert code == 1
    assert re.match(rf"^{re.escape(str(path))}:line 2: not valid TOML: .+ — fix the syntax", err)


def test_toml_nested_too_deeply_is_a_problem_not_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "x = " + "[" * 5000 + "]" * 5000 + "\n")
    code, _, err = run_check(path, capsys)
    assert code == 1 and "nested too deeply" in err and "Traceback" not in err


@pytest.mark.parametrize("key", ["imap", "tokens"])
def test_a_secret_file_that_is_not_utf8_is_a_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str
) -> None:
    data = valid_data(tmp_path)
    (tmp_path / "binary").write_bytes(b"\xff\xfe\x00pw\n")
    if key == "imap":
        data["accounts"][0]["imap"]["password_file"] = "binary"
        where = f"{ACC}.imap.password_file"
    else:
        data["http"]["api_tokens_file"] = "binary"
        where = "http.api_tokens_file"
    code, _, err = run_check(write(tmp_path, data), capsys)
    assert code == 1 and f":{where}: " in err and "not UTF-8" in err, err


def test_unquoted_toml_time_is_reported(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    text = to_toml(data).replace('at = "03:00"', "at = 03:00:00")  # a TOML local time
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    (problem,) = caught.value.problems
    assert problem.key == "scheduled[0](Erledigte nach 90 Tagen löschen).at"
    assert 'write it as a quoted string, e.g. "03:00:00"' == problem.fix


def test_missing_file_says_how_to_create_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(tmp_path / "absent.toml")
    assert "gatewayd init" in str(caught.value)


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    data.pop("test_recipient")
    data["accounts"][0]["new_ticket"]["type"] = "Lob"
    data["forms"][0]["ticket"]["status"] = "Zu"
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data))
    keys = {p.key for p in caught.value.problems}
    assert {"test_recipient", f"{ACC}.new_ticket.type", "forms[0](contact).ticket.status"} <= keys


def test_security_none_is_fine_on_loopback(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    data["accounts"][0]["imap"].update(host="127.0.0.1", security="none")
    data["accounts"][0]["smtp"].update(host="localhost", security="none")
    config = load_config(write(tmp_path, data))
    assert not [p for p in check_semantics(config) if p.key.endswith("security")]


def test_live_mode_needs_no_test_recipient(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    data.pop("test_recipient")
    data["mode"] = "live"
    assert load_config(write(tmp_path, data)).mode == "live"


def test_exactly_twenty_accounts_are_fine(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    _many_accounts(data)
    data["accounts"].pop()
    assert len(load_config(write(tmp_path, data)).accounts) == MAX_ACCOUNTS


# ------------------------------------------------------------------------------ secrets


def test_inline_secrets_are_used(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    for proto, secret in (("imap", IMAP_SECRET), ("smtp", SMTP_SECRET)):
        data["accounts"][0][proto].pop("password_file")
        data["accounts"][0][proto]["password"] = secret
    data["http"] = {"api_tokens": [TOKEN]}
    config = load_config(write(tmp_path, data))
    imap = config.accounts[0].imap
    assert imap is not None and imap.password is not None
    assert imap.password.get_secret_value() == IMAP_SECRET
    assert config.api_token_values == [TOKEN]


def test_credentials_directory_by_account_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No *_file key: the systemd credential `<account>-imap` / `-smtp` / `api-tokens` is used."""
    data = valid_data(tmp_path)
    for proto in ("imap", "smtp"):
        data["accounts"][0][proto].pop("password_file")
    data["http"] = {"listen": "127.0.0.1:8080"}
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "support-imap").write_text("from-credential-imap\n")
    (credentials / "support-smtp").write_text("from-credential-smtp\n")
    (credentials / "api-tokens").write_text(TOKEN + "\n")
    path = write(tmp_path, data)

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problem = next(p for p in caught.value.problems if "imap" in p.key)
    assert problem.key == f"{ACC}.imap.password"
    assert "support-imap" in problem.fix and "CREDENTIALS_DIRECTORY" in problem.fix

    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    config = load_config(path)
    imap, smtp = config.accounts[0].imap, config.accounts[0].smtp
    assert imap is not None and imap.password is not None
    assert smtp is not None and smtp.password is not None
    assert imap.password.get_secret_value() == "from-credential-imap"
    assert smtp.password.get_secret_value() == "from-credential-smtp"
    assert config.api_token_values == [TOKEN]


def test_missing_password_file_falls_back_to_credential_of_that_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = valid_data(tmp_path)
    data["accounts"][0]["imap"]["password_file"] = "/run/credentials/gatewayd.service/box-imap"
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    (credentials / "box-imap").write_text("via-credentials")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(credentials))
    imap = load_config(write(tmp_path, data)).accounts[0].imap
    assert imap is not None and imap.password is not None
    assert imap.password.get_secret_value() == "via-credentials"


def test_inactive_account_needs_no_password(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    data["accounts"][0]["active"] = False
    data["accounts"][0]["imap"]["password_file"] = "nowhere"
    assert load_config(write(tmp_path, data)).accounts[0].imap is not None


def test_empty_secret_file_and_short_token(tmp_path: Path) -> None:
    data = valid_data(tmp_path)
    (tmp_path / "secrets" / "imap").write_text("\n")
    data["http"] = {"api_tokens": ["kurz"]}
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data))
    by_key = {p.key: p for p in caught.value.problems}
    assert "is empty" in by_key[f"{ACC}.imap.password_file"].message
    assert "shorter than 16" in by_key["http.api_tokens"].message
    assert "kurz" not in str(caught.value)


@pytest.mark.parametrize("where", ["imap.password", "smtp.password", "http.api_tokens"])
def test_secrets_of_the_wrong_type_are_not_echoed(tmp_path: Path, where: str) -> None:
    data = valid_data(tmp_path)
    secret = 31415926535897  # a number where a string is expected still stays hidden
    if where == "http.api_tokens":
        data["http"] = {"api_tokens": f"{TOKEN}-as-a-string"}
    else:
        data["accounts"][0][where.split(".")[0]]["password"] = secret
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, data))
    text = str(caught.value)
    assert where.split(".")[-1] in text
    assert str(secret) not in text and TOKEN not in text
    assert "not shown" in text


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    structlog.reset_defaults()


def test_secrets_never_in_repr_dump_logs_or_status(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], restore_logging: None
) -> None:
    data = valid_data(tmp_path)
    data["accounts"][0]["smtp"].pop("password_file")
    data["accounts"][0]["smtp"]["password"] = SMTP_SECRET
    config = load_config(write(tmp_path, data))
    secrets = (IMAP_SECRET, SMTP_SECRET, TOKEN)
    for text in (repr(config), str(config), config.model_dump_json(), repr(config.accounts)):
        for secret in secrets:
            assert secret not in text

    logs.configure("INFO", json=True)
    log = logs.get_logger("gatewayd.test")
    imap = config.accounts[0].imap
    assert imap is not None and imap.password is not None
    log.info("login", account="support", password=imap.password.get_secret_value(),
             token=TOKEN, settings=imap)
    logging.getLogger("uvicorn.error").warning("config %r", config)
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["event"] == "login" and lines[0]["password"] == "***"
    for secret in secrets:
        assert secret not in out

    assert cli.main(["--config", str(tmp_path / "gatewayd.toml"), "status", "--json"]) == 0
    assert cli.main(["--config", str(tmp_path / "gatewayd.toml"), "status"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.split("\nmode:")[0])["accounts"][0]["account"] == "support"
    for secret in secrets:
        assert secret not in out and secret not in err


# The address pattern is_address() replaced: the same set, but for a trailing newline ('$'
# matched before it) and in linear time.
_FORMER_ADDRESS = re.compile(r"[^@\s<>\"',;]+@[^@\s<>\"',;]+\.[^@\s<>\"',;]+")


@settings(max_examples=2000, deadline=None)
@given(st.text(alphabet="ab.@ ,;<>\"'\n\tä", max_size=12))
def test_is_address_accepts_what_the_former_pattern_did(value: str) -> None:
    assert is_address(value) == bool(_FORMER_ADDRESS.fullmatch(value))


def test_is_address_refuses_odd_addresses() -> None:
    for good in ("a@b.de", "erika.mustermann+shop@mail.example.org", "ä@ü.de", "a@b.c.d"):
        assert is_address(good), good
    for bad in ("a@b.de\n", "a@.de", "a@de.", "a@b@c.de", "@b.de", "a b@c.de", "a@b.de,c@d.de",
                "<a@b.de>", "a@b", "a@" + "." * 40_000 + " x"):  # the last took 10 s before
        assert not is_address(bad), bad[:20]
