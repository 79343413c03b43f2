"""Mail templates: sandboxed Jinja2 per language, header and footer, bounded render time and size.

Layout: `templates_dir/<template>/<lang>.subject`, `<lang>.txt`, optional `<lang>.html`, and
`templates_dir/_header/<lang>.txt|.html`, `_footer/...` around every mail. The manual's
plentymarkets-style variables (`$TicketID`) are read as Jinja ones (`gatewayd.outbound.plenty`).
Templates are edited by merchants, so they run in Jinja2's `ImmutableSandboxedEnvironment` with
`StrictUndefined` (`gatewayd.outbound.sandbox`); they see plain data only (dicts, strings,
numbers), never ORM objects. A render that runs longer than `outbound.render_timeout_seconds` or
produces more than `outbound.max_render_bytes` fails.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from jinja2.environment import Template
from markupsafe import Markup, escape

from gatewayd.logs import get_logger
from gatewayd.outbound.plenty import translate
from gatewayd.outbound.sandbox import (
    HTML_ENV,
    TEXT_ENV,
    TemplateProblem,
    compile_source,
    run_template,
)

log = get_logger("gatewayd.outbound.templates")

PARTS = ("subject", "txt", "html")
LAYOUT = ("_header", "_footer")
SIGNOFF_NAMES = frozenset({"Greeting", "Signature"})
RECHECK_SECONDS = 2.0  # how soon an edited template file applies
_clock = time.monotonic  # when files were last looked at (tests stop it)
_T = TypeVar("_T")


@dataclass(frozen=True)
class RenderedMail:
    template: str
    language: str
    subject: str
    text: str
    html: str | None
    wanted_language: str  # the ticket's language; differs from `language` after a fallback


def choose_language(available: Collection[str], wanted: Sequence[str],
                    fallback: Sequence[str]) -> str | None:
    """The first wanted language that exists, else the first of the fallback chain. Pure."""
    for language in [*wanted, *fallback]:
        if language and language in available:
            return language
    return None


_Listing = tuple[frozenset[str], frozenset[str], frozenset[str]]  # .subject, .txt, .html


class TemplateSet:
    """The templates of one `templates_dir`, compiled on first use and cached by file time.

    A file's or folder's time is looked at again when `recheck_seconds` have passed since the
    last look: an edited template applies to the mails rendered after that, without a reload.
    (A mail renders up to seven files in three folders; looking at each every time cost a
    tenth of a millisecond per mail, inside the ticket's transaction.)
    """

    def __init__(self, directory: Path, *, timeout: float = 2.0, max_bytes: int = 1_000_000,
                 recheck_seconds: float = RECHECK_SECONDS):
        self.directory = directory
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.recheck_seconds = recheck_seconds
        # path -> (when last looked at, its time then, what was made of it)
        self._cache: dict[Path, tuple[float, float, Any]] = {}  # see `load`
        self._names: dict[Path, frozenset[str]] = {}  # the variables each file reads
        self._listings: dict[Path, tuple[float, int, _Listing]] = {}
        self._paths: dict[tuple[str, ...], Path] = {}

    def _path(self, *parts: str) -> Path:
        """`directory / parts...`, made once (a Path costs more to build than to look up)."""
        path = self._paths.get(parts)
        if path is None:
            if len(self._paths) > 4096:  # names can come from API requests: stay bounded
                self._paths.clear()
            path = self._paths[parts] = self.directory.joinpath(*parts)
        return path

    def names(self) -> list[str]:
        """Every template directory (not the layout ones)."""
        if not self.directory.is_dir():
            return []
        return sorted(p.name for p in self.directory.iterdir()
                      if p.is_dir() and not p.name.startswith(("_", ".")))

    def _listing(self, folder: Path) -> _Listing:
        """The languages of a folder's `.subject`, `.txt` and `.html` files, cached until the
        folder changes (adding, removing or renaming a file changes the folder's time)."""
        now = _clock()
        cached = self._listings.get(folder)
        if cached and now - cached[0] < self.recheck_seconds:
            return cached[2]
        try:
            mtime = folder.stat().st_mtime_ns
        except OSError:
            self._listings.pop(folder, None)
            return frozenset(), frozenset(), frozenset()
        if cached and cached[1] == mtime:
            self._listings[folder] = (now, mtime, cached[2])
            return cached[2]
        found: dict[str, set[str]] = {".subject": set(), ".txt": set(), ".html": set()}
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, dot, ext = entry.name.rpartition(".")
                if dot and stem and f".{ext}" in found:
                    found[f".{ext}"].add(stem)
        listing = (frozenset(found[".subject"]), frozenset(found[".txt"]),
                   frozenset(found[".html"]))
        self._listings[folder] = (now, mtime, listing)
        return listing

    def languages(self, template: str) -> list[str]:
        """Languages with a subject and a text part."""
        subjects, texts, _html = self._listing(self._path(template))
        return sorted(subjects & texts)

    def layout_languages(self, part: str) -> list[str]:
        return sorted(self._listing(self._path(part))[1])

    def exists(self, template: str) -> bool:
        return bool(self.languages(template))

    def load(self, file: Path, build: Callable[[str], _T]) -> _T:
        """What `build` makes of a file's text, cached until the file changes (looked at again
        after `recheck_seconds`). Raises TemplateProblem when the file cannot be read."""
        now = _clock()
        cached = self._cache.get(file)
        if cached and now - cached[0] < self.recheck_seconds:
            return cast(_T, cached[2])
        try:
            mtime = file.stat().st_mtime
        except OSError:
            self._cache.pop(file, None)
            raise TemplateProblem("missing", "the template file does not exist", file) from None
        if cached and cached[1] == mtime:
            self._cache[file] = (now, mtime, cached[2])
            return cast(_T, cached[2])
        try:
            source = file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise TemplateProblem("missing", f"cannot read the file ({exc})", file) from None
        built = build(source)
        self._cache[file] = (now, mtime, built)
        return built

    def _template(self, file: Path, html: bool) -> Template:
        def build(source: str) -> Template:
            # plentymarkets-style `$TicketID` variables are read as `{{ TicketID }}` (plenty).
            env = HTML_ENV if html else TEXT_ENV
            compiled, names = compile_source(env, translate(source), file)
            self._names[file] = names
            return compiled

        return self.load(file, build)

    def part_languages(self, folder: str, part: str) -> frozenset[str]:
        """The languages `folder` has a `<lang>.<part>` file for (subject, txt or html)."""
        subjects, texts, htmls = self._listing(self._path(folder))
        return {"subject": subjects, "txt": texts, "html": htmls}[part]

    def file(self, *parts: str) -> Path:
        return self._path(*parts)

    def run(self, template: Template, variables: Mapping[str, Any], file: Path) -> str:
        """Render a template compiled with `compile_text`, within this set's limits."""
        return run_template(template, variables, file, timeout=self.timeout,
                            max_bytes=self.max_bytes)

    def reads(self, file: Path, html: bool = False) -> frozenset[str]:
        """The variables a template file reads (compiling it if need be)."""
        self._template(file, html)
        return self._names.get(file, frozenset())

    def render_file(self, file: Path, variables: Mapping[str, Any], *, html: bool = False) -> str:
        return run_template(self._template(file, html), variables, file, timeout=self.timeout,
                    max_bytes=self.max_bytes)

    def _layout_file(self, part: str, language: str, fallback: Sequence[str],
                     html: bool) -> tuple[Path, bool] | None:
        """The header or footer file a mail in `language` uses: (file, is HTML), or None."""
        _subjects, texts, htmls = self._listing(self._path(part))
        chosen = choose_language(texts, [language], fallback)
        if chosen is None:
            return None
        if html and chosen in htmls:
            return self._path(part, f"{chosen}.html"), True
        return self._path(part, f"{chosen}.txt"), False

    def _layout(self, part: str, language: str, fallback: Sequence[str],
                variables: Mapping[str, Any], html: bool) -> str:
        found = self._layout_file(part, language, fallback, html)
        if found is None:
            return ""
        file, is_html = found
        text = self.render_file(file, variables, html=is_html)
        return _text_to_html(text) if html and not is_html else text

    def places(self, template: str, language: str, fallback: Sequence[str],
               names: frozenset[str]) -> bool:
        """Whether a mail of `template` in `language` (its parts, header and footer) reads any
        of `names` itself."""
        subjects, texts, htmls = self._listing(self._path(template))
        files = [(self._path(template, f"{language}.{part}"), part == "html")
                 for part, have in (("subject", subjects), ("txt", texts), ("html", htmls))
                 if language in have]
        for part in LAYOUT:
            for html in (False, True):
                found = self._layout_file(part, language, fallback, html)
                if found is not None:
                    files.append(found)
        return any(self.reads(file, html) & names for file, html in files)

    def render(self, template: str, wanted: Sequence[str], fallback: Sequence[str],
               variables: Mapping[str, Any], *,
               signoff: Sequence[str] | None = None) -> RenderedMail:
        """Render subject, text (header + body + footer) and, when present, HTML.

        `signoff` (greeting, signature): put below the body unless the template places them
        itself, i.e. one of its files reads `Greeting` or `Signature` (the manual: a staff
        message's mail ends with the owner's greeting, then the signature)."""
        subjects, texts, htmls = self._listing(self._path(template))
        available = sorted(subjects & texts)
        if not available:
            raise TemplateProblem("missing", f"template {template!r} has no <lang>.subject and "
                                  "<lang>.txt", self.directory / template)
        wanted_list = [w for w in wanted if w]
        language = choose_language(available, wanted_list[:1], [*wanted_list[1:], *fallback])
        if language is None:  # none of the chain exists: any translation beats no mail
            language = available[0]
        first_wish = wanted_list[0] if wanted_list else language
        if language != first_wish:
            log.info("template language fallback", template=template, wanted=first_wish,
                     used=language)
        subject = self.render_file(self._path(template, f"{language}.subject"), variables)
        body = self.render_file(self._path(template, f"{language}.txt"), variables)
        lines = [line for line in (signoff or ()) if line.strip()]
        if lines and self.places(template, language, fallback, SIGNOFF_NAMES):
            lines = []
        if lines:
            body = body.rstrip("\n") + "\n\n" + "\n".join(lines)
        header = self._layout("_header", language, fallback, variables, html=False)
        footer = self._layout("_footer", language, fallback, variables, html=False)
        text = "\n\n".join(part.strip("\n") for part in (header, body, footer) if part.strip())
        html = None
        if language in htmls:
            html_body = self.render_file(self._path(template, f"{language}.html"), variables,
                                         html=True)
            if lines:
                html_body += "\n<p>" + str(Markup("<br>").join(escape(x) for x in lines)) + "</p>"
            html_header = self._layout("_header", language, fallback, variables, html=True)
            html_footer = self._layout("_footer", language, fallback, variables, html=True)
            html = _html_document(language, html_header, html_body, html_footer)
        return RenderedMail(template, language, " ".join(subject.split()), text + "\n", html,
                            first_wish)


def _text_to_html(text: str) -> str:
    paragraphs = [p for p in text.strip().split("\n\n") if p.strip()]
    return "".join(f"<p>{str(escape(p)).replace(chr(10), '<br>')}</p>" for p in paragraphs)


def _html_document(language: str, header: str, body: str, footer: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="{escape(language)}"><head><meta charset="utf-8">'
            f"</head><body>\n{header}\n{body}\n{footer}\n</body></html>\n")
