"""The recipe schema: typed dataclass sections, one docstring per field, defaults here only.

`load_recipe(path, overrides)` turns YAML into a `RecipeConfig`. It is strict on purpose:
an unknown key is an error with a "did you mean" hint, a value of the wrong type or out of
range names the field by its dotted path (`optim.lr`), and nothing is silently dropped.
Cross-field checks run in one place, `seqrl.config_checks`, right after loading. The sections of
the model, tokenizer and data live in `seqrl.model_config`, those of `reinforce` in
`seqrl.rl_config`; every section is importable from here.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seqrl.config_checks import check_recipe
from seqrl.errors import ConfigError
from seqrl.model_config import DataConfig, LoraSettings, ModelConfig, TokenizerConfig
from seqrl.rl_config import MbrConfig, ReinforceConfig, moved_key_problem, regrouped
from seqrl.strict_yaml import MAX_TEXT_BYTES, build, describe_yaml_error, dump_yaml, parse_yaml, plain

__all__ = ["DataConfig", "EvalConfig", "LogConfig", "LoraSettings", "MbrConfig", "ModelConfig", "OptimConfig",
           "RecipeConfig", "ReinforceConfig", "RewardConfig", "RunConfig", "ScheduleConfig", "TokenizerConfig",
           "XentConfig",
           "apply_override", "dump_recipe", "from_dict", "load_recipe", "read_text", "remove_value", "set_value",
           "to_dict"]


@dataclass
class XentConfig:
    batch_size: int = 32
    """Examples per process per micro-batch in the cross-entropy (teacher-forcing) stage."""
    label_smoothing: float = 0.0
    """Label smoothing of the cross-entropy loss (0 = none)."""


@dataclass
class ScheduleConfig:
    kind: Literal["xent", "mixer", "alternate", "constant"] = "mixer"
    """`xent` = cross-entropy only; `mixer` = Δ-annealed suffix sampling (Ranzato et al. 2016);
    `alternate` = whole XENT or REINFORCE batches, REINFORCE share annealed 0 -> 1;
    `constant` = w * XENT + (1 - w) * REINFORCE every step. See seqrl/schedule.py."""
    xent_steps: int | None = None
    """Optimizer steps of the pure cross-entropy stage (0 = start sequence-level training at once)."""
    xent_epochs: float | None = None
    """The same in epochs of the training split (exclusive with `xent_steps`)."""
    stage_steps: int | None = None
    """mixer: optimizer steps of each stage (each stage samples `delta` more target tokens)."""
    stage_epochs: float | None = None
    """mixer: the same in epochs (exclusive with `stage_steps`)."""
    final_stage_steps: int | None = None
    """mixer: optimizer steps of the last stage, the one that samples whole targets (empty = a
    stage like the others). Set it past `run.max_steps` or `run.max_minutes` to spend the rest of
    a budget there instead of ending when the stages do."""
    delta: int = 2
    """mixer: tokens added to the sampled suffix at each stage (the paper's Δ)."""
    xent_weight: float = 0.5
    """mixer/constant: w in w * XENT + (1 - w) * REINFORCE after the pure XENT stage."""
    rl_steps: int | None = None
    """alternate/constant: optimizer steps after the XENT stage."""
    rl_epochs: float | None = None
    """alternate/constant: the same in epochs (exclusive with `rl_steps`)."""
    anneal_steps: int | None = None
    """alternate: steps over which the REINFORCE share of batches rises from 0 to 1 (empty = all `rl_steps`)."""

    def samples(self) -> bool:
        """Whether any step trains on sampled outputs (every kind but `xent`): then rewards,
        rollouts and the sequence-level settings are in use."""
        return self.kind != "xent"


@dataclass
class RewardConfig:
    name: str = ""
    """A built-in reward (`seqrl rewards` lists them) or `package.module:function`."""
    weight: float = 1.0
    """Weight in the summed reward."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward function on every call."""
    init_kwargs: dict[str, Any] | None = None
    """Given, `name` is a factory (`trl.rewards:get_repetition_penalty_reward`), called once at
    set-up with these keyword arguments (`{ngram_size: 3}`); what it returns is the reward
    function. Empty = `name` is the reward function itself."""


@dataclass
class OptimConfig:
    lr: float = 5e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.01
    """AdamW decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.98)
    """AdamW betas."""
    eps: float = 1e-8
    """AdamW epsilon."""
    warmup_steps: int = 200
    """Linear warm-up from 0 to `lr` over this many optimizer steps."""
    decay: Literal["linear", "cosine", "constant"] = "linear"
    """Learning-rate shape after warm-up, down to 0 at the last step (`constant` stays at `lr`)."""
    grad_accum_steps: int = 1
    """Micro-batches accumulated into one optimizer step."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this; empty = no clipping."""


@dataclass
class EvalConfig:
    every: int = 500
    """Evaluate on `data.eval_split` every this many optimizer steps (0 = only at the end)."""
    max_examples: int | None = 500
    """Evaluate on the first N examples of the split during training (empty = all)."""
    batch_size: int = 64
    """Sources per decoding batch."""
    num_beams: int = 1
    """1 = greedy decoding, more = beam search (`decode: search`)."""
    decode: Literal["search", "mbr"] = "search"
    """`search`: greedy or beam search (`num_beams`); `mbr`: minimum Bayes risk, each source's
    candidate with the highest mean `mbr.utility` against its other candidates (the `mbr` section;
    `seqrl.mbr`). Used by evaluation during training, at the end and by `seqrl evaluate`."""
    max_new_tokens: int = 128
    """Longest output decoded."""
    test_after_xent: bool = True
    """Also decode `data.test_split` when the XENT stage ends (before sequence-level training),
    logged as `test/...` at that step: XENT and final scores from the same run. With no XENT
    stage (`schedule.xent_steps: 0`), before the first step: the start model's scores."""
    test_max_examples: int | None = None
    """Decode only the first N examples of `data.test_split`, after the XENT stage and at the end
    (empty = all). Scores on a part of the split are not comparable with those on all of it."""
    metrics: list[Literal["bleu", "chrf", "rouge1", "rouge2", "rougeL"]] = field(
        default_factory=lambda: ["bleu", "chrf", "rougeL"]
    )
    """Corpus metrics reported as `eval/<name>` (sacrebleu BLEU and chrF, rouge-score ROUGE F)."""
    best_metric: Literal["bleu", "chrf", "rouge1", "rouge2", "rougeL"] | None = None
    """Keep `best/` (model + tokenizer, like `final/`) from the evaluation with the highest
    `eval/<best_metric>`, with `best.json` saying which step; empty = keep no best model."""
    select_window: int = 1
    """Choose `best/` on the mean of `best_metric` over the last this many evaluations (fewer
    before there are as many), keeping the newest model of the best window; 1 = the single best
    evaluation. A window chooses a stretch of good scores rather than one lucky evaluation
    (`scripts/selection_check.py` measures both against test scores)."""
    patience: int = 0
    """Stop training after this many evaluations in a row without a new best `best_metric`
    (of the window's mean, with `select_window`; 0 = never stop early)."""
    at_start: bool = False
    """Also evaluate before the first step (logged at step 0): the starting model's score on the
    curve, and with `best_metric` a candidate for `best/`, which then only ever improves on it."""
    watch: list[Literal["bleu", "chrf", "rouge1", "rouge2", "rougeL"]] = field(default_factory=list)
    """Metrics of `eval.metrics` to watch against the training reward (`[chrf]` while training on
    BLEU): when, over the last `watch_evaluations` evaluations, the training reward's mean since
    each previous evaluation rose every time while a watched `eval/<metric>` fell every time, one
    warning line, `alarm/diverging_<metric>` = 1 in metrics.jsonl and the trackers, and a line in
    the model card (`seqrl.alarms`)."""
    watch_evaluations: int = 3
    """How many evaluations in a row `watch` compares (at least 2)."""
    degenerate_share: float = 0.5
    """Warn (one line, `alarm/degenerate_<eval|test split>` = 1, a line in the model card) when at
    least this share of an evaluation's outputs is empty, or is one and the same output; the shares
    are logged as `outputs/<eval|test split>_empty_share` and `_top_share` at every evaluation.
    1 = never warn."""


@dataclass
class RunConfig:
    output_dir: str = "runs/default"
    """Where metrics, checkpoints, predictions and `final/` go."""
    seed: int = 0
    """Seed of every random number generator (data order, initialisation, dropout)."""
    max_steps: int | None = None
    """Stop after this many optimizer steps, whatever else the recipe says."""
    save_every: int = 0
    """Write a checkpoint every this many optimizer steps (0 = by time only, `save_every_minutes`)."""
    save_every_minutes: float | None = 30.0
    """Write a checkpoint when this many minutes have passed since the last one (empty or 0 = by
    steps only). Once a run has a checkpoint (or with `save_every` > 0) it also writes one where it
    stops, at its last step or when `run.max_minutes` or `eval.patience` stops it, so it can be
    continued. SIGTERM or SIGUSR1 always end a run with a checkpoint (exit status 75)."""
    keep_checkpoints: int = 2
    """Keep only the newest N checkpoints."""
    overwrite: bool | Literal["delete"] = False
    """Allow an `output_dir` that already holds a run: `true` moves the earlier run's files aside
    to `<output_dir>.replaced-<UTC time>/`, `delete` removes them (either said in one line)."""
    resume: str | None = None
    """Continue from a checkpoint directory, or `auto` = the newest one in `output_dir` (a fresh
    start if there is none). The recipe must be the one the checkpoint was made with."""
    mixed_precision: Literal["no", "bf16", "fp16"] = "no"
    """accelerate mixed precision."""
    cpu: bool = False
    """Run on the CPU even when an accelerator is present."""
    max_minutes: float | None = None
    """Stop training after this many minutes of training time (then evaluate and save as usual;
    resumed runs count the time before the interruption); empty = no limit."""


@dataclass
class LogConfig:
    every: int = 25
    """Write training metrics every this many optimizer steps."""
    trackers: list[str] = field(default_factory=list)
    """accelerate trackers to send metrics to (`tensorboard`, `wandb`, ...); must be installed."""
    project: str = "seqrl"
    """Project/run-group name given to the trackers."""
    progress_bar: bool = True
    """Show progress bars for training and decoding, where standard error is a terminal (never in a
    redirected log, which would fill with their escape codes)."""
    samples_every: int = 100
    """Every this many sequence-level steps, write `samples` sampled rows (source, reference,
    sample, each reward, advantage) to samples.jsonl and the trackers (0 = never)."""
    samples: int = 4
    """Rows written each time (the first of the main process's batch)."""


@dataclass
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    """The model to fine-tune."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """Its tokenizer."""
    data: DataConfig = field(default_factory=DataConfig)
    """Where the examples come from and how they are cut."""
    xent: XentConfig = field(default_factory=XentConfig)
    """The cross-entropy (teacher-forcing) stage."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """Which stages run, and for how long."""
    reinforce: ReinforceConfig = field(default_factory=ReinforceConfig)
    """The sequence-level stages: candidates, estimator, baseline, decoding (`seqrl.rl_config`)."""
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig(name="bleu")])
    """Sequence-level rewards, summed with their weights."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic and final evaluation."""
    mbr: MbrConfig = field(default_factory=MbrConfig)
    """Minimum-Bayes-risk decoding (`eval.decode: mbr`) and MBR distillation's utility."""
    run: RunConfig = field(default_factory=RunConfig)
    """Output, seed, limits and checkpoints."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics logging."""


def load_recipe(path: str | Path, overrides: list[str] = (), unsets: list[str] = ()) -> RecipeConfig:
    """Read a YAML recipe, remove the `unsets` keys (their defaults apply), apply `a.b=value`
    overrides, and return the checked config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe file not found: {path}")
    text = read_text(path, MAX_TEXT_BYTES)
    try:
        raw = parse_yaml(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {describe_yaml_error(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(raw).__name__}")
    for key in unsets:
        remove_value(raw, key.strip(), f"--unset {key}")
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> RecipeConfig:
    """The checked config of a raw recipe dict (cross-field and range checks: `seqrl.config_checks`)."""
    if isinstance(raw.get("reinforce"), dict):
        problem = moved_key_problem(raw["reinforce"])
        if problem:
            raise ConfigError(problem)
    cfg = build(RecipeConfig, raw, prefix="")
    check_recipe(cfg)
    return cfg


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b=value` in a raw recipe dict; the value is parsed as YAML (`1e-4`, `[a, b]`, `null`)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value (like optim.lr=1e-4), got '{item}'")
    try:
        parsed = parse_yaml(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    except ConfigError as err:
        raise ConfigError(f"--set {key}: {err}") from None
    set_value(raw, key.strip(), parsed, f"--set {key}")


def set_value(raw: dict[str, Any], key: str, value: Any, where: str = "overrides") -> None:
    """Set dotted `key` (sections created as needed) in a raw recipe dict."""
    parts = key.split(".")
    node = raw
    for part in parts[:-1]:
        if node.get(part) is None:  # absent, or an empty section in the YAML
            node[part] = {}
        node = node[part]
        if not isinstance(node, dict):
            raise ConfigError(f"{where}: '{part}' is not a section")
    node[parts[-1]] = value


def remove_value(raw: dict[str, Any], key: str, where: str = "--unset") -> None:
    """Delete dotted `key` from a raw recipe dict, so that the schema's default applies to it; a key
    the recipe does not hold is an error (a misspelt one would otherwise change nothing, silently)."""
    *sections, last = key.split(".")
    node = raw
    for part in sections:
        node = node.get(part) if isinstance(node, dict) else None
    if not isinstance(node, dict) or last not in node:
        raise ConfigError(f"{where}: the recipe has no '{key}' to remove (its default applies already, "
                          f"or the name is misspelt: `seqrl recipe --defaults` lists them)")
    del node[last]


def read_text(path: Path, limit: int) -> str:
    """A text file's contents as UTF-8, refusing files over `limit` bytes or not UTF-8."""
    with path.open("rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise ConfigError(f"{path} is over {limit:,} bytes; a recipe is a short YAML file")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise ConfigError(f"{path} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                          f"save it as UTF-8") from None


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain data (tuples become lists), for YAML dumps and trackers."""
    return plain(dataclasses.asdict(cfg))


def dump_recipe(cfg: RecipeConfig) -> str:
    return dump_yaml(to_dict(cfg))


def recipe_as_today(text: str) -> str:
    """A recipe saved by an older seqrl (a checkpoint's), read with today's layout and defaults,
    so that a resume lists only the settings that really changed. As saved when it no longer
    loads (beyond the regrouped `reinforce` section)."""
    raw = parse_yaml(text)
    if isinstance(raw.get("reinforce"), dict):
        raw["reinforce"] = regrouped(raw["reinforce"])
    try:
        return dump_recipe(from_dict(raw))
    except ConfigError:
        return dump_yaml(raw)

