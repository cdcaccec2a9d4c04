"""The loss of one chunk of a MIXER step's candidates: w * XENT(gold prefix) + (1 - w) * the
sequence-level loss on the suffixes [+ the baseline's own loss] [+ kl_coef * KL to the reference].

`StepTerms` holds what every chunk of a step shares (masks, their global counts, the objective,
the advantages, the reference); `chunk_loss` is the maths of one chunk, from one teacher-forced
pass. Called by `seqrl.steps.mixer_step`, which owns the backward passes.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from seqrl.baselines import Advantages
from seqrl.generation import masked_token_logprobs
from seqrl.losses import kl_penalty, masked_mean
from seqrl.objectives import Objective, ScoredRows
from seqrl.reference import Reference
from seqrl.rollout import Rollout, rollout_logits


@dataclass
class StepTerms:
    """What every chunk of one step shares. Masks are (N, T) over the step's rows."""

    objective: Objective
    advantages: Advantages
    reference: Reference | None
    rewards: torch.Tensor
    """(N,) each row's reward."""
    k: int
    """Rows per source."""
    prefix_mask: torch.Tensor
    """Gold-prefix positions of decoded rows (the prefix XENT's)."""
    suffix_mask: torch.Tensor
    """Every row's suffix (the sequence-level loss's: the reference rows' too)."""
    drawn_mask: torch.Tensor
    """Decoded rows' suffix (REINFORCE's samples: the KL's and the learned baseline's)."""
    n_prefix: torch.Tensor
    """Global count of `prefix_mask` per process: the normalizer that makes N processes equal one."""
    n_drawn: torch.Tensor
    """The same for `drawn_mask`."""
    xent_weight: float
    """w; 1 - w weighs the sequence-level loss."""
    prefix_xent: bool
    """XENT on the gold prefixes here (False: the step puts XENT on whole gold targets instead)."""
    autocast: Callable
    """The accelerator's autocast context, around the model's forward pass."""


def chunk_loss(model, chunk: Rollout, rows: slice, terms: StepTerms, is_seq2seq: bool
               ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """This chunk's share of the step's loss, and its parts (detached: xent, reinforce, baseline,
    kl, advantage). `rows`: the chunk's rows among the step's N."""
    t = terms
    drawn = t.drawn_mask[rows]
    # 1. One teacher-forced pass over gold prefix + suffix, with gradients.
    with t.autocast():
        logits, labels, hidden = rollout_logits(model, chunk, is_seq2seq=is_seq2seq,
                                                hidden=t.advantages.needs_hidden)
    masks = chunk.sample_masks(drawn, logits.shape[-1])  # the generation constraints at sampled tokens
    logp = masked_token_logprobs(logits, labels, masks)                          # (n, T)
    # 2. Advantages A = R - b of these rows, and the baseline's own loss (the learned one's MSE).
    advantage, baseline_loss = t.advantages.chunk(rows, hidden, drawn, t.n_drawn)
    # 3. XENT on the gold prefixes, the sequence-level loss on the suffixes.
    xent = -masked_mean(logp, t.prefix_mask[rows], t.n_prefix) if t.prefix_xent else logp.new_zeros(())
    sequence = t.objective(ScoredRows(logp, t.suffix_mask[rows], t.rewards[rows], advantage, t.k,
                                      t.suffix_mask.shape[0], chunk.sequences))
    loss = t.xent_weight * xent + (1 - t.xent_weight) * sequence + baseline_loss
    # 4. KL to the reference policy, on the sampled tokens.
    kl = logp.new_zeros(())
    if t.reference is not None:
        with torch.no_grad():
            ref_logp = masked_token_logprobs(t.reference.logits(chunk, is_seq2seq), labels, masks)
        kl = kl_penalty(logp, ref_logp, drawn, t.n_drawn)
        loss = loss + t.reference.coef * kl
    parts = {"xent": xent, "reinforce": sequence, "baseline": baseline_loss, "kl": kl, "advantage": advantage}
    return loss, {name: value.detach() for name, value in parts.items()}
