"""The recipe's sections for what is trained on: the model (and its LoRA adapters), the
tokenizer, the data. Part of the schema in `seqrl.config` (one docstring per field, defaults here
only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


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
    train_new_weights: bool = True
    """Train in full (peft's `modules_to_save`) the modules whose weights the checkpoint did not
    hold and transformers initialised at load (a warm-started bert2bert's cross-attention), as
    the run header lists; false leaves them frozen at their random start, like the base."""


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
    max_train_examples: int | None = None
    """A tokenizer trained here reads the source and target of at most this many training
    examples, drawn at random with `data.split_seed` (every example is still tokenized with it);
    empty = all of them."""
    languages: list[str] = field(default_factory=list)
    """ISO 639 codes of the data's languages for a tokenizer without language codes: `[en, es]`,
    source then target, or one code when both sides share it (`[en]`, e.g. summarization).
    They give the model card its `language` and task, and `language_id` its target. Empty = the
    language part of `src_lang` / `tgt_lang`."""


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
    reference_free: bool = False
    """The training split's rows need no target (its `target_field` may be absent): train toward
    what needs no reference, MBR distillation (`reinforce.estimator.kind: mbr`) with rewards that
    read no reference (`language_id`, your own), in a `schedule.kind: constant` with no XENT
    (`xent_steps: 0`, `xent_weight: 0`). Evaluation still scores against references: `eval_split`
    (and `test_split`) must be labelled files, not carved from training."""
    empty_targets: Literal["skip", "error"] = "skip"
    """What to do with rows whose target is empty, whitespace-only or null, or whose source is null:
    skip them (counted and reported) or stop. (An empty-string source is kept: it is text.)"""
    cache_dir: str | None = None
    """Where tokenized splits are cached as Arrow files, one directory per split and everything its
    ids depend on (files, tokenizer, fields, prefix, limits); later starts open them instead of
    tokenizing. Empty = `seqrl-tokenized` in the `datasets` cache (`HF_DATASETS_CACHE`)."""
    num_proc: int | None = None
    """Processes that tokenize a split when it is not cached (`datasets.map(num_proc=)`); empty = one."""
    group_by_length: bool = False
    """Training batches of rows of similar length (less padding): the shuffled rows are sorted by
    length within windows of 50 global batches, whose batches are then shuffled. Still a function
    of (run.seed, epoch), the same on any number of processes."""
