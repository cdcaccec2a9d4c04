"""Baselines b for REINFORCE's advantage A = R - b: control variates that keep the gradient
estimate unbiased (b does not depend on the sampled sequence it is subtracted from, or, for
`mean`, only through a 1/N share) while lowering its variance.

Costs: `none`, `mean`, `ema`, `loo` are free arithmetic (`loo` needs k >= 2 samples per source,
so k times the sampling); `greedy` (SCST, Rennie et al. 2017) costs one extra greedy decode
and its reward per source; `learned` (MIXER) is one linear layer on the decoder states of the
teacher-forced pass, trained with squared error, with its own learning rate and no gradient
into the network.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from seqrl.config import ReinforceConfig


def leave_one_out(rewards: torch.Tensor, k: int) -> torch.Tensor:
    """b_i = mean of the other k-1 rewards of the same source. rewards (B*k,), grouped by source."""
    grouped = rewards.view(-1, k)
    return ((grouped.sum(dim=1, keepdim=True) - grouped) / (k - 1)).reshape(-1)


def batch_mean(rewards: torch.Tensor) -> torch.Tensor:
    """b = mean reward of the batch, for every sample."""
    return rewards.mean().expand_as(rewards)


def from_greedy(greedy_rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Self-critical: b = reward of the source's greedy decode, shared by its k samples."""
    return greedy_rewards.repeat_interleave(k)


class Baseline(Protocol):
    """What `mixer_step` needs of a baseline, built once at set-up (`build`)."""

    per_position: bool
    """True for MIXER's learned baseline (b_t from decoder states, `Learned`); False for the
    sequence-level ones, which give b (N,) from the rewards (`values`)."""
    needs_greedy: bool
    """Whether the rollout must also decode greedily (self-critical)."""

    def values(self, rewards: torch.Tensor, k: int, greedy_rewards: torch.Tensor | None,
               gather: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """b (N,) for this process's N rewards (grouped by source, k each); `gather` returns a
        tensor's values from every process, this process's first (the batch statistics are global)."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


class _Stateless:
    per_position = needs_greedy = False

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass(frozen=True)
class NoBaseline(_Stateless):
    def values(self, rewards, k, greedy_rewards, gather):
        return torch.zeros_like(rewards)


@dataclass(frozen=True)
class BatchMean(_Stateless):
    def values(self, rewards, k, greedy_rewards, gather):  # over the global batch, as on one process
        return batch_mean(gather(rewards))[: rewards.numel()]


@dataclass(frozen=True)
class LeaveOneOut(_Stateless):
    def values(self, rewards, k, greedy_rewards, gather):
        return leave_one_out(rewards, k)


@dataclass(frozen=True)
class SelfCritical(_Stateless):
    needs_greedy = True

    def values(self, rewards, k, greedy_rewards, gather):
        return from_greedy(greedy_rewards, k)


class EMABaseline:
    """b = running mean of past batches' mean reward; this batch updates it after use."""

    per_position = needs_greedy = False

    def __init__(self, decay: float):
        self.decay, self.value = decay, None

    def values(self, rewards, k, greedy_rewards, gather):
        return self(gather(rewards))[: rewards.numel()]

    def __call__(self, rewards: torch.Tensor) -> torch.Tensor:
        mean = float(rewards.mean())
        b = mean if self.value is None else self.value  # first batch: its own mean (no history yet)
        self.value = mean if self.value is None else self.decay * self.value + (1 - self.decay) * mean
        return torch.full_like(rewards, b)

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state.get("value")


class LearnedBaseline(nn.Module):
    """MIXER's reward predictor: b_t = w . h_t + c on the detached decoder state at position t.

    Initialised as in the MIXER code (w = 0, c = 0.01) and trained to regress the sequence
    reward with squared error; `h` is detached so no gradient reaches the network.
    """

    def __init__(self, hidden_size: int):
        super().__init__()
        self.linear = nn.Linear(hidden_size, 1)
        nn.init.zeros_(self.linear.weight)
        nn.init.constant_(self.linear.bias, 0.01)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.linear(hidden.detach().float()).squeeze(-1)  # (N, T)


def learned_loss(predicted: torch.Tensor, rewards: torch.Tensor, mask: torch.Tensor,
                 normalizer: torch.Tensor | None = None) -> torch.Tensor:
    """Squared error of b_t against R summed over the sampled positions, divided by `normalizer`
    (default: their number, i.e. the mean)."""
    err = (predicted - rewards.unsqueeze(1)) ** 2
    mask = mask.to(err.dtype)
    return (err * mask).sum() / (mask.sum().clamp(min=1) if normalizer is None else normalizer)


class Learned(_Stateless):
    """MIXER's learned baseline in a run: the (possibly DDP-wrapped) `LearnedBaseline` module,
    trained through the optimizer's own parameter group and saved with the accelerator's state."""

    per_position = True

    def __init__(self, module: nn.Module):
        self.module = module

    def __call__(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.module(hidden)


def build(rl: ReinforceConfig, learned_module: nn.Module | None = None) -> Baseline:
    """The recipe's `reinforce.baseline` (with `learned`, its prepared module)."""
    if rl.baseline == "learned":
        return Learned(learned_module)
    if rl.baseline == "ema":
        return EMABaseline(rl.ema_decay)
    return {"none": NoBaseline, "mean": BatchMean, "loo": LeaveOneOut, "greedy": SelfCritical}[rl.baseline]()
