"""The built-in rewards with their options, one line each, for `seqrl rewards`."""

from __future__ import annotations

import inspect

from seqrl.rewards import BUILTINS, CONTRACT_ARGS
from seqrl.rewards.model_based import MODEL_REWARDS
from seqrl.settings import first_sentence, yaml_value


def options(fn) -> str:
    """`name: default` for each option a recipe's `kwargs` may set; `name: (required)` without one."""
    parts = []
    for p in inspect.signature(fn).parameters.values():
        if p.name in CONTRACT_ARGS or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        parts.append(f"{p.name}: {'(required)' if p.default is p.empty else yaml_value(p.default)}")
    return ", ".join(parts) or "none"


def describe_builtins() -> list[str]:
    """`name (what it scores): meaning; options: ...` for every built-in reward."""
    lines = []
    for name, fn in {**BUILTINS, **MODEL_REWARDS}.items():
        if name in MODEL_REWARDS:
            reads = "a model, built once"
        else:
            reads = "text" if "completions" in inspect.signature(fn).parameters else "token ids"
        lines.append(f"{name} ({reads}): {first_sentence(inspect.getdoc(fn) or '')} options: {options(fn)}")
    return lines
