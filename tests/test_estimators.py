"""masked_xent against hand-computed values, and one optimizer step that lowers the loss."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_tiny, make_pairs

from seqrl.losses import IGNORE_INDEX, masked_xent

LN2, LN3, LN4 = math.log(2), math.log(3), math.log(4)


def tiny_logits():
    # position 0: logits [0, 0]     -> p = [1/2, 1/2]; label 0 -> -log p = ln 2
    # position 1: logits [ln 3, 0]  -> p = [3/4, 1/4]; label 1 -> -log p = ln 4
    return torch.tensor([[[0.0, 0.0], [LN3, 0.0]]]), torch.tensor([[0, 1]])


def test_hand_computed_value():
    logits, labels = tiny_logits()
    loss, n = masked_xent(logits, labels)
    assert n.item() == 2
    assert loss.item() == pytest.approx((LN2 + LN4) / 2, rel=1e-6)  # = 1.5 ln 2 = 1.0397


def test_ignored_positions_excluded():
    logits, labels = tiny_logits()
    # a third position with a huge loss if it were counted, and a second row that is all padding
    logits = torch.cat([logits, torch.tensor([[[50.0, -50.0]]])], dim=1)
    labels = torch.cat([labels, torch.tensor([[IGNORE_INDEX]])], dim=1)
    logits = torch.cat([logits, torch.randn(1, 3, 2) * 30], dim=0)
    labels = torch.cat([labels, torch.full((1, 3), IGNORE_INDEX)], dim=0)
    loss, n = masked_xent(logits, labels)
    assert n.item() == 2
    assert loss.item() == pytest.approx(1.5 * LN2, rel=1e-6)


def test_mean_is_over_tokens_not_rows():
    # row 0 scores one token (ln 2), row 1 scores two (ln 4 each): mean = (ln2 + 2 ln4) / 3
    logits = torch.tensor([[[0.0, 0.0], [0.0, 0.0]], [[LN3, 0.0], [LN3, 0.0]]])
    labels = torch.tensor([[0, IGNORE_INDEX], [1, 1]])
    loss, n = masked_xent(logits, labels)
    assert n.item() == 3
    assert loss.item() == pytest.approx((LN2 + 2 * LN4) / 3, rel=1e-6)


def test_label_smoothing_by_hand():
    # torch: (1 - e) * nll + e * mean_v(-log p_v)
    e = 0.2
    logits, labels = tiny_logits()
    pos0 = LN2  # both classes have -log p = ln 2
    pos1 = (1 - e) * LN4 + e * (math.log(4 / 3) + LN4) / 2
    loss, n = masked_xent(logits, labels, label_smoothing=e)
    assert n.item() == 2
    assert loss.item() == pytest.approx((pos0 + pos1) / 2, rel=1e-6)


def test_all_ignored_is_zero_not_nan():
    loss, n = masked_xent(torch.randn(2, 3, 5), torch.full((2, 3), IGNORE_INDEX))
    assert n.item() == 0 and loss.item() == 0.0


def test_low_precision_logits_give_float32_loss():
    logits, labels = tiny_logits()
    loss, _ = masked_xent(logits.to(torch.bfloat16), labels)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(1.5 * LN2, rel=1e-2)


def test_gradient_flows_only_to_scored_positions():
    logits, labels = tiny_logits()
    logits = torch.cat([logits, torch.zeros(1, 1, 2)], dim=1).requires_grad_()
    labels = torch.cat([labels, torch.tensor([[IGNORE_INDEX]])], dim=1)
    masked_xent(logits, labels)[0].backward()
    assert torch.all(logits.grad[0, 2] == 0)
    # d/dz of mean CE at position 0 = (p - onehot) / 2 = ([0.5, 0.5] - [1, 0]) / 2
    torch.testing.assert_close(logits.grad[0, 0], torch.tensor([-0.25, 0.25]))


@pytest.mark.parametrize("architecture", ["marian", "gpt2"])
def test_one_step_lowers_loss_on_same_batch(architecture):
    tm = build_tiny(architecture, seed=7)
    tm.model.eval()  # no dropout: the before/after losses are deterministic
    pairs = make_pairs()[:8]
    src = tm.encode_sources([p["en"] for p in pairs])
    tgt = tm.encode_targets([p["es"] for p in pairs])
    batch = tm.collate([{"source_ids": s, "target_ids": t} for s, t in zip(src, tgt, strict=True)])
    optimizer = torch.optim.AdamW(tm.model.parameters(), lr=1e-2)

    before, n = masked_xent(*tm.target_logits(tm.model, batch)[:2])
    assert n.item() == sum(len(t) for t in tgt)
    assert math.isfinite(before.item())
    before.backward()
    optimizer.step()
    optimizer.zero_grad()
    with torch.no_grad():
        after, _ = masked_xent(*tm.target_logits(tm.model, batch)[:2])
    assert after.item() < before.item() - 1e-3
