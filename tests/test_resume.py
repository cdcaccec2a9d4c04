"""Exact resume: a run killed with SIGKILL (no clean-up of any kind) and resumed from its newest
checkpoint ends with weights bitwise equal to an uninterrupted run, once killed in the XENT
stage and once in a MIXER stage. Also: checkpoints are atomic and pruned to the newest N."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CONFIGS, write_toy_splits
from safetensors.torch import load_file

from seqrl.checkpoint import list_checkpoints

XENT_STEPS, TOTAL = 12, 24  # mixer: 12 XENT steps, then stages of 3 steps with delta 2 up to 8 tokens


def _recipe(data_dir: Path, out: Path, lora: bool = False) -> dict:
    return {
        "model": {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"]),  # dropout on: RNG must resume
                  **({"lora": {"rank": 4}} if lora else {})},
        "tokenizer": {"vocab_size": 120},
        "data": {"path": str(data_dir), "source_field": "en", "target_field": "es",
                 "max_source_tokens": 16, "max_target_tokens": 8, "test_split": None},
        "xent": {"batch_size": 16},  # 160 examples: 10 batches per epoch, so epochs roll over too
        "schedule": {"kind": "mixer", "xent_steps": XENT_STEPS, "stage_steps": 3, "delta": 2},
        "reinforce": {"baseline": {"kind": "ema"}, "candidates": {"num_samples": 2}, "batch_size": 8, "kl_coef": 0.1},
        "rewards": [{"name": "bleu"}],
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 4},
        "run": {"output_dir": str(out), "seed": 1, "save_every": 1, "keep_checkpoints": 3},
        "log": {"every": 4, "progress_bar": False},  # kills fall inside a logging window
    }


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def _finetune(recipe_path: Path, *overrides: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqrl", "finetune", str(recipe_path)]
    for item in overrides:
        cmd += ["--set", item]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc: subprocess.Popen) -> None:
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]


def _kill_after_checkpoint(proc: subprocess.Popen, out: Path, step: int) -> int:
    """SIGKILL the run as soon as checkpoint `step` (or a later one) exists; return the newest."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        done = list_checkpoints(out)
        if done and int(done[-1].name.split("-")[1]) >= step:
            proc.send_signal(signal.SIGKILL)
            proc.communicate()
            return int(list_checkpoints(out)[-1].name.split("-")[1])
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.02)
    proc.kill()
    raise AssertionError("no checkpoint appeared in time")


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory) -> dict:
    """The uninterrupted run everything is compared with."""
    tmp = tmp_path_factory.mktemp("resume")
    data = write_toy_splits(tmp / "data")
    recipe = tmp / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(data, tmp / "reference")))
    _wait(_finetune(recipe))
    return {"tmp": tmp, "data": data, "weights": load_file(str(tmp / "reference" / "final" / "model.safetensors"))}


@pytest.mark.parametrize("kill_at", [5, XENT_STEPS + 4], ids=["in-xent-stage", "in-mixer-stage"])
def test_sigkill_then_resume_is_bitwise_equal(reference_run, kill_at):
    tmp = reference_run["tmp"]
    out = tmp / f"killed-{kill_at}"
    recipe = tmp / f"killed-{kill_at}.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(reference_run["data"], out)))
    killed_at = _kill_after_checkpoint(_finetune(recipe), out, kill_at)
    assert killed_at < TOTAL, "the run finished before it could be killed"
    assert not (out / "final").exists()
    _wait(_finetune(recipe, "run.resume=auto"))
    resumed = load_file(str(out / "final" / "model.safetensors"))
    reference = reference_run["weights"]
    assert resumed.keys() == reference.keys()
    different = [k for k in reference if not (resumed[k] == reference[k]).all()]
    assert not different, f"killed at checkpoint {killed_at}: {len(different)} tensors differ, e.g. {different[0]}"
    assert _metrics(out) == _metrics(tmp / "reference"), "metrics.jsonl differs from the uninterrupted run's"


def _metrics(out: Path) -> list[dict]:
    """metrics.jsonl without what depends on the clock (times, rates): line for line, the same
    numbers in a resumed run as in an uninterrupted one (the logging window is in the checkpoint)."""
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in line.items() if not (k.startswith("time/") or k.endswith(("_per_s", "/seconds")))}
            for line in lines]


def test_checkpoints_are_pruned_and_complete(reference_run):
    kept = list_checkpoints(reference_run["tmp"] / "reference")
    assert [p.name for p in kept] == [f"step-{s:08d}" for s in range(TOTAL - 2, TOTAL + 1)]
    root = reference_run["tmp"] / "reference" / "checkpoints"
    assert not [p for p in root.iterdir() if p.name.startswith(".tmp")], "a temporary directory was left"


def test_lora_sigkill_in_a_mixer_stage_then_resume_is_bitwise_equal(reference_run):
    """With LoRA the checkpoints hold the adapters only; the resumed run still ends bitwise equal
    (its base weights come from the recipe's seeded initialization, as in the uninterrupted run)."""
    tmp = reference_run["tmp"]
    reference_recipe = tmp / "lora-reference.yaml"
    reference_recipe.write_text(yaml.safe_dump(_recipe(reference_run["data"], tmp / "lora-reference", lora=True)))
    _wait(_finetune(reference_recipe))
    out = tmp / "lora-killed"
    recipe = tmp / "lora-killed.yaml"
    recipe.write_text(yaml.safe_dump(_recipe(reference_run["data"], out, lora=True)))
    killed_at = _kill_after_checkpoint(_finetune(recipe), out, XENT_STEPS + 4)
    assert killed_at < TOTAL and not (out / "final").exists()
    _wait(_finetune(recipe, "run.resume=auto"))
    resumed = load_file(str(out / "final" / "model.safetensors"))
    reference = load_file(str(tmp / "lora-reference" / "final" / "model.safetensors"))
    different = [k for k in reference if not (resumed[k] == reference[k]).all()]
    assert resumed.keys() == reference.keys() and not different
    assert (out / "final" / "adapter" / "adapter_model.safetensors").is_file()
