"""Reading the configuration file: find it, parse the TOML, validate it strictly, resolve its
paths, load its secrets, and turn every pydantic error into `file:key: what — fix`."""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import tomllib
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ValidationError

from gatewayd.config.checks import check_semantics
from gatewayd.config.schema import (
    DEFAULT_SEARCH_PATHS,
    Config,
    ConfigError,
    OAuthBinding,
    Problem,
)
from gatewayd.config.secrets import load_secrets


def find_config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The contract's search order: --config, $GATEWAYD_CONFIG, ./gatewayd.toml, /etc/gatewayd/."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("GATEWAYD_CONFIG")
    if env:
        return Path(env)
    for candidate in DEFAULT_SEARCH_PATHS:
        if candidate.exists():
            return candidate
    return DEFAULT_SEARCH_PATHS[0]


def load_config(path: str | os.PathLike[str], *, read_secrets: bool = True) -> Config:
    """Read, validate and resolve a configuration file; raise ConfigError listing every problem."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path,
            [Problem("-", "the configuration file does not exist",
                     "create it with `gatewayd init DIR` or pass --config PATH")],
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            path,
            [Problem("-", f"cannot read the file ({exc})", "check its permissions and encoding")],
        ) from None
    try:
        data = tomllib.loads(text)
    except RecursionError:
        raise ConfigError(
            path, [Problem("-", "not valid TOML: arrays or tables nested too deeply",
                           "flatten the nesting (a configuration needs a few levels)")]
        ) from None
    except tomllib.TOMLDecodeError as exc:
        where = re.search(r"\(at line (\d+), column (\d+)\)", str(exc))
        key = f"line {where.group(1)}" if where else "-"
        raise ConfigError(
            path, [Problem(key, f"not valid TOML: {exc}",
                           "fix the syntax there (strings need quotes, tables [name], "
                           "lists [a, b])")]
        ) from None
    return config_from_dict(data, path, read_secrets=read_secrets)


def config_from_dict(
    data: dict[str, Any], path: Path, *, read_secrets: bool = True
) -> Config:
    base = path.resolve().parent
    if "source" in data:
        raise ConfigError(path, [Problem("source", "unknown key", "remove it")])
    dated = list(_toml_dates(data, ()))
    if dated:
        raise ConfigError(path, [
            Problem(_key_path(loc, data), f"a TOML date/time is not allowed here (got {v})",
                    f'write it as a quoted string, e.g. "{v}"') for loc, v in dated
        ])
    nul = list(_nul_strings(data))
    if nul:
        raise ConfigError(path, [
            Problem(_key_path(loc, data), "the value holds a NUL character (\\u0000)",
                    "remove it") for loc in nul
        ])
    try:
        # Strict, as JSON: TOML has types, so "993" for a port or "yes" for a flag is reported
        # instead of silently converted; strings still become paths and secrets.
        config = Config.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        raise ConfigError(path, [_problem_from_pydantic(e, data) for e in exc.errors()]) from None
    config = _resolve_paths(config, base, path.resolve())
    problems = [p for p in check_semantics(config) if p.severity == "error"]
    problems += _folder_problems(config)
    if read_secrets:
        config, secret_problems = load_secrets(config)
        problems += secret_problems
    if problems:
        raise ConfigError(path, problems)
    return bind_oauth(config)


def _folder_problems(config: Config) -> list[Problem]:
    """`data_dir` and `templates_dir` are folders (or do not exist yet): a file there passed
    `check`, and `run` then failed with "File exists" and no key."""
    return [
        Problem(key, f"{folder} is a file, not a folder",
                f"point {key} at a folder (gatewayd creates a missing one)")
        for key, folder in (("data_dir", config.data_dir), ("templates_dir", config.templates_dir))
        if folder.exists() and not folder.is_dir()
    ]


def bind_oauth(config: Config) -> Config:
    """Hand each OAuth2 login (IMAP, SMTP) its account's [accounts.oauth2], name and data_dir:
    the clients then need nothing beyond their own settings."""
    accounts = []
    for account in config.accounts:
        update: dict[str, Any] = {}
        if account.oauth2 is not None:
            binding = OAuthBinding(account.name, account.oauth2, config.data_dir)
            for proto in ("imap", "smtp"):
                settings = getattr(account, proto)
                if settings is not None and settings.auth == "oauth2":
                    bound = settings.model_copy()
                    bound._oauth = binding
                    update[proto] = bound
        accounts.append(account.model_copy(update=update) if update else account)
    return config.model_copy(update={"accounts": accounts})


# Where a user finds every key: in the docs, and as a commented file `init --full` writes.
REFERENCE = "docs/configuration.md, or `gatewayd init --full DIR` for a commented example"

_FIXES = {
    "extra_forbidden": f"remove it or correct its spelling (every key: {REFERENCE})",
    "missing": f"add it (every key: {REFERENCE})",
    "int_type": "use a whole number",
    "int_parsing": "use a whole number",
    "bool_type": "use true or false",
    "bool_parsing": "use true or false",
    "string_type": "use a quoted string",
    "list_type": "use a list, e.g. [\"a\", \"b\"]",
    "model_type": "use a table",
    "greater_than_equal": "use a larger value",
    "less_than_equal": "use a smaller value",
    "greater_than": "use a larger value",
    "too_short": "add at least one entry",
    "string_too_short": "give it a non-empty value",
    "string_pattern_mismatch": "use only letters, digits, '.', '_' and '-' (or the format shown)",
    "float_type": "use a number",
    "float_parsing": "use a number",
}


Loc = tuple[int | str, ...]


def _values(node: Any, loc: Loc) -> Iterator[tuple[Loc, Any]]:
    """Every plain value of the TOML data (not tables or arrays) with its location."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _values(value, (*loc, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _values(value, (*loc, index))
    else:
        yield loc, node


