"""The recipe schema: typed dataclass sections, one docstring per field, defaults here only.

`load_recipe(path, overrides)` turns YAML into a `RecipeConfig`. It is strict on purpose:
an unknown key is an error with a "did you mean" hint, a value of the wrong type or out of
range names the field by its dotted path (`optim.lr`), and nothing is silently dropped.
Derived values are computed in one place, `RecipeConfig.check`, right after loading.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from seqrl.errors import ConfigError
from seqrl.strict_yaml import MAX_TEXT_BYTES, build, describe_yaml_error, dump_yaml, parse_yaml, plain


@dataclass
class LoraSettings:
    rank: int = 16
    """Rank r of each adapter (B A, with A r x in and B out x r)."""
    alpha: float = 32.0
    """Scale: the adapter's output is multiplied by alpha / rank."""
    dropout: float = 0.05
    """Dropout on the adapter's input."""
    target_modules: list[str] | None = None
    """Names of the linear layers to adapt (`[q_proj, v_proj]`); empty = the family's default
    (peft's for T5, BART, GPT-2 and most LLMs; the attention q/v projections for Marian, mBART,
    NLLB/M2M100, Pegasus and bert2bert)."""


@dataclass
class ModelConfig:
    name_or_path: str | None = None
    """Hub name or local directory for `from_pretrained`; leave empty to build from `architecture`."""
    architecture: str | None = None
    """transformers model type to build from a config (`bart`, `marian`, `t5`, `gpt2`, ...)."""
    config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for the architecture's config class (`d_model`, `encoder_layers`, ...)."""
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    """Dtype the weights are loaded in (mixed precision is `run.mixed_precision`)."""
    lora: LoraSettings | None = None
    """Train LoRA adapters through peft instead of every weight (`lora: {rank: 16}`); empty =
    full fine-tuning. `final/` holds merged weights, with the adapter in `final/adapter/`."""
    gradient_checkpointing: bool = False
    """Recompute activations in the backward pass instead of keeping them (less memory, more time),
    in the XENT pass and MIXER's teacher-forced pass."""
    generation: dict[str, Any] = field(default_factory=dict)
    """Overrides of the model's own `generation_config` (`no_repeat_ngram_size: 3`,
    `forced_bos_token_id: null` removes one), used by training rollouts and evaluation alike;
    see seqrl/generation.py for what rollouts honour."""


@dataclass
class TokenizerConfig:
    name_or_path: str | None = None
    """Hub name or directory of a pretrained tokenizer; empty = the model's, or train one."""
    algorithm: Literal["bpe", "unigram"] = "bpe"
    """Algorithm of a tokenizer trained on the training texts (source and target together)."""
    vocab_size: int = 8000
    """Vocabulary size of a trained tokenizer, special tokens included."""
    min_frequency: int = 2
    """A pair or piece must occur this often in the training texts to enter a trained vocabulary."""
    lowercase: bool = False
    """Lowercase (and NFKC-normalise) text before a trained tokenizer sees it."""
    src_lang: str | None = None
    """Source language code of a multilingual tokenizer (`en_XX` for mBART-50, `eng_Latn` for
    NLLB, `en` for M2M100)."""
    tgt_lang: str | None = None
    """Target language code; where the tokenizer starts targets with it, generation is forced
    to start with it too (`forced_bos_token_id`)."""


@dataclass
class DataConfig:
    path: str | None = None
    """A directory of `{split}.jsonl|json|csv|parquet[.gz]` files, a `save_to_disk` directory, or a hub dataset name."""
    files: dict[str, str] = field(default_factory=dict)
    """Split name -> file, instead of `path` (for files named otherwise)."""
    hub_config: str | None = None
    """Configuration name of a hub dataset (`load_dataset(path, hub_config)`)."""
    source_field: str = "source"
    """Column holding the model input; a dotted name reads a nested column (`translation.en`)."""
    target_field: str = "target"
    """Column holding the reference output (`translation.es`)."""
    source_prefix: str = ""
    """Text put before every source (e.g. T5's `translate English to Spanish: `)."""
    train_split: str = "train"
    """Split trained on."""
    eval_split: str = "validation"
    """Split evaluated during training."""
    test_split: str | None = "test"
    """Split evaluated once after training; empty to skip."""
    max_source_tokens: int = 128
    """Sources are cut to this many tokens; the cut is counted and reported."""
    max_target_tokens: int = 128
    """Targets are cut to this many tokens (end-of-sequence included); counted and reported."""
    max_train_examples: int | None = None
    """Use only the first N training examples (for quick trials and tests)."""
    validation_from_train: float | None = None
    """Carve `eval_split` out of the training split (for data without one): a fraction below 1,
    or a number of examples. They are removed from training; `split_seed` draws them."""
    split_seed: int = 0
    """Seed of `validation_from_train`'s draw (apart from `run.seed`, so that every training seed
    sees the same validation examples)."""
    empty_targets: Literal["skip", "error"] = "skip"
    """What to do with rows whose target is empty, whitespace-only or null, or whose source is null:
    skip them (counted and reported) or stop. (An empty-string source is kept: it is text.)"""


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


