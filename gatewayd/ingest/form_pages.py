"""The HTML a shop form serves itself: the form page (or only its `<form>` for embedding), the
thank-you page and plain message pages."""

from __future__ import annotations

import html
from collections.abc import Iterable

from gatewayd.config import Form
from gatewayd.ingest.forms import max_length

_INPUT_TYPES = {"email": "email", "phone": "tel", "order_id": "text"}


def render_form_html(form: Form, action: str, errors: Iterable[tuple[str, str]] = (),
                     *, snippet: bool = False) -> str:
    """A minimal, accessible form from the definition: labels tied to inputs, required marked
    in words and with `required`, errors linked by aria-describedby, the honeypot hidden."""
    esc = html.escape
    errors_by_field: dict[str, str] = {}
    for name, message in errors:
        errors_by_field.setdefault(name, message)
    multipart = any(f.type == "attachment" for f in form.fields)
    enctype = ' enctype="multipart/form-data"' if multipart else ""
    out = [f'<form class="gatewayd-form" method="post" action="{esc(action)}"{enctype} '
           f'accept-charset="UTF-8">']
    if errors_by_field:
        out.append('<p role="alert" class="gatewayd-errors">Please check the marked fields.</p>')
    for spec in form.fields:
        fid = f"gwf-{esc(spec.name)}"
        label = esc(spec.label or spec.name)
        marker = ' <span class="required">(required)</span>' if spec.required else ""
        req = " required" if spec.required else ""
        error = errors_by_field.get(spec.name)
        described = f' aria-invalid="true" aria-describedby="{fid}-error"' if error else ""
        out.append('<p>')
        out.append(f'<label for="{fid}">{label}{marker}</label><br>')
        if spec.type in ("message", "textarea"):
            out.append(f'<textarea id="{fid}" name="{esc(spec.name)}" rows="8" cols="50" '
                       f'maxlength="{max_length(spec)}"{req}{described}></textarea>')
        elif spec.type == "attachment":
            out.append(f'<input id="{fid}" name="{esc(spec.name)}" type="file"{req}{described}>')
        else:
            kind = _INPUT_TYPES.get(spec.type, "text")
            extra = ' autocomplete="email"' if spec.type == "email" else ""
            extra += ' inputmode="numeric"' if spec.type == "order_id" else ""
            out.append(f'<input id="{fid}" name="{esc(spec.name)}" type="{kind}" '
                       f'maxlength="{max_length(spec)}"{extra}{req}{described}>')
        if error:
            out.append(f'<br><span id="{fid}-error" class="error">{esc(error)}</span>')
        out.append('</p>')
    if form.honeypot:
        hp = esc(form.honeypot)
        # Hidden from people and screen readers; naive bots fill every input they find.
        out.append(f'<p class="gatewayd-hp" aria-hidden="true" style="position:absolute;'
                   f'left:-10000px;width:1px;height:1px;overflow:hidden">'
                   f'<label for="gwf-{hp}">Leave this empty</label>'
                   f'<input id="gwf-{hp}" name="{hp}" type="text" tabindex="-1" '
                   f'autocomplete="off"></p>')
    out.append('<p><button type="submit">Send</button></p>')
    out.append('</form>')
    body = "\n".join(out)
    if snippet:
        return body + "\n"
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{esc(form.name)}</title>\n</head>\n<body>\n<main>\n"
            f"<h1>{esc(form.name)}</h1>\n{body}\n</main>\n</body>\n</html>\n")


def render_thanks_html(form: Form) -> str:
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<title>Thank you</title>\n</head>\n<body>\n<main>\n<h1>Thank you</h1>\n"
            "<p id=\"gatewayd-thanks\">We have received your message and will answer by "
            "e-mail.</p>\n</main>\n</body>\n</html>\n")


def message_page_html(title: str, text: str) -> str:
    esc = html.escape
    return ("<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{esc(title)}</title>\n</head>\n<body>\n<main>\n<h1>{esc(title)}</h1>\n"
            f"<p>{esc(text)}</p>\n</main>\n</body>\n</html>\n")
