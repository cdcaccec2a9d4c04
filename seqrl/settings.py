"""Every recipe setting with its default and meaning, read from the schema itself (the dataclasses
of `seqrl.config` and the docstring under each field), for `seqrl recipe --defaults`."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import types
import typing
from itertools import pairwise
from typing import Any

import yaml

from seqrl.config import RecipeConfig
from seqrl.strict_yaml import plain

# A sentence ends at ". " before a capital, backtick or parenthesis, except after "e.g" / "i.e".
_SENTENCE_END = re.compile(r"(?<!e\.g)(?<!i\.e)\.\s+(?=[A-Z`(])")


def field_docs(cls: type) -> dict[str, str]:
    """Field name -> the attribute docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for stmt, nxt in pairwise(body):
        if (isinstance(stmt, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[stmt.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def first_sentence(doc: str) -> str:
    text = " ".join(doc.split())
    return _SENTENCE_END.split(text, maxsplit=1)[0].rstrip(".") + "."


def yaml_value(value: Any) -> str:
    """A default as it would be written in a recipe (flow style, one line)."""
    if dataclasses.is_dataclass(value) or isinstance(value, list) and value and dataclasses.is_dataclass(value[0]):
        value = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else [dataclasses.asdict(v) for v in value]
    text = yaml.safe_dump(plain(value), default_flow_style=True, width=10**6, allow_unicode=True).strip()
    return text.removesuffix("\n...").strip()


def _nested_dataclass(annotation: Any) -> tuple[type | None, bool]:
    """The dataclass a field holds (directly, optionally or as list items), and whether in a list."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        return annotation, False
    if origin is list and args and dataclasses.is_dataclass(args[0]):
        return args[0], True
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            if dataclasses.is_dataclass(arg):
                return arg, False
    return None, False


def settings(cls: type = RecipeConfig, prefix: str = "") -> list[tuple[str, str, str]]:
    """(dotted name, default, one-line meaning) for every field, sections' fields after their own
    line; a list of sections (`rewards`) lists its items' fields as `rewards[].name`."""
    hints, docs, rows = typing.get_type_hints(cls), field_docs(cls), []
    defaults = cls()
    for f in dataclasses.fields(cls):
        inner, is_list = _nested_dataclass(hints[f.name])
        name = f"{prefix}{f.name}"
        if not (inner is not None and not is_list and getattr(defaults, f.name) is not None):
            rows.append((name, yaml_value(getattr(defaults, f.name)), first_sentence(docs[f.name])))
        if inner is not None:
            rows += settings(inner, f"{name}[]." if is_list else f"{name}.")
    return rows


def describe_settings(section: str | None = None) -> list[str]:
    """`name: default  # meaning` lines, all of them or one section's."""
    rows = settings()
    if section is not None:
        rows = [r for r in rows if r[0] == section or r[0].startswith((f"{section}.", f"{section}[]."))]
    return [f"{name}: {default}  # {meaning}" for name, default, meaning in rows]
