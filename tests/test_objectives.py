"""The sequence-level losses: expected risk by hand, its invariances, a finite-difference
gradient check on a toy policy, and the objectives as `mixer_step` calls them."""

from __future__ import annotations

import math

import pytest
import torch

from seqrl.losses import reinforce_loss, risk_loss
from seqrl.objectives import ExpectedRisk, Reinforce, ScoredRows, build
from seqrl.rl_config import EstimatorConfig


def test_risk_by_hand():
    # one source, 2 candidates: q = softmax(log .5, log .25) = (2/3, 1/3); risk = 2/3 * .2 + 1/3 * .8 = .4
    logp = torch.tensor([math.log(0.5), math.log(0.25)])
    assert float(risk_loss(logp, torch.tensor([0.2, 0.8]), k=2, alpha=1.0)) == pytest.approx(0.4)
    # alpha 2: q ∝ (.25, .0625) = (.8, .2): .8 * .2 + .2 * .8 = .32; alpha 0: the plain mean, .5
    assert float(risk_loss(logp, torch.tensor([0.2, 0.8]), k=2, alpha=2.0)) == pytest.approx(0.32)
    assert float(risk_loss(logp, torch.tensor([0.2, 0.8]), k=2, alpha=0.0)) == pytest.approx(0.5)
    # two sources: the mean of their risks; a chunk divides by the whole batch's sources
    two = risk_loss(logp.repeat(2), torch.tensor([0.2, 0.8, 1.0, 1.0]), k=2, alpha=1.0)
    assert float(two) == pytest.approx((0.4 + 1.0) / 2)
    assert float(risk_loss(logp, torch.tensor([0.2, 0.8]), k=2, alpha=1.0, sources=4)) == pytest.approx(0.1)


def test_the_gradient_by_hand_and_its_invariance_to_a_cost_shift():
    # d risk / d logp_i = alpha * q_i * (cost_i - sum_j q_j cost_j): (2/3)(.2 - .4), (1/3)(.8 - .4)
    logp = torch.tensor([math.log(0.5), math.log(0.25)], requires_grad=True)
    risk_loss(logp, torch.tensor([0.2, 0.8]), k=2, alpha=1.0).backward()
    torch.testing.assert_close(logp.grad, torch.tensor([-2 / 15, 2 / 15]))
    shifted = logp.detach().clone().requires_grad_()
    risk_loss(shifted, torch.tensor([5.2, 5.8]), k=2, alpha=1.0).backward()  # 1 - R and -R train alike
    torch.testing.assert_close(shifted.grad, logp.grad)


