"""seqrl's own training step driven from a script (bench_step.py, bench_memory.py, profile_step.py):
the run set up as `seqrl finetune` sets it up, and a training loop without a progress bar whose
per-step statistics the script reads."""

from __future__ import annotations

from pathlib import Path


class NoBar:
    """The progress bar's interface, doing nothing (the scripts print their own tables)."""

    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


def make_accelerator(device: str):
    """The accelerator for `device` ("cpu" or "cuda"), with the seedable sampler `seqrl finetune` uses."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    return Accelerator(cpu=device == "cpu", dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))


def setup_run(cfg, device: str, acc=None):
    """(accelerator, `seqrl.run.Run`) for a loaded recipe, set up as `seqrl finetune` sets it up
    (on `acc`, else a new `make_accelerator(device)`)."""
    from seqrl import rewards
    from seqrl.run import setup

    acc = acc or make_accelerator(device)
    return acc, setup(cfg, acc, Path(cfg.run.output_dir), rewards.build(cfg.rewards))


def watched_loop():
    """(loop, seen): seqrl's training loop state without a bar, and the list each step's logged
    statistics (time/step_s, time/rollout_s, rl_tokens, ...) are appended to."""
    from seqrl.train import _Loop

    loop = _Loop(bar=NoBar())
    seen: list[dict] = []
    add = loop.window.add
    loop.window.add = lambda stats: (seen.append(stats), add(stats))
    return loop, seen
