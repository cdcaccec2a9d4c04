"""One run per output directory, and nothing in it changes before every check has passed:
the lock (held across processes, never left stale by a killed run), resumes that would mix two
runs, failed resumes, torn metrics lines, and what set-up leaves behind when it fails."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import assert_one_line_error

from seqrl.cli import main
from seqrl.errors import SeqrlError
from seqrl.rundir import LOCK_FILE, RunDirLock

ENV = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False), encoding="utf-8")
    return path


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every file under `directory` with its bytes (to show nothing was touched)."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture
def finished_run(tiny_recipe, tmp_path) -> tuple[dict, Path]:
    """A finished 2-step run with a checkpoint after each step, and its recipe file."""
    tiny_recipe["schedule"]["xent_steps"] = 2
    tiny_recipe["run"]["save_every"] = 1
    tiny_recipe["data"]["test_split"] = None
    tiny_recipe["eval"]["max_examples"] = 4
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
    assert main(["finetune", str(path)]) == 0
    return tiny_recipe, path


# -- the lock ---------------------------------------------------------------------------------


def test_lock_is_exclusive_and_released(tmp_path):
    out = tmp_path / "a" / "b"
    first = RunDirLock(out)
    first.acquire()
    record = json.loads((out / LOCK_FILE).read_text())
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    with pytest.raises(SeqrlError, match=rf"in use by another seqrl run \(pid {os.getpid()} on host "):
        RunDirLock(out).acquire()  # a second open file description: flock refuses it in-process too
    first.release()
    assert not (tmp_path / "a").exists(), "directories made only for the lock must go with it"
    again = RunDirLock(out)
    again.acquire()
    (out / "kept.txt").write_text("the user's")
    again.release()
    assert sorted(p.name for p in out.iterdir()) == ["kept.txt"]


LOCK_HOLDER = """
import sys, time
from pathlib import Path
from seqrl.rundir import RunDirLock
RunDirLock(Path(sys.argv[1])).acquire()
print("locked", flush=True)
time.sleep(120)
"""


def test_a_second_run_is_refused_and_a_killed_holder_leaves_no_stale_lock(tiny_recipe, tmp_path, capsys):
    out = Path(tiny_recipe["run"]["output_dir"])
    holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(out)], env=ENV, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
        capsys.readouterr()
        rc = main(["finetune", str(path)])
        assert_one_line_error(rc, capsys.readouterr().err, f"run.output_dir '{out}' is in use by another seqrl run",
                              f"pid {holder.pid} on host {socket.gethostname()}")
        assert sorted(p.name for p in out.iterdir()) == [LOCK_FILE], "the refused run wrote nothing"
    finally:
        holder.send_signal(signal.SIGKILL)  # no clean-up: the kernel drops the flock
        holder.wait()
    assert (out / LOCK_FILE).is_file(), "a killed holder leaves its lock file behind"
    assert main(["finetune", str(path)]) == 0, "but never blocks the next run"
    assert (out / "final").is_dir() and not (out / LOCK_FILE).exists()


def test_two_runs_racing_to_one_directory(tiny_recipe, tmp_path):
    """Two identical commands started together: one trains, the other stops with one line, and
    the metrics file holds one run's lines only."""
    tiny_recipe["schedule"]["xent_steps"] = 30
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
    cmd = [sys.executable, "-m", "seqrl", "finetune", str(path)]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    results = [(p.wait(timeout=240), p.communicate()[1]) for p in procs]
    assert sorted(rc for rc, _ in results) == [0, 2], results
    loser = next(err for rc, err in results if rc == 2)
    assert_one_line_error(2, loser, "run.output_dir")
    assert "is in use by another seqrl run" in loser or "already holds a run" in loser
    steps = [json.loads(line)["step"] for line in (Path(tiny_recipe["run"]["output_dir"]) / "metrics.jsonl")
             .read_text().splitlines()]
    training = [s for s in steps if 0 < s <= 30]
    assert steps == sorted(steps) and len(set(training)) == 30, "each step logged once: one run's lines"


# -- resumes ------------------------------------------------------------------------------------


def test_resume_into_another_finished_run_is_refused_and_touches_nothing(finished_run, tmp_path, capsys):
    recipe, path = finished_run
    a = Path(recipe["run"]["output_dir"])
    b = tmp_path / "b"
    shutil.copytree(a, b)
    (b / "final" / "my-notes.txt").write_text("mine")
    before = snapshot(b)
    capsys.readouterr()
    rc = main(["finetune", str(path), "--set", f"run.output_dir={b}",
               "--set", f"run.resume={a / 'checkpoints' / 'step-00000001'}"])
    assert_one_line_error(rc, capsys.readouterr().err, f"run.output_dir '{b}' already holds a run",
                          "checkpoint of another run", "run.overwrite")
    assert snapshot(b) == before