def test_finite_difference_gradient_on_a_toy_policy():
    """A toy autoregressive-free policy: per position t a categorical over 5 tokens with logits
    theta[t]; 3 sources x 4 candidates of 3 tokens; the first token of each is a gold prefix
    (masked out of the suffix log-probability). torch's gradcheck compares autograd with central
    finite differences in float64."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, 5, (12, 3), generator=g)
    mask = torch.tensor([[False, True, True]]).expand(12, 3)
    costs = torch.rand(12, generator=g, dtype=torch.float64)
    objective = ExpectedRisk(alpha=0.7)

    def loss(theta):
        logp = torch.log_softmax(theta, dim=-1).expand(12, 3, 5).gather(-1, tokens[..., None]).squeeze(-1)
        return objective(ScoredRows(logp, mask, -costs, torch.zeros(0), 4, 12))

    theta = torch.randn(3, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (theta,), eps=1e-6, atol=1e-7)
    loss(theta).backward()
    assert float(theta.grad[0].abs().max()) == 0.0  # the gold prefix's position gets no gradient
    assert float(theta.grad[1:].abs().max()) > 0.0


def test_objectives_as_mixer_step_calls_them():
    logp = torch.log(torch.tensor([[0.9, 0.5], [0.9, 0.25], [0.3, 0.5], [0.3, 0.5]]))
    mask = torch.tensor([[False, True]] * 4)  # token 0 gold, token 1 sampled
    rewards, advantages = torch.tensor([0.8, 0.2, 0.0, 0.0]), torch.tensor([0.3, -0.3, 0.0, 0.0])
    risk = ExpectedRisk(alpha=1.0)(ScoredRows(logp, mask, rewards, advantages, 2, 4))
    assert float(risk) == pytest.approx((-(2 / 3 * 0.8 + 1 / 3 * 0.2) + 0.0) / 2)  # q over the suffixes only
    assert float(Reinforce()(ScoredRows(logp, mask, rewards, advantages, 2, 4))) == pytest.approx(
        float(reinforce_loss(logp, mask, advantages, rows=4)))
    assert build(EstimatorConfig("risk", 0.5)) == ExpectedRisk(0.5)
    assert build(EstimatorConfig("reinforce", 0.5)) == Reinforce()


def test_length_normalized_q_by_hand():
    """q from each suffix's mean token log p: row 0 samples two tokens of p .5 (sum log .25, mean
    log .5), row 1 one token of p .25 (sum and mean log .25)."""
    logp = torch.log(torch.tensor([[0.9, 0.5, 0.5], [0.9, 0.25, 1.0]]))
    mask = torch.tensor([[False, True, True], [False, True, False]])  # row 1's third position is padding
    rewards = -torch.tensor([0.2, 0.8])  # costs .2 and .8
    summed = ExpectedRisk(alpha=1.0)(ScoredRows(logp, mask, rewards, torch.zeros(0), 2, 2))
    assert float(summed) == pytest.approx(0.5)  # q = softmax(log .25, log .25) = (.5, .5)
    normalized = ExpectedRisk(alpha=1.0, length_normalize=True)(ScoredRows(logp, mask, rewards, torch.zeros(0), 2, 2))
    assert float(normalized) == pytest.approx(0.4)  # q = softmax(log .5, log .25) = (2/3, 1/3)
    assert build(EstimatorConfig("risk", 1.0, True)) == ExpectedRisk(1.0, length_normalize=True)


def test_length_normalized_gradient_on_a_toy_policy():
    """Suffixes of 1 to 3 tokens: autograd against central finite differences, and d risk / d log p
    of a suffix's token = alpha * q_i * (cost_i - mean_q) / length_i."""
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(0, 5, (6, 4), generator=g)
    lengths = torch.tensor([1, 3, 2, 3, 1, 2])
    mask = (torch.arange(4) >= 1) & (torch.arange(4) <= lengths[:, None])  # position 0 is the gold prefix
    costs = torch.rand(6, generator=g, dtype=torch.float64)
    objective = ExpectedRisk(alpha=2.0, length_normalize=True)

    def loss(theta):
        logp = torch.log_softmax(theta, dim=-1).expand(6, 4, 5).gather(-1, tokens[..., None]).squeeze(-1)
        return objective(ScoredRows(logp, mask, -costs, torch.zeros(0), 3, 6))

    theta = torch.randn(4, 5, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(loss, (theta,), eps=1e-6, atol=1e-7)
    logp = torch.randn(6, 4, dtype=torch.float64, generator=g).clamp(max=0).requires_grad_()
    objective(ScoredRows(logp, mask, -costs, torch.zeros(0), 3, 6)).backward()
    mean_logp = (logp.detach() * mask).sum(1) / lengths
    q = torch.softmax(2.0 * mean_logp.view(2, 3), dim=1).flatten()
    expected_row = 2.0 * q * (costs - (q * costs).view(2, 3).sum(1).repeat_interleave(3)) / lengths / 2  # 2 sources
    torch.testing.assert_close(logp.grad, expected_row[:, None] * mask)


def test_a_risk_recipe_trains_with_the_risk_loss(tiny_recipe, tmp_path, monkeypatch):
    """`reinforce.estimator.kind: risk` reaches mixer_step: every sequence-level step computes the risk
    over its k candidates (and logs it as train/reinforce)."""
    import json

    import yaml

    from seqrl import objectives
    from seqrl.cli import main

    calls = []
    monkeypatch.setattr(objectives, "risk_loss", lambda *a, **kw: calls.append(a[2]) or risk_loss(*a, **kw))
    tiny_recipe["schedule"] = {"kind": "mixer", "xent_steps": 1, "stage_steps": 2, "delta": 4}
    tiny_recipe["reinforce"] = {"estimator": {"kind": "risk", "risk_alpha": 0.5}, "candidates": {"num_samples": 3},
                                "batch_size": 4}
    tiny_recipe["data"]["max_target_tokens"] = 8
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(tiny_recipe))
    assert main(["finetune", str(tmp_path / "r.yaml")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/reinforce" in r]
    assert calls and set(calls) == {3} and trained and all(math.isfinite(r["train/reinforce"]) for r in trained)
