"""`chunk_loss` by hand: a stand-in teacher-forced pass with known logits, so that every term of
w * XENT(prefix) + (1 - w) * REINFORCE(suffix) + baseline loss + kl_coef * KL is a number to check."""

from __future__ import annotations

import contextlib
import math

import pytest
import torch

from seqrl import chunk_loss as module
from seqrl.baselines import SequenceAdvantages
from seqrl.chunk_loss import StepTerms, chunk_loss
from seqrl.objectives import Reinforce

# one row, 3 positions over a 2-token vocabulary: position 0 is gold prefix, 1-2 are sampled
LOGITS = torch.log(torch.tensor([[[0.5, 0.5], [0.25, 0.75], [0.8, 0.2]]]))
LABELS = torch.tensor([[0, 1, 0]])


class Chunk:
    sequences = LABELS  # the rows' tokens (read by objectives that choose among them: MBR distillation)

    def sample_masks(self, sampled, vocab):
        return {}  # no generation constraints


class HalfReference:
    """A reference policy that gives every token probability 1/2."""

    coef = 0.1

    def logits(self, chunk, is_seq2seq):
        return torch.zeros(1, 3, 2)


def terms(reference=None, weight=0.25):
    prefix = torch.tensor([[True, False, False]])
    suffix = torch.tensor([[False, True, True]])
    return StepTerms(Reinforce(), SequenceAdvantages(torch.tensor([2.0])), reference, torch.tensor([3.0]), 1,
                     prefix, suffix, suffix, torch.tensor(1.0), torch.tensor(2.0), weight, True,
                     autocast=contextlib.nullcontext)


@pytest.fixture(autouse=True)
def stand_in_pass(monkeypatch):
    logits = LOGITS.clone().requires_grad_()
    monkeypatch.setattr(module, "rollout_logits", lambda model, chunk, is_seq2seq, hidden: (logits, LABELS, None))
    return logits


def test_each_term_by_hand():
    loss, parts = chunk_loss(None, Chunk(), slice(0, 1), terms(), is_seq2seq=True)
    xent = -math.log(0.5)                                   # the gold prefix token
    reinforce = -2.0 * (math.log(0.75) + math.log(0.8))     # -A * sum of the sampled tokens' log p, 1 row
    assert float(parts["xent"]) == pytest.approx(xent)
    assert float(parts["reinforce"]) == pytest.approx(reinforce)
    assert float(parts["baseline"]) == 0.0 and float(parts["kl"]) == 0.0
    assert float(loss.detach()) == pytest.approx(0.25 * xent + 0.75 * reinforce)


def test_the_kl_term_by_hand():
    loss, parts = chunk_loss(None, Chunk(), slice(0, 1), terms(HalfReference()), is_seq2seq=True)
    # k3 estimate exp(r) - r - 1, r = log p_ref - log p, averaged over the 2 sampled tokens
    r = [math.log(0.5 / 0.75), math.log(0.5 / 0.8)]
    kl = sum(math.exp(x) - x - 1 for x in r) / 2
    assert float(parts["kl"]) == pytest.approx(kl)
    base = 0.25 * -math.log(0.5) + 0.75 * -2.0 * (math.log(0.75) + math.log(0.8))
    assert float(loss.detach()) == pytest.approx(base + 0.1 * kl)


def test_the_gradient_reaches_the_logits(stand_in_pass):
    loss, _ = chunk_loss(None, Chunk(), slice(0, 1), terms(weight=1.0), is_seq2seq=True)
    loss.backward()
    # only the prefix XENT at w = 1: d(-log softmax(z)_0)/dz = softmax(z) - onehot(0) at position 0
    torch.testing.assert_close(stand_in_pass.grad[0, 0], torch.tensor([-0.5, 0.5]))
    assert float(stand_in_pass.grad[0, 1:].abs().sum()) == 0.0
