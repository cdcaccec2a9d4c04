"""Sequence-level rewards: built-ins by name, the user's own by `package.module:function` (or,
from Python, a callable passed to `seqrl.finetune`).

The call contract is TRL's (`GRPOTrainer` / `RLOOTrainer`), so a TRL reward function runs
unchanged::

    fn(prompts=list[str], completions=list[str], completion_ids=list[list[int]],
       **dataset_columns, trainer_state=..., log_extra=..., log_metric=...) -> list[float | None]

Every dataset column arrives under its own name (the target column included), each source's
values repeated for its k samples. seqrl adds `references` (the target texts) and
`reference_ids` / `completion_ids` without the end-of-sequence token. `trainer_state` has
`global_step`, `max_steps`, `stage` and `delta` (the sampled suffix's length);
`log_metric(name, value)` logs a scalar as `reward_metric/<name>`; `log_extra(column, values)`
adds a column to the logged samples. A list, tuple, NumPy array or 1-D tensor may be returned;
`async def` rewards are awaited. The recipe's `kwargs` are passed on every call.

Built-ins on text: bleu, chrf, ter, rouge1, rouge2, rougeL (`seqrl.rewards.text`); guards against
reward hacking: length_ratio, language_id (`seqrl.rewards.guards`); on token ids:
token_bleu, token_rouge_n, token_rouge_l (`seqrl.rewards.token`, batched in torch by
`seqrl.rewards.fast`); scored by a model, built once from their `kwargs`: bertscore,
embedding_similarity, classifier (`seqrl.rewards.model_based`).

None means "not applicable" to that sample: it adds nothing to the weighted sum. A function
without `**kwargs` receives only the arguments it names. A reward that raises, calls
`sys.exit`, or returns the wrong length, a non-number, NaN or inf stops the run with one line
naming it and the first bad index. Every reward is called once at set-up, on a few training
rows with their references as completions, so a broken one stops the run before training.
"""

from __future__ import annotations

import asyncio
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
from seqrl.rewards.guards import BUILTINS as GUARD_BUILTINS
from seqrl.rewards.guards import known_language, language_id
from seqrl.rewards.model_based import MODEL_REWARDS
from seqrl.rewards.text import BUILTINS as TEXT_BUILTINS
from seqrl.rewards.token import BUILTINS as TOKEN_BUILTINS

CONTRACT_ARGS = {"completions", "references", "prompts", "completion_ids", "reference_ids", "trainer_state",
                 "log_extra", "log_metric"}
BUILTINS = {**TEXT_BUILTINS, **TOKEN_BUILTINS, **GUARD_BUILTINS}


@dataclass
class TrainerState:
    """What TRL passes as `trainer_state`, for rewards that change with training progress."""

    global_step: int
    max_steps: int
    stage: int
    delta: int
    """Length of the sampled suffix (MIXER's Δ; the whole target in the last stage)."""


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

    def setup(self, device, train_references: list[str]) -> None:
        """A model-based reward moves its model to the training device (and may read the training
        references, e.g. BERTScore's idf); other rewards need nothing."""
        if hasattr(self.fn, "setup"):
            self.fn.setup(device, train_references)

    def __call__(self, **inputs) -> list[float | None]:
        n = batch_size(inputs)
        if self.accepts is not None:
            inputs = {k: v for k, v in inputs.items() if k in self.accepts}
        try:
            values = self.fn(**inputs, **self.kwargs)
            if inspect.isawaitable(values):  # an async reward (TRL runs them concurrently; one at a time here)
                values = asyncio.run(_await(values))
        except SystemExit as err:  # the user's code ending the process is the user's error, not a finished run
            raise RewardError(f"reward '{self.name}' called sys.exit({err.code!r}); a reward must return "
                              f"its values (raise an exception to stop the run)") from None
        except Exception as err:  # the user's code: any failure becomes one clear line
            raise RewardError(f"reward '{self.name}' raised {type(err).__name__}: {err}") from err
        return check_values(self.name, values, n)


async def _await(awaitable):
    return await awaitable


def batch_size(inputs: dict) -> int:
    return len(inputs["completions"] if "completions" in inputs else inputs["completion_ids"])


def check_values(name: str, values, expected: int) -> list[float | None]:
    """Floats (or None) of the right length, all finite; else a RewardError naming the first bad one.
    A NumPy array or tensor counts as a list when it is 1-D."""
    if hasattr(values, "tolist") and hasattr(values, "ndim"):  # numpy.ndarray, torch.Tensor
        if values.ndim != 1:
            raise RewardError(f"reward '{name}' returned a {values.ndim}-D {type(values).__name__} of shape "
                              f"{tuple(values.shape)}; expected {expected} values in one dimension")
        values = values.tolist()
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


def build(configs: list[RewardConfig], functions: dict[str, Callable] | None = None,
          target_language: str | None = None) -> list[Reward]:
    """The recipe's rewards; `functions` maps names to Python callables (the Python API's);
    `target_language` (the recipe's, `seqrl.languages`) is `language_id`'s unless its kwargs say."""
    return [_build_one(cfg, functions or {}, target_language) for cfg in configs]


