"""Data parallelism on CPU: 2 gloo processes must make the same updates as 1 process with the
same global batch, through the XENT stage and MIXER stages (loo and greedy baselines).

Why they can be equal at all: the data order is a function of (seed, epoch) (seedable sampler),
the sampling noise of global row r is a function of (seed, step, position, r), losses are
normalised by global token counts, and the k samples of a source stay on the process that has
the source. What differs is float summation order (gradients are averaged by all-reduce), so
parameters agree to a tolerance, not bit for bit.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIGS
from safetensors.torch import load_file

TOLERANCE = 1e-5  # max |Δ| over all parameters after 3 XENT + 4 MIXER steps (observed 4.5e-7)
TIMEOUT = 240


NO_DROPOUT = {"marian": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
              "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}


def _recipe(data_dir: Path, out: Path, baseline: str, per_process_batch: int, per_process_rl_batch: int,
            arch: str = "marian") -> dict:
    config = dict(TINY_CONFIGS[arch], **NO_DROPOUT[arch])
    return {
        "model": {"architecture": arch, "config": config},
        "tokenizer": {"vocab_size": 120},
        "data": {"path": str(data_dir), "source_field": "en", "target_field": "es",
                 "max_source_tokens": 16, "max_target_tokens": 8, "test_split": None},
        "xent": {"batch_size": per_process_batch},
        "schedule": {"kind": "mixer", "xent_steps": 3, "stage_steps": 2, "delta": 4},
        "reinforce": {"baseline": {"kind": baseline}, "candidates": {"num_samples": 2},
                      "batch_size": per_process_rl_batch},
        "rewards": [{"name": "bleu"}],
        "optim": {"lr": 3e-3, "warmup_steps": 1},
        "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 8},
        "run": {"output_dir": str(out), "seed": 3},
        "log": {"every": 1, "progress_bar": False},
    }


def _run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]


def launch(recipe: dict, tmp: Path, name: str, processes: int) -> dict[str, torch.Tensor]:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    if processes == 1:
        cmd = [sys.executable, "-m", "seqrl", "finetune", str(path)]
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
               "--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", "-m", "seqrl", "finetune", str(path)]
    _run(cmd, tmp)
    return load_file(str(Path(recipe["run"]["output_dir"]) / "final" / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k] - b[k]).abs().max()) for k in a)


def test_two_processes_equal_one_process(toy_data_dir, tmp_path):
    finals = {}
    for baseline in ("loo", "greedy"):
        for processes, batch, rl_batch in ((1, 8, 4), (2, 4, 2)):  # the same global batches
            name = f"{baseline}-{processes}"
            finals[name] = launch(_recipe(toy_data_dir, tmp_path / name, baseline, batch, rl_batch),
                                  tmp_path, name, processes)
            metrics = (tmp_path / name / "metrics.jsonl").read_text()
            assert '"reward/bleu"' in metrics and '"stage": 2.0' in metrics, "MIXER stages did not run"
    for baseline in ("loo", "greedy"):
        worst = max_diff(finals[f"{baseline}-1"], finals[f"{baseline}-2"])
        print(f"{baseline}: max |1-process - 2-process| = {worst:.2g}")  # shown with pytest -s
        assert worst < TOLERANCE, f"{baseline}: 2-process parameters differ from 1-process by {worst:.3g}"
    # The comparison has teeth: two baselines give updates that differ far beyond the tolerance.
    assert max_diff(finals["loo-1"], finals["greedy-1"]) > 100 * TOLERANCE


@pytest.mark.parametrize("estimator", ["reinforce", "risk-beams-and-samples"])
def test_two_processes_equal_one_process_decoder_only(toy_data_dir, tmp_path, estimator):
    # decoder-only: the prompt pass runs once per source outside the DDP wrapper (its KV cache
    # shared by the k samples); its gradients must still be averaged over processes. The risk
    # over beams and samples: each process's candidates are those of its sources on 1 process.
    finals = {}
    for processes, batch, rl_batch in ((1, 8, 4), (2, 4, 2)):
        recipe = _recipe(toy_data_dir, tmp_path / str(processes), "loo", batch, rl_batch, arch="gpt2")
        recipe["rewards"] = [{"name": "token_bleu"}]
        if estimator != "reinforce":
            recipe["reinforce"].update(estimator={"kind": "risk"}, candidates={"kind": "both", "num_samples": 2})
        finals[processes] = launch(recipe, tmp_path, str(processes), processes)
    worst = max_diff(finals[1], finals[2])
    print(f"gpt2 {estimator}: max |1-process - 2-process| = {worst:.2g}")
    assert worst < TOLERANCE, f"2-process parameters differ from 1-process by {worst:.3g}"


def test_two_processes_equal_one_process_with_lora(toy_data_dir, tmp_path):
    """LoRA adapters (and the KL penalty against the adapters-off model): 2 processes make the
    same updates as 1, merged into the same `final/` weights."""
    finals = {}
    for processes, batch, rl_batch in ((1, 8, 4), (2, 4, 2)):
        recipe = _recipe(toy_data_dir, tmp_path / str(processes), "loo", batch, rl_batch)
        recipe["model"]["lora"] = {"rank": 4, "dropout": 0.0}
        recipe["reinforce"]["kl_coef"] = 0.1
        recipe["optim"]["lr"] = 3e-2
        finals[processes] = launch(recipe, tmp_path, str(processes), processes)
        assert '"kl"' in (tmp_path / str(processes) / "metrics.jsonl").read_text()
    worst = max_diff(finals[1], finals[2])
    print(f"marian LoRA loo: max |1-process - 2-process| = {worst:.2g}")
    assert worst < TOLERANCE, f"2-process parameters differ from 1-process by {worst:.3g}"


FAILING_REWARD = '''
import os


def fails_on_rank_1(completions, **kwargs):
    if os.environ.get("RANK") == "1":
        raise RuntimeError("reward service down")
    return [0.5] * len(completions)
'''


def test_error_on_one_process_ends_the_run_without_hanging(toy_data_dir, tmp_path):
    """A user error on one rank: that rank exits 2 with its one-line error, the launcher stops the
    other, and nothing waits forever in a collective."""
    (tmp_path / "failing_reward.py").write_text(FAILING_REWARD)
    recipe = _recipe(toy_data_dir, tmp_path / "run", "loo", 4, 2)
    recipe["rewards"] = [{"name": "failing_reward:fails_on_rank_1"}]
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "-m", "seqrl", "finetune", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", PYTHONPATH=str(tmp_path))
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    assert "reward 'failing_reward:fails_on_rank_1' raised RuntimeError: reward service down" in proc.stderr


def test_ctrl_c_stops_a_two_process_run(toy_data_dir, tmp_path):
    """SIGINT to the launcher (what Ctrl-C sends) ends both processes promptly."""
    import signal
    import time

    recipe = _recipe(toy_data_dir, tmp_path / "run", "loo", 4, 2)
    recipe["schedule"] = {"kind": "xent", "xent_steps": 100_000}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_port", "0", "-m", "seqrl", "finetune", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = tmp_path / "run" / "metrics.jsonl"
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline and not (metrics.exists() and '"train/loss"' in metrics.read_text()):
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    try:
        proc.communicate(timeout=60)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        raise AssertionError("the run did not stop within 60 s of Ctrl-C") from err
    assert proc.returncode != 0


def test_more_processes_than_gpus_is_a_clear_error(monkeypatch):
    from seqrl.errors import SeqrlError
    from seqrl.session import use_cpu
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(SeqrlError, match="2 processes on this machine but 1 GPU"):
        use_cpu(False)
    assert use_cpu(True)  # run.cpu: the processes share the CPU instead
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert use_cpu(False)  # no GPU at all: gloo on the CPU
