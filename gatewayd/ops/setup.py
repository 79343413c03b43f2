"""`gatewayd init`: a new installation's files from the packaged skeleton.

The skeleton (gatewayd/skeleton/) holds a working configuration with one inactive mailbox to
fill in, the templates in German and English, the commented reference of every key
(`gatewayd.example.toml`, written with `--full`) and, for `--loopback`, mailboxes on the
embedded IMAP server and SMTP sink, so `gatewayd run` shows mail flowing at once.
"""

from __future__ import annotations

import secrets
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from gatewayd.loopback.ports import free_port

SKELETON = "skeleton"
MAILBOXES_START = "# --- mailboxes"
MAILBOXES_END = "# --- end of mailboxes ---\n"
EXAMPLE = "gatewayd.example.toml"


class SetupError(Exception):
    """init cannot write the installation; the message says why and what to do."""


@dataclass
class Written:
    """What init wrote, for its report."""

    config: Path
    token: str
    files: list[Path] = field(default_factory=list)
    loopback_ports: tuple[int, int] | None = None


def skeleton_text(name: str) -> str:
    return (resources.files("gatewayd") / SKELETON / name).read_text("utf-8")


def loopback_config_text(imap_port: int, smtp_port: int) -> str:
    """The skeleton configuration with its mailboxes replaced by the embedded ones. Pure."""
    text = skeleton_text("gatewayd.toml")
    start = text.index(MAILBOXES_START)
    end = text.index(MAILBOXES_END) + len(MAILBOXES_END)
    mailboxes = skeleton_text("loopback-mailboxes.toml").replace(
        "{imap_port}", str(imap_port)).replace("{smtp_port}", str(smtp_port))
    return text[:start] + mailboxes + text[end:]


def write_installation(target: Path, *, loopback: bool = False, full: bool = False,
                       force: bool = False) -> Written:
    """Write gatewayd.toml, templates, an API token file (0600) and, with `loopback`, the
    embedded mailboxes' password files; with `full`, gatewayd.example.toml beside them."""
    config_path = target / "gatewayd.toml"
    if config_path.exists() and not force:
        raise SetupError(f"{config_path}: already exists — choose another DIR or pass --force "
                         "to overwrite")
    target.mkdir(parents=True, exist_ok=True)
    written = Written(config=config_path, token="")
    ports = None
    if loopback:
        ports = (free_port(), free_port())
        text = loopback_config_text(*ports)
        for user in ("support", "service"):
            secret = target / f"{user}-imap.password"
            if not secret.exists() or force:
                secret.write_text(secrets.token_urlsafe(18) + "\n", encoding="utf-8")
                secret.chmod(0o600)
                written.files.append(secret)
    else:
        text = skeleton_text("gatewayd.toml")
    config_path.write_text(text, encoding="utf-8")
    written.loopback_ports = ports
    skeleton = resources.files("gatewayd") / SKELETON
    with resources.as_file(skeleton) as source:
        shutil.copytree(source / "templates", target / "templates", dirs_exist_ok=True)
        written.files.append(target / "templates")
        if full:
            shutil.copy(source / EXAMPLE, target / EXAMPLE)
            written.files.append(target / EXAMPLE)
    tokens = target / "api-tokens"
    if not tokens.exists() or force:
        written.token = secrets.token_urlsafe(32)
        tokens.write_text(written.token + "\n", encoding="utf-8")
        tokens.chmod(0o600)
    else:
        written.token = tokens.read_text(encoding="utf-8").split()[0]
    written.files.append(tokens)
    return written