def test_resume_from_another_run_into_a_new_directory(finished_run, tmp_path):
    """A checkpoint of run A continues into an empty B; A is left as it was and B gets A's
    trained tokenizer (its checkpoint cannot be read without it)."""
    recipe, path = finished_run
    a = Path(recipe["run"]["output_dir"])
    before = snapshot(a)
    b = tmp_path / "b"
    assert main(["finetune", str(path), "--set", f"run.output_dir={b}", "--set", "schedule.xent_steps=3",
                 "--set", f"run.resume={a / 'checkpoints' / 'step-00000001'}"]) == 0
    assert snapshot(a) == before
    assert (b / "final").is_dir() and (b / "tokenizer" / "tokenizer.json").is_file()
    assert (b / "tokenizer" / "tokenizer.json").read_bytes() == (a / "tokenizer" / "tokenizer.json").read_bytes()
    steps = [json.loads(line)["step"] for line in (b / "metrics.jsonl").read_text().splitlines()]
    assert min(steps) >= 2 and max(steps) == 3


def test_a_refused_resume_changes_nothing(finished_run, capsys):
    """The checkpoint was trained with d_model 32: resuming with 64 is refused, and the run's
    recipe.yaml and metrics still describe the run that made the checkpoint."""
    recipe, path = finished_run
    out = Path(recipe["run"]["output_dir"])
    before = snapshot(out)
    capsys.readouterr()
    rc = main(["finetune", str(path), "--set", "run.resume=auto", "--set", "model.config.d_model=64"])
    assert_one_line_error(rc, capsys.readouterr().err, "run.resume: checkpoint", "does not fit this recipe's model",
                          "is [120, 32] there, [120, 64] here")
    assert snapshot(out) == before