@dataclass
class ReinforceConfig:
    baseline: Literal["none", "mean", "ema", "loo", "greedy", "learned"] = "loo"
    """Control variate b in -(R - b) log p: `loo` leave-one-out over the k samples of a source,
    `greedy` reward of the greedy decode (self-critical), `mean` batch mean, `ema` running mean,
    `learned` MIXER's per-position linear regressor on the detached decoder state, `none`."""
    batch_size: int | None = None
    """Sources per process per micro-batch after the XENT stage, each sampled `num_samples`
    times (empty = `xent.batch_size`)."""
    num_samples: int = 4
    """Samples per source (k); `loo` needs at least 2."""
    chunk_sources: int | None = None
    """Decode, and run the teacher-forced pass (forward and backward), over this many sources,
    with their k samples, at a time: the same samples and update, with the decode's KV cache and
    logits and that pass's activation memory divided by batch_size / chunk_sources, so that
    `batch_size` is not capped by memory. Empty = all at once."""
    temperature: float = 1.0
    """Sampling temperature (1 = the model's distribution, which REINFORCE's gradient assumes)."""
    top_k: int = 0
    """Sample among the k most likely tokens only (0 = all)."""
    top_p: float = 1.0
    """Nucleus sampling mass (1 = all)."""
    normalize_advantages: bool = False
    """Divide advantages by their batch standard deviation (after subtracting the mean)."""
    ema_decay: float = 0.9
    """`ema` baseline: b <- decay * b + (1 - decay) * mean reward of the batch."""
    baseline_lr: float = 3e-3
    """`learned` baseline: learning rate of its regressor, constant through the run (no warm-up,
    decay or `reinforce.lr` factor). MIXER's 0.01 x the network's rate moves an Adam-trained
    regressor ~1e-6 a step, which left it at its initial output; 3e-3 tracked the reward on the
    summarization benchmark (docs/results.md)."""
    lr: float | None = None
    """Constant learning rate of the sequence-level stages; the `optim` warm-up and decay then
    span the XENT stage only. Empty = one `optim` schedule over the whole run."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to a frozen copy of the model taken when sequence-level training starts."""
    estimator: Literal["reinforce", "risk"] = "reinforce"
    """The sequence-level loss (`seqrl.objectives`): `reinforce`, the score-function estimator
    with the baseline above; `risk`, expected risk over each source's k samples, q = softmax of
    risk_alpha * log p of each sampled suffix, cost = -reward (Shen et al. 2016, Edunov et al. 2018)."""
    risk_alpha: float = 1.0
    """`risk`: the sharpness alpha of q over the candidates."""
    risk_length_normalize: bool = False
    """`risk`: q = softmax of risk_alpha * the mean token log p of each suffix instead of its sum
    (which makes q nearly one-hot and the risk's gradient near zero: `seqrl.objectives`)."""
    candidates: Literal["sample", "beam", "both"] = "sample"
    """Each source's candidates after its gold prefix: `num_samples` samples, `num_samples` beams
    (`seqrl.beam`), or both (2 x num_samples). Beams are not draws from the policy, so they are
    for `estimator: risk` only."""
    reference_candidate: bool = False
    """`risk`: also the reference as one more candidate per source (Shen et al. and Edunov et al.
    add it): the gold prefix then the gold suffix, its cost -reward(reference) and its log p the
    model's teacher-forced one (without the generation constraints, which bind only what is
    decoded). It joins q, never the logged rewards, the KL penalty or the prefix's XENT."""
    kv_cache: Literal["auto", "static", "dynamic"] = "auto"
    """Rollouts' KV cache: `static` is allocated once at its final size (fixed shapes, which
    `compile` needs), `dynamic` grows each token. `auto`: static where transformers marks the
    model class compilable, else dynamic. The samples are the same either way."""
    compile: bool | None = None
    """Compile the per-token decoder step with torch.compile (CUDA graphs on a GPU); needs the
    static cache. The same samples as eager; compile time is logged apart (time/compile_s).
    Empty: on on a GPU (untimed there yet); off on CPU, where it made a step 1.04x to 1.16x
    faster (docs/speed.md), costs seconds of compiling per new shape and needs a C++ compiler:
    set true for long CPU runs."""
    check_every: int | None = None
    """Look for "every row has ended" (a host-device sync) every this many decoded tokens; rows
    that ended are padded meanwhile, so the samples are the same for any value. Empty: 1 on CPU
    (a check costs nothing there), 8 on a GPU."""


@dataclass
class RewardConfig:
    name: str = ""
    """A built-in reward (`bleu`, `chrf`, `ter`, `rouge1`, `rouge2`, `rougeL`) or `package.module:function`."""
    weight: float = 1.0
    """Weight in the summed reward."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments passed to the reward function on every call."""


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
    """1 = greedy decoding, more = beam search."""
    max_new_tokens: int = 128
    """Longest output decoded."""
    test_after_xent: bool = True
    """Also decode `data.test_split` when the XENT stage ends (before sequence-level training),
    logged as `test/...` at that step: XENT and final scores from the same run."""
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
    """Show progress bars for training and decoding."""
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
    """The REINFORCE estimator of the sequence-level stages."""
    rewards: list[RewardConfig] = field(default_factory=lambda: [RewardConfig(name="bleu")])
    """Sequence-level rewards, summed with their weights."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Optimizer and learning-rate schedule."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Periodic and final evaluation."""
    run: RunConfig = field(default_factory=RunConfig)
    """Output, seed, limits and checkpoints."""
    log: LogConfig = field(default_factory=LogConfig)
    """Metrics logging."""

    def check(self) -> None:
        """Cross-field and range checks (`seqrl.config_checks`); each error names the dotted field."""
        from seqrl.config_checks import check_recipe
        check_recipe(self)


def load_recipe(path: str | Path, overrides: list[str] = ()) -> RecipeConfig:
    """Read a YAML recipe, apply `a.b=value` overrides, and return the checked config."""
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
    for item in overrides:
        apply_override(raw, item)
    return from_dict(raw)


def from_dict(raw: dict[str, Any]) -> RecipeConfig:
    cfg = build(RecipeConfig, raw, prefix="")
    cfg.check()
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
