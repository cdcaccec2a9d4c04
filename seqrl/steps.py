"""One training step each: `xent_step` (teacher forcing) and `mixer_step` (MIXER/REINFORCE).

`mixer_step` follows Ranzato et al. (2016), "Sequence Level Training with Recurrent Neural
Networks", with these departures, each a recipe field rather than a fork in the code:
- The sampled suffix is counted per target (its last Δ tokens), not in a fixed 25-token window.
- Samples are drawn in eval mode (no dropout) on the unwrapped model; the gradient pass runs in
  train mode. With dropout on, the two distributions differ slightly (as in TRL and most RLHF code).
- The reward is the sequence-level score of the whole output, given to every sampled token
  (the paper's BLEU is also of the whole sequence; its per-step rewards are 0 until the end).
- Besides MIXER's learned per-position baseline, `loo`, `greedy` (SCST), `mean`, `ema` and
  `none` baselines, k samples per source, optional advantage normalization and a KL penalty.
- REINFORCE's loss is summed over sampled tokens and averaged over samples; XENT is averaged
  over prefix tokens; loss = w * XENT + (1 - w) * REINFORCE as in the paper's code.
- `reinforce.estimator.kind: risk` puts expected risk over each source's candidates in
  REINFORCE's place (`seqrl.objectives`), inside the same schedule and with the same XENT terms;
  its candidates may be beams and include each source's reference (`reinforce.candidates`).

A step is two parts: `seqrl.candidates` makes the rows and their rewards, `seqrl.chunk_loss` makes
the loss of one chunk of them. Each step function owns its backward passes (a chunk's graph is
freed by its own), so the loop only clips and steps the optimizer. Each takes the objects built
at set-up, so it can be called, and tested, alone.
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator
from torch.profiler import record_function

from seqrl.baselines import Baseline
from seqrl.candidates import CandidateMaker, Candidates
from seqrl.chunk_loss import StepTerms, chunk_loss
from seqrl.logged_rows import sample_rows
from seqrl.losses import xent_sum
from seqrl.modeling import TextModel
from seqrl.objectives import Objective
from seqrl.reference import Reference
from seqrl.schedule import StagePlan


def xent_step(model, text_model: TextModel, accelerator: Accelerator, batch: dict,
              label_smoothing: float = 0.0) -> tuple[float, dict[str, float]]:
    """Teacher forcing: cross-entropy of the gold target tokens, averaged over the global batch;
    backpropagated here. Returns the loss and the step's statistics."""
    logits, labels, _ = text_model.target_logits(model, batch)  # (B, T, V), (B, T)
    total, n_tokens = xent_sum(logits, labels, label_smoothing)
    loss = total / _per_process(accelerator, n_tokens)
    seconds = _backward(accelerator, model, loss, last=True)
    stats = {"xent_tokens": float(n_tokens), "train/xent": float(total.detach() / n_tokens.clamp(min=1)),
             "time/backward_s": seconds}
    return float(loss.detach()), stats


