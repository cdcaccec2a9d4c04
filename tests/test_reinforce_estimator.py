"""The REINFORCE estimator, assembled from seqrl's own pieces, is unbiased and its baselines
lower its variance.

A toy policy: one categorical "token" a ~ softmax(theta) over 4 actions (a length-1 sequence:
logits (N, 1, V)), with a fixed reward r(a). The exact gradient of J = E_a[r(a)] is

    dJ/dtheta_j = sum_a r_a p_a (1[a = j] - p_j) = p_j (r_j - sum_a p_a r_a).

Samples come in groups of k per "source" (rows i*k .. i*k+k-1, as `rollout` lays them out) and
in batches of B sources. One batch gives one estimate, the gradient of -`reinforce_loss` with
`token_logprobs` and a baseline from `seqrl.baselines`; we average many batches.

Tolerance: the per-batch estimates are independent (for `ema`, uncorrelated: b is fixed by
past batches, so each estimate has conditional mean g given the past - martingale differences),
so the standard error of their mean is std / sqrt(n_batches) per component. We assert
|mean - expected| < 5 * stderr + 1e-3 on every component: a false failure has probability
< 1e-5 per component for an unbiased estimator, and a bias larger than that band fails.
"""

from __future__ import annotations

import math

import pytest
import torch

from seqrl.baselines import EMABaseline, LearnedBaseline, batch_mean, from_greedy, leave_one_out
from seqrl.losses import reinforce_loss, token_logprobs

# p = [0.4, 0.3, 0.2, 0.1]; rewards with a large common offset (10) so a baseline matters.
P = [0.4, 0.3, 0.2, 0.1]
THETA = torch.tensor([math.log(p) for p in P])
REWARDS = torch.tensor([11.0, 10.0, 12.0, 9.0])
# E[r] = 0.4 * 11 + 0.3 * 10 + 0.2 * 12 + 0.1 * 9 = 4.4 + 3.0 + 2.4 + 0.9 = 10.7
# g_j = p_j (r_j - 10.7) = [0.4 * 0.3, 0.3 * -0.7, 0.2 * 1.3, 0.1 * -1.7]
EXACT = torch.tensor([0.12, -0.21, 0.26, -0.17], dtype=torch.float64)
GREEDY_REWARD = 11.0  # argmax theta = action 0 (p = 0.4), r = 11

K = 4             # samples per source
B = 2             # sources per batch -> N = B * K = 8 samples per batch
N_BATCHES = 16384  # 131072 samples in all
BASELINES = ["none", "mean", "loo", "ema", "greedy", "constant", "learned"]


def test_exact_gradient_formula_matches_autograd():
    theta = THETA.clone().requires_grad_()
    (torch.softmax(theta, -1) * REWARDS).sum().backward()
    torch.testing.assert_close(theta.grad.double(), EXACT, atol=1e-6, rtol=0)


def sample_actions(seed: int) -> torch.Tensor:
    """(N_BATCHES * B * K,) actions, grouped: batch, then source, then sample."""
    g = torch.Generator().manual_seed(seed)
    return torch.multinomial(torch.softmax(THETA, -1), N_BATCHES * B * K, replacement=True, generator=g)


def baseline_values(kind: str, rewards: torch.Tensor) -> torch.Tensor:
    """b for every sample (per sequence (M,), or per position (M, 1) for `learned`), batch by batch."""
    per_batch = rewards.view(N_BATCHES, B * K)
    if kind == "none":
        return torch.zeros_like(rewards)
    if kind == "mean":
        return torch.cat([batch_mean(r) for r in per_batch])
    if kind == "loo":
        return leave_one_out(rewards, K)  # groups of K never straddle a batch
    if kind == "ema":
        ema = EMABaseline(decay=0.9)
        ema(torch.tensor([10.0, 11.0]))  # warm-up batch: from then on b only depends on the past
        return torch.cat([ema(r) for r in per_batch])
    if kind == "greedy":
        return from_greedy(torch.full((N_BATCHES * B,), GREEDY_REWARD), K)
    if kind == "half_own_reward":  # not a valid baseline: it depends on the sample it scores
        return rewards / 2
    if kind == "constant":
        return torch.full_like(rewards, 10.0)  # a fixed value, as a converged regressor would give
    # learned: MIXER's regressor on per-source states (fixed weights, as if mid-training); the
    # state depends on the source, never on the sampled token, so b_t stays a control variate
    g = torch.Generator().manual_seed(3)
    lb = LearnedBaseline(hidden_size=5)
    with torch.no_grad():
        lb.linear.weight.copy_(torch.randn(1, 5, generator=g) * 0.5)
        lb.linear.bias.fill_(10.0)
    hidden = torch.randn(N_BATCHES * B, 1, 5, generator=g).repeat_interleave(K, 0)  # (M, T=1, D)
    return lb(hidden)  # (M, 1): per-position baseline


