"""What every part of the configuration's schema shares: the strict model base, problems with
their key and fix, and small value checks."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict

_LANGUAGE_RE = re.compile(r"^[a-z]{2,3}(-[a-z0-9]{2,8})?$")  # de, en, pt-br: template names
# What no part of a plain address holds. Checked by a search per part, not by one pattern with a
# dotted domain, which backtracked quadratically on a long run of dots (40,000: 10 s).
_ADDRESS_BAD = re.compile(r"[@\s<>\"',;]")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a configuration: where, what, and how to fix it."""

    key: str
    message: str
    fix: str
    severity: Literal["error", "warning"] = "error"

    def format(self, file: Path | str) -> str:
        return f"{file}:{self.key}: {self.message} — {self.fix}"


class ConfigError(Exception):
    """The configuration cannot be used; `problems` says why, each with its key and fix."""

    def __init__(self, file: Path | str, problems: list[Problem]):
        self.file = file
        self.problems = problems
        super().__init__("\n".join(p.format(file) for p in problems))


def is_address(value: str) -> bool:
    """A plain address `local@domain.tld`: one `@`, a dot inside the domain, and no blank,
    angle bracket, quote, comma or semicolon anywhere (nor a trailing newline). Linear time."""
    local, at, domain = value.partition("@")
    return bool(at and local and "." in domain[1:-1]
                and not _ADDRESS_BAD.search(local) and not _ADDRESS_BAD.search(domain))


def language_code(value: str | None) -> str | None:
    """A validator: a language code as the templates' file names use it."""
    if value is not None and not _LANGUAGE_RE.match(value):
        raise ValueError(f"{value!r} is not a language code — use e.g. \"de\" or \"en\" "
                         "(lower case, as the templates' file names)")
    return value


def in_language(value: str | dict[str, str] | None, languages: list[str]) -> str | None:
    """A text given once or per language (`{ de = "...", en = "..." }`): the first of
    `languages` it has, else its first translation."""
    if value is None or isinstance(value, str):
        return value
    for language in languages:
        if language in value:
            return value[language]
    return next(iter(value.values()), None)


class StrictModel(BaseModel):
    # The docstring under each field is its description (docs/configuration.md is made from it).
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def is_host_port(value: str) -> bool:
    """`HOST:PORT` with a port from 0 to 65535 (`[::1]:8080` for IPv6: an IPv6 host in
    brackets, which `[::1:8080` or `::1:8080` lack). Pure."""
    host, sep, port = value.rpartition(":")
    if not (sep and host and port.isascii() and port.isdigit() and len(port) <= 5
            and int(port) <= 65535) or any(c.isspace() for c in host):
        return False
    if host.startswith("["):
        inner = host[1:-1]
        return host.endswith("]") and bool(inner) and "[" not in inner and "]" not in inner
    return ":" not in host and "[" not in host and "]" not in host


def check_listen(value: str) -> str:
    """A validator: a listen address `HOST:PORT`."""
    if not is_host_port(value):
        raise ValueError(f"{value!r} is not HOST:PORT — use e.g. \"127.0.0.1:8080\"")
    return value


def listen_host(listen: str) -> str:
    return listen.rpartition(":")[0].strip("[]")


def listen_port(listen: str) -> int:
    return int(listen.rpartition(":")[2])


def is_loopback(host: str) -> bool:
    """`localhost` or a loopback IP address (IPv4 or IPv6, brackets allowed)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
