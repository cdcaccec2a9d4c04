"""Baselines for REINFORCE's advantage A = R - b, against hand-computed values."""

from __future__ import annotations

import pytest
import torch

from seqrl.baselines import EMABaseline, LearnedBaseline, batch_mean, from_greedy, learned_loss, leave_one_out

T, F = True, False


def close(actual: torch.Tensor, expected: list[float]) -> None:
    torch.testing.assert_close(actual, torch.tensor(expected))


# -- leave_one_out --------------------------------------------------------------------------------

def test_leave_one_out_one_group():
    # sum = 1 + 2 + 3 + 6 = 12; b_i = (12 - r_i) / 3 -> 11/3, 10/3, 9/3, 6/3
    close(leave_one_out(torch.tensor([1.0, 2.0, 3.0, 6.0]), k=4), [11 / 3, 10 / 3, 3.0, 2.0])


def test_leave_one_out_two_groups():
    # group 0 as above; group 1 [0, 0, 4, 4]: sum 8 -> 8/3, 8/3, 4/3, 4/3 (groups never mix)
    rewards = torch.tensor([1.0, 2.0, 3.0, 6.0, 0.0, 0.0, 4.0, 4.0])
    close(leave_one_out(rewards, k=4), [11 / 3, 10 / 3, 3.0, 2.0, 8 / 3, 8 / 3, 4 / 3, 4 / 3])


def test_leave_one_out_pairs_swap():
    # k = 2: each sample's baseline is its sibling's reward
    close(leave_one_out(torch.tensor([1.0, 3.0, 5.0, 9.0]), k=2), [3.0, 1.0, 9.0, 5.0])


def test_leave_one_out_advantages_sum_to_k_over_k_minus_1_times_centred():
    # A_i = r_i - (S - r_i)/(k-1) = k/(k-1) (r_i - mean): for [1, 2, 3, 6], mean 3 -> 4/3 * [-2, -1, 0, 3]
    r = torch.tensor([1.0, 2.0, 3.0, 6.0])
    close(r - leave_one_out(r, k=4), [-8 / 3, -4 / 3, 0.0, 4.0])


# -- batch_mean, from_greedy ----------------------------------------------------------------------

def test_batch_mean():
    # (1 + 2 + 3 + 6) / 4 = 3 for every sample, across groups
    close(batch_mean(torch.tensor([1.0, 2.0, 3.0, 6.0])), [3.0, 3.0, 3.0, 3.0])


def test_from_greedy_repeats_per_source():
    close(from_greedy(torch.tensor([0.5, 0.2]), k=2), [0.5, 0.5, 0.2, 0.2])


def test_from_greedy_k1():
    close(from_greedy(torch.tensor([0.5, 0.2]), k=1), [0.5, 0.2])


# -- EMABaseline ----------------------------------------------------------------------------------

def test_ema_first_call_is_own_mean_then_running():
    ema = EMABaseline(decay=0.9)
    # call 1: no history -> b = this batch's mean (1 + 3) / 2 = 2; state 2
    close(ema(torch.tensor([1.0, 3.0])), [2.0, 2.0])
    assert ema.value == pytest.approx(2.0)
    # call 2: b = the state BEFORE this batch (2), so b does not depend on the samples it scores;
    #         then state = 0.9 * 2 + 0.1 * mean(4, 6) = 1.8 + 0.5 = 2.3
    close(ema(torch.tensor([4.0, 6.0])), [2.0, 2.0])
    assert ema.value == pytest.approx(2.3)
    # call 3: b = 2.3; state = 0.9 * 2.3 + 0.1 * 0 = 2.07
    close(ema(torch.tensor([0.0, 0.0, 0.0])), [2.3, 2.3, 2.3])
    assert ema.value == pytest.approx(2.07)


