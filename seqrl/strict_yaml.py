"""Strict YAML -> typed dataclasses, for the recipe schema in `seqrl.config`.

YAML is read with YAML 1.2 scalars (`1e-4` is a float; only true/false are booleans) and a key
given twice is an error. `build` checks every value against the dataclass field's type hint and
names the field by its dotted path; unknown keys get a "did you mean".
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import types
import typing
from typing import Any, Literal, Union

import yaml

from seqrl.errors import ConfigError


class _Loader(yaml.SafeLoader):
    """SafeLoader reading `1e-4` as a float, as YAML 1.2 does (PyYAML's 1.1 rules want `1.0e-4`),
    and refusing a key given twice (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key '{key}' appears twice (line {key_node.start_mark.line + 1}); "
                                  f"keep one")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 booleans: only true/false. YAML 1.1 also reads yes/no/on/off as booleans, which
# turned `mixed_precision: no` into False.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
                              list("tTfF"))
_FLOAT_12 = re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*(?:[eE][-+]?\d+)?$"
                       r"|^[-+]?\.\d+(?:[eE][-+]?\d+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$")
_Loader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """Quotes every string that `_Loader` would read as a float, so dumps load back unchanged."""


_Dumper.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_12, list("-+0123456789."))



def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def describe_yaml_error(err: yaml.YAMLError) -> str:
    """`line L, column C: problem` from PyYAML's multi-line message."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark else problem


def dump_yaml(tree: dict) -> str:
    return yaml.dump(tree, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def build(cls: type, raw: Any, prefix: str) -> Any:
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(raw, dict):
        raise ConfigError(f"{where} must be a mapping, got {_describe(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            guess = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean '{prefix}{guess[0]}'?" if guess else f"; known keys: {', '.join(names)}"
            raise ConfigError(f"unknown key '{prefix}{key}'{hint}")
    values = {}
    for name in names:
        if name in raw:
            hint = hints[name]
            if dataclasses.is_dataclass(hint):
                values[name] = build(hint, raw[name] if raw[name] is not None else {}, f"{prefix}{name}.")
            else:
                values[name] = _coerce(raw[name], hint, f"{prefix}{name}")
    return cls(**values)


def _coerce(value: Any, hint: Any, name: str) -> Any:
    """Check `value` against the type hint; return it (ints widen to floats, lists to tuples)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, name)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is Literal:
        if value not in args:
            choices = ", ".join(repr(a) for a in args)
            guess = difflib.get_close_matches(str(value), [str(a) for a in args], n=1)
            tip = f"; did you mean '{guess[0]}'?" if guess else ""
            raise ConfigError(f"{name} must be one of {choices}, got {value!r}{tip}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{name} must be a list, got {_describe(value)}")
        return [_coerce(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ConfigError(f"{name} must be a list of {len(args)} values, got {_describe(value)}")
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {_describe(value)}")
        return {_coerce(k, args[0], name): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{name}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is bool and not isinstance(value, bool) or not isinstance(value, hint) \
            or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {_type_name(hint)}, got {_describe(value)}")
    if hint is float and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text if len(text) < 40 else text[:37] + '...'} ({type(value).__name__})"
