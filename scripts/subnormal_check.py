"""How much slower this CPU multiplies subnormal floats, and whether flushing them helps:

    python scripts/subnormal_check.py

One (1024 x 512) @ (512 x 512) float32 matmul, 10 times, with normal values (1e-3 scale) and
with subnormal ones (1e-40, below float32's smallest normal 1.2e-38), before and after
`torch.set_flush_denormal(True)`, which seqrl sets on CPU (seqrl/run.py). The risk loss's
gradients reach such values (docs/speed.md)."""

from __future__ import annotations

import time

import torch


def seconds(scale: float, repeats: int = 10) -> float:
    weights, grads = torch.randn(512, 512), torch.randn(1024, 512) * scale
    start = time.perf_counter()
    for _ in range(repeats):
        grads @ weights.T
    return time.perf_counter() - start


def main() -> None:
    torch.set_num_threads(1)
    for flushed in (False, True):
        torch.set_flush_denormal(flushed)
        normal, subnormal = seconds(1e-3), seconds(1e-40)
        print(f"flush {'on ' if flushed else 'off'}: normal {normal:.3f} s, subnormal {subnormal:.3f} s "
              f"({subnormal / normal:.1f}x)")


if __name__ == "__main__":
    main()
