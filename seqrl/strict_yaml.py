"""Strict YAML -> typed dataclasses, for the recipe schema in `seqrl.config`.

YAML is read with YAML 1.2 scalars (`1e-4` is a float; only true/false are booleans) and a key
given twice is an error. `build` checks every value against the dataclass field's type hint and
names the field by its dotted path; unknown keys get a "did you mean".

A recipe is bounded before anything is built from it: at most `MAX_TEXT_BYTES` of text, nesting
at most `MAX_DEPTH` deep, and at most `MAX_VALUES` values once YAML aliases are expanded (an
alias tree, "billion laughs", is small as text and as loaded objects, but every later walk,
dump or repr of it expands it). The check reads PyYAML's event stream, which is not
recursive, so it answers within milliseconds whatever the input. Error messages never show a
value longer than a few dozen characters.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import reprlib
import types
import typing
from typing import Any, Literal, Union

import yaml

from seqrl.errors import ConfigError

# libyaml's parser (C) where PyYAML was built with it: ~6x faster than the pure-Python one on
# a recipe at the size limit; the constructor and resolver, where our rules live, stay Python.
_SafeLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_SafeLoader):
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


def _construct_int(loader: _Loader, node: yaml.ScalarNode) -> int:
    """Integers of up to 4,000 characters (the field's own check then names it); longer ones are
    refused before Python parses them (past 4,300 digits it raises a ValueError of its own)."""
    if len(node.value) > 4000:
        raise ConfigError(f"line {node.start_mark.line + 1}: an integer of {len(node.value):,} digits; "
                          f"settings fit in 64 bits")
    return yaml.SafeLoader.construct_yaml_int(loader, node)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)

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



MAX_TEXT_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_VALUES = 100_000
INT_LIMIT = 2**63  # torch and numpy hold integers in 64 bits


def parse_yaml(text: str):
    """YAML text -> plain Python values, refusing what could exhaust memory or recursion."""
    if len(text) > MAX_TEXT_BYTES:
        raise ConfigError(f"{len(text):,} characters of YAML; a recipe is at most {MAX_TEXT_BYTES:,}")
    check_shape(text)
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


def check_shape(text: str) -> None:
    """Nesting depth and the number of values after alias expansion, from the event stream."""
    total, open_nodes, expanded = 0, [], {}  # expanded: anchor -> values it stands for
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            total += expanded.get(event.anchor, 1)
        elif isinstance(event, (yaml.ScalarEvent, yaml.CollectionStartEvent)):
            total += 1
            if isinstance(event, yaml.ScalarEvent):
                if event.anchor:
                    expanded[event.anchor] = 1
            else:
                open_nodes.append((event.anchor, total - 1))
                if len(open_nodes) > MAX_DEPTH:
                    raise ConfigError(f"line {event.start_mark.line + 1}: nested more than {MAX_DEPTH} "
                                      f"levels deep; a recipe needs a few")
        elif isinstance(event, yaml.CollectionEndEvent):
            anchor, before = open_nodes.pop()
            if anchor:
                expanded[anchor] = total - before
        if total > MAX_VALUES:
            where = f"line {event.start_mark.line + 1}: more than {MAX_VALUES:,} values"
            if expanded:
                raise ConfigError(f"{where} once YAML aliases (*name) are expanded; write the values out, "
                                  f"or use fewer aliases")
            raise ConfigError(f"{where}; a recipe holds a few hundred")


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
        return tuple(_coerce(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {_describe(value)}")
        return {_coerce(k, args[0], name): _coerce(v, args[1], f"{name}.{k}") for k, v in value.items()}
    if hint is Any:
        return _check_numbers(value, name)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, f"{name}.")
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        value = _check_numbers(value, name)
        return float(value)
    if hint is bool and not isinstance(value, bool) or not isinstance(value, hint) \
            or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{name} must be {_type_name(hint)}, got {_describe(value)}")
    return _check_numbers(value, name)


def _check_numbers(value: Any, name: str) -> Any:
    """Numbers anywhere in `value` (free-form sections included) must be finite and fit 64 bits:
    NaN or an integer of 400 digits is never a setting, and fails deep in torch otherwise."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and not -INT_LIMIT < value < INT_LIMIT:
        raise ConfigError(f"{name} must be between -2**63 and 2**63, got {_describe(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value}")
    if isinstance(value, dict):
        for key, item in value.items():
            _check_numbers(item, f"{name}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_numbers(item, f"{name}[{i}]")
    return value


def _type_name(hint: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))


_SHORT = reprlib.Repr()  # keyword arguments need Python 3.12
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxtuple = 2, 4, 4, 4
_SHORT.maxstring = _SHORT.maxother = _SHORT.maxlong = 30


def _describe(value: Any) -> str:
    """A short, bounded description: never formats more than a few elements of a large value."""
    text = _SHORT.repr(value)
    return f"{text if len(text) < 40 else text[:37] + '...'} ({type(value).__name__})"
