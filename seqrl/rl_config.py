"""The recipe's `reinforce` section, grouped by concern: which candidates a step makes
(`candidates`), the loss on them (`estimator`), the control variate (`baseline`) and how rollouts
decode (`decoding`). Each part of a MIXER step receives its own sub-section only. Also the `mbr`
section: minimum-Bayes-risk decoding and the utility MBR distillation shares with it.

Part of the schema in `seqrl.config` (one docstring per field, defaults here only)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class CandidatesConfig:
    kind: Literal["sample", "beam", "both"] = "sample"
    """Each source's candidates after its gold prefix: `num_samples` samples, `num_samples` beams
    (`seqrl.beam`), or both (2 x num_samples). Beams are not draws from the policy, so they are
    for `estimator.kind: risk` only."""
    num_samples: int = 4
    """Samples per source (k); the `loo` baseline needs at least 2."""
    temperature: float = 1.0
    """Sampling temperature (1 = the model's distribution, which REINFORCE's gradient assumes)."""
    reference: bool = False
    """`risk`: also the reference as one more candidate per source (Shen et al. and Edunov et al.
    add it): the gold prefix then the gold suffix, its cost -reward(reference) and its log p the
    model's teacher-forced one (without the generation constraints, which bind only what is
    decoded). It joins q, never the logged rewards, the KL penalty or the prefix's XENT."""


@dataclass
class EstimatorConfig:
    kind: Literal["reinforce", "risk", "mbr"] = "reinforce"
    """The sequence-level loss (`seqrl.objectives`): `reinforce`, the score-function estimator
    with the baseline below; `risk`, expected risk over each source's candidates, q = softmax of
    risk_alpha * log p of each sampled suffix, cost = -reward (Shen et al. 2016, Edunov et al. 2018);
    `mbr`, MBR distillation: cross-entropy toward each source's MBR choice among its candidates,
    by `mbr.utility` (Finkelstein et al. 2024), which needs no reference."""
    risk_alpha: float = 1.0
    """`risk`: the sharpness alpha of q over the candidates."""
    risk_length_normalize: bool = False
    """`risk`: q = softmax of risk_alpha * the mean token log p of each suffix instead of its sum
    (which makes q nearly one-hot and the risk's gradient near zero: `seqrl.objectives`)."""


@dataclass
class BaselineConfig:
    kind: Literal["none", "mean", "ema", "loo", "greedy", "learned"] = "loo"
    """Control variate b in -(R - b) log p: `loo` leave-one-out over the k samples of a source,
    `greedy` reward of the greedy decode (self-critical), `mean` batch mean, `ema` running mean,
    `learned` MIXER's per-position linear regressor on the detached decoder state, `none`."""
    normalize_advantages: bool = False
    """Divide advantages by their batch standard deviation (after subtracting the mean)."""
    ema_decay: float = 0.9
    """`ema`: b <- decay * b + (1 - decay) * mean reward of the batch."""
    lr: float = 3e-3
    """`learned`: learning rate of its regressor, constant through the run (no warm-up, decay or
    `reinforce.lr` factor). MIXER's 0.01 x the network's rate moves an Adam-trained regressor
    ~1e-6 a step, which left it at its initial output; 3e-3 tracked the reward on the
    summarization benchmark (docs/results.md)."""


@dataclass
class DecodingConfig:
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
class ReinforceConfig:
    batch_size: int | None = None
    """Sources per process per micro-batch after the XENT stage, each with its candidates
    (empty = `xent.batch_size`)."""
    lr: float | None = None
    """Constant learning rate of the sequence-level stages; the `optim` warm-up and decay then
    span the XENT stage only. Empty = one `optim` schedule over the whole run."""
    chunk_sources: int | None = None
    """Decode, and run the teacher-forced pass (forward and backward), over this many sources,
    with their candidates, at a time: the same samples and update, with the decode's KV cache and
    logits and that pass's activation memory divided by batch_size / chunk_sources, so that
    `batch_size` is not capped by memory. Empty = all at once."""
    kl_coef: float = 0.0
    """Weight of a KL penalty to the model as sequence-level training starts (a frozen copy; with
    LoRA the base with adapters off: `seqrl.reference`)."""
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    """What each source's rows are: samples, beams, the reference."""
    estimator: EstimatorConfig = field(default_factory=EstimatorConfig)
    """The sequence-level loss on the candidates."""
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    """REINFORCE's control variate and advantage normalization."""
    decoding: DecodingConfig = field(default_factory=DecodingConfig)
    """How rollouts decode: KV cache, compiled step, end-of-rows checks (speed only: same samples)."""


