"""What `gatewayd check` reports about outbound mail, before anything is sent.

Every template in every configured language is rendered with sample data (sandboxed, strict):
missing translations, missing or empty headers and footers, undefined variables, sandbox
violations and syntax errors are reported with the file and the fix. Event rules whose filters
can never match, and a configuration in which no action mails staff messages, are reported too.
"""

from __future__ import annotations

from pathlib import Path

from gatewayd.config import Config, EventRule, Problem
from gatewayd.outbound.actions import templates_for
from gatewayd.outbound.plenty import NAMES, suspicious
from gatewayd.outbound.recipients import CUSTOMER_SOURCES
from gatewayd.outbound.templates import LAYOUT, TemplateProblem, TemplateSet, choose_language
from gatewayd.outbound.variables import sample_facts, template_variables

_FIXES = {
    "undefined": "use only the documented variables (docs/outbound.md: Templates), or guard "
                 "it with {% if x is defined %}",
    "sandbox": "templates may not touch internals (attributes starting with _, methods that "
               "change data); use the plain variables",
    "syntax": "fix the Jinja2 syntax at that line",
    "limit": "make the template smaller (loops, repeated text)",
    "missing": "create the file",
    "error": "correct the expression",
}


def _key(config: Config, file: Path | None) -> str:
    if file is None:
        return "templates_dir"
    try:
        return f"templates_dir/{file.relative_to(config.templates_dir)}"
    except ValueError:
        return str(file)


def _render_problem(config: Config, exc: TemplateProblem) -> Problem:
    return Problem(_key(config, exc.file), str(exc.args[0]), _FIXES.get(exc.kind, "fix it"))


def plenty_problems(config: Config, file: Path) -> list[Problem]:
    """`$Words` that look like the manual's variables but are none: mailed as written."""
    try:
        source = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return []  # rendering reports it
    problems = []
    for found in suspicious(source):
        fix = (f"write {{{{ {found.name} }}}} (or ${found.name})" if found.name
               else f"use one of the manual's variables: {', '.join(NAMES)}")
        problems.append(Problem(_key(config, file), f"line {found.line}: {found.found} is not "
                                "a template variable and would be mailed as it is", fix))
    return problems


def referenced_templates(config: Config) -> dict[str, str]:
    """template name → the config key of its first use."""
    found: dict[str, str] = {}
    for ei, event in enumerate(config.events):
        for ai, action in enumerate(event.actions):
            if action.send_template:
                found.setdefault(action.send_template,
                                 f"events[{ei}]({event.name}).actions[{ai}].send_template")
    return found


def template_problems(config: Config, templates: TemplateSet | None = None) -> list[Problem]:
    templates = templates or templates_for(config)
    problems: list[Problem] = []
    add = problems.append
    if not config.templates_dir.is_dir():
        add(Problem("templates_dir", f"{config.templates_dir} is not a directory",
                    "create it, e.g. with `gatewayd init DIR`, or correct templates_dir"))
        return problems
    languages = config.languages
    referenced = referenced_templates(config)
    names = sorted(set(templates.names()) | set(referenced))

    for name in names:
        available = templates.languages(name)
        if not available:
            key = referenced.get(name, f"templates_dir/{name}")
            add(Problem(key, f"template {name!r} has no <lang>.subject with <lang>.txt in "
                        f"{config.templates_dir / name}",
                        f"create {name}/{config.default_language}.subject and "
                        f"{name}/{config.default_language}.txt"))
            continue
        for language in languages:
            if language in available:
                continue
            used = choose_language(available, [language], config.language_fallback)
            add(Problem(
                f"templates_dir/{name}/{language}.txt",
                f"no {language!r} translation of {name!r}"
                + (f" (mails fall back to {used!r})" if used else ""),
                f"write {name}/{language}.subject and {name}/{language}.txt",
                severity="warning" if used else "error",
            ))
        for language in available:
            variables = template_variables(config, sample_facts(config, language),
                                           for_customer=False)
            for part, html in (("subject", False), ("txt", False), ("html", True)):
                file = config.templates_dir / name / f"{language}.{part}"
                if part == "html" and not file.exists():
                    continue
                problems += plenty_problems(config, file)
                try:
                    text = templates.render_file(file, variables, html=html)
                except TemplateProblem as exc:
                    add(_render_problem(config, exc))
                    continue
                if part in ("subject", "txt") and not text.strip():
                    add(Problem(_key(config, file), "renders to nothing",
                                "write the subject / text of the mail"))

    for part in LAYOUT:
        for language in languages:
            for suffix, html in (("txt", False), ("html", True)):
                file = config.templates_dir / part / f"{language}.{suffix}"
                if not file.exists():
                    if suffix == "txt":
                        add(Problem(_key(config, file), f"no {part.strip('_')} for {language!r}",
                                    f"create {part}/{language}.txt (it wraps every mail)"))
                    continue
                try:
                    source = file.read_text(encoding="utf-8")
                except (OSError, UnicodeDecodeError) as exc:
                    add(Problem(_key(config, file), f"cannot read it ({exc})",
                                "make it a readable UTF-8 file"))
                    continue
                if not source.strip():
                    add(Problem(_key(config, file), f"the {part.strip('_')} is empty",
                                "write the greeting / signature lines for this language"))
                    continue
                variables = template_variables(config, sample_facts(config, language),
                                               for_customer=False)
                problems += plenty_problems(config, file)
                try:
                    templates.render_file(file, variables, html=html)
                except TemplateProblem as exc:
                    add(_render_problem(config, exc))
    return problems


