"""Training schedules as pure functions of the optimizer step: what to train on, and how much.

`Schedule.plan(step)` returns a `StagePlan`: how many of each target's last tokens are sampled
(`n_rl_tokens`, 0 = pure cross-entropy) and the weight w in
loss = w * XENT(teacher-forced prefix) + (1 - w) * REINFORCE(sampled suffix).

- `xent`: cross-entropy only.
- `mixer` (Ranzato et al. 2016): `xent_steps` of cross-entropy, then stages of `stage_steps`;
  stage s samples the last s * delta tokens of every target, until whole targets are sampled
  (the last stage, `final_stage_steps` long if given). XENT weight is 1 in the pure stage,
  `xent_weight` afterwards (the paper's code: 1, then 0.5). The paper counts stages in epochs
  and the sampled suffix from a fixed 25-token window; we count per target (its own length), in
  steps or epochs.
- `alternate`: after the XENT stage, whole batches are either XENT or REINFORCE on whole
  sampled sequences; the REINFORCE share rises linearly from 0 to 1 over `anneal_steps`. Which
  batch is which is decided by a running sum, not a coin, so every process and every resumed
  run makes the same choice.
- `constant`: after the XENT stage, every step is w * XENT(whole gold target) +
  (1 - w) * REINFORCE(whole sampled sequence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from seqrl.config import ScheduleConfig


@dataclass(frozen=True)
class StagePlan:
    stage: int
    """0 = the cross-entropy stage; 1, 2, ... the sequence-level stages."""
    n_rl_tokens: int
    """Each target's last n tokens are sampled and trained with REINFORCE (0 = none)."""
    xent_weight: float
    """w in w * XENT + (1 - w) * REINFORCE."""
    xent_on_gold: bool = False
    """XENT on the whole gold target (constant mix) instead of on the teacher-forced prefix."""

    @property
    def is_xent(self) -> bool:
        return self.n_rl_tokens == 0


class Schedule:
    """Steps -> plans. Epochs become steps with the XENT stage's batches per epoch for
    `xent_epochs`, and the REINFORCE stages' (`reinforce.batch_size`) for the others."""

    def __init__(self, cfg: ScheduleConfig, xent_steps_per_epoch: int, rl_steps_per_epoch: int,
                 max_target_tokens: int):
        self.cfg, self.max_len = cfg, max_target_tokens
        self.xent_steps = _steps(cfg.xent_steps, cfg.xent_epochs, xent_steps_per_epoch)
        if cfg.kind == "mixer":
            self.stage_steps = _steps(cfg.stage_steps, cfg.stage_epochs, rl_steps_per_epoch)
            self.n_stages = math.ceil(max_target_tokens / cfg.delta)
            final = self.stage_steps if cfg.final_stage_steps is None else cfg.final_stage_steps
            self.total_steps = self.xent_steps + (self.n_stages - 1) * self.stage_steps + final
        elif cfg.kind in ("alternate", "constant"):
            self.rl_steps = _steps(cfg.rl_steps, cfg.rl_epochs, rl_steps_per_epoch)
            self.total_steps = self.xent_steps + self.rl_steps
        else:
            self.total_steps = self.xent_steps

    def plan(self, step: int) -> StagePlan:
        """The plan of optimizer step `step` (0-based)."""
        cfg = self.cfg
        if step < self.xent_steps or cfg.kind == "xent":
            return StagePlan(0, 0, 1.0)
        rl_step = step - self.xent_steps
        if cfg.kind == "mixer":
            stage = min(rl_step // self.stage_steps + 1, self.n_stages)
            return StagePlan(stage, min(stage * cfg.delta, self.max_len), cfg.xent_weight)
        if cfg.kind == "constant":
            return StagePlan(1, self.max_len, cfg.xent_weight, xent_on_gold=True)
        # alternate: an RL batch whenever the running sum of the RL share crosses an integer
        if math.floor(self._rl_share_sum(rl_step + 1)) > math.floor(self._rl_share_sum(rl_step)):
            return StagePlan(1, self.max_len, 0.0)
        return StagePlan(1, 0, 1.0)

    def rl_share(self, rl_step: int) -> float:
        """Alternate: the REINFORCE share of batches at RL-phase step `rl_step` (0-based)."""
        return min(1.0, (rl_step + 1) / self.cfg.anneal_steps)

    def _rl_share_sum(self, n: int) -> float:
        """sum(rl_share(i) for i < n), in closed form (the share is linear, then flat at 1)."""
        a = self.cfg.anneal_steps
        ramp = min(n, a)
        return ramp * (ramp + 1) / (2 * a) + max(0, n - a) + 1e-9

    def boundaries(self) -> list[tuple[int, StagePlan]]:
        """(first step, plan) of every stage, for logs and plots."""
        starts = [0]
        if self.cfg.kind == "mixer":
            starts += [self.xent_steps + s * self.stage_steps for s in range(self.n_stages)]
        elif self.cfg.kind != "xent":
            starts.append(self.xent_steps)
        starts = sorted({s for s in starts if s < self.total_steps})
        return [(s, self.plan(s)) for s in starts]


def _steps(steps: int | None, epochs: float | None, steps_per_epoch: int) -> int:
    if steps is not None:
        return steps
    if epochs is None:
        return 0
    return max(1, math.ceil(epochs * steps_per_epoch)) if epochs > 0 else 0


def lr_factor(step: int, *, warmup: int, decay: str, decay_steps: int, rl_start: int | None = None,
              rl_factor: float | None = None) -> float:
    """Multiplier of `optim.lr` at optimizer step `step` (0-based), as transformers' schedules:
    linear warm-up over `warmup` steps, then `linear`/`cosine` decay to 0 at `decay_steps` or
    `constant`. With `rl_start`, steps from there on use the constant `rl_factor`
    (`reinforce.lr / optim.lr`) and the decay ends with the XENT stage."""
    if rl_start is not None and step >= rl_start:
        return rl_factor
    if step < warmup:
        return step / max(1, warmup)
    if decay == "constant":
        return 1.0
    progress = (step - warmup) / max(1, decay_steps - warmup)
    if decay == "linear":
        return max(0.0, 1.0 - progress)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0))))

