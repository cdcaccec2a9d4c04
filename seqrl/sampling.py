"""Drawing one token per row from (masked) logits, with counter-based uniforms.

A seeded draw uses a uniform that is a pure function of (seed, decoding step t, global row r):
a 32-bit integer hash (Wellons' `lowbias32`, in int64 tensor arithmetic) of the three, computed
on the device with a fixed number of element-wise ops. So samples do not depend on how rows are
split over processes or decode chunks, a resumed run redraws the same ones, and the sampler has
no host sync, no generator object and no shape that changes with t: it can be compiled or
captured in a CUDA graph. Earlier versions seeded a `torch.Generator` per step, which is neither.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

MASK32 = 0xFFFFFFFF
_STEP_SALT, _ROW_SALT = 0x9E3779B9, 0x85EBCA6B  # keep t = 0 and r = 0 away from the seed's own hash


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    seed: int | None = None
    """With a seed, the uniform that picks global row r's token at decoding step t is a function
    of (seed, t, r) only: samples do not depend on the number of processes or on how the batch
    is cut, and a resumed run redraws the same ones."""
    row_offset: int = 0
    """Global index of this call's first row."""


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for x in [0, 2**32), without leaving int64's range (c split in 16-bit halves)."""
    return (x * (c & 0xFFFF) + (((x * (c >> 16)) & 0xFFFF) << 16)) & MASK32


def mix32(x: torch.Tensor) -> torch.Tensor:
    """lowbias32 (C. Wellons, "Hash function prospector"): a bijective 32-bit integer hash."""
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    return x ^ (x >> 16)


class Uniforms:
    """The draws of one rollout: `at(t)` is (n,) uniforms in (0, 1) for rows row_offset..+n-1."""

    def __init__(self, sampling: Sampling, n: int, max_len: int, device: torch.device):
        self.n, self.device = n, device
        self.seeded = sampling.seed is not None
        if self.seeded:
            seed = sampling.seed % 2**64
            as_tensor = lambda v: torch.tensor(v, dtype=torch.int64, device=device)  # noqa: E731
            key = mix32(as_tensor(seed & MASK32) ^ mix32(as_tensor(seed >> 32)))
            steps = torch.arange(max_len, dtype=torch.int64, device=device)
            self.step_keys = mix32(key ^ mix32((steps + _STEP_SALT) & MASK32))           # (max_len,)
            rows = torch.arange(sampling.row_offset, sampling.row_offset + n, dtype=torch.int64, device=device)
            self.row_keys = mix32((rows + _ROW_SALT) & MASK32)                          # (n,)

    def at(self, t: int) -> torch.Tensor:
        if not self.seeded:
            return torch.rand(self.n, device=self.device)
        bits = mix32(self.row_keys ^ self.step_keys[t]) >> 8  # the top 24 bits: float32's mantissa
        return (bits.float() + 0.5) * 2.0**-24


def sample(logits: torch.Tensor, s: Sampling, uniforms: torch.Tensor) -> torch.Tensor:
    """One token per row (N,) from `logits` (N, V) under the sampling settings."""
    if s.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / s.temperature if s.temperature != 1.0 else logits.float()
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > s.top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    # Inverse CDF: the first token whose cumulative probability exceeds u ~ U(0, 1) is an exact
    # draw, from one uniform per row (Gumbel-max needs one per row and vocabulary entry: 10x slower).
    cdf = torch.softmax(logits, dim=-1).cumsum(dim=-1)
    u = uniforms[:, None] * cdf[:, -1:]  # the mass sums to 1 up to rounding
    return torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_(max=logits.shape[-1] - 1)