def test_resume_names_the_settings_it_changes(finished_run, capsys):
    recipe, path = finished_run
    capsys.readouterr()
    assert main(["finetune", str(path), "--set", "run.resume=auto", "--set", "schedule.xent_steps=3",
                 "--set", "optim.lr=0.001", "--set", "optim.decay=constant"]) == 0
    out = capsys.readouterr().out
    assert "resuming with settings changed since the checkpoint: " in out
    line = next(x for x in out.splitlines() if x.startswith("resuming with settings"))
    assert "optim.lr 0.0005 -> 0.001" in line and "schedule.xent_steps 2 -> 3" in line
    assert "run.resume" not in line
    # ... and the new rate is the one trained with (torch's scheduler state would keep the old one)
    from seqrl.config import load_recipe
    from seqrl.run import build_lr_schedule
    cfg = load_recipe(path, ["schedule.xent_steps=3", "optim.lr=0.001", "optim.decay=constant"])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=0.001)
    factor = build_lr_schedule(cfg, optimizer, 3, 3).lr_lambdas[0]
    rows = [json.loads(x) for x in (Path(recipe["run"]["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert factor(3) > 0
    assert [r["lr"] for r in rows if r["step"] == 3 and "lr" in r] == [pytest.approx(0.001 * factor(3), rel=1e-12)]


def test_torn_last_metrics_line_is_what_a_kill_leaves(finished_run, capsys):
    """A run killed mid-write leaves half a line: `plot` reads the rest, and a resume drops it."""
    recipe, path = finished_run
    out = Path(recipe["run"]["output_dir"])
    metrics = out / "metrics.jsonl"
    lines = metrics.read_text().splitlines(keepends=True)
    metrics.write_text("".join(lines) + '{"step": 2, "train/loss": 1.2')  # no newline: cut off
    assert main(["plot", str(out)]) == 0
    assert main(["finetune", str(path), "--set", "run.resume=auto", "--set", "schedule.xent_steps=3"]) == 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [r["step"] for r in rows] == sorted(r["step"] for r in rows) and rows[-1]["step"] == 3


def test_a_damaged_metrics_line_mid_file_is_named(finished_run, capsys):
    recipe, _ = finished_run
    out = Path(recipe["run"]["output_dir"])
    lines = (out / "metrics.jsonl").read_text().splitlines(keepends=True)
    lines[1] = '{"step": 1, "train/lo\n'
    (out / "metrics.jsonl").write_text("".join(lines))
    capsys.readouterr()
    rc = main(["plot", str(out)])
    assert_one_line_error(rc, capsys.readouterr().err, "metrics.jsonl line 2 is damaged", command="plot")


# -- failed set-up --------------------------------------------------------------------------------


def test_failed_setup_leaves_no_directory_behind(tiny_recipe, tmp_path, capsys):
    out = tmp_path / "new" / "run"
    tiny_recipe["run"]["output_dir"] = str(out)
    tiny_recipe["model"]["config"]["d_model"] = 33  # not divisible by the heads: fails after the tokenizer trained
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
    capsys.readouterr()
    assert main(["finetune", str(path)]) == 2
    assert not (tmp_path / "new").exists()


def test_overwrite_keeps_the_old_run_until_the_new_one_passes_its_checks(finished_run, capsys):
    recipe, path = finished_run
    out = Path(recipe["run"]["output_dir"])
    before = snapshot(out)
    assert main(["finetune", str(path), "--set", "run.overwrite=true", "--set", "model.config.d_model=33"]) == 2
    assert snapshot(out) == before
    assert main(["finetune", str(path), "--set", "run.overwrite=true", "--set", "schedule.xent_steps=1"]) == 0
    assert not (out / "checkpoints" / "step-00000002").exists(), "the old run's checkpoints were replaced"


# -- checkpoint cadence ---------------------------------------------------------------------------


def test_time_based_checkpoints_and_the_default(tiny_recipe, tmp_path):
    """By default (30 minutes) a short run writes no checkpoint; with a cadence every run step
    exceeds, it writes one after each step, pruned to the newest `keep_checkpoints`, and the
    last is the run's last step."""
    tiny_recipe["data"]["test_split"] = None
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
    assert main(["finetune", str(path)]) == 0
    out = Path(tiny_recipe["run"]["output_dir"])
    assert not (out / "checkpoints").exists()
    assert main(["finetune", str(path), "--set", "run.overwrite=true", "--set", "run.save_every_minutes=1e-9"]) == 0
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000003", "step-00000004"]


# -- no silent replacement ------------------------------------------------------------------------


def test_overwrite_moves_the_earlier_run_aside_and_says_so(finished_run, capsys):
    recipe, path = finished_run
    out = Path(recipe["run"]["output_dir"])
    before = snapshot(out)
    capsys.readouterr()
    assert main(["finetune", str(path), "--set", "run.overwrite=true", "--set", "schedule.xent_steps=1"]) == 0
    printed = capsys.readouterr().out
    [aside] = out.parent.glob(f"{out.name}.replaced-*")
    line = next(line for line in printed.splitlines() if line.startswith("run.overwrite:"))
    assert f"moving the earlier run in {out}" in line and f"aside to {aside}/" in line
    assert "final/" in line and "checkpoints/" in line and "metrics.jsonl" in line
    moved = snapshot(aside)
    assert {k: v for k, v in before.items() if k != LOCK_FILE} == moved, "the earlier run moved whole"
    assert (out / "checkpoints" / "step-00000001").is_dir() and not (out / "checkpoints" / "step-00000002").exists()


def test_overwrite_delete_removes_the_earlier_run_and_says_so(finished_run, capsys):
    recipe, path = finished_run
    out = Path(recipe["run"]["output_dir"])
    capsys.readouterr()
    assert main(["finetune", str(path), "--set", "run.overwrite=delete", "--set", "schedule.xent_steps=1"]) == 0
    assert f"run.overwrite=delete: removing the earlier run in {out} (" in capsys.readouterr().out
    assert not list(out.parent.glob(f"{out.name}.replaced-*"))
    assert not (out / "checkpoints" / "step-00000002").exists()


def test_overwrite_refuses_other_words(finished_run, capsys):
    _, path = finished_run
    assert main(["finetune", str(path), "--set", "run.overwrite=remove"]) == 2
    assert "run.overwrite" in capsys.readouterr().err


def test_resume_auto_with_nothing_to_resume_says_it_starts_fresh(tiny_recipe, tmp_path, capsys):
    tiny_recipe["data"]["test_split"] = None
    tiny_recipe["run"]["resume"] = "auto"
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
    assert main(["finetune", str(path)]) == 0
    out = Path(tiny_recipe["run"]["output_dir"])
    assert f"run.resume=auto: no checkpoint in {out / 'checkpoints'}; starting fresh" in capsys.readouterr().out


def test_shipped_recipes_do_not_overwrite():
    """A copied recipe never replaces an earlier run; `make quickstart` asks for it on its command line."""
    root = Path(__file__).resolve().parent.parent
    for recipe in sorted((root / "recipes").rglob("*.yaml")):
        assert "overwrite" not in (yaml.safe_load(recipe.read_text()).get("run") or {}), recipe
    assert "seqrl finetune recipes/quickstart.yaml --set run.overwrite=true" in (root / "Makefile").read_text()
