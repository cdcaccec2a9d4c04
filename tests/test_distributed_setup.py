"""The run header says what accelerate really set up (distributed type, sharding, mixed
precision), and a set-up this machine cannot give is a one-line error, not a silent substitute.

What accelerate 1.15 + torch 2.13 do on a machine without GPUs (measured; `seqrl.distributed`):
FSDP configs quietly become plain DDP over gloo, DeepSpeed stops in the launcher (or becomes
DDP with deepspeed installed), fp16 quietly trains in fp32. The header strings below are written
out by hand from the shipped configs in recipes/accelerate/.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from conftest import make_tiny_recipe

from seqrl import distributed
from seqrl.errors import SeqrlError

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "recipes" / "accelerate"
TIMEOUT = 120  # each 2-process launch below takes 10-25 s on 2 CPU cores


def stand_in(kind: DistributedType, n: int, device: str, backend: str | None, precision: str = "no",
             native_amp: bool = False, scaler=None, fsdp_plugin=None, deepspeed_plugin=None) -> SimpleNamespace:
    """The attributes of an `Accelerator` that `describe` and `check_process` read."""
    state = SimpleNamespace(backend=backend, fsdp_plugin=fsdp_plugin, deepspeed_plugin=deepspeed_plugin)
    return SimpleNamespace(distributed_type=kind, num_processes=n, device=torch.device(device), state=state,
                           mixed_precision=precision, native_amp=native_amp, scaler=scaler)


# -- the header line ------------------------------------------------------------------------------


def test_header_one_process():
    acc = stand_in(DistributedType.NO, 1, "cpu", None)
    assert distributed.describe(acc) == "parallelism: none, 1 process on cpu; mixed precision: no (fp32)"


def test_header_ddp_on_cpu_with_bf16_autocast():
    acc = stand_in(DistributedType.MULTI_CPU, 2, "cpu", "gloo", "bf16", native_amp=True)
    assert distributed.describe(acc) == ("parallelism: DDP, 2 processes on cpu over gloo (accelerate MULTI_CPU), "
                                         "weights replicated; mixed precision: bf16 (autocast on cpu)")


def test_header_fsdp2_as_recipes_fsdp_yaml_sets_it():
    plugin = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=True,
                                            state_dict_type="SHARDED_STATE_DICT", cpu_offload=False)
    plugin.set_mixed_precision("bf16")  # what accelerate does with mixed_precision bf16
    acc = stand_in(DistributedType.FSDP, 8, "cuda:0", "nccl", "bf16", native_amp=True, fsdp_plugin=plugin)
    assert distributed.describe(acc) == (
        "parallelism: FSDP v2, 8 processes on cuda over nccl, parameters, gradients and optimizer states sharded "
        "(reshard_after_forward true), state dict SHARDED_STATE_DICT, offload none; "
        "mixed precision: bf16 (autocast on cuda; FSDP parameters bfloat16, gradients reduced in bfloat16)")


def test_header_fsdp1_and_offload():
    plugin = FullyShardedDataParallelPlugin(fsdp_version=1, sharding_strategy="SHARD_GRAD_OP", cpu_offload=True,
                                            state_dict_type="FULL_STATE_DICT")
    acc = stand_in(DistributedType.FSDP, 2, "cuda:0", "cuda:nccl,cpu:gloo", fsdp_plugin=plugin)
    assert distributed.describe(acc) == (
        "parallelism: FSDP v1, 2 processes on cuda over cuda:nccl,cpu:gloo, sharding SHARD_GRAD_OP, "
        "state dict FULL_STATE_DICT, offload parameters to cpu; mixed precision: no (fp32)")
    v2 = FullyShardedDataParallelPlugin(fsdp_version=2, reshard_after_forward=False, cpu_offload=True)
    acc = stand_in(DistributedType.FSDP, 2, "cuda:0", "nccl", fsdp_plugin=v2)
    assert "(reshard_after_forward false)" in distributed.describe(acc)
    assert "offload parameters to cpu" in distributed.describe(acc)


def test_header_deepspeed_zero2():
    # the `deepspeed_config` accelerate builds from deepspeed_zero2.yaml (optimizer offloaded here)
    ds_config = {"zero_optimization": {"stage": 2, "offload_optimizer": {"device": "cpu", "nvme_path": None},
                                       "offload_param": {"device": "none", "nvme_path": None}},
                 "bf16": {"enabled": True}, "fp16": {"enabled": False}}
    acc = stand_in(DistributedType.DEEPSPEED, 4, "cuda:0", "nccl", "bf16",
                   deepspeed_plugin=SimpleNamespace(deepspeed_config=ds_config))
    assert distributed.describe(acc) == (
        "parallelism: DeepSpeed ZeRO-2 (optimizer states and gradients sharded, offload optimizer to cpu), "
        "4 processes on cuda over nccl; mixed precision: bf16 (DeepSpeed's own)")


def test_header_says_when_mixed_precision_does_not_apply():
    # what accelerate reports for fp16 on the CPU: mixed_precision 'fp16', no autocast, no scaler
    acc = stand_in(DistributedType.NO, 1, "cpu", None, "fp16", native_amp=False)
    assert distributed.describe(acc).endswith("mixed precision: fp16 asked for, not applied on cpu: fp32")
    acc = stand_in(DistributedType.MULTI_GPU, 2, "cuda:0", "nccl", "fp16", native_amp=True, scaler=object())
    assert distributed.describe(acc).endswith("mixed precision: fp16 (autocast on cuda, gradients scaled)")


# -- refused before launching ---------------------------------------------------------------------


@pytest.mark.parametrize("name,shown", [("fsdp", "FSDP"), ("deepspeed_zero2", "DeepSpeed")])
def test_sharded_config_on_the_cpu_is_refused(name, shown):
    with pytest.raises(SeqrlError, match=f"asks for {shown}, which accelerate runs only on GPUs") as err:
        distributed.check_launch(str(CONFIGS / f"{name}.yaml"), "no", cpu=True)
    assert "recipes/accelerate/ddp.yaml" in str(err.value)


def test_ddp_config_on_the_cpu_is_accepted():
    assert distributed.check_launch(str(CONFIGS / "ddp.yaml"), "no", cpu=True) == []
    assert distributed.check_launch(None, "bf16", cpu=True) == []  # --num-processes alone


def test_on_a_gpu_machine_config_precision_not_used_is_a_warning(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    notes = distributed.check_launch(str(CONFIGS / "fsdp.yaml"), "no", cpu=False)
    assert len(notes) == 1 and "sets mixed precision bf16" in notes[0] and "run.mixed_precision 'no'" in notes[0]
    assert distributed.check_launch(str(CONFIGS / "fsdp.yaml"), "bf16", cpu=False) == []


def test_deepspeed_not_installed_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(distributed.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SeqrlError, match="DeepSpeed, which is not installed: pip install deepspeed"):
        distributed.check_launch(str(CONFIGS / "deepspeed_zero2.yaml"), "bf16", cpu=False)


def test_fp16_on_the_cpu_is_refused():
    with pytest.raises(SeqrlError, match="run.mixed_precision: fp16 is not applied on the CPU"):
        distributed.check_launch(str(CONFIGS / "ddp.yaml"), "fp16", cpu=True)
    with pytest.raises(SeqrlError, match="run.mixed_precision: fp16 is not applied on the CPU"):
        distributed.check_hardware("fp16", on_cpu=True, env={})
    distributed.check_hardware("bf16", on_cpu=True, env={})  # bf16 autocast does run on the CPU


# -- checked again in each process, against what accelerate set up -----------------------------------


def test_process_refuses_what_accelerate_substituted():
    ddp = stand_in(DistributedType.MULTI_CPU, 2, "cpu", "gloo")
    with pytest.raises(SeqrlError, match="asks for FSDP, but accelerate set up MULTI_CPU on cpu"):
        distributed.check_process(ddp, "no", env={"ACCELERATE_USE_FSDP": "true"})
    fp32 = stand_in(DistributedType.MULTI_GPU, 2, "cuda:0", "nccl", "fp16", native_amp=False)
    with pytest.raises(SeqrlError, match="fp16 is not applied on cuda"):
        distributed.check_process(fp32, "fp16", env={})
    assert distributed.check_process(ddp, "no", env={"ACCELERATE_MIXED_PRECISION": "no"}) == []
    notes = distributed.check_process(ddp, "no", env={"ACCELERATE_MIXED_PRECISION": "bf16"})
    assert len(notes) == 1 and "the accelerate launcher sets mixed precision bf16" in notes[0]


# -- end to end, 2 CPU processes --------------------------------------------------------------------


def _tiny_recipe(data_dir: Path, out: Path, **run) -> dict:
    recipe = make_tiny_recipe(data_dir, out)
    recipe["schedule"]["xent_steps"] = 2
    recipe["data"]["test_split"] = None
    recipe["eval"]["max_examples"] = 4
    recipe["run"].update(run)
    return recipe


def _env() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
                TOKENIZERS_PARALLELISM="false")


def test_ddp_yaml_header_on_two_cpu_processes(toy_data_dir, tmp_path):
    """recipes/accelerate/ddp.yaml as shipped, through `seqrl finetune`: the header names DDP
    over gloo and bf16 autocast, and the run finishes."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_tiny_recipe(toy_data_dir, tmp_path / "run", mixed_precision="bf16")))
    proc = subprocess.run([sys.executable, "-m", "seqrl", "finetune", str(path), "--num-processes", "2",
                           "--accelerate-config", str(CONFIGS / "ddp.yaml")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    header = [line for line in proc.stdout.splitlines() if line.startswith("parallelism:")]
    assert header == [("parallelism: DDP, 2 processes on cpu over gloo (accelerate MULTI_CPU), weights replicated; "
                       "mixed precision: bf16 (autocast on cpu)")], proc.stdout
    assert "--mixed_precision bf16" in proc.stdout  # the launch command names what the processes use
    assert (tmp_path / "run" / "final" / "model.safetensors").is_file()


def test_fsdp_yaml_on_the_cpu_is_one_line_before_launching(toy_data_dir, tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_tiny_recipe(toy_data_dir, tmp_path / "run")))
    proc = subprocess.run([sys.executable, "-m", "seqrl", "finetune", str(path), "--num-processes", "2",
                           "--accelerate-config", str(CONFIGS / "fsdp.yaml")],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [(
        f"seqrl finetune: error: --accelerate-config {CONFIGS / 'fsdp.yaml'} asks for FSDP, which accelerate runs "
        "only on GPUs (on the CPU it quietly runs plain DDP, nothing sharded); on the CPU use "
        "recipes/accelerate/ddp.yaml")]
    assert "running:" not in proc.stdout  # no process was started
    assert not (tmp_path / "run").exists()


def test_a_user_error_in_launched_processes_is_their_line_and_exit_2(toy_data_dir, tmp_path):
    """Found only once the processes run (a row that is not UTF-8): each says its one line and
    exits 2; torch's ChildFailedError traceback and report, which `accelerate launch` prints
    after them, are left out (`seqrl.launcher`), and `seqrl finetune` exits 2."""
    with open(toy_data_dir / "train.jsonl", "ab") as f:
        f.write(b'{"en": "the caf\xe9", "es": "el"}\n')
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_tiny_recipe(toy_data_dir, tmp_path / "run", cpu=True)))
    proc = subprocess.run([sys.executable, "-m", "seqrl", "finetune", str(path), "--num-processes", "2"],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "ChildFailedError" not in proc.stderr, proc.stderr[-3000:]
    # (when one process ends first, torch's agent may log that it sends the other SIGTERM: a notice
    # printed before anyone knows why the first ended, so the launcher cannot leave it out)
    said = {line for line in proc.stderr.splitlines() if line.strip() and "closing signal SIGTERM" not in line}
    assert said == {f"seqrl finetune: error: line 161 of {toy_data_dir / 'train.jsonl'} is not UTF-8 text "
                    f"(column 'en'); save the file as UTF-8"}, proc.stderr[-3000:]


def test_fsdp_yaml_through_accelerate_launch_stops_every_process(toy_data_dir, tmp_path):
    """`accelerate launch --config_file fsdp.yaml -m seqrl finetune` on the CPU: each process
    stops with the error before set-up (accelerate alone would have trained with DDP)."""
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_tiny_recipe(toy_data_dir, tmp_path / "run")))
    proc = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                           str(CONFIGS / "fsdp.yaml"), "--num_processes", "2", "--main_process_port", "0",
                           "-m", "seqrl", "finetune", str(path)],
                          cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode != 0
    # (counted, not split into lines: the two processes' writes can interleave on a busy machine)
    assert proc.stderr.count("seqrl finetune: error: the accelerate launcher asks for FSDP") == 2, proc.stderr[-3000:]
    assert "parallelism:" not in proc.stdout
    assert not (tmp_path / "run" / "metrics.jsonl").exists()