def per_batch_estimates(kind: str, seed: int = 0) -> torch.Tensor:
    """(N_BATCHES, V): each batch's estimate of dJ/dtheta, from seqrl's loss and autograd."""
    actions = sample_actions(seed)
    rewards = REWARDS[actions]
    b = baseline_values(kind, rewards)
    advantages = rewards[:, None] - b if b.dim() == 2 else rewards - b
    # one copy of theta per batch, so autograd hands back every batch's gradient at once
    theta = THETA.expand(N_BATCHES, -1).clone().requires_grad_()
    logits = theta.repeat_interleave(B * K, 0).unsqueeze(1)            # (M, 1, V)
    logp = token_logprobs(logits, actions.unsqueeze(1))                 # (M, 1)
    loss = reinforce_loss(logp, torch.ones_like(logp, dtype=torch.bool), advantages)
    (-loss).backward()
    # -loss = (1/M) sum_i A_i log p_i, so its gradient w.r.t. batch b's copy is
    # (1/M) sum_{i in b} A_i grad log p_i = (1/N_BATCHES) * (batch b's own mean estimate)
    return theta.grad.double() * N_BATCHES


@pytest.fixture(scope="module")
def estimates() -> dict[str, torch.Tensor]:
    return {kind: per_batch_estimates(kind) for kind in BASELINES}


def assert_unbiased(est: torch.Tensor, expected: torch.Tensor) -> None:
    mean = est.mean(0)
    stderr = est.std(0) / math.sqrt(est.shape[0])
    tol = 5 * stderr + 1e-3
    assert torch.all((mean - expected).abs() < tol), f"mean {mean}, expected {expected}, tolerance {tol}"


@pytest.mark.parametrize("kind", ["none", "loo", "ema", "greedy", "constant", "learned"])
def test_unbiased(estimates, kind):
    assert_unbiased(estimates[kind], EXACT)


def test_batch_mean_has_the_known_shrinkage(estimates):
    # b = mean of the batch includes the sample's own reward with weight 1/N:
    # E[(r_i - b) grad log p_i] = (1 - 1/N) g (the others' rewards are independent of a_i and
    # E[grad log p] = 0). We test that corrected expectation exactly, with N = B*K = 8: 7/8 g.
    n = B * K
    assert_unbiased(estimates["mean"], (1 - 1 / n) * EXACT)
    # and the shrinkage is real: g itself lies outside the tolerance band (|g_j| / 8 >= 0.015)
    est = estimates["mean"]
    tol = 5 * est.std(0) / math.sqrt(est.shape[0]) + 1e-3
    assert torch.any((est.mean(0) - EXACT).abs() > tol)


def test_a_baseline_that_sees_its_own_sample_is_caught():
    # the test's power: b_i = r_i / 2 depends on a_i, so E[(r_i - b_i) grad log p_i] = g / 2;
    # the same 5-sigma check accepts g / 2 and rejects g
    est = per_batch_estimates("half_own_reward", seed=5)
    assert_unbiased(est, EXACT / 2)
    tol = 5 * est.std(0) / math.sqrt(est.shape[0]) + 1e-3
    assert torch.any((est.mean(0) - EXACT).abs() > tol)


def total_variance(est: torch.Tensor) -> float:
    """Sum over theta's components of the variance of one batch's estimate."""
    return float(est.var(0).sum())


@pytest.mark.parametrize("kind", ["loo", "mean", "greedy", "ema", "constant", "learned"])
def test_baselines_reduce_variance(estimates, kind):
    # Measured with these numbers (variance of one 8-sample batch's estimate, summed over theta):
    # none ~ 10.1; mean ~ 0.067, ema ~ 0.074, greedy ~ 0.085, loo ~ 0.10, constant ~ 0.11,
    # learned ~ 0.13, i.e. ratios to none of 0.007 .. 0.011.
    # With a common offset of 10, none's variance is dominated by r^2 Var(grad log p);
    # every baseline removes most of the offset, so each one is far below 0.8 x none: we
    # assert < 0.1 x none, a 9x margin on the worst measured ratio.
    ratio = total_variance(estimates[kind]) / total_variance(estimates["none"])
    assert ratio < 0.1, f"{kind}: variance ratio to none {ratio:.3f}"


# -- per-position advantages ----------------------------------------------------------------------

def test_per_position_equals_per_sequence_when_constant_over_positions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 5, 7, generator=g, requires_grad=True)
    tokens = torch.randint(0, 7, (6, 5), generator=g)
    mask = torch.rand(6, 5, generator=g) > 0.3
    adv = torch.randn(6, generator=g)

    logp = token_logprobs(logits, tokens)
    per_seq = reinforce_loss(logp, mask, adv)
    (grad_seq,) = torch.autograd.grad(per_seq, logits, retain_graph=True)
    per_pos = reinforce_loss(logp, mask, adv[:, None].expand(6, 5))
    (grad_pos,) = torch.autograd.grad(per_pos, logits)

    torch.testing.assert_close(per_pos, per_seq)
    torch.testing.assert_close(grad_pos, grad_seq)
