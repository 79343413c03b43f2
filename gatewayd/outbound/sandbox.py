"""The sandbox merchants' templates run in: Jinja2's `ImmutableSandboxedEnvironment` with
`StrictUndefined`, every `{% for %}` bounded by the render deadline, `*` and `**` bounded in
size, and the rendered text bounded in length. Every fault of a template comes out as a
`TemplateProblem` naming its file; `outbound.templates` picks the files and languages.
"""

from __future__ import annotations

import contextvars
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, UndefinedError, meta, nodes
from jinja2.environment import Template
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment
from markupsafe import Markup, escape

from gatewayd.outbound.plenty import translate

MAX_POWER = 64
# The largest whole number `*` and `**` may make (about 1,200 digits). Exponents alone were
# bounded, so a chain like ((9**64)**64)**64 computed for minutes: no deadline check runs
# inside one operation.
MAX_INT_BITS = 4096


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
        if isinstance(left, int) and isinstance(right, int) and _int_bits(
                operator, left, right) > MAX_INT_BITS:
            raise SecurityError(f"the result of {operator!r} would be too large a number")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, str | list | tuple) and isinstance(times, int):
                    if len(seq) * times > max_bytes:
                        raise SecurityError("the result of '*' would be too large")
        return super().call_binop(context, operator, left, right)


def _int_bits(operator: str, left: int, right: int) -> int:
    """About how many bits `left <operator> right` has (whole numbers, `*` or `**`). Pure."""
    if operator == "*":
        return abs(left).bit_length() + abs(right).bit_length()
    if right <= 0:
        return 1  # 1 / left**n: a fraction, or 1
    return abs(left).bit_length() * right


def _nl2br(value: Any) -> Markup:
    """Escape text and keep its line breaks (HTML templates: `{{ TicketLastMessage|nl2br }}`)."""
    return Markup("<br>\n").join(escape(str(value)).split("\n"))


def _make_env(autoescape: bool) -> _Sandbox:
    env = _Sandbox(undefined=StrictUndefined, autoescape=autoescape, keep_trailing_newline=False,
                   trim_blocks=True, lstrip_blocks=True)
    env.globals["gw_bounded"] = _bounded
    env.filters["nl2br"] = _nl2br
    return env


TEXT_ENV = _make_env(False)
HTML_ENV = _make_env(True)


def compile_source(env: _Sandbox, source: str, file: Path) -> tuple[Template, frozenset[str]]:
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
    return compile_source(TEXT_ENV, translate(source), file)[0]


def run_template(template: Template, variables: Mapping[str, Any], file: Path, *, timeout: float,
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
