"""The Python API: `seqrl.finetune(recipe, overrides=..., reward_functions=...)`.

    from seqrl import finetune, load_recipe

    result = finetune("recipes/quickstart.yaml",
                      overrides={"run.max_steps": 100, "run.output_dir": "runs/try",
                                 "rewards": [{"name": "bleu"}, {"name": "my_reward", "weight": 0.5}]},
                      reward_functions={"my_reward": my_reward})   # the callable of the reward my_reward
    result.final, result.metrics["test/bleu"]

It runs what `seqrl finetune` runs, in this process (one process; `accelerate launch` a script
that calls it for more), and returns where the run's outputs are and its final scores.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from seqrl.config import RecipeConfig, from_dict, load_recipe, set_value, to_dict
from seqrl.errors import ConfigError


@dataclass
class FinetuneResult:
    output_dir: Path
    """The run directory (metrics.jsonl, samples.jsonl, predictions, plots, checkpoints)."""
    final: Path | None
    """`final/`: the model and tokenizer at the end (plain transformers); None on other processes."""
    best: Path | None
    """`best/`: the model with the best `eval.best_metric`, where one was kept."""
    metrics: dict[str, float] = field(default_factory=dict)
    """The run's last evaluation scores (`eval/...`, and `test/...` when it has a test split)."""


def finetune(recipe: str | Path | dict | RecipeConfig, overrides: dict[str, Any] | None = None,
             reward_functions: dict[str, Callable] | None = None) -> FinetuneResult:
    """Train with a recipe (a YAML file, a raw dict as in YAML, or a `RecipeConfig`).

    `overrides` maps dotted fields to values (`{"optim.lr": 1e-4}`), as `--set` does. A reward in
    the recipe whose `name` is a key of `reward_functions` is that callable (TRL's contract); a key
    that no reward of the recipe names is an error (it would never be called)."""
    from seqrl.runlog import last_scores
    from seqrl.session import finetune as run_recipe

    cfg = _recipe(recipe, overrides or {})
    check_reward_functions(cfg, reward_functions or {})
    _fresh_accelerator_state()
    final = run_recipe(cfg, reward_functions=reward_functions or {})
    out = Path(cfg.run.output_dir)
    best = out / "best"
    return FinetuneResult(out, final, best if best.is_dir() else None, last_scores(out))


def check_reward_functions(cfg: RecipeConfig, reward_functions: dict[str, Callable]) -> None:
    """Every callable handed in must be a reward the recipe names: one it does not is never called."""
    named = [r.name for r in cfg.rewards]
    for name in reward_functions:
        if name not in named:
            entries = [{"name": n} for n in named] + [{"name": name, "weight": 0.5}]
            raise ConfigError(f"finetune: reward_functions['{name}'] is not named by the recipe's rewards "
                              f"({', '.join(named) or 'none'}), so it would never be called; name it there, "
                              f"e.g. overrides={{'rewards': {entries}}}")


def _recipe(recipe, overrides: dict[str, Any]) -> RecipeConfig:
    if isinstance(recipe, RecipeConfig):
        raw = to_dict(recipe)
    elif isinstance(recipe, dict):
        raw = yaml.safe_load(yaml.safe_dump(recipe))  # a copy, plain data
    elif isinstance(recipe, (str, Path)):
        raw = to_dict(load_recipe(recipe))
    else:
        raise ConfigError(f"finetune: recipe must be a YAML path, a dict or a RecipeConfig, "
                          f"got {type(recipe).__name__}")
    for key, value in overrides.items():
        set_value(raw, key, value, f"overrides['{key}']")
    return from_dict(raw)


def _fresh_accelerator_state() -> None:
    """accelerate keeps one state per process; a second run in this process may want another
    mixed precision or device. (Not under `accelerate launch`: the process group lives there.)"""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