def _toml_dates(node: Any, loc: Loc) -> Iterator[tuple[Loc, str]]:
    """Every TOML date, time or datetime value with its location (no key of ours takes one)."""
    for where, value in _values(node, loc):
        if isinstance(value, dt.date | dt.time):
            yield where, value.isoformat()


def _nul_strings(node: Any) -> Iterator[Loc]:
    """Every string with a NUL character (no path, address or text of ours may hold one)."""
    for where, value in _values(node, ()):
        if isinstance(value, str) and "\x00" in value:
            yield where


def _keys_at(loc: Loc) -> list[str]:
    """The keys the configuration accepts at a location (for "did you mean"). Pure."""
    model: Any = Config
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        model = None
        for candidate in (field.annotation, *_type_args(field.annotation)):
            if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                model = candidate
                break
        if model is None:
            return []
    return [name for name, f in model.model_fields.items() if not f.exclude]


def _type_args(annotation: Any) -> list[Any]:
    found: list[Any] = []
    for arg in typing.get_args(annotation):
        found += [arg, *_type_args(arg)]
    return found


def _is_secret_key(loc: Loc) -> bool:
    return any(isinstance(p, str) and ("password" in p or "token" in p or "secret" in p)
               for p in loc)


def _key_path(loc: tuple[int | str, ...], data: Any) -> str:
    out = ""
    node = data
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            node = node[part] if isinstance(node, list) and part < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                out += f"({node['name']})"
        else:
            out += f".{part}" if out else str(part)
            node = node.get(part) if isinstance(node, dict) else None
    return out or "-"


