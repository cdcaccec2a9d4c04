"""The Python API: `seqrl.finetune(recipe, overrides=..., reward_functions=...)`.

    from seqrl import finetune, load_recipe

    result = finetune("recipes/quickstart.yaml", overrides={"run.max_steps": 100, "run.output_dir": "runs/try"},
                      reward_functions={"my_reward": my_reward})   # a recipe reward named my_reward
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
    the recipe whose `name` is a key of `reward_functions` is that callable (TRL's contract)."""
    from seqrl.runlog import last_scores
    from seqrl.session import finetune as run_recipe

    cfg = _recipe(recipe, overrides or {})
    _fresh_accelerator_state()
    final = run_recipe(cfg, reward_functions=reward_functions or {})
    out = Path(cfg.run.output_dir)
    best = out / "best"
    return FinetuneResult(out, final, best if best.is_dir() else None, last_scores(out))


def _recipe(recipe, overrides: dict[str, Any]) -> RecipeConfig:
    if isinstance(recipe, RecipeConfig):
        raw = to_dict(recipe)
    elif isinstance(recipe, dict):
        raw = yaml.safe_load(yaml.safe_dump(recipe))  # a copy, plain data
    elif isinstance(recipe, (str, Path)):
        raw = to_dict(load_recipe(recipe))
    else:
        raise ConfigError(f"finetune: recipe must be a YAML path, a dict or a RecipeConfig, got {type(recipe).__name__}")
    for key, value in overrides.items():
        set_value(raw, key, value, f"overrides['{key}']")
    return from_dict(raw)


def _fresh_accelerator_state() -> None:
    """accelerate keeps one state per process; a second run in this process may want another
    mixed precision or device. (Not under `accelerate launch`: the process group lives there.)"""
    if int(os.environ.get("WORLD_SIZE", "1")) == 1:
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=True)
