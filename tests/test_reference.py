"""The configuration reference stays true: docs/configuration.md is what the schema makes, every
key has a description, the shipped gatewayd.example.toml names every key and passes `check`,
and nothing in the repository points at files outside it."""

from __future__ import annotations

import re
import shutil
import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from gatewayd import cli
from gatewayd.config import load_config
from gatewayd.config.reference import COMMAND, keys, missing_descriptions, render

ROOT = Path(__file__).resolve().parents[1]
SKELETON = Path(str(resources.files("gatewayd") / "skeleton"))
EXAMPLE = SKELETON / "gatewayd.example.toml"
# Lines "# key = value" / "# [table]" in the example are optional keys shown switched off.
_COMMENTED_KEY = re.compile(r"^(\s*)# (\[[\w.\[\]]+\]|[a-z_]+ = .*)$", re.M)


def toml_paths(node: Any, prefix: str = "") -> set[str]:
    """Every key path of parsed TOML, arrays of tables marked `[]` (as the reference writes)."""
    found: set[str] = set()
    if isinstance(node, dict):
        for key, value in node.items():
            path = f"{prefix}.{key}" if prefix else key
            found.add(path)
            if isinstance(value, dict):
                found |= toml_paths(value, path)
            elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
                for item in value:
                    found |= toml_paths(item, path + "[]")
    return found


def test_configuration_md_is_current() -> None:
    current = (ROOT / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert current == render(), (
        f"docs/configuration.md is stale: a configuration key changed. Regenerate it with "
        f"`{COMMAND}` and commit it.")


def test_every_key_has_a_description() -> None:
    assert missing_descriptions() == [], (
        "these keys have no docstring under their field in gatewayd/config/: "
        f"{missing_descriptions()} — write one (a paragraph starting 'Check:' says what "
        f"`gatewayd check` reports), then run `{COMMAND}`")


def test_the_reference_shows_type_default_example_and_check() -> None:
    text = render()
    section = text.split("### `accounts[].imap.poll_seconds`", 1)[1].split("###", 1)[0]
    assert "- type: whole number (≥ 1, ≤ 86400)" in section
    assert "- default: `60`" in section
    assert "- example: `poll_seconds = 60`" in section
    section = text.split("### `test_recipient`", 1)[1].split("###", 1)[0]
    assert "- check: required in test mode" in section
    # Every key of the schema has its heading.
    for key in keys():
        assert f"### `{key.path}`" in text, key.path


def test_the_example_names_every_key() -> None:
    text = EXAMPLE.read_text(encoding="utf-8")
    switched_on = _COMMENTED_KEY.sub(r"\1\2", text)
    present = toml_paths(tomllib.loads(switched_on))
    missing = sorted(k.path for k in keys() if k.path not in present)
    assert missing == [], (
        f"gatewayd/skeleton/gatewayd.example.toml lacks {missing}: add each with a comment "
        "(an optional one as a '# key = value' line)")


def test_the_example_passes_check_with_its_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    """As its header says: the example passes once the secret files it names exist."""
    shutil.copy(EXAMPLE, tmp_path / "gatewayd.toml")
    shutil.copytree(SKELETON / "templates", tmp_path / "templates")
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    for name in ("support-imap", "support-smtp", "contact-hmac"):
        (credentials / name).write_text(f"secret for {name}\n")
    (tmp_path / "api-tokens").write_text("a-token-of-more-than-16-characters\n")
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    code = cli.main(["--config", str(tmp_path / "gatewayd.toml"), "check"])
    out, err = capsys.readouterr()
    assert (code, err) == (0, ""), err
    assert "ok (1 accounts" in out
    assert "answered through account support" in out
    # Without them, each missing secret is named with its key and fix (nothing else fails).
    shutil.rmtree(credentials)
    assert cli.main(["--config", str(tmp_path / "gatewayd.toml"), "check"]) == 1
    problems = capsys.readouterr().err.splitlines()[:-1]
    assert len(problems) == 3
    assert all("password_file" in p or "hmac_secret_file" in p for p in problems), problems


def test_init_full_writes_the_example_beside_a_working_config(tmp_path: Path) -> None:
    assert cli.main(["init", "--full", str(tmp_path / "site")]) == 0
    site = tmp_path / "site"
    assert (site / "gatewayd.example.toml").read_text() == EXAMPLE.read_text()
    load_config(site / "gatewayd.toml")  # the working config still loads as it is


# Texts in the repository speak of the project, and point only at what ships with it. ("Session"
# alone is also an IMAP, SMTP and PostgreSQL word; these are the ways prose spoke of the
# project's working sessions.)
_OUTSIDE = re.compile(
    r"\.\./shared|/work/|CONTRACT\.md|DESIGN\.md|"
    r"\b(this|that|earlier|previous|last|next|later|two|three|\d{4}-\d\d-\d\d) sessions?\b|"
    r"\bsessions? ago\b|\bsession's (machine|start|figures)", re.I)


def _shipped_texts() -> list[Path]:
    found = [ROOT / "README.md", ROOT / "CHANGELOG.md", ROOT / "pyproject.toml"]
    for folder in ("docs", "gatewayd", "systemd", "bench", ".ci"):
        found += [p for p in (ROOT / folder).rglob("*") if p.is_file()
                  and "__pycache__" not in p.parts]
    return [p for p in found if p.exists()]


def test_nothing_points_outside_the_repository_or_speaks_of_sessions() -> None:
    offenders = []
    for path in _shipped_texts():
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), 1):
            if _OUTSIDE.search(line):
                offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()[:100]}")
    assert offenders == [], "\n".join(offenders)


def test_every_http_route_is_documented() -> None:
    """Each method and path the app serves appears in docs/ (api.md, or the page of the
    developer who added it), e.g. "`GET /api/tickets/{id}`"."""
    from fastapi.routing import APIRoute

    from gatewayd.api.app import create_app

    app = create_app(None)  # type: ignore[arg-type]  # routes only; nothing is served

    def normal(text: str) -> str:
        text = re.sub(r"\{[^}]*\}", "{}", text)
        return re.sub(r"\?[^`\s]*", "", text)

    docs = normal("\n".join(p.read_text(encoding="utf-8")
                            for p in sorted((ROOT / "docs").glob("*.md"))))
    def walk(routes: Any, prefix: str = "") -> Any:
        for route in routes:
            included = getattr(route, "include_context", None)  # FastAPI's included routers
            if included is not None:
                yield from walk(included.included_router.routes, prefix + included.prefix)
            elif isinstance(route, APIRoute):
                yield prefix + route.path, route.methods

    served = list(walk(app.routes))
    assert len(served) > 20  # the walk found the routers' routes
    missing = [f"{method} {path}" for path, methods in served
               for method in sorted(methods - {"HEAD"})
               if f"{method} {normal(path)}" not in docs]
    assert missing == [], f"document these in docs/api.md (with an example): {missing}"


def test_the_readme_gives_the_two_set_up_commands_that_ci_runs() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 250
    assert ("python3 -m venv .venv && . .venv/bin/activate && pip install . && gatewayd demo"
            in readme)
    test_command = "pip install -e '.[test]' && python -m pytest"
    assert test_command in readme
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip install -q -e \".[test]\"" in ci and "\npython -m pytest\n" in ci
    for link in re.findall(r"\]\((docs/[\w.-]+\.md)", readme):
        name = Path(link).name
        # Pages other parts of the project write may still be on their way; ours must exist.
        if name not in ("reliability.md", "reliability-api.md", "providers.md", "lmtp.md"):
            assert (ROOT / link).exists(), link