@dataclass
class MbrConfig:
    num_candidates: int = 8
    """Candidates per source that MBR decoding (`eval.decode: mbr`) chooses among (at least 2)."""
    candidates: Literal["sample", "beam", "both"] = "sample"
    """MBR decoding's candidates: `num_candidates` samples at `temperature`, `num_candidates` beams
    (`seqrl.beam`), or both (2 x num_candidates)."""
    temperature: float = 1.0
    """Sampling temperature of MBR decoding's sampled candidates."""
    utility: str = "token_bleu"
    """The utility u(candidate, pseudo-reference): any reward (`seqrl rewards`, or
    `package.module:function`), called with one candidate as the completion and another as the
    reference. Used by MBR decoding and by `reinforce.estimator.kind: mbr`."""
    utility_kwargs: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments of the utility (as a reward's `kwargs`)."""
    pair_batch: int = 4096
    """Candidate pairs scored per call of the utility (a model-based utility's batch)."""
    write_candidates: bool = False
    """Write every source's candidates, their log-probabilities and the utility matrix to
    `<predictions file>.mbr.jsonl` beside the predictions."""


MOVED = {  # the flat `reinforce` keys before the sections, and where each went
    "num_samples": "candidates.num_samples", "temperature": "candidates.temperature",
    "candidates": "candidates.kind", "reference_candidate": "candidates.reference",
    "estimator": "estimator.kind", "risk_alpha": "estimator.risk_alpha",
    "risk_length_normalize": "estimator.risk_length_normalize",
    "baseline": "baseline.kind", "normalize_advantages": "baseline.normalize_advantages",
    "ema_decay": "baseline.ema_decay", "baseline_lr": "baseline.lr",
    "kv_cache": "decoding.kv_cache", "compile": "decoding.compile", "check_every": "decoding.check_every",
}
REMOVED = {  # settings that went, and why
    "top_k": "REINFORCE's gradient assumes samples of the model's own distribution; nothing showed top-k useful",
    "top_p": "REINFORCE's gradient assumes samples of the model's own distribution; nothing showed top-p useful",
}


def moved_key_problem(section: dict) -> str | None:
    """The one-line message for a flat key of the old `reinforce` layout, or None."""
    for key, value in section.items():
        if key in REMOVED:
            return f"reinforce.{key} was removed: {REMOVED[key]}"
        new = MOVED.get(key)
        if new is None or (key == new.split(".")[0] and isinstance(value, dict)):
            continue  # (`candidates`, `estimator`, `baseline` are sections now: a mapping is the new form)
        return (f"reinforce.{key} moved to reinforce.{new} (the reinforce section is grouped by concern); "
                f"write `reinforce: {{{new.split('.')[0]}: {{{new.split('.')[1]}: ...}}}}`")
    return None


def regrouped(section: dict) -> dict:
    """An old flat `reinforce` section in the grouped layout (REMOVED keys dropped): how a
    checkpoint's recipe from before the regrouping reads today, to diff it on resume."""
    out: dict = {}
    for key, value in section.items():
        new = MOVED.get(key)
        if key in REMOVED:
            continue
        if new is None or (key == new.split(".")[0] and isinstance(value, dict)):
            out[key] = {**out.get(key, {}), **value} if isinstance(value, dict) else value
        else:
            group, name = new.split(".")
            out.setdefault(group, {})[name] = value
    return out
