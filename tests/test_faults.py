"""Faults a long run meets (issue 34): messages cut at a sentence's end, library warnings, a full
disk (a real tmpfs where it can be mounted, a simulated ENOSPC otherwise)."""

from __future__ import annotations

import errno
import json
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIGS, make_pairs, write_jsonl
from safetensors.torch import load_file
from test_cli import assert_one_line_error

from seqrl.checkpoint import list_checkpoints
from seqrl.cli import main
from seqrl.errors import first_sentence
from seqrl.modeling import TextModel
from seqrl.runlog import RunLog


def test_first_sentence_ends_at_a_sentence_not_inside_one():
    assert first_sentence("it holds 54 tensors (e.g. model.encoder.weight). It is damaged") == \
        "it holds 54 tensors (e.g. model.encoder.weight)"
    assert first_sentence("lr 1.5 is over 1.0 (i.e. too big). Lower it.") == "lr 1.5 is over 1.0 (i.e. too big)"
    assert first_sentence("cannot read /runs/a.b/model.safetensors. Check the path") == \
        "cannot read /runs/a.b/model.safetensors"
    assert (first_sentence("Error(s) in loading:\n\tMissing key(s): \"a.b\". ")
            == 'Error(s) in loading: Missing key(s): "a.b"')
    assert first_sentence("see no. 5 and J. Smith. Next") == "see no. 5 and J. Smith"
    long = first_sentence("word " * 100, limit=40)
    assert long == "word word word word word word word word ..."


@pytest.mark.parametrize("debug", [False, True])
def test_library_warnings_only_under_debug(tiny_recipe, tmp_path, debug):
    """A GPT-2 LoRA run: peft warns that it sets fan_in_fan_out for Conv1D, which the user can do
    nothing about; shown with --debug only."""
    tiny_recipe["model"] = {"architecture": "gpt2", "config": dict(TINY_CONFIGS["gpt2"]), "lora": {"rank": 2}}
    tiny_recipe["schedule"]["xent_steps"] = 1
    tiny_recipe["data"]["test_split"] = None
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main((["--debug"] if debug else []) + ["finetune", str(path)]) == 0
    shown = [str(w.message) for w in caught if "fan_in_fan_out" in str(w.message)]
    assert bool(shown) == debug, shown


# -- disk faults ----------------------------------------------------------------------------------


def _disk_recipe(tiny_recipe: dict, out: Path) -> dict:
    tiny_recipe["schedule"]["xent_steps"] = 4
    tiny_recipe["data"]["test_split"] = None
    tiny_recipe["eval"]["max_examples"] = 4
    tiny_recipe["run"].update({"output_dir": str(out), "save_every": 1, "keep_checkpoints": 2})
    return tiny_recipe