def test_ema_returns_rewards_shape_and_dtype():
    out = EMABaseline(0.5)(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    assert out.shape == (3,) and out.dtype == torch.float64


def test_ema_state_dict_round_trip():
    ema = EMABaseline(decay=0.9)
    ema(torch.tensor([1.0, 3.0]))
    ema(torch.tensor([4.0, 6.0]))  # state 2.3 (see above)
    assert ema.state_dict() == {"value": pytest.approx(2.3)}
    resumed = EMABaseline(decay=0.9)
    resumed.load_state_dict(ema.state_dict())
    batch = torch.tensor([10.0, 20.0])
    close(resumed(batch), [2.3, 2.3])
    close(ema(batch), [2.3, 2.3])
    assert resumed.value == pytest.approx(ema.value) == pytest.approx(0.9 * 2.3 + 0.1 * 15)  # 3.57


def test_ema_state_dict_before_first_call():
    fresh = EMABaseline(0.9)
    fresh.load_state_dict(EMABaseline(0.9).state_dict())
    close(fresh(torch.tensor([4.0, 6.0])), [5.0, 5.0])  # still "no history": own mean


# -- LearnedBaseline ------------------------------------------------------------------------------

def test_learned_baseline_initialisation():
    lb = LearnedBaseline(hidden_size=3)
    hidden = torch.randn(2, 4, 3) * 10
    # w = 0, c = 0.01: b_t = 0 . h_t + 0.01 = 0.01 everywhere, shape (N, T)
    torch.testing.assert_close(lb(hidden), torch.full((2, 4), 0.01))


def test_learned_baseline_no_gradient_into_hidden():
    lb = LearnedBaseline(hidden_size=3)
    hidden = torch.randn(2, 4, 3, requires_grad=True)
    lb(hidden).sum().backward()
    assert hidden.grad is None
    # its own parameters do learn: d sum(b) / dc = N * T = 8, d sum(b) / dw = sum of h over (N, T)
    assert lb.linear.bias.grad.item() == pytest.approx(8.0)
    torch.testing.assert_close(lb.linear.weight.grad, hidden.detach().sum(dim=(0, 1)).unsqueeze(0))


def test_learned_baseline_float_output_from_bf16():
    lb = LearnedBaseline(hidden_size=3)
    assert lb(torch.randn(1, 2, 3, dtype=torch.bfloat16)).dtype == torch.float32


def test_learned_loss_masked_mse_by_hand():
    predicted = torch.tensor([[0.5, 1.0, 2.0], [0.0, 0.0, 9.0]])
    rewards = torch.tensor([1.0, 2.0])
    mask = torch.tensor([[T, T, F], [T, T, F]])
    # (0.5 - 1)^2 + (1 - 1)^2 + (0 - 2)^2 + (0 - 2)^2 = 0.25 + 0 + 4 + 4 = 8.25 over 4 positions
    assert learned_loss(predicted, rewards, mask).item() == pytest.approx(8.25 / 4)


def test_learned_loss_empty_mask_is_zero():
    assert learned_loss(torch.ones(1, 2), torch.tensor([5.0]), torch.tensor([[F, F]])).item() == 0.0


def test_learned_baseline_regresses_towards_reward():
    torch.manual_seed(0)
    lb = LearnedBaseline(hidden_size=2)
    opt = torch.optim.SGD(lb.parameters(), lr=0.1)
    hidden, rewards, mask = torch.randn(4, 3, 2), torch.full((4,), 1.0), torch.ones(4, 3, dtype=torch.bool)
    before = learned_loss(lb(hidden), rewards, mask).item()  # (0.01 - 1)^2 = 0.9801
    assert before == pytest.approx(0.99 ** 2)
    for _ in range(50):
        opt.zero_grad()
        learned_loss(lb(hidden), rewards, mask).backward()
        opt.step()
    assert learned_loss(lb(hidden), rewards, mask).item() < 0.1 * before


def test_learned_baseline_trains_at_its_own_constant_rate(tiny_recipe):
    """`reinforce.baseline.lr` is the regressor's rate at every step: the network's warm-up, decay
    and RL factor do not touch it (MIXER's fraction of the network's rate is ~1e-6 under Adam)."""
    from pathlib import Path

    from accelerate import Accelerator

    from seqrl.config import from_dict
    from seqrl.run import setup
    tiny_recipe["schedule"].update(kind="mixer", xent_steps=4, stage_steps=2, delta=16)
    tiny_recipe["optim"].update(lr=1e-3, warmup_steps=2, decay="linear")
    tiny_recipe["reinforce"] = {"baseline": {"kind": "learned", "lr": 0.02}, "lr": 1e-4}
    run = setup(from_dict(tiny_recipe), Accelerator(cpu=True), Path(tiny_recipe["run"]["output_dir"]), [])
    network, regressor = run.optimizer.param_groups
    seen = []
    for _ in range(7):  # warm-up (steps 0-1), decay (2-3), RL (4-6)
        seen.append((network["lr"], regressor["lr"]))
        run.optimizer.step()  # no gradients: moves nothing
        run.lr_scheduler.step()
    assert [n for n, _ in seen] == pytest.approx([0.0, 5e-4, 1e-3, 5e-4, 1e-4, 1e-4, 1e-4])
    assert [r for _, r in seen] == [0.02] * 7


def test_build_gives_one_object_per_recipe_baseline_and_its_values():
    from seqrl.baselines import BatchMean, EMABaseline, Learned, LeaveOneOut, NoBaseline, SelfCritical, build
    from seqrl.rl_config import BaselineConfig

    R, k, greedy = torch.tensor([1.0, 3.0, 2.0, 6.0]), 2, torch.tensor([0.5, 4.0])
    gather = lambda t: torch.cat([t, torch.tensor([10.0, 10.0])])  # noqa: E731  (another process's rewards)
    expected = {"none": [0, 0, 0, 0], "mean": [16 / 3] * 4, "loo": [3, 1, 6, 2], "greedy": [0.5, 0.5, 4, 4],
                "ema": [16 / 3] * 4}  # (ema: its first batch's global mean)
    kinds = {"none": NoBaseline, "mean": BatchMean, "loo": LeaveOneOut, "greedy": SelfCritical, "ema": EMABaseline}
    for name, values in expected.items():
        b = build(BaselineConfig(kind=name))
        assert isinstance(b, kinds[name]) and b.needs_greedy == (name == "greedy")
        torch.testing.assert_close(b.values(R, k, greedy, gather), torch.tensor(values, dtype=torch.float32))
    module = LearnedBaseline(4)
    learned = build(BaselineConfig(kind="learned"), module)
    assert isinstance(learned, Learned) and learned.module is module
    ema = build(BaselineConfig(kind="ema"))
    ema.values(R, k, greedy, gather)
    restored = build(BaselineConfig(kind="ema"))
    restored.load_state_dict(ema.state_dict())
    assert restored.value == ema.value == pytest.approx(16 / 3)


class _OneProcess:
    """The accelerator calls an `Advantages` makes, on one process."""

    def gather(self, t):
        return t

    def reduce(self, t, op):
        return t


def test_sequence_advantages_by_hand_with_a_reference_row_and_normalization():
    from seqrl.baselines import LeaveOneOut

    # 2 sources x (2 samples + the reference row): rewards 1, 3, [9] and 2, 6, [9]
    R = torch.tensor([1.0, 3.0, 9.0, 2.0, 6.0, 9.0])
    decoded = torch.tensor([True, True, False, True, True, False])
    adv = LeaveOneOut().advantages(R, decoded, 2, None, _OneProcess())
    assert not adv.needs_hidden and adv.loss_name is None
    torch.testing.assert_close(adv.values, torch.tensor([-2.0, 2.0, 0.0, -4.0, 4.0, 0.0]))
    chunk, own_loss = adv.chunk(slice(3, 6), None, None, None)
    torch.testing.assert_close(chunk, torch.tensor([-4.0, 4.0, 0.0]))
    assert float(own_loss) == 0.0
    # normalized: (A - mean) / std over the batch; A = -2, 2, -4, 4 (mean 0, sample std sqrt(40/3))
    R2, all_rows = torch.tensor([1.0, 3.0, 2.0, 6.0]), torch.ones(4, dtype=torch.bool)
    normalized = LeaveOneOut(normalize=True).advantages(R2, all_rows, 2, None, _OneProcess()).values
    torch.testing.assert_close(normalized, torch.tensor([-2.0, 2.0, -4.0, 4.0]) / (40 / 3) ** 0.5, atol=1e-5, rtol=1e-5)


def test_learned_advantages_by_hand():
    from seqrl.baselines import Learned

    module = LearnedBaseline(2)
    with torch.no_grad():
        module.linear.weight.copy_(torch.tensor([[1.0, 0.0]]))
        module.linear.bias.fill_(0.5)
    R = torch.tensor([1.0, 2.0])
    adv = Learned(module).advantages(R, torch.ones(2, dtype=torch.bool), 2, None, _OneProcess())
    assert adv.needs_hidden and adv.loss_name == "baseline/mse"
    hidden = torch.tensor([[[0.0, 9.0], [1.0, 9.0]], [[2.0, 9.0], [3.0, 9.0]]])  # (2 rows, 2 positions, 2)
    mask = torch.tensor([[True, True], [False, True]])
    A, loss = adv.chunk(slice(0, 2), hidden, mask, torch.tensor(3.0))
    # b = h[..., 0] + 0.5 = [[0.5, 1.5], [2.5, 3.5]]; A = R - b
    torch.testing.assert_close(A, torch.tensor([[0.5, -0.5], [-0.5, -1.5]]))
    # squared error over the 3 masked positions: (0.25 + 0.25 + 2.25) / 3
    assert float(loss) == pytest.approx(2.75 / 3)
