"""Sequence-level rewards: built-ins by name, the user's own by `package.module:function`.

The call contract is TRL's, so a TRL reward function works unchanged::

    fn(completions=list[str], references=list[str], prompts=list[str],
       completion_ids=list[list[int]], reference_ids=list[list[int]],
       **extra_dataset_columns, **recipe_kwargs) -> list[float | None]

completion_ids are the sampled ids and reference_ids the gold target ids, both without the
end-of-sequence token. Built-ins on text: bleu, chrf, ter, rouge1, rouge2, rougeL
(`seqrl.rewards.text`); on token ids: token_bleu, token_rouge_n, token_rouge_l
(`seqrl.rewards.token`, batched in torch by `seqrl.rewards.fast`).

None means "not applicable" to that sample: it adds nothing to the weighted sum. A function
without `**kwargs` receives only the arguments it names. A reward that raises or returns the
wrong length, a non-number, NaN or inf stops the run with one line naming it and the first
bad index.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

from seqrl.config import RewardConfig
from seqrl.errors import SeqrlError
from seqrl.rewards.text import BUILTINS as TEXT_BUILTINS
from seqrl.rewards.token import BUILTINS as TOKEN_BUILTINS


CONTRACT_ARGS = {"completions", "references", "prompts", "completion_ids", "reference_ids"}
BUILTINS = {**TEXT_BUILTINS, **TOKEN_BUILTINS}


class RewardError(SeqrlError):
    """A reward function that cannot be loaded or returned something unusable."""


@dataclass
class Reward:
    name: str
    weight: float
    fn: Callable
    kwargs: dict
    accepts: set[str] | None  # None = takes **kwargs (everything)

    @property
    def reads_text(self) -> bool:
        """Whether it takes `completions`: token-ID rewards spare the step a decode."""
        return self.accepts is None or "completions" in self.accepts

    def __call__(self, **inputs) -> list[float | None]:
        n = batch_size(inputs)
        if self.accepts is not None:
            inputs = {k: v for k, v in inputs.items() if k in self.accepts}
        try:
            values = self.fn(**inputs, **self.kwargs)
        except SystemExit as err:  # the user's code ending the process is the user's error, not a finished run
            raise RewardError(f"reward '{self.name}' called sys.exit({err.code!r}); a reward must return "
                              f"its values (raise an exception to stop the run)") from None
        except Exception as err:  # the user's code: any failure becomes one clear line
            raise RewardError(f"reward '{self.name}' raised {type(err).__name__}: {err}") from err
        return check_values(self.name, values, n)


def batch_size(inputs: dict) -> int:
    return len(inputs["completions"] if "completions" in inputs else inputs["completion_ids"])


def check_values(name: str, values, expected: int) -> list[float | None]:
    """Floats (or None) of the right length, all finite; else a RewardError naming the first bad one."""
    if not isinstance(values, (list, tuple)):
        raise RewardError(f"reward '{name}' returned {type(values).__name__}, expected a list of {expected} floats")
    if len(values) != expected:
        raise RewardError(f"reward '{name}' returned {len(values)} values for {expected} completions")
    out = []
    for i, v in enumerate(values):
        if v is None:
            out.append(None)
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) and not hasattr(v, "__float__"):
            raise RewardError(f"reward '{name}' returned {v!r} ({type(v).__name__}) at index {i}; expected a float")
        try:
            v = float(v)
        except (TypeError, ValueError, RuntimeError):  # e.g. a multi-element array
            raise RewardError(f"reward '{name}' returned {v!r} ({type(v).__name__}) at index {i}; "
                              f"expected a float") from None
        if not math.isfinite(v):
            raise RewardError(f"reward '{name}' returned {v} at index {i}; rewards must be finite")
        out.append(v)
    return out


def build(configs: list[RewardConfig]) -> list[Reward]:
    return [_build_one(cfg) for cfg in configs]


def _build_one(cfg: RewardConfig) -> Reward:
    fn = BUILTINS.get(cfg.name) or _import(cfg.name)
    params = inspect.signature(fn).parameters.values()
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
    accepts = None if takes_all else {p.name for p in params}
    if not takes_all and not accepts & {"completions", "completion_ids"}:
        raise RewardError(f"reward '{cfg.name}' must accept a `completions` (or `completion_ids`) keyword "
                          f"argument (signature: fn(completions, references, **kwargs) -> list[float])")
    for p in params:
        if p.kind is p.VAR_POSITIONAL or (p.default is p.empty and p.kind is p.POSITIONAL_ONLY):
            raise RewardError(f"reward '{cfg.name}' takes positional-only arguments; it is called "
                              f"with keywords (completions=..., references=..., **kwargs)")
    unknown = sorted(set(cfg.kwargs) - (accepts or set(cfg.kwargs)))
    if unknown:
        options = sorted((accepts or set()) - CONTRACT_ARGS)
        guess = difflib.get_close_matches(unknown[0], options, n=1)
        tip = f"did you mean '{guess[0]}'?" if guess else f"its options are {options}"
        raise RewardError(f"rewards '{cfg.name}': kwargs '{unknown[0]}' is not a parameter of the function; {tip}")
    return Reward(cfg.name, cfg.weight, fn, dict(cfg.kwargs), accepts)


def _import(path: str) -> Callable:
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        guess = difflib.get_close_matches(path, list(BUILTINS), n=1)
        tip = f"did you mean '{guess[0]}'? " if guess else ""
        raise RewardError(f"unknown reward '{path}'; {tip}built-ins on token ids are {', '.join(TOKEN_BUILTINS)}; "
                          f"text built-ins are {', '.join(TEXT_BUILTINS)}, "
                          f"or give a dotted path like my_rewards:length_penalty")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.append(os.getcwd())  # the console script's sys.path lacks the working directory
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as err:  # ImportError, or the module's own error (or exit) at import time
        raise RewardError(f"reward '{path}': cannot import '{module_name}' ({type(err).__name__}: {err}); "
                          f"is it on PYTHONPATH?") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise RewardError(f"reward '{path}': module '{module_name}' has no function '{attr}'")
    return fn


def score(rewards: list[Reward], **inputs) -> tuple[list[float], dict[str, list[float | None]]]:
    """Weighted sum per sample (None counts 0) and each reward's own values."""
    n = batch_size(inputs)
    parts = {r.name: r(**inputs) for r in rewards}
    total = [0.0] * n
    for r in rewards:
        for i, v in enumerate(parts[r.name]):
            if v is not None:
                total[i] += r.weight * v
    return total, parts
