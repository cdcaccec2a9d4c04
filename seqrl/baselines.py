"""Baselines b for REINFORCE's advantage A = R - b: control variates that keep the gradient
estimate unbiased (b does not depend on the sampled sequence it is subtracted from, or, for
`mean`, only through a 1/N share) while lowering its variance.

Costs: `none`, `mean`, `ema`, `loo` are free arithmetic (`loo` needs k >= 2 samples per source,
so k times the sampling); `greedy` (SCST, Rennie et al. 2017) costs one extra greedy decode
and its reward per source; `learned` (MIXER) is one linear layer on the decoder states of the
teacher-forced pass, trained with squared error, with its own learning rate and no gradient
into the network.

A baseline is asked once per step for the step's advantages (`Baseline.advantages`), and those for
each chunk of rows (`Advantages.chunk`): the sequence-level ones are computed once from the
rewards; the learned one, per chunk, from that chunk's decoder states, with its own loss.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from seqrl.losses import normalize
from seqrl.rl_config import BaselineConfig


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


class Advantages(Protocol):
    """A step's advantages, chunk by chunk."""

    needs_hidden: bool
    """Whether `chunk` reads the decoder states of the teacher-forced pass."""
    loss_name: str | None
    """The metric name of the baseline's own loss (None: it has none)."""

    def chunk(self, rows: slice, hidden: torch.Tensor | None, drawn_mask: torch.Tensor,
              n_drawn: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A for these rows, (n,) or (n, T), detached; and the baseline's own loss on them (0 if none).
        `drawn_mask` (n, T): the sampled positions of decoded rows; `n_drawn`: their global count
        per process (the loss's normalizer)."""
        ...


class Baseline(Protocol):
    """What `mixer_step` needs of a baseline, built once at set-up (`build`)."""

    needs_greedy: bool
    """Whether the step must also decode greedily (self-critical)."""

    def advantages(self, rewards: torch.Tensor, decoded: torch.Tensor, k: int, greedy_rewards: torch.Tensor | None,
                   accelerator) -> Advantages:
        """This step's advantages. rewards (N,) grouped by source, `decoded` (N,) false on reference
        rows (their advantage is 0), k decoded rows per source; the batch statistics are global."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


@dataclass(frozen=True)
class SequenceAdvantages:
    """One advantage per row, the same for every sampled token of it."""

    values: torch.Tensor
    needs_hidden = False
    loss_name = None

    def chunk(self, rows, hidden, drawn_mask, n_drawn):
        return self.values[rows], self.values.new_zeros(())


class _SequenceLevel:
    """b (N,) from the rewards alone (`values`), A = R - b, optionally normalized over the batch."""

    needs_greedy = False
    normalize: bool = False

    def advantages(self, rewards, decoded, k, greedy_rewards, accelerator) -> SequenceAdvantages:
        advantage = torch.zeros_like(rewards)
        advantage[decoded] = rewards[decoded] - self.values(rewards[decoded], k, greedy_rewards, accelerator.gather)
        if self.normalize:
            advantage = normalize(advantage, all_reduce=lambda t: accelerator.reduce(t, "sum"))
        return SequenceAdvantages(advantage)

    def values(self, rewards: torch.Tensor, k: int, greedy_rewards: torch.Tensor | None,
               gather: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        """b (N,) for this process's N rewards (grouped by source, k each); `gather` returns a
        tensor's values from every process, this process's first (the batch statistics are global)."""
        raise NotImplementedError


class _Stateless(_SequenceLevel):
    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass(frozen=True)
class NoBaseline(_Stateless):
    normalize: bool = False

    def values(self, rewards, k, greedy_rewards, gather):
        return torch.zeros_like(rewards)


@dataclass(frozen=True)
class BatchMean(_Stateless):
    normalize: bool = False

    def values(self, rewards, k, greedy_rewards, gather):  # over the global batch, as on one process
        return batch_mean(gather(rewards))[: rewards.numel()]


@dataclass(frozen=True)
class LeaveOneOut(_Stateless):
    normalize: bool = False

    def values(self, rewards, k, greedy_rewards, gather):
        return leave_one_out(rewards, k)


@dataclass(frozen=True)
class SelfCritical(_Stateless):
    normalize: bool = False
    needs_greedy = True

    def values(self, rewards, k, greedy_rewards, gather):
        return from_greedy(greedy_rewards, k)


class EMABaseline(_SequenceLevel):
    """b = running mean of past batches' mean reward; this batch updates it after use."""

    def __init__(self, decay: float, normalize: bool = False):
        self.decay, self.value, self.normalize = decay, None, normalize

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


class Learned:
    """MIXER's learned baseline in a run: the (possibly DDP-wrapped) `LearnedBaseline` module,
    trained through the optimizer's own parameter group and saved with the accelerator's state."""

    needs_greedy = False

    def __init__(self, module: nn.Module, normalize: bool = False):
        self.module, self.normalize = module, normalize

    def advantages(self, rewards, decoded, k, greedy_rewards, accelerator) -> LearnedAdvantages:
        return LearnedAdvantages(self.module, rewards, self.normalize, accelerator)

    def state_dict(self) -> dict:
        return {}  # (the module's weights are in the accelerator's state)

    def load_state_dict(self, state: dict) -> None:
        pass


@dataclass
class LearnedAdvantages:
    """A_t = R - b_t per position, b_t predicted from each chunk's detached decoder states; the
    regressor's squared error is its loss (no gradient reaches the network)."""

    module: nn.Module
    rewards: torch.Tensor
    normalize: bool
    accelerator: object
    needs_hidden = True
    loss_name = "baseline/mse"

    def chunk(self, rows, hidden, drawn_mask, n_drawn):
        predicted = self.module(hidden)                                     # (n, T)
        advantage = self.rewards[rows, None] - predicted.detach()
        if self.normalize:  # (one chunk only: config_checks)
            advantage = normalize(advantage, drawn_mask, all_reduce=lambda t: self.accelerator.reduce(t, "sum"))
        return advantage, learned_loss(predicted, self.rewards[rows], drawn_mask, n_drawn)


def build(cfg: BaselineConfig, learned_module: nn.Module | None = None) -> Baseline:
    """The recipe's `reinforce.baseline` (with `learned`, its prepared module)."""
    if cfg.kind == "learned":
        return Learned(learned_module, cfg.normalize_advantages)
    if cfg.kind == "ema":
        return EMABaseline(cfg.ema_decay, cfg.normalize_advantages)
    kinds = {"none": NoBaseline, "mean": BatchMean, "loo": LeaveOneOut, "greedy": SelfCritical}
    return kinds[cfg.kind](normalize=cfg.normalize_advantages)