def possible_statuses(config: Config, types: list[str], statuses: list[str],
                      groups: list[str]) -> list[tuple[str, str]]:
    """The (type, status) pairs a filter can match. Pure."""
    return [
        (t.name, s.name) for t in config.ticket_types for s in t.statuses
        if (not types or t.name in types) and (not statuses or s.name in statuses)
        and (not groups or s.group in groups)
    ]


def new_ticket_sources(config: Config, event: EventRule) -> set[str] | None:
    """The types a `ticket_created` rule limited to mail and form tickets can see: those the
    accounts (its `accounts` filter) and forms create. None: any type (API tickets, later
    events: staff may have changed the type). Pure."""
    flt = event.filter
    if event.on != "ticket_created" or not flt.sources or "api" in flt.sources:
        return None
    created: set[str] = set()
    if "mail" in flt.sources:
        created |= {a.new_ticket.type for a in config.accounts
                    if not flt.accounts or a.name in flt.accounts}
    if "form" in flt.sources:
        created |= {f.ticket.type for f in config.forms}
    return created


def firing_types(config: Config, types: list[str], statuses: list[str], groups: list[str],
                 only: set[str] | None) -> list[str]:
    """The ticket types a filter can match (no filter: every type), in configuration order,
    limited to `only` when given. Pure."""
    matched = {t for t, _s in possible_statuses(config, types, statuses, groups)}
    return [t.name for t in config.ticket_types
            if t.name in matched and (only is None or t.name in only)]


def status_problems(config: Config, key: str, what: str, types: list[str],
                    status: str) -> list[Problem]:
    """A status set for tickets whose type lacks it is skipped (the store keeps each type's
    statuses): one warning per such type, naming the rule, the type and the status. Pure."""
    lacking = [t for t in types if config.status(t, status) is None]
    if not types or not lacking:
        return []
    if len(lacking) == len(types):
        return [Problem(key, f"{what} sets status {status!r}, which no ticket type it can "
                        f"fire for has ({', '.join(map(repr, lacking))}): the action is "
                        "always skipped", "use a status of the filtered types",
                        severity="warning")]
    having = [t for t in types if t not in lacking]
    problems = []
    for name in lacking:
        ticket_type = config.ticket_type(name)
        own = [s.name for s in ticket_type.statuses] if ticket_type else []
        problems.append(Problem(
            key, f"{what} sets status {status!r}, which type {name!r} does not have: for "
            f"{name} tickets the action is skipped",
            f"limit the rule to filter.types = {having} and add a rule for {name!r} that "
            f"sets one of its statuses {own}", severity="warning"))
    return problems


def rule_problems(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    add = problems.append
    for ei, event in enumerate(config.events):
        key = f"events[{ei}]({event.name})"
        flt = event.filter
        if (flt.types or flt.statuses or flt.status_groups) and not possible_statuses(
            config, flt.types, flt.statuses, flt.status_groups
        ):
            add(Problem(f"{key}.filter", "the filter can never match: no ticket type has a "
                        f"status that satisfies types={flt.types}, statuses={flt.statuses}, "
                        f"status_groups={flt.status_groups} at the same time",
                        "remove the contradicting entry (each status belongs to one type and "
                        "one group)"))
        types = firing_types(config, flt.types, flt.statuses, flt.status_groups,
                             new_ticket_sources(config, event))
        for ai, action in enumerate(event.actions):
            akey = f"{key}.actions[{ai}]"
            if action.set_status:
                problems += status_problems(config, f"{akey}.set_status", f"rule {event.name!r}",
                                            types, action.set_status)
            if action.send_template and action.to in CUSTOMER_SOURCES:
                if event.on == "comment_added":
                    add(Problem(f"{akey}.to", "comments never reach customers: this mail is "
                                "always suppressed", 'send comment notices to "owners" or an '
                                "address", severity="warning"))
                elif flt.confidential is True:
                    add(Problem(f"{akey}.to", "confidential tickets never mail their customer: "
                                "this mail is always suppressed",
                                'send to "owners" or an address instead', severity="warning"))
    for si, job in enumerate(config.scheduled):
        if job.action == "set_status" and job.status:
            types = firing_types(config, job.filter.types, job.filter.statuses,
                                 job.filter.status_groups, None)
            problems += status_problems(config, f"scheduled[{si}]({job.name}).status",
                                        f"scheduled action {job.name!r}", types, job.status)
    staff_mailed = any(
        e.active and e.on == "staff_message" and flt_allows_mail(e.filter.confidential)
        and any(a.send_template and a.to in CUSTOMER_SOURCES for a in e.actions)
        for e in config.events
    )
    if not staff_mailed:
        add(Problem("events", "no active event action sends staff messages to the customer: "
                    "answers written through the API stay in the ticket",
                    'add [[events]] on = "staff_message" with actions = '
                    '[{ send_template = "staff_reply", to = "customer" }]', severity="warning"))
    return problems


def flt_allows_mail(confidential: bool | None) -> bool:
    return confidential is not True


def outbound_problems(config: Config) -> list[Problem]:
    """Everything `gatewayd check` says about event rules and templates."""
    return rule_problems(config) + template_problems(config)
