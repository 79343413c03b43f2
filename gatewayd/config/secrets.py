"""Secrets of the configuration: passwords, OAuth2 client secrets, API tokens and form HMAC
secrets from `*_file` keys or systemd credentials (`$CREDENTIALS_DIRECTORY`). Values never
appear in a message."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from pydantic import SecretStr

from gatewayd.config.schema import (
    Config,
    Form,
    ImapSettings,
    OAuth2Settings,
    Problem,
    SmtpSettings,
)


def _read_text(path: Path) -> tuple[str, str | None]:
    """A secret file's text, or "" and why it cannot be read (missing, permissions, not
    UTF-8). A NUL in the path never gets here: the configuration refuses it."""
    try:
        return path.read_text(encoding="utf-8"), None
    except UnicodeDecodeError as exc:
        return "", f"not UTF-8 text (byte {exc.start})"
    except OSError as exc:
        return "", exc.strerror or type(exc).__name__


def _read_secret_file(path: Path, key: str) -> tuple[str | None, Problem | None]:
    text, reason = _read_text(path)
    if reason:
        return None, Problem(
            key, f"cannot read {path} ({reason})",
            "create the file as UTF-8 text, fix its permissions, or give the secret through "
            "$CREDENTIALS_DIRECTORY (systemd LoadCredential)",
        )
    value = text.strip()
    if not value:
        return None, Problem(key, f"{path} is empty", "put the secret into the file")
    return value, None


def _credential(name: str) -> Path | None:
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if not directory:
        return None
    candidate = Path(directory) / name
    return candidate if candidate.exists() else None


def _secret_source(file: Path | None, credential: str | None = None) -> Path | None:
    """Where a secret is read from: the `*_file` key's file, or the systemd credential of the
    same file name when that file is missing (a config naming /run/credentials/... works under
    systemd); without a `*_file` key, the credential `credential`, when there is one."""
    if file is not None:
        return file if file.exists() else (_credential(file.name) or file)
    return _credential(credential) if credential else None


def load_secrets(config: Config) -> tuple[Config, list[Problem]]:
    """Fill passwords and tokens from `*_file` keys or systemd credentials (`_secret_source`)."""
    problems: list[Problem] = []
    accounts = []
    for index, account in enumerate(config.accounts):
        update: dict[str, Any] = {}
        if not account.active:  # an inactive account is not contacted: its secrets may be absent
            accounts.append(account)
            continue
        for proto in ("imap", "smtp"):
            settings: ImapSettings | SmtpSettings | None = getattr(account, proto)
            if settings is None or settings.password is not None or settings.auth == "oauth2":
                continue
            key = f"accounts[{index}]({account.name}).{proto}.password_file"
            source = _secret_source(settings.password_file, f"{account.name}-{proto}")
            if source is None:
                if proto == "imap" or settings.username:
                    problems.append(Problem(
                        f"accounts[{index}]({account.name}).{proto}.password",
                        "no password given",
                        f"set password_file, or provide the credential '{account.name}-{proto}' "
                        "in $CREDENTIALS_DIRECTORY"
                        + (', or set auth = "oauth2"' if account.oauth2 else ""),
                    ))
                continue
            value, problem = _read_secret_file(source, key)
            if problem:
                problems.append(problem)
                continue
            update[proto] = settings.model_copy(update={"password": SecretStr(value or "")})
        if account.oauth2 is not None:
            oauth2, problem = _load_oauth2_secret(index, account.name, account.oauth2)
            update["oauth2"] = oauth2
            if problem:
                problems.append(problem)
        accounts.append(account.model_copy(update=update) if update else account)

    tokens = list(config.http.api_tokens)
    token_file = _secret_source(config.http.api_tokens_file, "api-tokens")
    if token_file is not None:
        text, reason = _read_text(token_file)
        if reason:
            problems.append(Problem(
                "http.api_tokens_file", f"cannot read {token_file} ({reason})",
                "create the file as UTF-8 text with one token a line, or use http.api_tokens",
            ))
        tokens += [SecretStr(t.strip()) for t in text.splitlines()
                   if t.strip() and not t.startswith("#")]
    for token in tokens:
        if len(token.get_secret_value()) < 16:
            problems.append(Problem(
                "http.api_tokens", "an API token is shorter than 16 characters",
                "use long random tokens, e.g. from `python -c 'import secrets; "
                "print(secrets.token_urlsafe(32))'`",
            ))
            break
    http = config.http.model_copy(update={"api_tokens": tokens})
    forms, form_problems = _load_form_secrets(config.forms)
    problems += form_problems
    return config.model_copy(update={"accounts": accounts, "http": http, "forms": forms}), problems


def _load_form_secrets(forms: list[Form]) -> tuple[list[Form], list[Problem]]:
    """A form's HMAC secret from `hmac_secret_file` (or the systemd credential of that name)."""
    problems: list[Problem] = []
    loaded = []
    for index, form in enumerate(forms):
        if form.hmac_secret is not None or form.hmac_secret_file is None:
            loaded.append(form)
            continue
        source = _secret_source(form.hmac_secret_file) or form.hmac_secret_file
        value, problem = _read_secret_file(source, f"forms[{index}]({form.name}).hmac_secret_file")
        if problem:
            problems.append(problem)
            loaded.append(form)
            continue
        loaded.append(form.model_copy(update={"hmac_secret": SecretStr(value or "")}))
    return loaded, problems


def _load_oauth2_secret(
    index: int, name: str, oauth2: OAuth2Settings
) -> tuple[OAuth2Settings, Problem | None]:
    """The client secret from client_secret_file, or the systemd credential `<account>-oauth2`.

    A public client (delegated login without a secret) needs none; app-only does.
    """
    key = f"accounts[{index}]({name}).oauth2"
    if oauth2.client_secret is not None:
        return oauth2, None
    source = _secret_source(oauth2.client_secret_file, f"{name}-oauth2")
    if source is None:
        if oauth2.effective_flow == "client_credentials":
            return oauth2, Problem(
                f"{key}.client_secret_file", "the client-credentials flow needs a client secret",
                f"set client_secret_file, or provide the credential '{name}-oauth2' in "
                "$CREDENTIALS_DIRECTORY")
        return oauth2, None
    value, problem = _read_secret_file(source, f"{key}.client_secret_file")
    if problem:
        return oauth2, problem
    return oauth2.model_copy(update={"client_secret": SecretStr(value or "")}), None
