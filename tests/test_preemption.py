"""Preemption: SIGTERM ends a run after the optimizer step under way, with a checkpoint, exit
status 75 and one line saying how to continue; `run.resume=auto` then ends with weights bitwise
equal to an uninterrupted run. Once in the XENT stage (the signal comes from outside, as a
scheduler sends it) and once in a MIXER stage (the reward signals its own process mid-step,
so the step under way is known), with the default checkpoint cadence (none due in so short a
run). On 2 processes, a signal to one of them stops both at the same step."""

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
from conftest import TINY_CONFIGS, subprocess_work
from safetensors.torch import load_file

from seqrl.checkpoint import list_checkpoints
from seqrl.preemption import EXIT_PREEMPTED

XENT_STEPS, TOTAL = 40, 52  # then 4 MIXER stages of 3 steps (delta 2 up to the 8 target tokens)

REWARDS = '''
import os, signal

calls = 0


def overlap(completion_ids, reference_ids, **kwargs):
    """Share of the reference's ids the sample has; on call SIGTERM_AT_CALL of process
    SIGTERM_RANK (if set), SIGTERM to this very process, in the middle of a MIXER step."""
    global calls
    calls += 1
    this_rank = os.environ.get("RANK", "0") == os.environ.get("SIGTERM_RANK", "0")
    if os.environ.get("SIGTERM_AT_CALL") == str(calls) and this_rank:
        os.kill(os.getpid(), signal.SIGTERM)
    return [len(set(c) & set(r)) / max(len(set(r)), 1) for c, r in zip(completion_ids, reference_ids)]
'''