def _problem_from_pydantic(error: Any, data: dict[str, Any]) -> Problem:
    loc = tuple(p for p in error["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    kind = error["type"]
    got = error.get("input")
    # Never echo what was given for a password, token or secret, even when it is the wrong type.
    shown = "a value that is not shown (secret)" if _is_secret_key(loc) else repr(got)
    fix = _FIXES.get(kind, f"correct the value (every key: {REFERENCE})")
    message = error["msg"]
    if kind == "literal_error":
        message = f"{shown} is not allowed here"
        fix = f"use one of {error.get('ctx', {}).get('expected', '')}"
    elif kind == "extra_forbidden":
        message = "unknown key"
        known = _keys_at(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1) if known else []
        if close:
            fix = f"did you mean {close[0]!r}? Otherwise remove it"
        elif known:
            fix = f"remove it, or use one of the keys here: {', '.join(known)}"
    elif kind == "missing":
        message = "required key is missing"
    elif kind == "string_pattern_mismatch":
        message = f"{shown} does not have the expected form"
        if loc and loc[-1] == "at":
            fix = 'use a 24-hour time HH:MM in quotes, e.g. "03:00"'
    elif kind == "value_error":
        # Validators write "what is wrong — how to fix".
        text = str(error.get("ctx", {}).get("error", message))
        message, _, own_fix = text.partition(" — ")
        fix = own_fix or fix
    elif kind in _EXPECTED:
        message = f"expected {_EXPECTED[kind]}, got {shown}"
        if isinstance(got, str) and kind.split("_")[0] in ("int", "bool", "float"):
            fix = f"{fix}, without quotes"
        elif kind == "string_type":
            fix = "put the value in double quotes"
    elif not isinstance(got, dict | list):
        message = f"{message} (got {shown})"
    return Problem(_key_path(loc, data), message, fix)


_EXPECTED = {
    "int_type": "a whole number",
    "int_parsing": "a whole number",
    "int_from_float": "a whole number",
    "bool_type": "true or false",
    "bool_parsing": "true or false",
    "string_type": "a quoted string",
    "list_type": "a list",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "dict_type": "a table",
    "float_type": "a number",
    "float_parsing": "a number",
}


def _resolve(base: Path, value: Path | None) -> Path | None:
    if value is None:
        return None
    value = value.expanduser()
    return value if value.is_absolute() else (base / value)


def _resolve_paths(config: Config, base: Path, source: Path) -> Config:
    db = config.database_url
    if db.startswith("sqlite://") and db != "sqlite://:memory:":
        rest = db[len("sqlite://"):]
        db_path, sep, query = rest.partition("?")
        if not Path(db_path).is_absolute():
            db = "sqlite://" + str(base / db_path) + (sep + query if sep else "")
    accounts = []
    for account in config.accounts:
        update: dict[str, Any] = {}
        if account.imap:
            update["imap"] = account.imap.model_copy(update={
                "password_file": _resolve(base, account.imap.password_file),
                "cafile": _resolve(base, account.imap.cafile),
            })
        if account.smtp:
            update["smtp"] = account.smtp.model_copy(update={
                "password_file": _resolve(base, account.smtp.password_file),
                "cafile": _resolve(base, account.smtp.cafile),
            })
        if account.oauth2 and account.oauth2.client_secret_file:
            update["oauth2"] = account.oauth2.model_copy(update={
                "client_secret_file": _resolve(base, account.oauth2.client_secret_file)})
        accounts.append(account.model_copy(update=update))
    loopback = config.loopback
    if loopback is not None:
        loopback = loopback.model_copy(
            update={"sink_folder": _resolve(base, loopback.sink_folder)})
    lmtp = config.lmtp
    if lmtp is not None and lmtp.unix_path is not None:
        lmtp = lmtp.model_copy(update={"listen": f"unix:{_resolve(base, lmtp.unix_path)}"})
    return config.model_copy(update={
        "loopback": loopback,
        "database_url": db,
        "data_dir": _resolve(base, config.data_dir),
        "templates_dir": _resolve(base, config.templates_dir),
        "http": config.http.model_copy(
            update={"api_tokens_file": _resolve(base, config.http.api_tokens_file)}
        ),
        "accounts": accounts,
        "lmtp": lmtp,
        "forms": [f.model_copy(update={"hmac_secret_file": _resolve(base, f.hmac_secret_file)})
                  for f in config.forms],
        "source": source,
    })
