"""Pure tensor functions for the losses (no model, no config): unit-tested with hand-computed numbers."""

from __future__ import annotations

import torch
import torch.nn.functional as F

IGNORE_INDEX = -100  # label of a position that predicts nothing (padding, prompt): transformers' convention


def xent_sum(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed cross-entropy over the positions whose label is not IGNORE_INDEX, and their number.

    logits (B, T, V), labels (B, T). Computed in float32 whatever the logits' dtype, so bf16
    runs do not lose the loss to rounding.
    """
    n_tokens = (labels != IGNORE_INDEX).sum()
    loss = F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=IGNORE_INDEX,
                           label_smoothing=label_smoothing, reduction="sum")
    return loss, n_tokens


def masked_xent(logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy over the scored positions, and their number."""
    loss, n_tokens = xent_sum(logits, labels, label_smoothing)
    return loss / n_tokens.clamp(min=1), n_tokens


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(tokens[b, t] | ...) from logits (B, T, V), in float32; tokens may hold IGNORE_INDEX."""
    safe = tokens.clamp(min=0)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, safe.unsqueeze(-1)).squeeze(-1)  # (B, T)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, normalizer: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of `values` where mask is true, divided by `normalizer` (default: the mask's count;
    0 when the mask is empty). Training passes a global count so processes average exactly."""
    mask = mask.to(values.dtype)
    return (values * mask).sum() / (mask.sum().clamp(min=1) if normalizer is None else normalizer)


def reinforce_loss(logprobs: torch.Tensor, mask: torch.Tensor, advantages: torch.Tensor,
                   rows: int | None = None) -> torch.Tensor:
    """The REINFORCE surrogate: -(1/N) sum_i sum_t A_i(t) log p(y_it), over sampled positions.

    logprobs (N, T) of the sampled tokens, mask (N, T) true on sampled positions, advantages
    (N,) per sequence or (N, T) per position, detached: its gradient is the score-function
    estimate of -grad E[R] (the reward itself is never differentiated). `rows` is N when these
    are one chunk of a larger batch (default: the rows given).
    """
    adv = advantages.detach()
    if adv.dim() == 1:
        adv = adv.unsqueeze(1)
    return -(adv * logprobs * mask.to(logprobs.dtype)).sum() / (rows or logprobs.shape[0])


def normalize(advantages: torch.Tensor, mask: torch.Tensor | None = None, eps: float = 1e-6,
              all_reduce=lambda t: t) -> torch.Tensor:
    """(A - mean) / (std + eps) over the valid entries (all of a (N,) tensor, the mask of (N, T)).

    `all_reduce` sums a tensor over processes, so the statistics are those of the global batch.
    """
    if mask is None:
        mask = torch.ones_like(advantages, dtype=torch.bool)
    valid = advantages[mask].double()
    total, total_sq, n = all_reduce(torch.stack([valid.sum(), (valid ** 2).sum(),
                                                 valid.new_tensor(float(valid.numel()))]))
    if n < 1:
        return advantages
    mean = total / n
    if n < 2:
        return advantages - mean.to(advantages.dtype)
    std = ((total_sq - n * mean ** 2) / (n - 1)).clamp(min=0).sqrt()
    return ((advantages - mean) / (std + eps)).to(advantages.dtype)


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, mask: torch.Tensor,
               normalizer: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over sampled positions of the k3 estimate of KL(p || p_ref) on tokens drawn from p:
    exp(r) - r - 1 with r = log p_ref - log p (non-negative, unbiased, low variance; Schulman 2020)."""
    r = ref_logprobs.detach() - logprobs
    return masked_mean(torch.exp(r) - r - 1.0, mask, normalizer)


def risk_loss(seq_logprobs: torch.Tensor, costs: torch.Tensor, k: int, alpha: float,
              sources: int | None = None) -> torch.Tensor:
    """Expected risk over each source's k candidates (Shen et al. 2016; Edunov et al. 2018):
    sum_i q_i * cost_i with q = softmax over the source's candidates of alpha * log p(y_i),
    averaged over sources.

    seq_logprobs (B*k,) the candidates' log-probabilities (with gradients; under MIXER, of their
    sampled suffixes), costs (B*k,) detached, grouped by source. The gradient flows through q only:
    it lowers the probability of candidates costlier than their source's q-weighted mean. Adding
    a constant to every cost changes the risk, not its gradient (q sums to 1), so 1 - reward and
    -reward train alike. `sources` is the batch's count when these rows are one chunk of it.
    """
    q = torch.softmax(alpha * seq_logprobs.view(-1, k), dim=1)
    return (q * costs.detach().view(-1, k).to(q.dtype)).sum() / (sources or q.shape[0])


def mbr_distill_loss(chosen_logprobs: torch.Tensor, sources: int | None = None) -> torch.Tensor:
    """MBR distillation's cross-entropy: -(1/B) sum_b log p(y*_b), the summed token log-probability
    of each source's MBR choice (chosen_logprobs (B,), with gradients), averaged over the `sources`
    of the whole batch (default: those given)."""
    return -chosen_logprobs.sum() / (sources or chosen_logprobs.shape[0])
