"""What shop forms say to people, in their language: the form page, the thank-you page, the
refusal pages, the texts beside the fields (customers) and the info mail (the merchant).

All of it is templates in the mail templates' scheme, `templates_dir/<name>/<lang>.<part>`:
`_form_page`, `_form_thanks`, `_form_error` (`.html`), `_form_messages` (`.txt`, one
`key = text` a line) and `_form_info` (`.subject`, `.txt`); `gatewayd init` writes de and en, and
merchants edit them. A folder the templates_dir lacks (an installation from before they existed)
is taken from the package; a text key a catalogue lacks falls back along the language chain,
then to the package's, so an edit can never break the form.

A form's language: its `language` key, else the post's `lang` field (or `?lang=` on a page),
else the browser's Accept-Language (quality values honoured), each only when it is one of the
configured languages; else `default_language`.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from jinja2.environment import Template

from gatewayd.config import Config, Form, in_language
from gatewayd.logs import get_logger
from gatewayd.outbound.actions import templates_for
from gatewayd.outbound.sandbox import TemplateProblem, compile_text
from gatewayd.outbound.templates import TemplateSet, choose_language

log = get_logger("gatewayd.forms")

FORM_PAGE, THANKS_PAGE, ERROR_PAGE = "_form_page", "_form_thanks", "_form_error"
MESSAGES, INFO_MAIL = "_form_messages", "_form_info"

# The texts a catalogue holds, with values for `check` to render each one with. English
# words for the case that no catalogue has a key (a broken or old templates_dir).
MESSAGE_KEYS: dict[str, tuple[str, Mapping[str, Any]]] = {
    "required": ("This field is required.", {}),
    "attach_required": ("Please attach a file.", {}),
    "too_long": ("Please write at most {{ max }} characters.", {"max": 200}),
    "invalid_email": ("This is not a valid e-mail address.", {}),
    "order_digits": ("An order number has only digits.", {}),
    "order_too_long": ("An order number has at most {{ max }} digits.", {"max": 64}),
    "file_type": ("Files of this type are not accepted. Allowed: {{ allowed }}.",
                  {"extension": "exe", "allowed": "jpg, pdf, png"}),
    "file_content_type": ("Files of type {{ content_type }} are not accepted.",
                          {"content_type": "application/x-msdownload"}),
    "file_too_large": ("{{ filename }} is larger than {{ max_kib }} KiB.",
                       {"filename": "scan.pdf", "max_kib": 10240}),
    "file_name_too_long": ("The file name is too long.", {}),
    "too_many_files": ("Please attach at most {{ max }} files.", {"max": 5}),
    "check_field": ("Please check this field.", {}),
    "refused_title": ("The form could not be sent", {}),
    "no_form": ("There is no such form.", {}),
    "too_large": ("The form is too large.", {}),
    "signature": ("The form could not be verified. Please reload the page.", {}),
    "origin": ("The form was sent from a page it does not belong to.", {}),
    "rate": ("Too many messages arrived just now. Please try again later.", {}),
    "daily_cap": ("Many messages came from this e-mail address today already.", {}),
    "bad_request": ("The form data could not be read. Please send the form again.", {}),
}
# A refusal's text by HTTP status, unless the refusal names its own (`FormRejected.code`).
REFUSAL_CODES = {400: "bad_request", 401: "signature", 403: "origin", 404: "no_form",
                 413: "too_large", 415: "bad_request", 429: "rate"}
_LINE = re.compile(r"^\s*([a-z][a-z0-9_]*)\s*=\s?(.*)$")
_TAG = re.compile(r"^[a-z]{1,8}(-[a-z0-9]{1,8})*$")


# ------------------------------------------------------------------------------ language


def accept_language(header: str | None) -> list[str]:
    """The languages of an Accept-Language header, most wanted first (quality values honoured,
    `q=0` and `*` left out, ties in the header's order). Pure."""
    found: list[tuple[float, int, str]] = []
    for index, item in enumerate((header or "").split(",")[:32]):
        tag, _, params = item.strip().partition(";")
        tag = tag.strip().lower()
        quality = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if tag and tag != "*" and quality > 0 and _TAG.match(tag):
            found.append((-quality, index, tag))
    return [tag for _q, _i, tag in sorted(found)]


def pick_language(wanted: Iterable[str], languages: Sequence[str]) -> str | None:
    """The first wanted language that is one of `languages`: exactly, else by its primary
    subtag (de-AT → de). Pure."""
    for tag in wanted:
        tag = tag.strip().lower().replace("_", "-")
        if tag in languages:
            return tag
        primary = tag.split("-")[0]
        if primary in languages:
            return primary
    return None


def chosen_language(config: Config, form: Form | None, requested: str | None,
                    accept: str | None) -> str | None:
    """The language the form or the visitor asks for (see the module's doc), or None when
    nothing does (then `default_language` applies). Pure."""
    if form is not None and form.language:
        return form.language
    languages = config.languages
    return (pick_language([requested] if requested else [], languages)
            or pick_language(accept_language(accept), languages))


def form_language(config: Config, form: Form | None, requested: str | None,
                  accept: str | None) -> str:
    """The language a form speaks to this visitor. Pure."""
    return chosen_language(config, form, requested, accept) or config.default_language


def form_languages(config: Config) -> list[str]:
    """Every language a form can speak: the configured ones and the forms' own."""
    return list(dict.fromkeys([*config.languages, *(f.language for f in config.forms
                                                    if f.language)]))


def chain(config: Config, language: str) -> list[str]:
    """A language and the configured fallback chain after it."""
    return list(dict.fromkeys([language, *config.language_fallback, config.default_language]))


# ------------------------------------------------------------------------------ catalogues


def parse_catalogue(source: str, file: Path) -> dict[str, Template]:
    """`key = text` lines (`#` starts a comment line) → a template per key."""
    found: dict[str, Template] = {}
    for number, line in enumerate(source.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _LINE.match(line)
        if match is None:
            raise TemplateProblem("syntax", f"line {number}: not `key = text`", file)
        try:
            found[match.group(1)] = compile_text(match.group(2).strip(), file)
        except TemplateProblem as exc:
            raise TemplateProblem("syntax", f"line {number} ({match.group(1)}): "
                                  f"{exc.args[0]}", file) from None
    return found


@functools.lru_cache(maxsize=1)
def builtin_templates() -> TemplateSet:
    """The package's own templates (those `gatewayd init` writes)."""
    return TemplateSet(Path(str(resources.files("gatewayd") / "skeleton" / "templates")))


@dataclass(frozen=True)
class FormTexts:
    """The form templates of one configuration: the templates_dir's, else the package's."""

    config: Config
    templates: TemplateSet

    def _source(self, folder: str, part: str, language: str) -> tuple[TemplateSet, str]:
        """Which set and language a `folder/<lang>.<part>` comes from for `language`."""
        for templates in (self.templates, builtin_templates()):
            available = sorted(templates.part_languages(folder, part))
            if available:
                chosen = choose_language(available, [language], chain(self.config, language))
                return templates, chosen or available[0]
        raise TemplateProblem("missing", f"no {folder}/<lang>.{part}", None)

    def page_language(self, folder: str, language: str) -> str:
        """The language a page will be in for a visitor wanting `language`."""
        return self._source(folder, "html", language)[1]

    def page(self, folder: str, language: str, variables: Mapping[str, Any]) -> str:
        """`folder/<lang>.html`, falling back to the package's page when the templates_dir's
        cannot be rendered (a broken edit must not take the shop's form down)."""
        templates, chosen = self._source(folder, "html", language)
        try:
            return templates.render_file(templates.file(folder, f"{chosen}.html"),
                                         {**variables, "lang": chosen}, html=True)
        except TemplateProblem as exc:
            builtin = builtin_templates()
            if templates is builtin:
                raise
            log.warning("form page template failed; the built-in one is used",
                        page=folder, language=chosen, error=str(exc))
            available = sorted(builtin.part_languages(folder, "html"))
            chosen = choose_language(available, [chosen], chain(self.config, chosen)) or "en"
            return builtin.render_file(builtin.file(folder, f"{chosen}.html"),
                                       {**variables, "lang": chosen}, html=True)

    def message(self, language: str, key: str, params: Mapping[str, Any] | None = None) -> str:
        """One text of `_form_messages` in `language` (see the module's doc for fallbacks)."""
        params = params or {}
        for templates in (self.templates, builtin_templates()):
            available = sorted(templates.part_languages(MESSAGES, "txt"))
            for lang in [x for x in chain(self.config, language) if x in available]:
                file = templates.file(MESSAGES, f"{lang}.txt")
                try:
                    found = templates.load(file, functools.partial(parse_catalogue, file=file))
                    if key in found:
                        return templates.run(found[key], params, file).strip()
                except TemplateProblem as exc:
                    log.warning("form text failed", key=key, language=lang, error=str(exc))
        default, _sample = MESSAGE_KEYS.get(key, MESSAGE_KEYS["check_field"])
        return compile_text(default, Path("built-in")).render(params)

    def info_mail(self, language: str, variables: Mapping[str, Any]) -> tuple[str, str]:
        """The merchant's info mail: (subject, text) from `_form_info`. Raises
        TemplateProblem when it cannot be rendered (the outbox row then fails with it)."""
        templates, chosen = self._source(INFO_MAIL, "txt", language)
        subject = templates.render_file(templates.file(INFO_MAIL, f"{chosen}.subject"),
                                        variables)
        text = templates.render_file(templates.file(INFO_MAIL, f"{chosen}.txt"), variables)
        return " ".join(subject.split()), text.strip("\n") + "\n"


# ------------------------------------------------------------------------------ variables


def info_variables(config: Config, form: Form, ticket_id: int, submission: Any, *,
                   order_problem: str | None, language: str, form_language: str
                   ) -> dict[str, Any]:
    """What `_form_info` sees about one submission (`submission`: an ingest.forms
    Submission). Pure."""
    url = (config.backend_ticket_url or "").replace("{id}", str(ticket_id))
    return {
        "TicketID": ticket_id,
        "TicketTitle": submission.title,
        "TicketBackendURL": url,
        "form": {"name": form.name,
                 "title": in_language(form.title, chain(config, language)) or form.name},
        "fields": [{"name": name, "label": label, "value": value,
                    "long": "\n" in value or len(value) > 100}
                   for name, label, value in submission.fields],
        "attachments": [{"filename": f.filename, "size": len(f.content),
                         "content_type": f.content_type} for f in submission.files],
        "customer": {"email": submission.email, "name": submission.name or ""},
        "order": submission.order_id,
        "order_problem": order_problem,
        "language": form_language,
    }


def texts_for(config: Config) -> FormTexts:
    """The form texts of a configuration, on its shared compiled-template cache."""
    return FormTexts(config, templates_for(config))