def _write(tmp_path: Path, recipe: dict) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def _blocks(path: Path) -> int:
    """Bytes `path` takes on a filesystem of 4-KiB pages (tmpfs)."""
    files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
    return sum(-(-f.stat().st_size // 4096) * 4096 for f in files)


@pytest.fixture
def small_fs(tmp_path):
    """`small_fs(bytes)`: a real tmpfs of that size (remounted by calling it again); skipped where
    mounting is not permitted (not root, or a container without CAP_SYS_ADMIN)."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    mounted = []

    def mount(size: int) -> Path:
        options = f"{'remount,' if mounted else ''}size={size}"
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"a tmpfs cannot be mounted here ({done.stderr.strip() or done.returncode}): "
                        f"the simulated ENOSPC tests cover this")
        mounted.append(size)
        return mount_point

    yield mount
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_full_disk_at_a_checkpoint_is_one_line_and_resumes_exactly(tiny_recipe, tmp_path, small_fs, capsys):
    """A real tmpfs that holds the first checkpoint but not the second: one line naming the partial
    directory and the space a checkpoint needs, which is removed; the first checkpoint stays;
    on the still-full disk the lock's own write is one line too; after space is freed the resume
    ends bitwise equal to an uninterrupted run."""
    reference = tmp_path / "reference"
    path = _write(tmp_path, _disk_recipe(tiny_recipe, reference))
    assert main(["finetune", str(path)]) == 0
    checkpoint = _blocks(reference / "checkpoints" / "step-00000004")
    before = sum(_blocks(reference / name) for name in ("tokenizer", "recipe.yaml", "metrics.jsonl"))
    out = small_fs(before + checkpoint * 3 // 2) / "run"
    capsys.readouterr()
    rc = main(["finetune", str(path), "--set", f"run.output_dir={out}"])
    err = capsys.readouterr().err
    warning, error = err.strip().splitlines()
    assert "less than two checkpoints" in warning and str(out) in warning
    assert_one_line_error(rc, error, f"cannot write {out}/checkpoints/.tmp-step-00000002: no space left on the "
                          "device", "a checkpoint needs about", "--set run.resume=auto")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"], "partial directory left"
    filler = out.parent / "filler"
    with pytest.raises(OSError), filler.open("wb") as f:  # the disk still full: the lock's write fails
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    rc = main(["finetune", str(path), "--set", f"run.output_dir={out}", "--set", "run.resume=auto"])
    assert_one_line_error(rc, capsys.readouterr().err, f"cannot write {out}/.seqrl.lock: no space left")
    filler.unlink()
    small_fs(64 << 20)
    assert main(["finetune", str(path), "--set", f"run.output_dir={out}", "--set", "run.resume=auto"]) == 0
    resumed, uninterrupted = (load_file(str(d / "final" / "model.safetensors")) for d in (out, reference))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_full_disk_writing_final_keeps_the_previous_one(tiny_recipe, tmp_path, monkeypatch, capsys):
    """Simulated ENOSPC (a write raising OSError(errno.ENOSPC)) while final/ is written: one line
    naming final/, the temporary directory removed, the previous final/ whole."""
    out = tmp_path / "run"
    path = _write(tmp_path, _disk_recipe(tiny_recipe, out))
    assert main(["finetune", str(path)]) == 0
    before = {p.name: p.read_bytes() for p in (out / "final").iterdir() if p.is_file()}

    def refused(self, directory, model, state_dict=None):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(TextModel, "save", refused)
    capsys.readouterr()
    rc = main(["finetune", str(path), "--set", "run.resume=auto", "--set", "schedule.xent_steps=5"])
    assert_one_line_error(rc, capsys.readouterr().err,
                          f"cannot write {out}/final: no space left on the device (ENOSPC)")
    assert not (out / ".tmp-final").exists()
    assert {p.name: p.read_bytes() for p in (out / "final").iterdir() if p.is_file()} == before
    assert [p.name for p in list_checkpoints(out)] == ["step-00000004", "step-00000005"]


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EROFS])
def test_refused_metrics_write_is_one_line(tiny_recipe, tmp_path, monkeypatch, capsys, code):
    """Simulated: metrics.jsonl's third line refused (full disk, quota, read-only remount)."""
    out = tmp_path / "run"
    path = _write(tmp_path, _disk_recipe(tiny_recipe, out))
    opened = RunLog.open

    def open_refusing(self, after_step=None):
        opened(self, after_step)
        self.file = _Refusing(self.file, code)

    monkeypatch.setattr(RunLog, "open", open_refusing)
    rc = main(["finetune", str(path)])
    why = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
           errno.EROFS: "read-only file system"}[code]
    assert_one_line_error(rc, capsys.readouterr().err, f"cannot write {out}/metrics.jsonl: {why}")
    assert list_checkpoints(out), "the checkpoints written before stay"


class _Refusing:
    """A file whose third write fails as the filesystem would."""

    def __init__(self, file, code: int):
        self.file, self.code, self.writes = file, code, 0

    def write(self, text: str) -> int:
        self.writes += 1
        if self.writes >= 3:
            raise OSError(self.code, os.strerror(self.code))
        return self.file.write(text)

    def flush(self) -> None:
        self.file.flush()

    def close(self) -> None:
        self.file.close()


# -- settings read late, checked at set-up ---------------------------------------------------------


@pytest.mark.parametrize("command", ["finetune", "validate"])
@pytest.mark.parametrize("setting,needle", [
    ("model.generation.no_repeat_ngram_size=banana", "model.generation.no_repeat_ngram_size must be a whole number"),
    ("model.generation.forced_bos_token_id=99999", "model.generation.forced_bos_token_id: 99999 is not a token id "
                                                   "of this model (0 to "),
])
def test_generation_settings_fail_at_setup_not_at_the_first_evaluation(tiny_recipe, tmp_path, capsys, command,
                                                                        setting, needle):
    path = _write(tmp_path, tiny_recipe)
    rc = main([command, str(path), "--set", setting])
    assert_one_line_error(rc, capsys.readouterr().err, needle, command=command)
    assert not (tmp_path / "run" / "metrics.jsonl").exists(), "no training step ran"


def test_a_decode_that_fails_fails_before_training(tiny_recipe, tmp_path, capsys, monkeypatch):
    """What the value checks cannot see (here generate itself raising) stops the run at the
    trial decode of two validation rows, before the first step, in finetune and validate."""
    def broken(self, model, source_ids, **kwargs):
        raise IndexError("index 99999 is out of bounds for dimension 1 with size 120")

    monkeypatch.setattr(TextModel, "generate", broken)
    path = _write(tmp_path, tiny_recipe)
    for command in ("finetune", "validate"):
        rc = main([command, str(path)])
        assert_one_line_error(rc, capsys.readouterr().err, "model.generation: a trial decode of two validation rows",
                              "IndexError: index 99999 is out of bounds", command=command)
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- preemption inside evaluation and inside best/ -------------------------------------------------

BATCH_SECONDS = 0.5


def _slow_decode(monkeypatch, signal_at_call: int | None, sent: list):
    """TextModel.generate taking BATCH_SECONDS a batch (a real validation pass takes minutes); on
    call `signal_at_call` it sends SIGTERM to this process and notes the time."""
    real, calls = TextModel.generate, []

    def slow(self, model, source_ids, **kwargs):
        calls.append(1)
        if len(calls) == signal_at_call:
            sent.extend([time.monotonic(), time.time()])
            os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(BATCH_SECONDS)
        return real(self, model, source_ids, **kwargs)

    monkeypatch.setattr(TextModel, "generate", slow)


def test_sigterm_during_evaluation_stops_it_at_the_next_batch(tiny_recipe, tmp_path, monkeypatch, capsys):
    """A 40-batch (20-s) validation at step 2: SIGTERM at its second batch ends the run with exit
    75 within a few seconds, with a checkpoint at step 2 (written within about a batch); the
    resumed run runs that validation again (one eval line at step 2) and finishes."""
    tiny_recipe["schedule"]["xent_steps"] = 3
    tiny_recipe["data"]["test_split"] = None
    tiny_recipe["eval"].update({"every": 2, "batch_size": 1, "max_examples": 40})
    write_jsonl(Path(tiny_recipe["data"]["path"]) / "validation.jsonl", make_pairs(240)[200:])
    path = _write(tmp_path, tiny_recipe)
    sent: list[float] = []
    _slow_decode(monkeypatch, signal_at_call=1 + 2, sent=sent)  # (call 1: the trial decode at set-up)
    assert main(["finetune", str(path)]) == 75
    seconds = time.monotonic() - sent[0]
    out = Path(tiny_recipe["run"]["output_dir"])
    written = (out / "checkpoints" / "step-00000002" / "trainer_state.json").stat().st_mtime - sent[1]
    with capsys.disabled():  # (shown with -s)
        print(f"\nsignal during evaluation -> checkpoint written {written:.2f} s, exit 75 {seconds:.2f} s after it")
    assert written < 4 * BATCH_SECONDS and seconds < 20 * BATCH_SECONDS, "the evaluation was not cut short"
    assert "stopped by SIGTERM after step 2" in capsys.readouterr().err
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
    assert not any("eval/bleu" in line for line in (out / "metrics.jsonl").read_text().splitlines())
    monkeypatch.undo()
    assert main(["finetune", str(path), "--set", "run.resume=auto"]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines if "eval/bleu" in line] == [2, 3]
    assert (out / "final").is_dir()


def test_sigterm_while_best_is_written_leaves_a_whole_best(tiny_recipe, tmp_path, monkeypatch):
    """SIGTERM arrives while best/ is being written: the write completes into its temporary
    directory and is renamed into place; the run then stops with a checkpoint (exit 75)."""
    tiny_recipe["schedule"]["xent_steps"] = 4
    tiny_recipe["data"]["test_split"] = None
    tiny_recipe["eval"].update({"every": 2, "best_metric": "chrf", "max_examples": 4})
    path = _write(tmp_path, tiny_recipe)
    real_save = TextModel.save

    def save_with_a_signal(self, directory, model, state_dict=None):
        os.kill(os.getpid(), signal.SIGTERM)
        partial = Path(directory)
        real_save(self, partial, model, state_dict)
        assert partial.name == ".tmp-best", "written beside best/, not into it"

    monkeypatch.setattr(TextModel, "save", save_with_a_signal)
    assert main(["finetune", str(path)]) == 75
    out = Path(tiny_recipe["run"]["output_dir"])
    assert json.loads((out / "best" / "best.json").read_text())["step"] == 2
    assert load_file(str(out / "best" / "model.safetensors"))
    assert not (out / ".tmp-best").exists() and not (out / ".old-best").exists()
    assert [p.name for p in list_checkpoints(out)] == ["step-00000002"]
