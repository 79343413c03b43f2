"""The configuration reference, made from the schema: `python -m gatewayd.config.reference >
docs/configuration.md`.

Every key's type, default and constraints come from its pydantic field, its meaning and what
`gatewayd check` says about it from the docstring beside the field (a paragraph starting
"Check:"), its example from `Field(examples=[...])` or its default. tests/test_reference.py
fails when docs/configuration.md differs from what this prints.
"""

from __future__ import annotations

import json
import re
import sys
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from gatewayd.config.schema import Config

COMMAND = "python -m gatewayd.config.reference > docs/configuration.md"


@dataclass(frozen=True)
class Key:
    """One key of the file: its dotted path (`[]` marks arrays of tables) and its field."""

    table: str  # the section it belongs to: "" (top level), "http", "accounts[].imap", ...
    name: str
    field: FieldInfo

    @property
    def path(self) -> str:
        return f"{self.table}.{self.name}" if self.table else self.name


@dataclass(frozen=True)
class Table:
    path: str  # "" for the top level
    model: type[BaseModel]
    array: bool  # an array of tables ([[name]] or a list of inline tables)


def _unwrap(annotation: Any) -> tuple[Any, bool]:
    """(the type without `| None`, whether None is allowed)."""
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True  # no key of ours is a union of several types
    return annotation, False


def _model_of(annotation: Any) -> tuple[type[BaseModel] | None, bool]:
    """(the table model a field holds, whether it is a list of them)."""
    inner, _ = _unwrap(annotation)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
        return None, False
    if isinstance(inner, type) and issubclass(inner, BaseModel):
        return inner, False
    return None, False


def tables(model: type[BaseModel] = Config, path: str = "",
           array: bool = False) -> Iterator[Table]:
    """Every table, depth first, the top level first."""
    yield Table(path, model, array)
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        sub, is_list = _model_of(field.annotation)
        if sub is not None:
            child = f"{path}.{name}" if path else name
            yield from tables(sub, child + ("[]" if is_list else ""), is_list)


def keys(model: type[BaseModel] = Config) -> list[Key]:
    """Every key of the file (scalars, lists and tables), in schema order."""
    found = []
    for table in tables(model):
        for name, field in table.model.model_fields.items():
            if not field.exclude:
                found.append(Key(table.path, name, field))
    return found


def toml_value(value: Any) -> str:
    """A value as TOML writes it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{toml_key(k)} = {toml_value(v)}"
                                for k, v in value.items()) + " }"
    return str(value)


def toml_key(key: str) -> str:
    """A key as TOML writes it: bare when it can be, else quoted."""
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key, ensure_ascii=False)


def _constraints(field: FieldInfo) -> list[str]:
    found = []
    for item in field.metadata:
        for attr, word in (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<")):
            if getattr(item, attr, None) is not None:
                found.append(f"{word} {getattr(item, attr)}")
        if getattr(item, "min_length", None):
            found.append("not empty" if item.min_length == 1 else f"at least {item.min_length}")
        if getattr(item, "pattern", None):
            found.append(f"matching `{item.pattern}`")
    return found


def type_text(annotation: Any) -> str:
    """A field's type in words."""
    inner, _ = _unwrap(annotation)
    origin = typing.get_origin(inner)
    text: str
    if origin is Literal:
        text = "one of " + ", ".join(f"`{toml_value(v)}`" for v in typing.get_args(inner))
    elif origin is list:
        (item,) = typing.get_args(inner)
        if isinstance(item, type) and issubclass(item, BaseModel):
            text = "array of tables"
        else:
            text = f"list of {type_text(item)}s"
    elif isinstance(inner, type) and issubclass(inner, BaseModel):
        text = "table"
    else:
        text = {str: "string", int: "whole number", float: "number", bool: "true or false",
                Path: "path (string)", SecretStr: "string (secret)"}.get(inner, str(inner))
    return text


