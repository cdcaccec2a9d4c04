"""What a run's numbers depend on besides its recipe and seed: the versions of the packages that do
its arithmetic, and the number of threads torch computes with. The same recipe gives bitwise-equal
losses for the same versions and thread count, and different ones otherwise (a different thread
count splits reductions differently), so both go in the run header, the model card and every
benchmark's record."""

from __future__ import annotations

from importlib import metadata

import torch

PACKAGES = ("seqrl", "torch", "transformers", "tokenizers", "datasets", "accelerate", "sacrebleu")


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


def versions() -> str:
    """`seqrl 0.1.0, torch 2.13.0+cpu, transformers 5.25.0, ...`"""
    return ", ".join(f"{p} {version(p)}" for p in PACKAGES)


def describe() -> str:
    """`software: <versions>; 2 torch thread(s)` (one line, as the run header prints it)."""
    return f"software: {versions()}; {torch.get_num_threads()} torch thread(s)"
