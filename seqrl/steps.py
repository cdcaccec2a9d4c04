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
- `reinforce.estimator: risk` puts expected risk over each source's k samples in REINFORCE's
  place (`seqrl.objectives`), inside the same schedule and with the same XENT terms; its
  candidates may include each source's reference (`reinforce.reference_candidate`).

Each step takes what it uses (models, accelerator, rewards, the objective and baseline objects
built at set-up, the recipe's `reinforce` section), so it can be called, and tested, alone.
"""

from __future__ import annotations

import time

import torch
from accelerate import Accelerator
from torch.profiler import record_function

from seqrl import baselines
from seqrl.baselines import Baseline
from seqrl.config import ReinforceConfig
from seqrl.decoders import Decoding
from seqrl.estimators import kl_penalty, masked_mean, normalize, xent_sum
from seqrl.generation import masked_token_logprobs
from seqrl.modeling import TextModel
from seqrl.objectives import Objective
from seqrl.reference import Reference
from seqrl.rewards import Reward, TrainerState, score
from seqrl.rewards.inputs import RewardLog, reward_inputs
from seqrl.rollout import Sampling, rollout, rollout_in_chunks, rollout_logits
from seqrl.samples import sample_rows
from seqrl.schedule import StagePlan


def xent_step(model, text_model: TextModel, accelerator: Accelerator, batch: dict,
              label_smoothing: float = 0.0) -> tuple[torch.Tensor, dict[str, float]]:
    """Teacher forcing: cross-entropy of the gold target tokens, averaged over the global batch."""
    logits, labels, _ = text_model.target_logits(model, batch)  # (B, T, V), (B, T)
    total, n_tokens = xent_sum(logits, labels, label_smoothing)
    loss = total / _per_process(accelerator, n_tokens)
    return loss, {"xent_tokens": float(n_tokens), "train/xent": float(total.detach() / n_tokens.clamp(min=1))}


def mixer_step(batch: dict, plan: StagePlan, step: int, *, model, text_model: TextModel, accelerator: Accelerator,
               rewards: list[Reward], objective: Objective, baseline: Baseline, reference: Reference | None,
               rl: ReinforceConfig, decoding: Decoding, max_len: int, seed: int, total_steps: int,
               samples: int = 0) -> tuple[torch.Tensor, dict[str, float], list[dict] | None]:
    """XENT on each target's gold prefix + REINFORCE (or risk) on its sampled suffix, one forward
    pass per chunk of `rl.chunk_sources` sources (all chunks but the last are backpropagated here;
    the returned loss is the last chunk's, for the caller's backward). Returns the loss, the
    step's statistics and, with `samples` > 0, that many rows to show (`seqrl.samples`)."""
    tm, acc = text_model, accelerator
    t0 = time.perf_counter()
    # 1-2. Prefix k_i = max(L_i - Δ, 0): gold tokens before it, k samples per source after it.
    # 3.   Sequence rewards of the samples, on this rank.                R: (N,), N = B * k
    ro, R, parts, greedy_R, timing, reward_log = _sample_and_score(
        batch, plan, step, policy=acc.unwrap_model(model), text_model=tm, accelerator=acc, rewards=rewards, rl=rl,
        decoding=decoding, max_len=max_len, seed=seed, total_steps=total_steps, greedy=baseline.needs_greedy)
    k = ro.sequences.shape[0] // ro.num_sources  # candidates per source (2 x num_samples for `both`)
    prefix_mask, sample_mask = ro.target_masks()                            # (N, T) each
    # The decoded rows: all but the references (`rl.reference_candidate`: each source's last row),
    # which enter the risk only, not the prefix's XENT, the KL, the baseline or the logged rewards.
    decoded = torch.arange(len(R), device=R.device) % k < k - rl.reference_candidate      # (N,)
    prefix_mask, drawn_mask = prefix_mask & decoded[:, None], sample_mask & decoded[:, None]
    n_prefix, n_sample = _per_process(acc, prefix_mask.sum()), _per_process(acc, drawn_mask.sum())
    # 5a. A = R - b for a sequence-level baseline (the learned one is per position: in 5b).
    learned = baseline.per_position
    advantage = None if learned else _advantages(baseline, R, decoded, k - rl.reference_candidate, greedy_R, acc)
    if rl.normalize_advantages and not learned:
        advantage = normalize(advantage, all_reduce=lambda t: acc.reduce(t, "sum"))
    xent_gold = None
    if plan.xent_on_gold:  # XENT on the whole gold target, apart from the samples
        gold_total, n_gold = xent_sum(*tm.target_logits(model, batch["model_inputs"])[:2])
        xent_gold = gold_total / _per_process(acc, n_gold)
    chunks = _chunks(ro.num_sources, rl.chunk_sources)  # (the decode's chunks: `rollout_in_chunks`)
    sums, advantages = {"xent": 0.0, "reinforce": 0.0, "kl": 0.0, "baseline": 0.0, "loss": 0.0}, []
    for i, (first, last) in enumerate(chunks):
        part, rows = ro.select(first, last), slice(first * k, last * k)
        # 4. One teacher-forced pass over prefix + sample, with gradients.
        with acc.autocast():
            logits, labels, hidden = rollout_logits(model, part, is_seq2seq=tm.is_seq2seq, hidden=learned)
        # log p of each token; at sampled ones, of the distribution sampled from (generation masks)
        masks = part.sample_masks(drawn_mask[rows], logits.shape[-1])
        logp = masked_token_logprobs(logits, labels, masks)                # (n, T)
        # 5b. MIXER's learned baseline: per position, from the detached decoder states.
        baseline_loss = logp.new_zeros(())
        if learned:
            predicted = baseline(hidden)                                    # (n, T)
            baseline_loss = baselines.learned_loss(predicted, R[rows], drawn_mask[rows], n_sample)
            chunk_advantage = R[rows, None] - predicted.detach()
            if rl.normalize_advantages:  # (one chunk only: config_checks)
                chunk_advantage = normalize(chunk_advantage, drawn_mask[rows],
                                            all_reduce=lambda t: acc.reduce(t, "sum"))
        else:
            chunk_advantage = advantage[rows]
        # 6. loss = w * XENT(prefix) + (1 - w) * REINFORCE(suffix) [+ beta * KL] [+ baseline MSE].
        xent = -masked_mean(logp, prefix_mask[rows], n_prefix) if xent_gold is None else logp.new_zeros(())
        pg = objective(logp, sample_mask[rows], R[rows], chunk_advantage, k, rows=ro.sequences.shape[0])
        loss = plan.xent_weight * xent + (1 - plan.xent_weight) * pg + baseline_loss
        if reference is not None:
            with torch.no_grad():
                ref_logp = masked_token_logprobs(reference.logits(part, tm.is_seq2seq), labels, masks)
            kl = kl_penalty(logp, ref_logp, drawn_mask[rows], n_sample)
            loss = loss + rl.kl_coef * kl
            sums["kl"] += float(kl.detach())
        if i == len(chunks) - 1 and xent_gold is not None:
            loss = loss + plan.xent_weight * xent_gold
        for key, value in (("xent", xent), ("reinforce", pg), ("baseline", baseline_loss), ("loss", loss)):
            sums[key] += float(value.detach())
        advantages.append(chunk_advantage.detach())
        if i < len(chunks) - 1:  # free this chunk's graph now; gradients sync on the last backward
            with acc.no_sync(model), record_function("seqrl/backward"):
                acc.backward(loss)
    if xent_gold is not None:
        sums["xent"] = float(xent_gold.detach())
    stats = {**_stats(R, parts, torch.cat(advantages), drawn_mask, prefix_mask, plan, decoded), **reward_log.means()}
    shown = (sample_rows(tm, batch, ro.rows(), k, R, parts, torch.cat(advantages), sample_mask, reward_log.extra,
                         samples) if samples else None)
    stats.update({"train/xent": sums["xent"], "train/reinforce": sums["reinforce"], "train/loss": sums["loss"],
                  "time/rollout_s": timing[0], "time/reward_s": timing[1], "time/compile_s": timing[2],
                  "time/forward_s": time.perf_counter() - t0 - sum(timing), "rl_tokens": float(drawn_mask.sum()),
                  "xent_tokens": float(prefix_mask.sum())})
    if reference is not None:
        stats["kl"] = sums["kl"]
    if learned:
        stats["baseline/mse"] = sums["baseline"]
    return loss, stats, shown


def _chunks(sources: int, size: int | None) -> list[tuple[int, int]]:
    """(first, last) source ranges of at most `size` sources (one range when size is empty)."""
    size = size or sources
    return [(i, min(i + size, sources)) for i in range(0, sources, size)]


def _per_process(accelerator: Accelerator, count: torch.Tensor) -> torch.Tensor:
    """Global count / number of processes. A local sum divided by this, averaged over processes by
    DDP, is the mean over the whole global batch: the same update on 1 process or on N."""
    acc = accelerator
    total = acc.reduce(count.detach().float().reshape(1), "sum") if acc.num_processes > 1 else count.float()
    return (total / acc.num_processes).clamp(min=1e-8).reshape(())


def _sample_and_score(batch: dict, plan: StagePlan, step: int, *, policy, text_model: TextModel,
                      accelerator: Accelerator, rewards: list[Reward], rl: ReinforceConfig, decoding: Decoding,
                      max_len: int, seed: int, total_steps: int, greedy: bool):
    """Rollouts on the unwrapped `policy`, their rewards and (self-critical) the greedy decode's."""
    tm, acc = text_model, accelerator
    sources, targets, k = batch["source_ids_list"], batch["target_ids_list"], rl.num_samples
    n_local = len(sources) * k  # equal on every process (accelerate evens out the last batch)
    sampling = Sampling(rl.temperature, rl.top_k, rl.top_p, seed=seed * 1_000_003 + step,
                        row_offset=acc.process_index * n_local)
    start, compiling = time.perf_counter(), decoding.compile_log.seconds
    with record_function("seqrl/rollout"):  # (regions for scripts/profile_step.py; ~free when not profiling)
        ro = rollout_in_chunks(tm, policy, sources, targets, plan.n_rl_tokens, chunk_sources=rl.chunk_sources,
                               num_samples=k, max_len=max_len, sampling=sampling, decoding=decoding,
                               candidates=rl.candidates, with_reference=rl.reference_candidate)
        k = ro.sequences.shape[0] // len(sources)
        greedy_ro = None
        if greedy:
            greedy_ro = rollout(tm, policy, sources, targets, plan.n_rl_tokens, num_samples=1, max_len=max_len,
                                sampling=Sampling(greedy=True), decoding=decoding)
    sampled_at = time.perf_counter()
    with record_function("seqrl/reward"):
        state, log = TrainerState(step, total_steps, plan.stage, plan.n_rl_tokens), RewardLog()
        R, parts = score(rewards, **reward_inputs(tm, rewards, batch, ro.rows(), k, state, log))
        greedy_R = None
        if greedy_ro is not None:
            greedy_R = torch.tensor(score(rewards, **reward_inputs(tm, rewards, batch, greedy_ro.rows(), 1, state,
                                                                   RewardLog()))[0], device=acc.device)
    compile_s = decoding.compile_log.seconds - compiling  # (first calls of a compiled step: not step time)
    timing = (sampled_at - start - compile_s, time.perf_counter() - sampled_at, compile_s)
    return ro, torch.tensor(R, device=acc.device), parts, greedy_R, timing, log


def _advantages(baseline: Baseline, R: torch.Tensor, decoded: torch.Tensor, k: int, greedy_R, accelerator) -> torch.Tensor:
    """A = R - b of a sequence-level baseline over the decoded rows (k per source); 0 on reference rows."""
    advantage = torch.zeros_like(R)
    advantage[decoded] = R[decoded] - baseline.values(R[decoded], k, greedy_R, accelerator.gather)
    return advantage


def _stats(R, parts, advantage, sample_mask, prefix_mask, plan, decoded) -> dict[str, float]:
    """The logged statistics of the decoded rows (`decoded` (N,): reference rows are left out)."""
    listed = decoded.tolist()
    R, advantage, sample_mask, prefix_mask = R[decoded], advantage[decoded], sample_mask[decoded], prefix_mask[decoded]
    parts = {name: [v for v, d in zip(values, listed) if d] for name, values in parts.items()}
    stats = {"reward/total": float(R.mean()), "reward/std": float(R.std()) if R.numel() > 1 else 0.0,
             "advantage/std": float(advantage[sample_mask].std() if advantage.dim() == 2 else advantage.std())
             if R.numel() > 1 else 0.0,
             "stage": float(plan.stage), "delta": float(plan.n_rl_tokens),
             "frac_sampled": float(sample_mask.sum() / (sample_mask.sum() + prefix_mask.sum()).clamp(min=1))}
    for name, values in parts.items():
        present = [v for v in values if v is not None]
        if present:
            mean = sum(present) / len(present)
            stats[f"reward/{name}"] = mean
            stats[f"reward_std/{name}"] = (sum((v - mean) ** 2 for v in present) / max(len(present) - 1, 1)) ** 0.5
    return stats
