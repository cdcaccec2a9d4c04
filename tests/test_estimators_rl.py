"""The REINFORCE-side tensor functions of seqrl.losses, against hand-computed values:
token_logprobs, masked_mean, reinforce_loss, normalize, kl_penalty."""

from __future__ import annotations

import math

import pytest
import torch

from seqrl.losses import IGNORE_INDEX, kl_penalty, masked_mean, normalize, reinforce_loss, token_logprobs

LN2, LN3 = math.log(2), math.log(3)
T, F = True, False


# -- token_logprobs -------------------------------------------------------------------------------

def vocab2_logits() -> torch.Tensor:
    # position 0: logits [0, 0]    -> p = [1/2, 1/2] -> log p = [-ln 2, -ln 2]
    # position 1: logits [ln 3, 0] -> p = [3/4, 1/4] -> log p = [ln 3 - ln 4, -ln 4]
    return torch.tensor([[[0.0, 0.0], [LN3, 0.0]]])


def test_token_logprobs_by_hand():
    logp = token_logprobs(vocab2_logits(), torch.tensor([[1, 0]]))
    # token 1 at position 0: -ln 2; token 0 at position 1: ln(3/4)
    torch.testing.assert_close(logp, torch.tensor([[-LN2, math.log(3 / 4)]]))


def test_token_logprobs_other_tokens_by_hand():
    logp = token_logprobs(vocab2_logits(), torch.tensor([[0, 1]]))
    # token 0 at position 0: -ln 2; token 1 at position 1: -ln 4 = -2 ln 2
    torch.testing.assert_close(logp, torch.tensor([[-LN2, -2 * LN2]]))


def test_token_logprobs_ignore_index_is_safe():
    # IGNORE_INDEX is clamped to token 0 (a finite value, masked later), never an index error
    logp = token_logprobs(vocab2_logits(), torch.tensor([[IGNORE_INDEX, IGNORE_INDEX]]))
    torch.testing.assert_close(logp, torch.tensor([[-LN2, math.log(3 / 4)]]))


def test_token_logprobs_float32_from_bf16():
    logp = token_logprobs(vocab2_logits().to(torch.bfloat16), torch.tensor([[1, 0]]))
    assert logp.dtype == torch.float32
    torch.testing.assert_close(logp, torch.tensor([[-LN2, math.log(3 / 4)]]), atol=1e-2, rtol=0)


def test_token_logprobs_shape_and_gradient():
    logits = vocab2_logits().requires_grad_()
    token_logprobs(logits, torch.tensor([[1, 0]])).sum().backward()
    # d log p_y / d z = onehot(y) - p: position 0 [0, 1] - [1/2, 1/2]; position 1 [1, 0] - [3/4, 1/4]
    torch.testing.assert_close(logits.grad, torch.tensor([[[-0.5, 0.5], [0.25, -0.25]]]))


# -- masked_mean ----------------------------------------------------------------------------------

def test_masked_mean_by_hand():
    # (1 + 3) / 2 = 2; the 100s are masked off
    values = torch.tensor([[1.0, 100.0], [3.0, 100.0]])
    assert masked_mean(values, torch.tensor([[T, F], [T, F]])).item() == pytest.approx(2.0)


def test_masked_mean_empty_mask_is_zero():
    assert masked_mean(torch.tensor([5.0, 7.0]), torch.tensor([F, F])).item() == 0.0


# -- reinforce_loss -------------------------------------------------------------------------------

def two_by_three():
    logprobs = torch.tensor([[-1.0, -2.0, -3.0], [-0.5, -1.5, -2.5]])
    mask = torch.tensor([[T, T, F], [T, F, F]])
    advantages = torch.tensor([2.0, -1.0])
    return logprobs, mask, advantages


def test_reinforce_loss_by_hand():
    logprobs, mask, adv = two_by_three()
    # row 0: A = 2 on positions 0, 1:  2 * (-1 - 2) = -6
    # row 1: A = -1 on position 0:    -1 * (-0.5)   = 0.5
    # loss = -(-6 + 0.5) / N(=2) = 2.75
    assert reinforce_loss(logprobs, mask, adv).item() == pytest.approx(2.75)


def test_reinforce_loss_ignores_masked_positions():
    logprobs, mask, adv = two_by_three()
    changed = logprobs.clone()
    changed[~mask] = torch.tensor([-50.0, 7.0, 123.0])  # the three masked-off positions
    assert reinforce_loss(changed, mask, adv).item() == pytest.approx(2.75)


def test_reinforce_loss_gradient_by_hand():
    logprobs, mask, adv = two_by_three()
    logprobs.requires_grad_()
    reinforce_loss(logprobs, mask, adv).backward()
    # d loss / d logp_it = -A_i * mask_it / N
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.0, -1.0, 0.0], [0.5, 0.0, 0.0]]))