def mixer_step(batch: dict, plan: StagePlan, step: int, *, model, text_model: TextModel, accelerator: Accelerator,
               candidates: CandidateMaker, objective: Objective, baseline: Baseline, reference: Reference | None,
               samples: int = 0) -> tuple[float, dict[str, float], list[dict] | None]:
    """XENT on each target's gold prefix + REINFORCE (or risk) on its sampled suffix, one
    teacher-forced pass and backward per decode chunk. Returns the loss, the step's statistics
    and, with `samples` > 0, that many rows to show (`seqrl.logged_rows`)."""
    acc, t0 = accelerator, time.perf_counter()
    # 1-3. Prefix k_i = max(L_i - Δ, 0): gold tokens before it, k candidates per source after it
    #      (samples, beams, the reference), and their sequence rewards on this rank.  R: (N,)
    cand = candidates.make(acc.unwrap_model(model), batch, plan, step)
    prefix_mask, suffix_mask, drawn_mask = cand.target_masks()                          # (N, T) each
    # 4. Advantages A = R - b (the learned baseline's per position, from each chunk's states).
    advantages = baseline.advantages(cand.rewards, cand.decoded, cand.k_decoded, cand.greedy_rewards, acc)
    terms = StepTerms(objective, advantages, reference, cand.rewards, cand.k, prefix_mask, suffix_mask, drawn_mask,
                      _per_process(acc, prefix_mask.sum()), _per_process(acc, drawn_mask.sum()), plan.xent_weight,
                      prefix_xent=not plan.xent_on_gold, autocast=acc.autocast)
    gold_xent = None  # 5. XENT on the whole gold target instead, apart from the candidates (constant mix).
    if plan.xent_on_gold and plan.xent_weight > 0:  # (weight 0: no targets needed, `data.reference_free`)
        gold_total, n_gold = xent_sum(*text_model.target_logits(model, batch["model_inputs"])[:2])
        gold_xent = gold_total / _per_process(acc, n_gold)
    # 6. Per chunk: teacher-forced pass, loss, backward (the chunk's graph freed at once; the
    #    gradients sync on the last chunk's backward).
    chunks, sums, advantage, backward_s = list(cand.by_chunk()), {}, [], 0.0
    for i, (chunk, rows) in enumerate(chunks):
        loss, parts = chunk_loss(model, chunk, rows, terms, text_model.is_seq2seq)
        last = i == len(chunks) - 1
        if last and gold_xent is not None:
            loss, parts["xent"] = loss + plan.xent_weight * gold_xent, gold_xent.detach()
        backward_s += _backward(acc, model, loss, last)
        advantage.append(parts.pop("advantage"))
        for name, value in {**parts, "loss": loss.detach()}.items():
            sums[name] = sums.get(name, 0.0) + float(value)
    # 7. What the step logs, and the rows it shows.
    advantage = torch.cat(advantage)
    stats = {**_stats(cand, advantage, drawn_mask, prefix_mask, plan, sums, advantages.loss_name, reference),
             "time/backward_s": backward_s,
             "time/forward_s": time.perf_counter() - t0 - sum(cand.seconds.values()) - backward_s}
    shown = (sample_rows(text_model, batch, cand.rows(), cand.k, cand.rewards, cand.reward_parts, advantage,
                         suffix_mask, cand.reward_log.extra, samples) if samples else None)
    return sums["loss"], stats, shown


def _backward(accelerator: Accelerator, model, loss: torch.Tensor, last: bool) -> float:
    """Backpropagate `loss`; only the last backward of an optimizer step syncs gradients between
    processes (the accelerator's `accumulate` decides for micro-batches). Returns its seconds."""
    start = time.perf_counter()
    with record_function("seqrl/backward"):
        if last:
            accelerator.backward(loss)
        else:
            with accelerator.no_sync(model):
                accelerator.backward(loss)
    return time.perf_counter() - start


def _per_process(accelerator: Accelerator, count: torch.Tensor) -> torch.Tensor:
    """Global count / number of processes. A local sum divided by this, averaged over processes by
    DDP, is the mean over the whole global batch: the same update on 1 process or on N."""
    acc = accelerator
    total = acc.reduce(count.detach().float().reshape(1), "sum") if acc.num_processes > 1 else count.float()
    return (total / acc.num_processes).clamp(min=1e-8).reshape(())


def _stats(cand: Candidates, advantage: torch.Tensor, sample_mask: torch.Tensor, prefix_mask: torch.Tensor,
           plan: StagePlan, sums: dict[str, float], baseline_loss: str | None, reference) -> dict[str, float]:
    """The logged statistics of the decoded rows (reference rows are left out) and the loss's parts."""
    decoded, listed = cand.decoded, cand.decoded.tolist()
    R, advantage, sample_mask, prefix_mask = (cand.rewards[decoded], advantage[decoded], sample_mask[decoded],
                                              prefix_mask[decoded])
    parts = {name: [v for v, d in zip(values, listed, strict=True) if d] for name, values in cand.reward_parts.items()}
    stats = {"reward/total": float(R.mean()), "reward/std": float(R.std()) if R.numel() > 1 else 0.0,
             "advantage/std": float(advantage[sample_mask].std() if advantage.dim() == 2 else advantage.std())
             if R.numel() > 1 else 0.0,
             "stage": float(plan.stage), "delta": float(plan.n_rl_tokens),
             "frac_sampled": float(sample_mask.sum() / (sample_mask.sum() + prefix_mask.sum()).clamp(min=1)),
             "train/xent": sums["xent"], "train/reinforce": sums["reinforce"],
             "rl_tokens": float(sample_mask.sum()), "xent_tokens": float(prefix_mask.sum()),
             **cand.reward_log.means(), **cand.seconds}
    if reference is not None:
        stats["kl"] = sums["kl"]
    if baseline_loss:
        stats[baseline_loss] = sums["baseline"]
    for name, values in parts.items():
        present = [v for v in values if v is not None]
        if present:
            mean = sum(present) / len(present)
            stats[f"reward/{name}"] = mean
            stats[f"reward_std/{name}"] = (sum((v - mean) ** 2 for v in present) / max(len(present) - 1, 1)) ** 0.5
    return stats