def _target_language(kwargs: dict, target: str | None) -> dict:
    """`language_id`'s kwargs with its target language, checked against CLD2's codes at set-up."""
    language = kwargs.get("language", target)
    if language is None:
        raise RewardError("reward 'language_id': no target language; set tokenizer.languages: [source, target] "
                          "(or tokenizer.tgt_lang), or the reward's kwargs: {language: es}")
    if not isinstance(language, str) or not known_language(language):
        raise RewardError(f"reward 'language_id': {language!r} is not a CLD2 language code (ISO 639-1, like es "
                          f"or de); give the reward's kwargs: {{language: ...}}")
    return {**kwargs, "language": language}


def _build_one(cfg: RewardConfig, functions: dict[str, Callable], target_language: str | None = None) -> Reward:
    kwargs = dict(cfg.kwargs)
    if cfg.init_kwargs is not None:  # a factory (TRL's get_* functions), called once now
        fn = _from_factory(cfg.name, functions.get(cfg.name) or _factory(cfg.name), cfg.init_kwargs)
    elif cfg.name in MODEL_REWARDS:  # an object built once from its kwargs (its model loaded now)
        fn, kwargs = _construct(cfg.name, MODEL_REWARDS[cfg.name], kwargs), {}
    else:
        fn = functions.get(cfg.name) or BUILTINS.get(cfg.name) or _import(cfg.name)
        if fn is language_id:
            kwargs = _target_language(kwargs, target_language)
    if not callable(fn):
        raise RewardError(f"reward '{cfg.name}' is a {type(fn).__name__}, not a function")
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        raise RewardError(f"reward '{cfg.name}': its signature cannot be read; give a plain function "
                          f"fn(completions, **kwargs)") from None
    takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
    accepts = None if takes_all else {p.name for p in params}
    if not takes_all and not accepts & {"completions", "completion_ids"}:
        raise RewardError(f"reward '{cfg.name}' must accept a `completions` (or `completion_ids`) keyword "
                          f"argument (signature: fn(completions, references, **kwargs) -> list[float]); a "
                          f"factory that returns one takes its arguments as init_kwargs")
    for p in params:
        if p.kind is p.VAR_POSITIONAL or (p.default is p.empty and p.kind is p.POSITIONAL_ONLY):
            raise RewardError(f"reward '{cfg.name}' takes positional-only arguments; it is called "
                              f"with keywords (completions=..., references=..., **kwargs)")
    _check_kwargs(cfg.name, set(kwargs), accepts)
    return Reward(cfg.name, cfg.weight, fn, kwargs, accepts)


def _check_kwargs(name: str, given: set[str], accepts: set[str] | None, field: str = "kwargs") -> None:
    unknown = sorted(given - (accepts if accepts is not None else given))
    if unknown:
        options = sorted((accepts or set()) - CONTRACT_ARGS)
        guess = difflib.get_close_matches(unknown[0], options, n=1)
        tip = f"did you mean '{guess[0]}'?" if guess else f"its options are {options}"
        raise RewardError(f"rewards '{name}': {field} '{unknown[0]}' is not a parameter of the function; {tip}")


def _construct(name: str, cls: type, kwargs: dict):
    """A model-based reward from its kwargs (checked against its constructor first)."""
    params = inspect.signature(cls).parameters
    _check_kwargs(name, set(kwargs), set(params))
    missing = [p for p, spec in params.items() if spec.default is spec.empty and p not in kwargs]
    if missing:
        raise RewardError(f"rewards '{name}': kwargs: missing '{missing[0]}' (e.g. kwargs: {{{missing[0]}: ...}})")
    return cls(**kwargs)


def _factory(name: str) -> Callable:
    if name in BUILTINS or name in MODEL_REWARDS:
        where = "kwargs" if name in MODEL_REWARDS else "nothing"
        raise RewardError(f"rewards '{name}': init_kwargs is for a factory named as package.module:function; "
                          f"the built-in '{name}' takes {where} at construction")
    return _import(name)


def _from_factory(name: str, factory: Callable, init_kwargs: dict) -> Callable:
    """What `factory(**init_kwargs)` returns, checked to be a function, any failure one line."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = None
    if params is not None and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
        _check_kwargs(name, set(init_kwargs), set(params), "init_kwargs")
        missing = [p for p, spec in params.items() if spec.default is spec.empty and p not in init_kwargs
                   and spec.kind in (spec.POSITIONAL_OR_KEYWORD, spec.KEYWORD_ONLY)]
        if missing:
            raise RewardError(f"rewards '{name}': init_kwargs: missing '{missing[0]}' (e.g. init_kwargs: "
                              f"{{{missing[0]}: ...}})")
    try:
        fn = factory(**init_kwargs)
    except Exception as err:  # the factory's own check of its arguments (TRL raises ValueError)
        raise RewardError(f"rewards '{name}': the factory raised {type(err).__name__}: {err}") from None
    if not callable(fn):
        raise RewardError(f"rewards '{name}': called with init_kwargs as a factory, it returned a "
                          f"{type(fn).__name__}, not a reward function")
    return fn


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


def check_arguments(rewards: list[Reward], available: set[str]) -> None:
    """Every argument a reward requires must be one the step passes (contract or dataset column)."""
    for reward in rewards:
        try:
            params = inspect.signature(reward.fn).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if (p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                    and p.name not in available and p.name not in reward.kwargs):
                columns = sorted(available - CONTRACT_ARGS - {"references", "reference_ids"})
                raise RewardError(f"reward '{reward.name}' needs an argument '{p.name}', which is neither a dataset "
                                  f"column ({', '.join(columns) or 'none'}) nor one seqrl passes; give it a "
                                  f"default, or add the column")


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