def test_reinforce_loss_per_position_advantages_by_hand():
    logprobs, mask, _ = two_by_three()
    adv = torch.tensor([[1.0, 2.0, 99.0], [-4.0, 99.0, 99.0]])
    # row 0: 1 * -1 + 2 * -2 = -5; row 1: -4 * -0.5 = 2; loss = -(-5 + 2) / 2 = 1.5
    assert reinforce_loss(logprobs, mask, adv).item() == pytest.approx(1.5)


def test_reinforce_loss_detaches_advantages():
    logprobs, mask, adv = two_by_three()
    adv.requires_grad_()
    logprobs.requires_grad_()
    reinforce_loss(logprobs, mask, adv).backward()
    assert adv.grad is None  # the reward is never differentiated
    assert logprobs.grad is not None


def test_reinforce_loss_averages_over_rows_not_tokens():
    # two identical rows: same loss as one row (divided by N = rows), sum over tokens within a row
    logprobs, mask, adv = torch.tensor([[-1.0, -1.0]]), torch.tensor([[T, T]]), torch.tensor([1.0])
    one = reinforce_loss(logprobs, mask, adv).item()
    two = reinforce_loss(logprobs.repeat(2, 1), mask.repeat(2, 1), adv.repeat(2)).item()
    assert one == pytest.approx(2.0)  # -(1 * (-1 - 1)) / 1
    assert two == pytest.approx(2.0)


# -- normalize ------------------------------------------------------------------------------------

def test_normalize_vector_by_hand():
    # mean 2, sample std sqrt(((1-2)^2 + 0 + (3-2)^2) / (3 - 1)) = 1 -> [-1, 0, 1]
    out = normalize(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-6))


def test_normalize_uses_only_masked_entries():
    adv = torch.tensor([[1.0, 2.0, 99.0], [3.0, 99.0, 99.0]])
    mask = torch.tensor([[T, T, F], [T, F, F]])
    out = normalize(adv, mask)
    # valid entries [1, 2, 3]: mean 2, std 1 -> [-1, 0, 1]; masked 99s shift by the same (x - 2) / 1
    torch.testing.assert_close(out[mask], torch.tensor([-1.0, 0.0, 1.0]) / (1 + 1e-6))
    assert out[mask].mean().item() == pytest.approx(0.0, abs=1e-6)
    assert out[mask].std().item() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(out[~mask], torch.full((3,), 97.0) / (1 + 1e-6))


def test_normalize_random_masked_mean0_std1():
    g = torch.Generator().manual_seed(0)
    adv = torch.randn(6, 5, generator=g) * 7 + 3
    mask = torch.rand(6, 5, generator=g) > 0.4
    out = normalize(adv, mask)
    assert out[mask].mean().item() == pytest.approx(0.0, abs=1e-5)
    assert out[mask].std().item() == pytest.approx(1.0, abs=1e-4)


def test_normalize_single_entry_only_centres():
    torch.testing.assert_close(normalize(torch.tensor([5.0])), torch.tensor([0.0]))


def test_normalize_empty_mask_unchanged():
    adv = torch.tensor([1.0, 2.0])
    torch.testing.assert_close(normalize(adv, torch.tensor([F, F])), adv)


# -- kl_penalty -----------------------------------------------------------------------------------

def test_kl_zero_when_equal_to_reference():
    logp = torch.tensor([[-0.3, -1.2, -2.0]])
    assert kl_penalty(logp, logp.clone(), torch.tensor([[T, T, T]])).item() == pytest.approx(0.0, abs=1e-7)


def test_kl_one_position_by_hand():
    # log p = ln 1/2, log p_ref = ln 1/4: r = ln(1/4) - ln(1/2) = -ln 2
    # exp(r) - r - 1 = 1/2 + ln 2 - 1 = ln 2 - 1/2 = 0.19315
    logp = torch.tensor([[math.log(1 / 2), -9.0]])
    ref = torch.tensor([[math.log(1 / 4), -1.0]])
    mask = torch.tensor([[T, F]])  # the second position (different, masked) must not count
    assert kl_penalty(logp, ref, mask).item() == pytest.approx(LN2 - 0.5, rel=1e-6)


def test_kl_positive_when_different():
    g = torch.Generator().manual_seed(1)
    logp, ref = -torch.rand(4, 3, generator=g) * 3, -torch.rand(4, 3, generator=g) * 3
    assert kl_penalty(logp, ref, torch.ones(4, 3, dtype=torch.bool)).item() > 0


def test_kl_gradient_only_to_policy_by_hand():
    logp = torch.tensor([[math.log(1 / 2)]], requires_grad=True)
    ref = torch.tensor([[math.log(1 / 4)]], requires_grad=True)
    kl_penalty(logp, ref, torch.tensor([[T]])).backward()
    assert ref.grad is None  # the reference is frozen
    # d/d logp of exp(ref - logp) - (ref - logp) - 1 = -exp(r) + 1 = 1 - 1/2
    assert logp.grad.item() == pytest.approx(0.5)
