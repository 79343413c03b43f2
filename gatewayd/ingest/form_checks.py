"""What `gatewayd check` says about the forms' texts: every form template (pages, texts, the
merchant's info mail) in every language a form can speak is rendered with sample data like the
mail templates (missing translations, undefined variables, syntax, plentymarkets look-alikes),
every text key is there, and the labels and titles have their translations."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gatewayd.config import Config, Form, Problem
from gatewayd.ingest import form_pages as pages
from gatewayd.ingest.form_texts import (
    ERROR_PAGE,
    FORM_PAGE,
    INFO_MAIL,
    MESSAGE_KEYS,
    MESSAGES,
    THANKS_PAGE,
    FormTexts,
    builtin_templates,
    chain,
    form_languages,
    info_variables,
    parse_catalogue,
)
from gatewayd.ingest.forms import Submission, UploadedFile
from gatewayd.outbound.actions import templates_for
from gatewayd.outbound.checks import plenty_problems
from gatewayd.outbound.templates import TemplateProblem, TemplateSet, choose_language

_FIX = {"undefined": "use only the variables docs/templates.md lists for this template",
        "syntax": "fix the Jinja2 syntax at that line", "missing": "create the file",
        "sandbox": "use the plain variables", "limit": "make the template smaller"}
# Each template: its parts, and whether it is HTML.
_FILES = {FORM_PAGE: (("html",), True), THANKS_PAGE: (("html",), True),
          ERROR_PAGE: (("html",), True), INFO_MAIL: (("subject", "txt"), False),
          MESSAGES: (("txt",), False)}


def _key(config: Config, file: Path) -> str:
    try:
        return f"templates_dir/{file.relative_to(config.templates_dir)}"
    except ValueError:
        return f"templates_dir/{file.parent.name}/{file.name}"


def _sample_submission(form: Form, languages: list[str]) -> Submission:
    from gatewayd.config import in_language

    fields = tuple((f.name, in_language(f.label, languages) or f.name,
                    "Sample text\nwith two lines" if f.type in ("message", "textarea")
                    else "4711" if f.type == "order_id" else "erika@example.org"
                    if f.type == "email" else "Sample") for f in form.fields
                   if f.type != "attachment")
    return Submission(form=form.name, email="erika@example.org", name="Erika Mustermann",
                      subject="Sample subject", message="Sample text", order_id=4711,
                      fields=fields, files=(UploadedFile("file", "scan.pdf", "application/pdf",
                                                         b"%PDF"),))


def _samples(config: Config, texts: FormTexts, folder: str, language: str
             ) -> list[dict[str, Any]]:
    """The variable sets a template is rendered with (every branch that reads variables)."""
    forms = config.forms
    if folder == FORM_PAGE:
        out = []
        for form in forms:
            first = form.fields[0].name
            out.append(pages.form_page_variables(texts, form, language, "/forms/x",
                                                 [(first, "Sample error")]))
            out.append(pages.form_page_variables(texts, form, language, "/forms/x",
                                                 snippet=True))
        return out
    if folder == THANKS_PAGE:
        return [{"form": {"name": f.name, "title": f.name}} for f in forms]
    if folder == ERROR_PAGE:
        return [{"status": 429, "code": "rate", "title": "Sample title", "text": "Sample text"}]
    return [info_variables(config, form, 4711, _sample_submission(form, chain(config, language)),
                           order_problem=problem, language=language, form_language=language)
            for form in forms for problem in ("missing", "foreign", None)]


def _render_problems(config: Config, texts: FormTexts, templates: TemplateSet, folder: str,
                     language: str) -> list[Problem]:
    parts, html = _FILES[folder]
    problems: list[Problem] = []
    for part in parts:
        file = templates.file(folder, f"{language}.{part}")
        problems += plenty_problems(config, file)
        if folder == MESSAGES:
            problems += _catalogue_problems(config, templates, file)
            continue
        for variables in _samples(config, texts, folder, language):
            try:
                templates.render_file(file, {**variables, "lang": language}, html=html)
            except TemplateProblem as exc:
                problems.append(Problem(_key(config, file), str(exc.args[0]),
                                        _FIX.get(exc.kind, "fix it")))
                break
    return problems


def _catalogue_problems(config: Config, templates: TemplateSet, file: Path) -> list[Problem]:
    key = _key(config, file)
    try:
        found = templates.load(file, lambda source: parse_catalogue(source, file))
    except TemplateProblem as exc:
        return [Problem(key, str(exc.args[0]), "write one `key = text` a line")]
    problems = []
    missing = [k for k in MESSAGE_KEYS if k not in found]
    if missing:
        problems.append(Problem(key, f"no text for {', '.join(missing)} (visitors read the "
                                "next language's, else the built-in English)",
                                "add the lines, e.g. from `gatewayd init`", "warning"))
    unknown = [k for k in found if k not in MESSAGE_KEYS]
    if unknown:
        problems.append(Problem(key, f"unknown key(s) {', '.join(unknown)}: never shown",
                                f"use the keys {', '.join(MESSAGE_KEYS)}", "warning"))
    for name, template in found.items():
        if name not in MESSAGE_KEYS:
            continue
        try:
            templates.run(template, MESSAGE_KEYS[name][1], file)
        except TemplateProblem as exc:
            problems.append(Problem(key, f"{name}: {exc.args[0]}",
                                    f"the values for {name}: "
                                    f"{', '.join(MESSAGE_KEYS[name][1]) or 'none'}"))
    return problems


def _label_problems(config: Config) -> list[Problem]:
    problems: list[Problem] = []
    for fi, form in enumerate(config.forms):
        key = f"forms[{fi}]({form.name})"
        spoken = [form.language] if form.language else config.languages
        if form.language and form.language not in config.languages:
            problems.append(Problem(f"{key}.language", f"{form.language!r} is not one of the "
                                    f"configured languages {config.languages}",
                                    "add it to language_fallback, so mails to the form's "
                                    "customers have their templates checked", "warning"))
        texts: list[tuple[str, Any]] = [(f"{key}.title", form.title)]
        texts += [(f"{key}.fields[{i}]({f.name}).label", f.label)
                  for i, f in enumerate(form.fields)]
        for text_key, value in texts:
            if isinstance(value, dict):
                lacking = [lang for lang in spoken if lang not in value]
                if lacking:
                    problems.append(Problem(text_key, f"no {', '.join(map(repr, lacking))} "
                                            f"text (pages in it show "
                                            f"{next(iter(value.values()), '')!r})",
                                            f"add {lacking[0]} = \"...\"", "warning"))
        if not form.language and any(f.name == pages.LANG_FIELD for f in form.fields):
            problems.append(Problem(f"{key}.fields", f"a field is named {pages.LANG_FIELD!r}: "
                                    "the form's language is then not taken from the post",
                                    "rename the field", "warning"))
    return problems


def form_problems(config: Config, templates: TemplateSet | None = None) -> list[Problem]:
    """Everything `check` says about the forms' templates and texts (nothing without forms)."""
    if not config.forms:
        return []
    templates = templates or templates_for(config)
    texts = FormTexts(config, templates)
    problems = _label_problems(config)
    languages = form_languages(config)
    for folder, (parts, _html) in _FILES.items():
        own = templates.part_languages(folder, parts[-1])
        source = templates if own else builtin_templates()
        available = sorted(source.part_languages(folder, parts[-1]))
        if not own:
            problems.append(Problem(f"templates_dir/{folder}", f"{folder} is not in "
                                    f"{config.templates_dir}: the built-in one is used",
                                    f"copy {folder}/ from a `gatewayd init` directory to edit "
                                    "it", "warning"))
        for language in languages:
            if language in available:
                continue
            used = choose_language(available, [language], chain(config, language))
            problems.append(Problem(
                f"templates_dir/{folder}/{language}.{parts[-1]}",
                f"no {language!r} translation of {folder}"
                + (f" (visitors get {used!r})" if used else ""),
                f"write {folder}/{language}.{parts[-1]}", "warning"))
        if own:
            for language in available:
                problems += _render_problems(config, texts, templates, folder, language)
    return problems
