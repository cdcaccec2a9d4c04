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
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from seqrl import baselines
from seqrl.estimators import kl_penalty, masked_mean, masked_xent, normalize, reinforce_loss, token_logprobs
from seqrl.modeling import IGNORE_INDEX
from seqrl.rewards import score
from seqrl.rollout import Sampling, rollout
from seqrl.schedule import StagePlan

if TYPE_CHECKING:
    from seqrl.train import Run


def xent_step(run: Run, batch: dict) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher forcing: mean cross-entropy of the gold target tokens."""
    logits, labels, _ = run.text_model.target_logits(run.model, batch)  # (B, T, V), (B, T)
    loss, n_tokens = masked_xent(logits, labels, run.cfg.xent.label_smoothing)
    return loss, {"xent_tokens": float(n_tokens), "train/xent": float(loss.detach())}


def mixer_step(run: Run, batch: dict, plan: StagePlan) -> tuple[torch.Tensor, dict[str, float]]:
    """XENT on each target's gold prefix + REINFORCE on its sampled suffix, one forward pass."""
    rl, tm, acc = run.cfg.reinforce, run.text_model, run.accelerator
    k, device = rl.num_samples, acc.device
    sources, targets = batch["source_ids_list"], batch["target_ids_list"]
    sampling = Sampling(rl.temperature, rl.top_k, rl.top_p)
    t0 = time.perf_counter()
    # 1-2. Prefix k_i = max(L_i - Δ, 0); gold tokens before it, k samples per source after it.
    policy = acc.unwrap_model(run.model)
    ro = rollout(tm, policy, sources, targets, plan.n_rl_tokens, num_samples=k,
                 max_len=run.cfg.data.max_target_tokens, sampling=sampling)
    t1 = time.perf_counter()
    # 3. Sequence rewards of the samples, on this rank.            R: (N,) with N = B * k
    rows = ro.rows()
    R, parts = score(run.rewards, **_reward_inputs(run, batch, rows, k))
    R = torch.tensor(R, device=device)
    greedy_R = None
    if rl.baseline == "greedy":
        g = rollout(tm, policy, sources, targets, plan.n_rl_tokens, num_samples=1,
                    max_len=run.cfg.data.max_target_tokens, sampling=Sampling(greedy=True))
        greedy_R = torch.tensor(score(run.rewards, **_reward_inputs(run, batch, g.rows(), 1))[0], device=device)
    t2 = time.perf_counter()
    # 4. One teacher-forced pass over prefix + sample, with gradients.
    feats = [{"source_ids": sources[i // k], "target_ids": row} for i, row in enumerate(rows)]
    tf_batch = {key: v.to(device) for key, v in tm.collate(feats).items()}
    logits, labels, hidden = tm.target_logits(run.model, tf_batch, hidden=rl.baseline == "learned")
    logp = token_logprobs(logits, labels)                                   # (N, T)
    position = (labels != IGNORE_INDEX).cumsum(dim=1) - 1                  # index within the target
    valid = labels != IGNORE_INDEX
    prefix_mask = valid & (position < ro.prefix_len[:, None])
    sample_mask = valid & (position >= ro.prefix_len[:, None])
    # 5. Baseline and advantage A = R - b (detached; per position for the learned baseline).
    b, baseline_loss = _baseline(run, R, k, greedy_R, hidden, sample_mask)
    advantage = R[:, None] - b if b.dim() == 2 else R - b
    if rl.normalize_advantages:
        advantage = normalize(advantage, sample_mask if advantage.dim() == 2 else None)
    # 6. loss = w * XENT(prefix) + (1 - w) * REINFORCE(suffix) [+ beta * KL] [+ baseline MSE].
    if plan.xent_on_gold:
        xent, _ = masked_xent(*tm.target_logits(run.model, batch["model_inputs"])[:2])
    else:
        xent = -masked_mean(logp, prefix_mask)
    pg = reinforce_loss(logp, sample_mask, advantage)
    loss = plan.xent_weight * xent + (1 - plan.xent_weight) * pg + baseline_loss
    kl = None
    if run.reference is not None:
        with torch.no_grad():
            ref_logits, _, _ = tm.target_logits(run.reference, tf_batch)
        kl = kl_penalty(logp, token_logprobs(ref_logits, labels), sample_mask)
        loss = loss + rl.kl_coef * kl
    stats = _stats(R, parts, advantage, sample_mask, prefix_mask, plan, kl, baseline_loss)
    stats.update({"train/xent": float(xent.detach()), "train/reinforce": float(pg.detach()), "time/rollout_s": t1 - t0, "time/reward_s": t2 - t1, "rl_tokens": float(sample_mask.sum()),
                  "xent_tokens": float(prefix_mask.sum())})
    return loss, stats


def _reward_inputs(run: Run, batch: dict, rows: list[list[int]], k: int) -> dict:
    """The reward contract's keyword arguments, each source's fields repeated for its k samples."""
    tm, eos = run.text_model, run.text_model.tokenizer.eos_token_id
    ids = [r[:-1] if r and r[-1] == eos else r for r in rows]
    inputs = {"completions": tm.decode(ids), "completion_ids": ids}
    for name, values in batch["columns"].items():
        inputs[name] = [v for v in values for _ in range(k)]
    return inputs


def _baseline(run: Run, R: torch.Tensor, k: int, greedy_R, hidden, sample_mask) -> tuple[torch.Tensor, torch.Tensor]:
    """b (N,) or (N, T), and the learned baseline's regression loss (0 for the others)."""
    kind, zero = run.cfg.reinforce.baseline, R.new_zeros(())
    if kind == "none":
        return torch.zeros_like(R), zero
    if kind == "mean":
        return baselines.batch_mean(R), zero
    if kind == "ema":
        return run.ema(R), zero
    if kind == "loo":
        return baselines.leave_one_out(R, k), zero
    if kind == "greedy":
        return baselines.from_greedy(greedy_R, k), zero
    predicted = run.learned_baseline(hidden)                                # (N, T)
    return predicted.detach(), baselines.learned_loss(predicted, R, sample_mask)


def _stats(R, parts, advantage, sample_mask, prefix_mask, plan, kl, baseline_loss) -> dict[str, float]:
    stats = {"reward/total": float(R.mean()), "reward/std": float(R.std()) if R.numel() > 1 else 0.0,
             "advantage/std": float(advantage[sample_mask].std() if advantage.dim() == 2 else advantage.std())
             if R.numel() > 1 else 0.0,
             "stage": float(plan.stage), "delta": float(plan.n_rl_tokens),
             "frac_sampled": float(sample_mask.sum() / (sample_mask.sum() + prefix_mask.sum()).clamp(min=1))}
    for name, values in parts.items():
        present = [v for v in values if v is not None]
        if present:
            stats[f"reward/{name}"] = sum(present) / len(present)
    if kl is not None:
        stats["kl"] = float(kl)
    if float(baseline_loss) != 0.0:
        stats["baseline/mse"] = float(baseline_loss)
    return stats
