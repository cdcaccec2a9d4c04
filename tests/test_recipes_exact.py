"""Short forms of the quickstart (MIXER from the shipped converged start) and of the from-scratch
pipeline, run as a new user runs them (a fresh `seqrl` process, one thread, the versions of
constraints.txt), must log exactly the loss and test score recorded here: a run is deterministic
for a set of versions and a thread count, so a change in either, or in the code's arithmetic,
shows up here before it silently moves the README's numbers. When a change is meant to move them,
rerun this file with RECORD=1 to print the new values, and remeasure the README."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHORT = {
    "quickstart": ["schedule.stage_steps=2", "schedule.final_stage_steps=2", "data.max_train_examples=1000",
                   "eval.every=0", "eval.at_start=false", "eval.test_max_examples=16", "log.every=4",
                   "log.samples_every=0"],
    "from_scratch": ["schedule.xent_steps=30", "schedule.stage_steps=4", "data.max_train_examples=1000",
                     "tokenizer.vocab_size=500", "optim.warmup_steps=5", "eval.every=0", "eval.max_examples=16",
                     "eval.test_max_examples=16", "eval.test_after_xent=false", "log.every=10",
                     "log.samples_every=0"],
}
# Recorded with torch 2.13.0 (CPU), transformers 5.25.0, tokenizers 0.23.3, datasets 5.2.0 (constraints.txt),
# OMP_NUM_THREADS=1, on this project's CI machine (AMD EPYC, 2 cores).
RECORDED = {
    "quickstart": {"train/loss": -0.36202599853277206, "test/bleu": 20.46551114329129},
    "from_scratch": {"train/loss": 0.22228601202368736, "test/bleu": 0.06835169706364395},
}


@pytest.mark.parametrize("recipe", sorted(SHORT))
def test_the_short_run_reproduces_its_recorded_numbers(recipe, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "CUDA_VISIBLE_DEVICES": ""}
    out = tmp_path / "run"
    sets = [*SHORT[recipe], f"run.output_dir={out}", f"data.cache_dir={tmp_path / 'cache'}", "run.overwrite=true"]
    cmd = [sys.executable, "-m", "seqrl", "finetune", f"recipes/{recipe}.yaml",
           *(x for item in sets for x in ("--set", item))]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    found = {"train/loss": [r["train/loss"] for r in lines if "train/loss" in r][-1],
             "test/bleu": [r["test/bleu"] for r in lines if "test/bleu" in r][-1]}
    if os.environ.get("RECORD"):
        print(f"\nRECORDED[{recipe!r}] = {found!r}")
    assert found == RECORDED[recipe], f"the short {recipe} run logged {found}, recorded {RECORDED[recipe]}"