def recipe(data_dir: Path, out: Path, batch: int = 16, rl_batch: int = 8) -> dict:
    return {
        "model": {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"])},  # dropout on: RNG must resume
        "tokenizer": {"vocab_size": 120},
        "data": {"path": str(data_dir), "source_field": "en", "target_field": "es",
                 "max_source_tokens": 16, "max_target_tokens": 8, "test_split": None},
        "xent": {"batch_size": batch},
        "schedule": {"kind": "mixer", "xent_steps": XENT_STEPS, "stage_steps": 3, "delta": 2},
        "reinforce": {"baseline": {"kind": "ema"}, "candidates": {"num_samples": 2}, "batch_size": rl_batch,
                      "kl_coef": 0.1},
        "rewards": [{"name": "preempt_rewards:overlap"}],
        "optim": {"lr": 3e-3, "warmup_steps": 2},
        "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 4},
        "run": {"output_dir": str(out), "seed": 1},
        "log": {"every": 1, "progress_bar": False},
    }


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    return subprocess_work(tmp_path_factory.mktemp("preempt"), "preempt_rewards", REWARDS)


def start(work: dict, name: str, *args: str, processes: int = 1, **env: str) -> subprocess.Popen:
    out = work["tmp"] / name
    batch, rl_batch = (16, 8) if processes == 1 else (8, 4)  # the same global batches
    path = work["tmp"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe(work["data"], out, batch, rl_batch)))
    launch = ["--num-processes", str(processes)] if processes > 1 else []
    cmd = [sys.executable, "-m", "seqrl", "finetune", str(path), *launch, *args]
    return subprocess.Popen(cmd, cwd=work["tmp"], env=dict(work["env"], **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, expect: int = 0) -> str:
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == expect, err[-3000:]
    return err


def weights(work: dict, name: str) -> dict:
    return load_file(str(work["tmp"] / name / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def uninterrupted(work) -> dict:
    finish(start(work, "uninterrupted"))
    return weights(work, "uninterrupted")


def signal_after_step(proc: subprocess.Popen, out: Path, step: int) -> None:
    """SIGTERM `proc` once metrics.jsonl has logged `step`, as a scheduler would."""
    deadline = time.monotonic() + 240
    metrics = out / "metrics.jsonl"
    while time.monotonic() < deadline:
        if metrics.is_file():
            steps = [json.loads(line)["step"] for line in metrics.read_text().splitlines() if line.endswith("}")]
            if steps and max(steps) >= step:
                proc.send_signal(signal.SIGTERM)
                return
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        time.sleep(0.005)
    raise AssertionError("the run never reached the step")


def assert_preempted(err: str, out: Path) -> int:
    """One `preempted` line naming the step, its checkpoint and how to go on; return the step."""
    lines = [line for line in err.splitlines() if line.startswith("seqrl finetune:")]
    assert len(lines) == 1, err[-3000:]
    assert lines[0].startswith("seqrl finetune: preempted: stopped by SIGTERM after step "), lines[0]
    assert "--set run.resume=auto" in lines[0] and "Traceback" not in err.split(lines[0])[0]
    step = int(lines[0].split("after step ")[1].split(",")[0])
    assert [p.name for p in list_checkpoints(out)] == [f"step-{step:08d}"]
    assert f"checkpoints/step-{step:08d}" in lines[0]
    assert not (out / "final").exists()
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last == {"step": step, "preempted": 1.0, "time/elapsed_s": last["time/elapsed_s"]}
    return step


def assert_bitwise_equal(resumed: dict, reference: dict) -> None:
    assert resumed.keys() == reference.keys()
    different = [k for k in reference if not (resumed[k] == reference[k]).all()]
    assert not different, f"{len(different)} tensors differ, e.g. {different[0]}"


def test_sigterm_in_the_xent_stage(work, uninterrupted):
    out = work["tmp"] / "xent-stage"
    proc = start(work, "xent-stage")
    signal_after_step(proc, out, 3)
    step = assert_preempted(finish(proc, EXIT_PREEMPTED), out)
    assert 3 <= step < XENT_STEPS, "the signal was meant to land in the XENT stage"
    finish(start(work, "xent-stage", "--set", "run.resume=auto"))
    assert_bitwise_equal(weights(work, "xent-stage"), uninterrupted)


def test_sigterm_in_a_mixer_step(work, uninterrupted):
    """The reward's 6th call (the 1st is the set-up call) is in optimizer step XENT_STEPS + 5:
    that step completes, then the run stops."""
    out = work["tmp"] / "mixer-stage"
    step = assert_preempted(finish(start(work, "mixer-stage", SIGTERM_AT_CALL="6"), EXIT_PREEMPTED), out)
    assert step == XENT_STEPS + 5
    finish(start(work, "mixer-stage", "--set", "run.resume=auto"))
    assert_bitwise_equal(weights(work, "mixer-stage"), uninterrupted)


def test_sigterm_to_one_of_two_processes_stops_both(work):
    """Process 1 alone is signalled, mid-step: both processes stop after that step, one line, one
    checkpoint, exit 75; resumed on 2 processes, the run ends bitwise equal to an uninterrupted
    2-process run."""
    out = work["tmp"] / "two-processes"
    err = finish(start(work, "two-processes", processes=2, SIGTERM_AT_CALL="6", SIGTERM_RANK="1"), EXIT_PREEMPTED)
    assert assert_preempted(err, out) == XENT_STEPS + 5
    finish(start(work, "two-processes", "--set", "run.resume=auto", processes=2))
    finish(start(work, "two-processes-uninterrupted", processes=2))
    assert_bitwise_equal(weights(work, "two-processes"), weights(work, "two-processes-uninterrupted"))


def test_a_stop_signal_during_the_imports_ends_with_75_and_one_line(tiny_recipe, tmp_path, monkeypatch, capsys):
    """A signal in a run's first seconds (its imports, before set-up) used to kill it silently; now
    the command ends at once with 75 and one line, having written nothing."""
    from seqrl import cli
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    monkeypatch.setattr(cli, "_quiet_libraries", lambda debug: signal.raise_signal(signal.SIGTERM))
    assert cli.main(["finetune", str(path)]) == 75
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["seqrl finetune: preempted: stopped by SIGTERM before the run began; nothing was written: "
                   "run the same command again"]
    assert not Path(tiny_recipe["run"]["output_dir"]).exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler went with the command


def test_a_stop_signal_during_set_up_ends_with_75_before_the_first_write(tiny_recipe, tmp_path, monkeypatch, capsys):
    """A signal after the imports and before the first write (set-up, which takes minutes on a
    large corpus) used to go to the default handler for part of that time, or cost a trained step
    and a checkpoint; now the run stops before its first write, with 75 and one line."""
    from seqrl import cli, session
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    trial_decode = session.trial_decode

    def trial_decode_then_signal(*args, **kwargs):
        trial_decode(*args, **kwargs)
        signal.raise_signal(signal.SIGTERM)

    monkeypatch.setattr(session, "trial_decode", trial_decode_then_signal)
    assert cli.main(["finetune", str(path)]) == 75
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "seqrl finetune: preempted: stopped by SIGTERM during set-up, before the run wrote anything; "
        "run the same command again")
    out = Path(tiny_recipe["run"]["output_dir"])
    assert not out.exists() or not any(out.iterdir())  # (the lock and the directories it made are gone)
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_the_command_line_starts_without_torch():
    """`seqrl`'s stop handler is in place before the heavy imports: importing the CLI loads no torch."""
    code = "import sys, seqrl.cli; print('torch' in sys.modules, 'transformers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])}).stdout
    assert out.split() == ["False", "False"]
