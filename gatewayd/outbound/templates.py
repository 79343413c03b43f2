"""Mail templates: sandboxed Jinja2 per language, header and footer, bounded render time and size.

Layout: `templates_dir/<template>/<lang>.subject`, `<lang>.txt`, optional `<lang>.html`, and
`templates_dir/_header/<lang>.txt|.html`, `_footer/...` around every mail. The manual's
plentymarkets-style variables (`$TicketID`) are read as Jinja ones (`gatewayd.outbound.plenty`).
Templates are edited by merchants, so they run in Jinja2's `ImmutableSandboxedEnvironment` with
`StrictUndefined`; they see plain data only (dicts, strings, numbers), never ORM objects. A
render that runs longer than `outbound.render_timeout_seconds` or produces more than
`outbound.max_render_bytes` fails.
"""

from __future__ import annotations

import contextvars
import os
import time
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from gatewayd.logs import get_logger
from gatewayd.outbound.plenty import translate

log = get_logger("gatewayd.outbound.templates")

PARTS = ("subject", "txt", "html")
LAYOUT = ("_header", "_footer")
SIGNOFF_NAMES = frozenset({"Greeting", "Signature"})
MAX_POWER = 64
RECHECK_SECONDS = 2.0  # how soon an edited template file applies
_clock = time.monotonic  # when files were last looked at (tests stop it)
_T = TypeVar("_T")


class TemplateProblem(Exception):
    """A template cannot be rendered. `kind`: missing, syntax, undefined, sandbox, limit, error."""

    def __init__(self, kind: str, message: str, file: Path | None = None):
        super().__init__(message)
        self.kind = kind
        self.file = file

    def __str__(self) -> str:
        where = f"{self.file}: " if self.file else ""
        return f"{where}{self.args[0]}"


@dataclass(frozen=True)
class RenderedMail:
    template: str
    language: str
    subject: str
    text: str
    html: str | None
    wanted_language: str  # the ticket's language; differs from `language` after a fallback


@dataclass(frozen=True)
class _Limits:
    deadline: float
    max_bytes: int


_TOO_LONG = "the template took too long to render (loop too large?)"
_limits: contextvars.ContextVar[_Limits | None] = contextvars.ContextVar(
    "gatewayd_render_limits", default=None
)


def _check_deadline() -> None:
    limits = _limits.get()
    if limits is not None and time.monotonic() > limits.deadline:
        raise TemplateProblem("limit", _TOO_LONG)


def _bounded(iterable: Iterable[Any]) -> Iterator[Any]:
    """Every `{% for %}` iterates through this: loops stop at the render deadline."""
    for count, item in enumerate(iterable):
        if count % 64 == 0:
            _check_deadline()
        yield item


class _Sandbox(ImmutableSandboxedEnvironment):
    """The sandbox plus limits on `*` and `**`, which could build huge values in one step."""

    intercepted_binops = frozenset({"*", "**"})

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        limits = _limits.get()
        max_bytes = limits.max_bytes if limits else 1_000_000
        if operator == "**" and isinstance(right, int | float) and abs(right) > MAX_POWER:
            raise SecurityError(f"exponent {right} is too large")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > max_bytes:
                        raise SecurityError("the result of '*' would be too large")
        return super().call_binop(context, operator, left, right)


def _nl2br(value: Any) -> Markup:
    """Escape text and keep its line breaks (HTML templates: `{{ TicketLastMessage|nl2br }}`)."""
    return Markup("<br>\n").join(escape(str(value)).split("\n"))


def _make_env(autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False,
                   trim_blocks=True, lstrip_blocks=True)
    env.globals["gw_bounded"] = _bounded
    env.filters["nl2br"] = _nl2br
    return env


_TEXT_ENV = _make_env(False)
_HTML_ENV = _make_env(True)


def _compile(env: _Sandbox, source: str, file: Path) -> tuple[Template, frozenset[str]]:
    """Parse, route every for-loop through `gw_bounded`, compile (public Jinja2 API only);
    also the variables the template reads."""
    try:
        tree = env.parse(source, name=file.name, filename=str(file))
        names = frozenset(meta.find_undeclared_variables(tree))
        for loop in tree.find_all(nodes.For):
            loop.iter = nodes.Call(nodes.Name("gw_bounded", "load"), [loop.iter], [], None, None)
        code = env.compile(tree, name=file.name, filename=str(file))
        # The environment's globals as a plain dict, not Jinja's ChainMap over them: every
        # render copies them into its context, and copying a ChainMap cost ~5 µs a file.
        # (They are all set when the environment is made, before any template is compiled.)
        return env.template_class.from_code(env, code, dict(env.globals)), names
    except TemplateSyntaxError as exc:
        raise TemplateProblem("syntax", f"line {exc.lineno}: {exc.message}", file) from None


def compile_text(source: str, file: Path) -> Template:
    """A short text template (e.g. one line of a message catalogue): sandboxed, strict, not
    HTML-escaped, with the manual's `$Name` variables read as Jinja ones."""
    return _compile(_TEXT_ENV, translate(source), file)[0]


def _run(template: Template, variables: Mapping[str, Any], file: Path, *, timeout: float,
         max_bytes: int) -> str:
    deadline = time.monotonic() + timeout
    token = _limits.set(_Limits(deadline, max_bytes))
    try:
        size = 0
        out: list[str] = []
        # `generate` copies the variables into the template's context: no copy of ours.
        for chunk in template.generate(variables):
            size += len(chunk)
            if size > max_bytes:
                raise TemplateProblem("limit", f"the rendered text exceeds {max_bytes} characters",
                                      file)
            if time.monotonic() > deadline:  # `_check_deadline`, without the lookup
                raise TemplateProblem("limit", _TOO_LONG)
            out.append(chunk)
        return "".join(out)
    except TemplateProblem as exc:
        if exc.file is None:
            exc.file = file
        raise
    except UndefinedError as exc:
        raise TemplateProblem("undefined", f"undefined variable: {exc.message}", file) from None
    except SecurityError as exc:
        raise TemplateProblem("sandbox", f"not allowed in templates: {exc}", file) from None
    except TemplateError as exc:
        raise TemplateProblem("error", str(exc), file) from None
    except RecursionError:
        raise TemplateProblem("limit", "the template recurses too deeply", file) from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise TemplateProblem("error", f"{type(exc).__name__}: {exc}", file) from None
    finally:
        _limits.reset(token)


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
            compiled, names = _compile(_HTML_ENV if html else _TEXT_ENV, translate(source), file)
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
        return _run(template, variables, file, timeout=self.timeout, max_bytes=self.max_bytes)

    def reads(self, file: Path, html: bool = False) -> frozenset[str]:
        """The variables a template file reads (compiling it if need be)."""
        self._template(file, html)
        return self._names.get(file, frozenset())

    def render_file(self, file: Path, variables: Mapping[str, Any], *, html: bool = False) -> str:
        return _run(self._template(file, html), variables, file, timeout=self.timeout,
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
