"""Templates: language choice and fallback (logged), header and footer, HTML alternative, the
sandbox against escapes, render limits, and what `gatewayd check` reports about templates and
event rules."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import Any

import pytest
import structlog

from gatewayd.cli import collect_problems
from gatewayd.config import Config
from gatewayd.outbound import templates as templates_module
from gatewayd.outbound.checks import rule_problems, template_problems
from gatewayd.outbound.mails import Envelope, build_message
from gatewayd.outbound.templates import TemplateProblem, TemplateSet, choose_language
from gatewayd.outbound.variables import sample_facts, template_variables
from tests.conftest import skeleton_data

sqlite_only = pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
SKELETON = Path(str(resources.files("gatewayd") / "skeleton" / "templates"))


def write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


BASIC = {
    "_header/de.txt": "Guten Tag,",
    "_header/en.txt": "Hello,",
    "_footer/de.txt": "{{ Signature }}\n-- Ticket-ID {{ TicketID }}",
    "_footer/en.txt": "{{ Signature }}\n-- Ticket-ID {{ TicketID }}",
    "hello/de.subject": "Hallo {{ TicketTitle }}",
    "hello/de.txt": "Deutsch: {{ TicketLastMessage }}",
    "hello/en.subject": "Hello {{ TicketTitle }}",
    "hello/en.txt": "English: {{ TicketLastMessage }}",
}


def variables(config: Config, **ticket: Any) -> dict[str, Any]:
    facts = sample_facts(config, "de")
    facts.ticket.update(ticket)
    return template_variables(config, facts, for_customer=True)


@pytest.fixture
def tconfig(make_config: Callable[..., Config], tmp_path: Path) -> Callable[..., Config]:
    def build(files: dict[str, str] | None = None, **overrides: Any) -> Config:
        root = write(tmp_path / "templates", files if files is not None else BASIC)
        return make_config(templates_dir=str(root), **overrides)
    return build


def test_choose_language_order() -> None:
    assert choose_language(["de", "en"], ["fr"], ["de", "en"]) == "de"
    assert choose_language(["en"], ["fr"], ["de", "en"]) == "en"
    assert choose_language(["de", "en", "fr"], ["fr"], ["de"]) == "fr"
    assert choose_language(["it"], ["fr"], ["de", "en"]) is None


@sqlite_only
def test_wanted_language_header_and_footer(tconfig: Callable[..., Config]) -> None:
    config = tconfig(outbound={"signature": "Ihr Shop"})
    mail = TemplateSet(config.templates_dir).render("hello", ["en"], ["de"],
                                                    variables(config, title="Parcel"))
    assert mail.language == "en" and mail.subject == "Hello Parcel"
    assert mail.text.startswith("Hello,\n\nEnglish: Sample message text.")
    # The ticket's owner (anna) signs event-action mails; manual sends use the system signature.
    assert mail.text.rstrip().endswith("Anna Berg, Kundenservice\n-- Ticket-ID 4711")
    assert mail.html is None
    manual = template_variables(config, sample_facts(config, "de"), for_customer=True,
                                manual=True)
    assert manual["Signature"] == "Ihr Shop"


@sqlite_only
def test_missing_translation_falls_back_and_logs(tconfig: Callable[..., Config]) -> None:
    config = tconfig()
    with structlog.testing.capture_logs() as logs:
        mail = TemplateSet(config.templates_dir).render("hello", ["fr", "en"], ["de", "en"],
                                                        variables(config))
    # fr is missing: the ticket's next language (en) comes before the configured chain.
    assert mail.language == "en" and mail.wanted_language == "fr"
    assert any(e["event"] == "template language fallback" and e["wanted"] == "fr"
               and e["used"] == "en" for e in logs)
    mail = TemplateSet(config.templates_dir).render("hello", ["fr"], ["de", "en"],
                                                    variables(config))
    assert mail.language == "de" and mail.text.startswith("Guten Tag,")


@sqlite_only
def test_edited_and_added_files_apply_after_the_recheck_interval(
        tconfig: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    config = tconfig()
    clock = [1000.0]
    monkeypatch.setattr(templates_module, "_clock", lambda: clock[0])
    templates = TemplateSet(config.templates_dir, recheck_seconds=2.0)
    assert "Deutsch:" in templates.render("hello", ["de"], [], variables(config)).text
    root = config.templates_dir
    write(root, {"hello/de.txt": "Neu: {{ TicketLastMessage }}",
                 "hello/fr.subject": "Bonjour", "hello/fr.txt": "Français"})
    old = (root / "hello" / "de.txt").stat().st_mtime - 10  # a time the cache cannot hold
    os.utime(root / "hello" / "de.txt", (old, old))
    clock[0] += 1.5  # within the interval: what was looked at is not looked at again
    assert "Deutsch:" in templates.render("hello", ["de"], [], variables(config)).text
    assert templates.render("hello", ["fr"], ["de"], variables(config)).language == "de"
    clock[0] += 1.0  # past it: the edit and the new language apply, no reload
    assert "Neu: Sample message text." in templates.render("hello", ["de"], [],
                                                           variables(config)).text
    assert templates.render("hello", ["fr"], ["de"], variables(config)).language == "fr"
    (root / "hello" / "de.txt").unlink()
    clock[0] += 2.5  # a file removed: its language is gone from the folder
    assert templates.render("hello", ["de"], ["fr"], variables(config)).language == "fr"


@sqlite_only
async def test_a_reload_reads_the_templates_again_at_once(
        tconfig: Callable[..., Config], monkeypatch: pytest.MonkeyPatch) -> None:
    from gatewayd import daemon
    from gatewayd.ops import lifecycle
    from gatewayd.outbound.actions import forget_templates, templates_for

    config = tconfig()
    monkeypatch.setattr(templates_module, "_clock", lambda: 1000.0)  # files' clock stands still
    root = config.templates_dir
    async with daemon.start(config):
        assert "Deutsch:" in templates_for(config).render("hello", ["de"], [],
                                                           variables(config)).text
        write(root, {"hello/de.txt": "Neu: {{ TicketLastMessage }}"})
        old = (root / "hello" / "de.txt").stat().st_mtime - 10
        os.utime(root / "hello" / "de.txt", (old, old))
        assert "Deutsch:" in templates_for(config).render("hello", ["de"], [],
                                                           variables(config)).text
        for listener in list(lifecycle._reload_listeners):  # what SIGHUP runs after a reload
            await listener(config, config)
        assert "Neu:" in templates_for(config).render("hello", ["de"], [],
                                                       variables(config)).text
    assert forget_templates not in lifecycle._reload_listeners  # the daemon took it back


@sqlite_only
def test_html_alternative_is_escaped_and_wrapped(tconfig: Callable[..., Config]) -> None:
    files = dict(BASIC)
    files["hello/de.html"] = "<p>{{ TicketTitle }}</p><p>{{ TicketLastMessage|nl2br }}</p>"
    config = tconfig(files)
    mail = TemplateSet(config.templates_dir).render(
        "hello", ["de"], [], variables(config, title="<script>alert(1)</script>"))
    assert mail.html is not None
    assert "&lt;script&gt;" in mail.html and "<script>" not in mail.html
    assert "<p>Guten Tag,</p>" in mail.html  # the text header, as HTML
    assert "<script>" in mail.subject  # the subject is text: no HTML escaping there
    message = build_message(Envelope("support@shop.example", "Shop", ["k@example.org"],
                                     mail.subject, "<1@x.example>", ticket_id=5), mail.text,
                            mail.html)
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]


@sqlite_only
def test_skeleton_templates_render_in_both_languages(make_config: Callable[..., Config]) -> None:
    config = make_config()
    templates = TemplateSet(SKELETON)
    for name in ("ticket_received", "staff_reply", "owner_notice"):
        for language in ("de", "en"):
            mail = templates.render(name, [language], [], variables(config))
            assert mail.language == language and mail.subject and "4711" in mail.text
    assert templates.render("ticket_received", ["de"], [], variables(config)).html


ESCAPES = [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ ticket.__class__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ ticket.update({'title': 'x'}) }}",
    "{% set x = ticket.tags.append('x') %}",
    "{{ range.__globals__ }}",
    "{{ 'x' * 100000000 }}",
    "{{ 2 ** 10000000 }}",
    # Each exponent is small, the number is not (a chain of five took minutes: no deadline
    # check runs inside one operation).
    "{{ (9 ** 64) ** 64 }}",
    "{% set x = 2 ** 64 %}{{ x" + " * x" * 70 + " }}",
]


@sqlite_only
def test_ordinary_arithmetic_renders(tconfig: Callable[..., Config]) -> None:
    files = dict(BASIC)
    files["hello/de.txt"] = "{{ 2 ** 10 * 3 }} {{ 9 ** 64 > 5 }} {{ 12 * 0.25 }} {{ 2 ** -1 }}"
    config = tconfig(files)
    rendered = TemplateSet(config.templates_dir).render("hello", ["de"], [], variables(config))
    assert "3072 True 3.0 0.5" in rendered.text


@sqlite_only
@pytest.mark.parametrize("source", ESCAPES)
def test_sandbox_escapes_are_refused(tconfig: Callable[..., Config], source: str) -> None:
    files = dict(BASIC)
    files["hello/de.txt"] = source
    config = tconfig(files)
    with pytest.raises(TemplateProblem) as caught:
        TemplateSet(config.templates_dir).render("hello", ["de"], [], variables(config))
    assert caught.value.kind in ("sandbox", "undefined", "error")


@sqlite_only
def test_endless_loops_hit_the_time_limit(tconfig: Callable[..., Config]) -> None:
    files = dict(BASIC)
    files["hello/de.txt"] = ("{% for a in range(100000) %}{% for b in range(100000) %}"
                             "{% endfor %}{% endfor %}")
    config = tconfig(files)
    templates = TemplateSet(config.templates_dir, timeout=0.2)
    with pytest.raises(TemplateProblem) as caught:
        templates.render("hello", ["de"], [], variables(config))
    assert caught.value.kind == "limit"


@sqlite_only
def test_output_size_is_bounded(tconfig: Callable[..., Config]) -> None:
    files = dict(BASIC)
    files["hello/de.txt"] = "{% for a in range(100000) %}{{ TicketLastMessage }}{% endfor %}"
    config = tconfig(files)
    with pytest.raises(TemplateProblem) as caught:
        TemplateSet(config.templates_dir, max_bytes=10_000).render(
            "hello", ["de"], [], variables(config))
    assert caught.value.kind == "limit"


@sqlite_only
def test_undefined_variable_is_an_error(tconfig: Callable[..., Config]) -> None:
    files = dict(BASIC)
    files["hello/de.txt"] = "{{ TicketNonsense }}"
    config = tconfig(files)
    with pytest.raises(TemplateProblem) as caught:
        TemplateSet(config.templates_dir).render("hello", ["de"], [], variables(config))
    assert caught.value.kind == "undefined" and "TicketNonsense" in str(caught.value)


@sqlite_only
def test_customers_never_see_comments(make_config: Callable[..., Config]) -> None:
    config = make_config()
    facts = sample_facts(config, "de")
    to_customer = template_variables(config, facts, for_customer=True)
    to_staff = template_variables(config, facts, for_customer=False)
    assert to_customer["TicketLastComment"] == "" and to_customer["ToCustomer"] is True
    assert to_staff["TicketLastComment"] == "Sample comment."


# ---------------------------------------------------------------------- gatewayd check


def keys(problems: list[Any]) -> dict[str, Any]:
    return {p.key: p for p in problems}


@sqlite_only
def test_check_is_clean_for_the_skeleton(make_config: Callable[..., Config]) -> None:
    config = make_config()
    assert [p for p in collect_problems(config) if p.severity == "error"] == []
    assert template_problems(config) == []


@sqlite_only
def test_check_reports_every_template_problem(tconfig: Callable[..., Config]) -> None:
    files = dict(BASIC)
    del files["hello/en.subject"], files["hello/en.txt"]   # missing translation
    files["_footer/en.txt"] = "  \n"                        # empty footer
    del files["_header/en.txt"]                             # missing header
    files["undef/de.subject"] = "x"
    files["undef/de.txt"] = "{{ Nope }}"                    # undefined variable
    files["escape/de.subject"] = "x"
    files["escape/de.txt"] = "{{ ticket.__class__.__mro__ }}"   # sandbox violation
    files["broken/de.subject"] = "{% if %}"                 # syntax error
    files["broken/de.txt"] = "x"
    config = tconfig(files, language_fallback=["de", "en"], events=[
        {"name": "r", "on": "ticket_created",
         "actions": [{"send_template": "absent", "to": "customer"}]},
        {"name": "s", "on": "staff_message",
         "actions": [{"send_template": "hello", "to": "customer"}]},
    ])
    found = keys(template_problems(config))
    missing = found["templates_dir/hello/en.txt"]
    assert missing.severity == "warning" and "fall back to 'de'" in missing.message
    assert "empty" in found["templates_dir/_footer/en.txt"].message
    assert "_header" in found["templates_dir/_header/en.txt"].message or \
        "header" in found["templates_dir/_header/en.txt"].message
    assert "Nope" in found["templates_dir/undef/de.txt"].message
    assert found["templates_dir/escape/de.txt"].fix.startswith("templates may not touch")
    assert "line 1" in found["templates_dir/broken/de.subject"].message
    absent = found["events[0](r).actions[0].send_template"]
    assert absent.severity == "error" and "absent" in absent.message
    assert {p.severity for p in found.values()} == {"error", "warning"}


@sqlite_only
def test_check_reports_contradictory_filters(make_config: Callable[..., Config]) -> None:
    config = make_config(events=[
        {"name": "never", "on": "status_changed",
         "filter": {"types": ["Beschwerde"], "statuses": ["Neu"]},
         "actions": [{"send_template": "owner_notice", "to": "owners"}]},
        {"name": "closed-open", "on": "customer_message",
         "filter": {"statuses": ["Erledigt"], "status_groups": ["Offen"]},
         "actions": [{"send_template": "owner_notice", "to": "owners"}]},
        {"name": "fine", "on": "customer_message",
         "filter": {"types": ["Kundenanfrage"], "status_groups": ["Geschlossen"]},
         "actions": [{"set_status": "Gelöst"}]},
    ])
    found = keys(rule_problems(config))
    assert found["events[0](never).filter"].severity == "error"
    assert "never match" in found["events[1](closed-open).filter"].message
    assert "events[2](fine).filter" not in found
    assert found["events[2](fine).actions[0].set_status"].severity == "warning"
    warning = found["events"]
    assert warning.severity == "warning" and "staff messages" in warning.message


@sqlite_only
def test_check_warns_about_mails_that_are_always_suppressed(
    make_config: Callable[..., Config]
) -> None:
    config = make_config(events=[
        {"name": "c", "on": "comment_added",
         "actions": [{"send_template": "staff_reply", "to": "customer"}]},
        {"name": "s", "on": "staff_message",
         "actions": [{"send_template": "staff_reply", "to": "customer"}]},
    ])
    found = keys(rule_problems(config))
    assert "never reach customers" in found["events[0](c).actions[0].to"].message
    assert "events" not in found  # staff messages are mailed


@sqlite_only
def test_check_command_prints_file_key_and_fix(tconfig: Callable[..., Config],
                                               tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    import tomllib

    from gatewayd.cli import main

    target = tmp_path / "site"
    shutil.copytree(SKELETON, target / "templates")
    (target / "templates" / "staff_reply" / "en.txt").write_text("{{ Oops }}", encoding="utf-8")
    data = skeleton_data()
    data["templates_dir"] = "templates"
    data["database_url"] = f"sqlite://{tmp_path / 'db.sqlite3'}"
    data["http"] = {"listen": "127.0.0.1:0", "api_tokens": ["x" * 20]}
    (target / "gatewayd.toml").write_text(_toml(data), encoding="utf-8")
    assert tomllib.loads((target / "gatewayd.toml").read_text("utf-8"))
    assert main(["--config", str(target / "gatewayd.toml"), "check"]) == 1
    err = capsys.readouterr().err
    assert "gatewayd.toml:templates_dir/staff_reply/en.txt: undefined variable" in err
    assert "Oops" in err and " — " in err


def _toml(data: dict[str, Any]) -> str:
    """A tiny TOML writer for the skeleton's shapes (tables, arrays of tables, inline values)."""
    from gatewayd.config.reference import toml_value as value

    lines: list[str] = []
    for key, v in data.items():
        if not isinstance(v, dict | list) or (isinstance(v, list) and not all(
                isinstance(x, dict) for x in v)) or (isinstance(v, list) and not v):
            lines.append(f"{key} = {value(v)}")
    for key, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{key}]")
            lines += [f"{k} = {value(x)}" for k, x in v.items()]
        elif isinstance(v, list) and v and all(isinstance(x, dict) for x in v):
            for item in v:
                lines.append(f"[[{key}]]")
                lines += [f"{k} = {value(x)}" for k, x in item.items()]
    return "\n".join(lines) + "\n"
