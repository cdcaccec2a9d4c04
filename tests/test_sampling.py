"""The counter-based uniforms of `seqrl.sampling`: the hash is lowbias32 exactly (checked against
a plain-Python transcription of its C source), the draws are uniform, and they depend on
(seed, step, global row) only."""

from __future__ import annotations

import math

import pytest
import torch

from seqrl.sampling import Sampling, Uniforms, mix32


def lowbias32(x: int) -> int:
    """C. Wellons' reference, in Python's unbounded integers (uint32_t arithmetic by masking)."""
    x ^= x >> 16
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x ^= x >> 15
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    x ^= x >> 16
    return x


def test_mix32_is_lowbias32_exactly():
    values = [0, 1, 2, 0xFFFF, 0x10000, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFE, 0xFFFFFFFF, 123456789]
    values += torch.randint(0, 2**32, (2000,), generator=torch.Generator().manual_seed(0)).tolist()
    got = mix32(torch.tensor(values, dtype=torch.int64)).tolist()
    assert got == [lowbias32(v) for v in values]


def test_uniforms_are_uniform_and_in_the_open_interval():
    u = Uniforms(Sampling(seed=11), 100_000, 3, torch.device("cpu")).at(2)
    assert float(u.min()) > 0.0 and float(u.max()) < 1.0
    # chi-square over 20 equal bins: 19 degrees of freedom, far below its 0.9999 quantile (~50)
    counts = torch.histc(u, bins=20, min=0.0, max=1.0)
    chi2 = float(((counts - 5000.0) ** 2 / 5000.0).sum())
    assert chi2 < 50.0, chi2
    # successive rows and successive steps are not correlated
    rows = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1]
    steps = torch.corrcoef(torch.stack([u, Uniforms(Sampling(seed=11), 100_000, 4, torch.device("cpu")).at(3)]))[0, 1]
    assert abs(float(rows)) < 4 / math.sqrt(100_000) and abs(float(steps)) < 4 / math.sqrt(100_000)


@pytest.mark.parametrize("seed", [0, 5, 2**40 + 3, 2**64 - 1])
def test_a_draw_depends_on_seed_step_and_global_row_only(seed):
    cpu = torch.device("cpu")
    whole = Uniforms(Sampling(seed=seed), 12, 9, cpu)
    part = Uniforms(Sampling(seed=seed, row_offset=5), 4, 30, cpu)  # other length, other offset
    assert torch.equal(whole.at(7)[5:9], part.at(7))
    assert not torch.equal(whole.at(7), whole.at(8))
    assert not torch.equal(whole.at(7), Uniforms(Sampling(seed=seed + 1), 12, 9, cpu).at(7))


def test_unseeded_draws_come_from_torch():
    torch.manual_seed(4)
    a = Uniforms(Sampling(), 6, 2, torch.device("cpu")).at(0)
    torch.manual_seed(4)
    assert torch.equal(a, torch.rand(6))
