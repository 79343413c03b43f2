"""The HTML a shop form serves itself: the form page (or only its `<form>` for embedding), the
thank-you page and the refusal pages, rendered from the templates in `form_texts` in the
visitor's language. What the templates see is built here, plainly."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from markupsafe import Markup, escape

from gatewayd.config import Form, in_language
from gatewayd.ingest.form_texts import (
    ERROR_PAGE,
    FORM_PAGE,
    THANKS_PAGE,
    FormTexts,
    chain,
)
from gatewayd.ingest.forms import max_length

_INPUT_TYPES = {"email": "email", "phone": "tel", "order_id": "text"}
LANG_FIELD = "lang"  # the hidden field that carries the page's language into the post


def _attrs(values: Mapping[str, Any]) -> Markup:
    """HTML attributes, escaped; True means a bare attribute, None/False leaves it out."""
    parts = []
    for name, value in values.items():
        if value is True:
            parts.append(name)
        elif value not in (None, False):
            parts.append(f'{name}="{escape(str(value))}"')
    return Markup(" ".join(parts))


def field_views(form: Form, languages: list[str],
                errors: Mapping[str, str]) -> list[dict[str, Any]]:
    """Each field as the page template sees it: label in the page's language, the input's
    attributes (labels tied by id, `required`, the error tied by aria-describedby)."""
    views = []
    for spec in form.fields:
        fid = f"gwf-{spec.name}"
        error = errors.get(spec.name)
        if spec.type in ("message", "textarea"):
            kind, input_type = "textarea", None
        elif spec.type == "attachment":
            kind, input_type = "file", "file"
        else:
            kind, input_type = "input", _INPUT_TYPES.get(spec.type, "text")
        attrs: dict[str, Any] = {
            "id": fid, "name": spec.name, "type": input_type,
            "maxlength": None if kind == "file" else max_length(spec),
            "autocomplete": "email" if spec.type == "email" else None,
            "inputmode": "numeric" if spec.type == "order_id" else None,
            "required": spec.required,
            "aria-invalid": "true" if error else None,
            "aria-describedby": f"{fid}-error" if error else None,
        }
        views.append({
            "name": spec.name, "id": fid, "type": spec.type, "input": kind,
            "input_type": input_type, "label": in_language(spec.label, languages) or spec.name,
            "required": spec.required, "maxlength": attrs["maxlength"], "error": error,
            "error_id": f"{fid}-error", "attrs": _attrs(attrs),
        })
    return views


def form_page_variables(texts: FormTexts, form: Form, page_language: str, action: str,
                        errors: Iterable[tuple[str, str]] = (), *,
                        snippet: bool = False) -> dict[str, Any]:
    """What `_form_page` sees (besides `lang`). Pure but for the texts of empty errors."""
    languages = chain(texts.config, page_language)
    by_field: dict[str, str] = {}
    for name, message in errors:
        by_field.setdefault(name, message or texts.message(page_language, "check_field"))
    return {
        "form": {"name": form.name, "title": in_language(form.title, languages) or form.name},
        "action": action, "snippet": snippet,
        "multipart": any(f.type == "attachment" for f in form.fields),
        "has_errors": bool(by_field), "fields": field_views(form, languages, by_field),
        "honeypot": form.honeypot,
        "lang_input": not form.language and LANG_FIELD not in {f.name for f in form.fields},
    }


def render_form_html(texts: FormTexts, form: Form, language: str, action: str,
                     errors: Iterable[tuple[str, str]] = (), *, snippet: bool = False) -> str:
    """The form from its definition, in `language` (or the page's fallback)."""
    page_language = texts.page_language(FORM_PAGE, language)
    return texts.page(FORM_PAGE, page_language, form_page_variables(
        texts, form, page_language, action, errors, snippet=snippet))


def render_thanks_html(texts: FormTexts, form: Form, language: str) -> str:
    page_language = texts.page_language(THANKS_PAGE, language)
    title = in_language(form.title, chain(texts.config, page_language)) or form.name
    return texts.page(THANKS_PAGE, page_language,
                      {"form": {"name": form.name, "title": title}})


def message_page_html(texts: FormTexts, language: str, status: int, code: str,
                      params: Mapping[str, Any] | None = None) -> str:
    """A refusal: `refused_title` and the reason's text of `_form_messages`."""
    page_language = texts.page_language(ERROR_PAGE, language)
    return texts.page(ERROR_PAGE, page_language, {
        "status": status, "code": code,
        "title": texts.message(page_language, "refused_title"),
        "text": texts.message(page_language, code, params),
    })