def default_text(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = field.default
    if value is None:
        return "unset"
    if isinstance(value, BaseModel):
        return "its keys' defaults"
    if value == [] or value == "":
        return "`[]`" if value == [] else '`""`'
    if isinstance(value, SecretStr):
        return "unset"
    return f"`{toml_value(value)}`"


def example_text(key: Key) -> str | None:
    field = key.field
    sub, _ = _model_of(field.annotation)
    if sub is not None and not field.examples:
        return None
    if field.examples:
        value = field.examples[0]
    elif field.default not in (None, PydanticUndefined) and not isinstance(
            field.default, BaseModel | SecretStr):
        value = field.default
    else:
        return None
    return f"`{key.name} = {toml_value(value)}`"


def split_description(field: FieldInfo) -> tuple[str, str]:
    """(what the key means, what `check` says about it) from the docstring beside the field."""
    text = (field.description or "").strip()
    meaning, _, check = text.partition("Check:")
    return " ".join(meaning.split()), " ".join(check.split())


def _anchor(path: str) -> str:
    return "".join(c for c in path.lower().replace(" ", "-") if c.isalnum() or c in "-_")


def _heading(table: Table) -> str:
    return f"`{table.path}`" if table.path else "Top level"


INTRO = """\
# Configuration reference

<!-- Generated from the docstrings in gatewayd/config/ by
     `{command}`. Edit those, not this file. -->

gatewayd reads one TOML file: `--config PATH`, else `$GATEWAYD_CONFIG`, else `./gatewayd.toml`,
else `/etc/gatewayd/gatewayd.toml`. Relative paths in it are relative to the file.
`gatewayd init DIR` writes a working one; `gatewayd init --full DIR` also writes
`gatewayd.example.toml`, every key below with a comment.

`gatewayd check` validates the file and the templates and prints each problem as
`file:key: what is wrong — how to fix` (warnings prefixed `warning:`); it exits 1 when there is
an error. `gatewayd run` and a reload (SIGHUP) refuse a file with errors. For every key, check
refuses a value of the wrong type or outside its range: types are taken as TOML writes them
(`port = "993"` or `active = "yes"` is an error, not converted), an unknown key is an error with
the closest valid key suggested (`modus: unknown key — did you mean 'mode'?`), a TOML syntax
error names its line, and a value given for a password, token or secret is never repeated in a
message. The **check** line of each key says what it reports beyond that.

Secrets (IMAP/SMTP passwords, API tokens, form HMAC secrets) come from the file, from `*_file`
keys, or from systemd credentials in `$CREDENTIALS_DIRECTORY`; they never appear in logs,
`status`, the API or error messages. `name[]` is an array of tables: `[[name]]` in TOML, or a
list of inline tables; `accounts[].imap` is the `[accounts.imap]` table of each `[[accounts]]`.
"""


def render() -> str:
    """docs/configuration.md."""
    out = [INTRO.format(command=COMMAND), "## Tables\n"]
    all_tables = list(tables())
    for table in all_tables:
        out.append(f"- [{_heading(table)}](#{_anchor(_heading(table))})")
    out.append("")
    for table in all_tables:
        out.append(f"## {_heading(table)}\n")
        doc = " ".join((table.model.__doc__ or "").split())
        if doc and table.path:
            out.append(doc + "\n")
        for name, field in table.model.model_fields.items():
            if field.exclude:
                continue
            key = Key(table.path, name, field)
            meaning, check = split_description(field)
            sub, _ = _model_of(field.annotation)
            kind = type_text(field.annotation)
            limits = _constraints(field)
            if limits:
                kind += " (" + ", ".join(limits) + ")"
            if sub is not None:  # its keys have a section of their own
                target = key.path + ("[]" if kind.startswith("array") else "")
                out.append(f"### `{key.path}` ({kind.split(' (')[0]})\n")
                out.append(f"{meaning} Its keys: [`{target}`](#{_anchor(target)}).\n")
            else:
                out.append(f"### `{key.path}`\n")
                out.append(meaning + "\n")
            out.append(f"- type: {kind}")
            out.append(f"- default: {default_text(field)}")
            example = example_text(key)
            if example:
                out.append(f"- example: {example}")
            out.append(f"- check: {check or 'its type and range only'}")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def missing_descriptions() -> list[str]:
    """Keys without a docstring (tests/test_reference.py refuses them)."""
    return [k.path for k in keys() if not (k.field.description or "").strip()]


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
