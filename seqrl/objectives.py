"""The sequence-level loss of a MIXER step, chosen once at set-up (`reinforce.estimator.kind`).

- `Reinforce`: the score-function estimator, -(1/N) sum_i A_i sum_t log p(y_it), with A = R - b
  from the run's baseline (`seqrl.baselines`).
- `ExpectedRisk`: minimum risk training (Shen et al. 2016), the sequence-level risk loss of
  Edunov et al. (2018): sum_i q_i cost_i over each source's k candidates, q = softmax(alpha *
  log p(y_i)), cost = -reward (equivalently 1 - reward: q sums to 1). Under MIXER the candidates
  share the source's gold prefix, so log p(y_i) is that of the sampled suffix; the teacher-forced
  prefix keeps its XENT term, as with REINFORCE. No baseline enters the loss (the q-weighted mean
  plays its part); the run's baseline still gives the logged advantages.

- `MbrDistill`: MBR distillation (Finkelstein et al. 2024): -(1/B) sum_b sum_t log p(y*_bt), the
  summed log-probability of each source's MBR choice y* among its k candidates (`seqrl.mbr`: the
  highest mean `mbr.utility` against the source's other candidates, ties to the likelier one).
  No reward or reference enters the loss, so it trains on sources without targets; the rewards
  are still computed and logged.

Candidates are samples, beams (`seqrl.beam`) or both (`reinforce.candidates.kind`), and optionally
the reference (`reinforce.candidates.reference`: one more row per source, the gold suffix after the
same gold prefix, scored in the same teacher-forced pass as the others). The reference's log p is
unconstrained (the generation constraints bind decoded tokens only), so q may weigh it against
candidates whose log p is that of the masked distribution they were drawn from.

`reinforce.estimator.risk_length_normalize` puts the mean token log-probability of each suffix in q in
place of its sum (a departure from Shen et al. and Edunov et al., who use the sum). Our reading of
the benchmark (docs/results.md, expected risk): summed log p grows with length and differs by
many nats between candidates, so q concentrates on the likeliest one, whose cost is close to q's
mean, and the gradient alpha * q_i * (cost_i - mean) is small for every candidate. The risk's
logged gradient norm was a tenth of the prefix XENT's beside it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from seqrl.losses import mbr_distill_loss, reinforce_loss, risk_loss
from seqrl.mbr import mbr_choice, utility_matrix
from seqrl.rewards import Reward
from seqrl.rl_config import EstimatorConfig


@dataclass(frozen=True)
class ScoredRows:
    """One chunk of a step's candidate rows, as a sequence-level loss sees them."""

    logprobs: torch.Tensor
    """(n, T) log p of each token, with gradients (at sampled ones, of the distribution sampled from)."""
    suffix_mask: torch.Tensor
    """(n, T) true on each row's suffix after the gold prefix (sampled, beam or reference tokens)."""
    rewards: torch.Tensor
    """(n,) each row's reward."""
    advantages: torch.Tensor
    """(n,) or (n, T) A = R - b, detached (0 on reference rows)."""
    k: int
    """Rows per source (the chunk holds whole sources)."""
    step_rows: int
    """N, the rows of the whole step (a chunk's loss is its share of the step's mean)."""
    tokens: torch.Tensor | None = None
    """(n, T) the rows' tokens (the suffix where `suffix_mask` is true): what MBR's utility reads."""


class Objective(Protocol):
    def __call__(self, rows: ScoredRows) -> torch.Tensor:
        """The loss over one chunk of rows."""
        ...


@dataclass(frozen=True)
class Reinforce:
    def __call__(self, rows: ScoredRows) -> torch.Tensor:
        return reinforce_loss(rows.logprobs, rows.suffix_mask, rows.advantages, rows=rows.step_rows)


@dataclass(frozen=True)
class ExpectedRisk:
    alpha: float
    """The sharpness of q (Shen et al.'s alpha; Edunov et al. use 1 over the sequence log-probability)."""
    length_normalize: bool = False
    """q from each suffix's mean token log-probability instead of its sum."""

    def __call__(self, rows: ScoredRows) -> torch.Tensor:
        mask = rows.suffix_mask.to(rows.logprobs.dtype)
        suffix_logprobs = (rows.logprobs * mask).sum(dim=1)  # (n,)
        if self.length_normalize:
            suffix_logprobs = suffix_logprobs / mask.sum(dim=1).clamp(min=1)
        return risk_loss(suffix_logprobs, -rows.rewards, rows.k, self.alpha, sources=rows.step_rows // rows.k)


def summed_suffix_logprobs(rows: ScoredRows) -> torch.Tensor:
    """(B, k) each row's log p of its sampled suffix."""
    mask = rows.suffix_mask.to(rows.logprobs.dtype)
    return (rows.logprobs * mask).sum(dim=1).view(-1, rows.k)


@dataclass(frozen=True)
class MbrDistill:
    utility: Reward
    """`mbr.utility`, scoring one candidate against another."""
    eos: int
    """End-of-sequence id, stripped before the utility sees a candidate."""
    detokenize: Callable[[list[list[int]]], list[str]]
    """Ids -> texts, for a utility that reads text."""
    pair_batch: int = 4096
    """Candidate pairs per utility call (`mbr.pair_batch`)."""

    def __call__(self, rows: ScoredRows) -> torch.Tensor:
        suffix_logprobs = summed_suffix_logprobs(rows)
        chosen = self.choose(rows, suffix_logprobs.detach().cpu())
        picked = suffix_logprobs.gather(1, chosen.to(suffix_logprobs.device)[:, None])
        return mbr_distill_loss(picked.squeeze(1), sources=rows.step_rows // rows.k)

    def choose(self, rows: ScoredRows, scores: torch.Tensor | None = None) -> torch.Tensor:
        """(B,) each source's MBR candidate among its k rows; ties go to the higher `scores` (B, k),
        the rows' summed suffix log p (computed here when not given)."""
        if scores is None:
            scores = summed_suffix_logprobs(rows).detach().cpu()
        if rows.tokens is None:
            raise ValueError("MbrDistill needs the rows' tokens (ScoredRows.tokens)")
        ids = [[tok for tok, keep in zip(row, mask, strict=True) if keep]
               for row, mask in zip(rows.tokens.tolist(), rows.suffix_mask.tolist(), strict=True)]
        ids = [r[:-1] if r and r[-1] == self.eos else r for r in ids]
        grouped = [ids[b:b + rows.k] for b in range(0, len(ids), rows.k)]
        texts = [self.detokenize(group) for group in grouped] if self.utility.reads_text else None
        utility = utility_matrix(self.utility, grouped, texts, self.pair_batch)
        return mbr_choice(utility, scores)


def build(cfg: EstimatorConfig, utility: Reward | None = None, text_model=None, pair_batch: int = 4096
          ) -> Objective:
    """The recipe's estimator; `mbr` needs the built utility and the model's tokenizer."""
    if cfg.kind == "mbr":
        return MbrDistill(utility, text_model.tokenizer.eos_token_id, text_model.decode, pair_batch)
    return ExpectedRisk(cfg.risk_alpha, cfg.risk_length_normalize) if cfg.kind == "risk" else Reinforce()
