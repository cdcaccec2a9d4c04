"""Alarms at each evaluation, from one place (`seqrl.train.evaluate` calls `check`), on rank 0:

- degenerate outputs: the share of empty outputs and of the most common output, logged as
  `outputs/<eval|test split>_empty_share` / `_top_share`; at `eval.degenerate_share` or more, a warning
  (a dead model decoding every source to "" otherwise reports 0.00 without a word);
- divergence (`eval.watch`): the training reward's mean since each evaluation rose at every one
  of the last `eval.watch_evaluations` evaluations while a watched metric fell at every one:
  the reward is being gamed (He et al., NAACL 2024), whatever it says.

Each alarm is one warning line, `alarm/<name>` = 1 with its `alarm/message` in metrics.jsonl and
the trackers, and a line in the model card (`notes`)."""

from __future__ import annotations

import json
from collections import Counter
from itertools import pairwise
from pathlib import Path

from seqrl.runlog import METRICS_FILE, read_metrics


def output_shares(hypotheses: list[str]) -> tuple[float, float]:
    """(share of empty outputs, share of the most common output)."""
    if not hypotheses:
        return 0.0, 0.0
    empty = sum(1 for h in hypotheses if not h.strip()) / len(hypotheses)
    top = Counter(h.strip() for h in hypotheses).most_common(1)[0][1] / len(hypotheses)
    return empty, top


def degenerate(split: str, hypotheses: list[str], threshold: float) -> tuple[dict, list[str]]:
    """The split's output shares, and the alarm's message when one reaches `threshold`."""
    empty, top = output_shares(hypotheses)
    metrics = {f"outputs/{split}_empty_share": empty, f"outputs/{split}_top_share": top}
    if max(empty, top) < threshold or threshold >= 1.0:
        return metrics, []
    what = f"{empty:.0%} of the {split} outputs are empty" if empty >= threshold else \
        f"{top:.0%} of the {split} outputs are one and the same output"
    return {**metrics, f"alarm/degenerate_{split}": 1.0}, [f"{what} (eval.degenerate_share {threshold:g})"]


def reward_means(lines: list[dict], eval_steps: list[int]) -> list[float | None]:
    """The mean training `reward/total` over the steps since the evaluation before each one (None
    where no sequence-level step ran in between)."""
    means, previous = [], -1
    for step in eval_steps:
        values = [m["reward/total"] for m in lines
                  if previous < m["step"] <= step and m.get("reward/total") is not None]
        means.append(sum(values) / len(values) if values else None)
        previous = step
    return means


def diverging(lines: list[dict], metrics: list[str], window: int) -> tuple[dict, list[str]]:
    """Watched metrics that fell at each of the last `window` evaluations while the reward rose."""
    evals = [m for m in lines if any(f"eval/{name}" in m for name in metrics)]
    rewards = reward_means(lines, [m["step"] for m in evals])
    if len(evals) < window or any(r is None for r in rewards[-window:]):
        return {}, []
    recent, trend = evals[-window:], rewards[-window:]
    if not all(b > a for a, b in pairwise(trend)):
        return {}, []
    alarms, messages = {}, []
    for name in metrics:
        values = [m.get(f"eval/{name}") for m in recent]
        if None not in values and all(b < a for a, b in pairwise(values)):
            alarms[f"alarm/diverging_{name}"] = 1.0
            messages.append(f"eval/{name} fell {values[0]:.2f} -> {values[-1]:.2f} over {window} evaluations while "
                            f"the training reward rose {trend[0]:.3f} -> {trend[-1]:.3f}: is the reward being gamed?")
    return alarms, messages


def check(run, step: int, prefix: str, predictions: Path | None) -> None:
    """Run after an evaluation's scores are written (rank 0): log the shares of the outputs in
    `predictions` (`eval` or the test split's `prefix`) and any alarm."""
    cfg = run.cfg.eval
    hypotheses = []
    if predictions is not None and predictions.is_file():
        with predictions.open(encoding="utf-8") as f:
            hypotheses = [json.loads(line)["hypothesis"] for line in f if line.strip()]
    metrics, messages = degenerate(prefix, hypotheses, cfg.degenerate_share)
    if cfg.watch and prefix == "eval" and (run.out / METRICS_FILE).is_file():
        alarms, more = diverging(read_metrics(run.out), list(cfg.watch), cfg.watch_evaluations)
        metrics, messages = {**metrics, **alarms}, messages + more
    if messages:
        metrics["alarm/message"] = "; ".join(messages)
        for message in messages:
            run.accelerator.print(f"step {step} warning: {message}")
    run.runlog.write(step, metrics)


def notes(output_dir: str | Path) -> list[str]:
    """The run's alarms, one line each, for the model card."""
    if not (Path(output_dir) / METRICS_FILE).is_file():
        return []
    return [f"step {m['step']}: {m['alarm/message']}" for m in read_metrics(output_dir) if m.get("alarm/message")]
