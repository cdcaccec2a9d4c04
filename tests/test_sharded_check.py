"""scripts/sharded_check.py (issue 20): its comparisons and table on hand-made metrics, its recipe,
the ZeRO-3 config it adds, and one real run on the CPU (DDP alone, 4 steps: the row says it ran,
matches itself exactly, and resumes bitwise). The FSDP and DeepSpeed rows need a GPU."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from seqrl import distributed
from seqrl.config import from_dict
from seqrl.errors import SeqrlError
from seqrl.schedule import Schedule

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "sharded_check.py"
sys.path.insert(0, str(REPO / "scripts"))  # as when run: the script imports scripts/benchkit/
import benchkit.sharded_runs as sr  # noqa: E402
import benchkit.sharded_verdicts as sv  # noqa: E402

spec = importlib.util.spec_from_file_location("sharded_check", SCRIPT)
sc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = sc
spec.loader.exec_module(sc)


def metrics(losses: dict[int, float], step_s: float = 0.5) -> list[dict]:
    """metrics.jsonl lines as seqrl writes them: a stage line, then one line per step."""
    rows = [{"step": 0, "stage_start": 1, "stage": 1, "delta": 6}]
    rows += [{"step": s, "train/loss": v, "time/step_s": step_s + s / 100, "lr": 1e-3} for s, v in losses.items()]
    return rows


CURVE = {s: 3.8 - 0.02 * s for s in range(1, 21)}


# -- reading and comparing curves ------------------------------------------------------------------------


def test_losses_and_median_step_time_from_metrics_lines(tmp_path):
    rows = metrics(CURVE) + [{"step": 20, "eval/bleu": 0.1}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 21, "tr')
    read = sv.read_metrics(tmp_path)  # the torn last line is dropped
    assert sv.losses(read) == CURVE
    assert sv.median_step_time(read) == pytest.approx(0.5 + 10.5 / 100)
    assert sv.read_metrics(tmp_path / "nowhere") == [] and sv.median_step_time([]) is None


def test_loss_verdict_within_and_beyond_tolerance():
    steps = list(range(1, 21))
    same = sv.loss_verdict(CURVE, dict(CURVE), steps, 0.01)
    assert same["max_abs_diff"] == 0 and same["bitwise"] and same["within"]
    near = {s: v + (0.004 if s == 7 else 0.0) for s, v in CURVE.items()}
    verdict = sv.loss_verdict(CURVE, near, steps, 0.01)
    assert verdict["max_abs_diff"] == pytest.approx(0.004) and verdict["within"] and not verdict["bitwise"]
    far = {s: v - (0.05 if s > 10 else 0.0) for s, v in CURVE.items()}
    assert not sv.loss_verdict(CURVE, far, steps, 0.01)["within"]


def test_loss_verdict_missing_steps_and_nan_never_pass():
    steps = list(range(1, 21))
    short = {s: v for s, v in CURVE.items() if s <= 12}
    verdict = sv.loss_verdict(CURVE, short, steps, 0.01)
    assert verdict["missing"] == list(range(13, 21)) and verdict["max_abs_diff"] == 0 and not verdict["within"]
    nan = {**CURVE, 5: math.nan}
    verdict = sv.loss_verdict(CURVE, nan, steps, 0.01)
    assert math.isnan(verdict["max_abs_diff"]) and not verdict["within"]


def test_resume_verdicts():
    steps = list(range(11, 21))
    resumed = {s: v for s, v in CURVE.items() if s > 10}
    assert sv.resume_verdict(CURVE, resumed, steps, 1e-3)["status"] == "bitwise"
    nudged = {s: v + 2e-4 for s, v in resumed.items()}
    verdict = sv.resume_verdict(CURVE, nudged, steps, 1e-3)
    assert verdict["status"] == "within tolerance" and verdict["passed"]
    assert verdict["max_abs_diff"] == pytest.approx(2e-4)
    off = {**resumed, 15: resumed[15] + 0.01}
    assert sv.resume_verdict(CURVE, off, steps, 1e-3)["status"] == "differs"
    verdict = sv.resume_verdict(CURVE, {}, steps, 1e-3)
    assert verdict["status"] == "missing steps" and not verdict["passed"]


# -- what a run printed -------------------------------------------------------------------------------------


def test_first_error_line_prefers_seqrl_then_the_exception():
    text = "running: accelerate launch ...\nseqrl finetune: error: run.resume: cannot load checkpoint x\n"
    assert sv.first_error_line(text) == "seqrl finetune: error: run.resume: cannot load checkpoint x"
    torchrun = ("W1130 warning: OMP_NUM_THREADS set\n"
                "[rank0]: Traceback (most recent call last):\n"
                "[rank0]:   File \"seqrl/rollout.py\", line 9, in rollout\n"
                "[rank0]:     out = model(x)\n"
                "[rank0]: RuntimeError: aten.embedding: got mixed torch.Tensor and DTensor\n"
                "E1130 failed (exitcode: 1)\n"
                "torch.distributed.elastic.multiprocessing.errors.ChildFailedError: seqrl FAILED\n")
    assert sv.first_error_line(torchrun) == "RuntimeError: aten.embedding: got mixed torch.Tensor and DTensor"
    assert sv.first_error_line("sharded_check: timed out after 180 s, killed") == \
        "sharded_check: timed out after 180 s, killed"
    assert sv.first_error_line("all fine\n") is None


def test_parallelism_line():
    line = "parallelism: FSDP v2, 1 process on cuda over nccl, ...; mixed precision: no (fp32)"
    text = f"model: Bart...\n[rank0]: {line}\n"
    assert sv.parallelism_line(text) == line
    assert sv.parallelism_line("nothing") is None


def test_compare_weights(tmp_path):
    import torch
    from safetensors.torch import save_file

    ref, good, empty, other = (tmp_path / n for n in ("ref", "good", "empty", "other"))
    for d in (ref, good, empty, other):
        d.mkdir()
    w = {"a.weight": torch.ones(3, 4), "b.bias": torch.zeros(4)}
    save_file(w, str(ref / "model.safetensors"))
    save_file({k: v + 1e-4 for k, v in w.items()}, str(good / "model.safetensors"))
    save_file({"a.weight": torch.ones(3, 4), "b.bias": torch.empty(0)}, str(empty / "model.safetensors"))
    save_file({"a.weight": torch.ones(2, 4), "b.bias": torch.zeros(4)}, str(other / "model.safetensors"))
    verdict = sv.compare_weights(ref, good)
    assert verdict["ok"] and verdict["max_abs_diff"] == pytest.approx(1e-4, rel=1e-3)
    assert sv.compare_weights(ref, empty) == {"ok": False, "problem": "1 empty tensors (b.bias, ...)"}
    assert "tensors differ from DDP's: a.weight" in sv.compare_weights(ref, other)["problem"]
    assert sv.compare_weights(ref, tmp_path / "none")["problem"] == "no none/model.safetensors"
    assert not sv.compare_weights(ref, good, tolerance=1e-5)["ok"]


# -- the table ----------------------------------------------------------------------------------------------


SETTINGS = {"date": "2026-11-30 12:00", "device": "1 x NVIDIA H200 (CUDA 13.0)",
            "versions": {"torch": "2.11.0", "accelerate": "1.15.0", "transformers": "5.24.0", "deepspeed": None},
            "steps": 20, "checkpoint_step": 10, "mixed_precision": "no",
            "tolerance": {"loss": 0.01, "resume": 1e-3, "weights": 2e-3}}


def _row(config: str, **kw) -> dict:
    return {"config": config, "accelerate_config": sr.CONFIGS[config], "exit_code": 0, "steps_logged": 20, **kw}


def test_markdown_table_rows():
    steps, tol = list(range(1, 21)), SETTINGS["tolerance"]
    resumed = {s: v for s, v in CURVE.items() if s > 10}
    ddp = _row("ddp", parallelism="parallelism: DDP, 1 process on cuda over nccl (accelerate MULTI_GPU), weights "
                                  "replicated; mixed precision: no (fp32)",
               loss_vs_ddp=sv.loss_verdict(CURVE, CURVE, steps, tol["loss"]), median_step_s=0.0812,
               resume={"exit_code": 0, **sv.resume_verdict(CURVE, resumed, steps[10:], tol["resume"])},
               final_weights={"ok": True, "max_abs_diff": 0.0, "tolerance": 2e-3})
    fsdp = _row("fsdp", exit_code=1, steps_logged=0, error="RuntimeError: mixed torch.Tensor | DTensor",
                parallelism="parallelism: FSDP v2, 1 process on cuda over nccl, ...", resume={
                    "skipped": "no checkpoint at step 10"})
    zero2 = {"config": "zero2", "accelerate_config": sr.CONFIGS["zero2"], "exit_code": None, "steps_logged": 0,
             "skipped": "deepspeed is not installed (pip install deepspeed ...)"}
    drifted = {s: v + 0.02 for s, v in resumed.items()}
    zero3 = _row("zero3", parallelism="parallelism: DeepSpeed ZeRO-3 (...), 1 process on cuda over nccl",
                 loss_vs_ddp=sv.loss_verdict(CURVE, {s: v + 0.003 for s, v in CURVE.items()}, steps, tol["loss"]),
                 median_step_s=0.2, resume={"exit_code": 0, **sv.resume_verdict(CURVE, drifted, steps[10:],
                                                                                  tol["resume"])},
                 final_weights={"ok": False, "problem": "120 empty tensors (model.shared.weight, ...)"})
    table = sv.markdown_table([ddp, fsdp, zero2, zero3], SETTINGS)
    lines = table.splitlines()
    assert lines[0] == "# Sharded training check (2026-11-30 12:00)"
    assert "deepspeed not installed" in table and "(tolerance 0.01)" in table
    header = "| config | ran | parallelism | loss vs DDP | median step (s) | resume at step 10 | final/ weights |"
    rows = lines[lines.index(header) + 2:]
    assert rows[0] == ("| ddp (ddp.yaml) | yes (exit 0, 20 steps) | DDP, 1 process on cuda over nccl (accelerate "
                       "MULTI_GPU), weights replicated; mixed precision: no (fp32) | 0 <= 0.01 (bitwise) | 0.0812 | "
                       "bitwise | complete, max abs diff 0 <= 0.002 |")
    assert rows[1] == ("| fsdp (fsdp.yaml) | no (exit 1, 0 steps): RuntimeError: mixed torch.Tensor \\| DTensor | "
                       "FSDP v2, 1 process on cuda over nccl, ... | no DDP curve to compare | - | "
                       "not run: no checkpoint at step 10 | - |")
    assert rows[2] == ("| zero2 (deepspeed_zero2.yaml) | not run: deepspeed is not installed (pip install deepspeed "
                       "...) | - | - | - | - | - |")
    assert rows[3] == ("| zero3 (deepspeed_zero3.yaml) | yes (exit 0, 20 steps) | DeepSpeed ZeRO-3 (...), 1 process on "
                       "cuda over nccl | 0.003 <= 0.01 | 0.2 | FAIL: differs: 0.02 > 0.001 | "
                       "FAIL: 120 empty tensors (model.shared.weight, ...) |")
    assert len(rows) == 4


def test_resume_cell_when_the_resumed_run_fails():
    row = _row("zero2", resume={"exit_code": 2, "error": "seqrl finetune: error: run.resume: cannot load checkpoint",
                                "status": "missing steps", "missing": [11], "passed": False})
    assert sv.resume_cell(row) == "FAIL: exit 2: seqrl finetune: error: run.resume: cannot load checkpoint"
    steps = list(range(11, 21))
    late = _row("fsdp", resume={"exit_code": 1, "error": "RuntimeError: cannot save final/",
                                **sv.resume_verdict(CURVE, dict(CURVE), steps, 1e-3)})
    assert sv.resume_cell(late) == "FAIL: steps bitwise (0), then exit 1: RuntimeError: cannot save final/"


# -- the recipe and the configs -----------------------------------------------------------------------------


@pytest.mark.parametrize("steps", [4, 20])
def test_recipe_is_mixer_from_the_first_step_for_exactly_steps(steps):
    cfg = from_dict(sc.recipe(steps))
    schedule = Schedule(cfg.schedule, 125, 125, cfg.data.max_target_tokens)
    assert schedule.xent_steps == 0 and not schedule.plan(0).is_xent
    assert schedule.total_steps >= steps and cfg.run.max_steps == steps
    assert [schedule.plan(s).n_rl_tokens for s in range(steps)][-1] < cfg.data.max_target_tokens  # a prefix left
    assert cfg.run.save_every == sr.checkpoint_step(steps) == steps // 2
    assert cfg.log.every == 1 and cfg.data.path == str(REPO / "data" / "bible_en_es")
    assert sv.tolerances("no")["loss"] == sv.LOSS_TOLERANCE and sv.tolerances("bf16")["loss"] == sv.BF16_LOSS_TOLERANCE


def test_every_run_loads_the_saved_starting_model():
    cfg = from_dict(sc.recipe(20, "bf16", Path("/runs/start/model")))
    assert cfg.model.name_or_path == "/runs/start/model" and cfg.model.architecture is None
    assert cfg.tokenizer.name_or_path is None and cfg.run.mixed_precision == "bf16"  # (the model's own tokenizer)


def test_lora_recipe_trains_adapters_without_dropout_and_leaves_the_model_alone():
    cfg = from_dict(sc.recipe(20, lora_rank=4))
    assert (cfg.model.lora.rank, cfg.model.lora.alpha, cfg.model.lora.dropout) == (4, 8.0, 0.0)
    assert "lora" not in sc.MODEL and from_dict(sc.recipe(20)).model.lora is None
    started = from_dict(sc.recipe(20, start=Path("/runs/start/model"), lora_rank=8))
    assert started.model.name_or_path == "/runs/start/model" and started.model.lora.rank == 8
    settings = {"steps": 20, "checkpoint_step": 10, "date": "d", "device": "gpu", "versions": {},
                "mixed_precision": "no", "tolerance": sv.tolerances("no"), "lora_rank": 4}
    assert "recipe in scripts/sharded_check.py with LoRA (rank 4; only the adapters train), 1 process" in \
        sv.markdown_table([], settings)
    assert "with LoRA" not in sv.markdown_table([], dict(settings, lora_rank=None))
    with pytest.raises(SystemExit):
        sc.parse_args(["--out", "r", "--lora", "0"])


def test_zero3_config_is_accelerates_and_refused_on_the_cpu():
    from accelerate.commands.config.config_args import load_config_from_file

    path = REPO / "recipes" / "accelerate" / "deepspeed_zero3.yaml"
    raw = yaml.safe_load(path.read_text())
    assert raw["distributed_type"] == "DEEPSPEED" and raw["deepspeed_config"]["zero_stage"] == 3
    zero2 = yaml.safe_load((REPO / "recipes" / "accelerate" / "deepspeed_zero2.yaml").read_text())
    assert set(raw) == set(zero2)  # modelled on zero2: the same keys
    loaded = load_config_from_file(str(path))
    assert loaded.distributed_type == "DEEPSPEED" and loaded.deepspeed_config["zero_stage"] == 3
    with pytest.raises(SeqrlError, match="asks for DeepSpeed, which accelerate runs only on GPUs"):
        distributed.check_launch(str(path), "no", cpu=True)
    for name in sr.CONFIGS.values():
        assert (REPO / "recipes" / "accelerate" / name).is_file()


def test_skip_reasons(monkeypatch):
    assert sc.skip_reason("ddp", cuda=False) is None
    assert sc.skip_reason("fsdp", cuda=False).startswith("no CUDA")
    monkeypatch.setattr(sc.importlib.util, "find_spec", lambda name: None)
    assert sc.skip_reason("zero3", cuda=True).startswith("deepspeed is not installed")
    assert sc.skip_reason("fsdp", cuda=True) is None


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="a machine with CUDA")
def test_refuses_to_start_without_cuda(tmp_path, capsys):
    assert sc.main(["--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sharded_check: error: no CUDA device here") and err.count("\n") == 1
    assert not (tmp_path / "r").exists()


# -- end to end on the CPU -------------------------------------------------------------------------------------


def test_ddp_on_the_cpu_end_to_end(tmp_path):
    """The starting model built, 4 MIXER steps through `seqrl finetune --num-processes 1
    --accelerate-config ddp.yaml`, a checkpoint at step 2 resumed into a fresh directory (~30 s
    on 2 cores)."""
    out = tmp_path / "report"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, str(SCRIPT), "--allow-cpu", "--configs", "ddp", "--steps", "4",
                           "--out", str(out), "--work", str(tmp_path / "work")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == ["sharded_check.json", "sharded_check.log", "sharded_check.md"]
    report = json.loads((out / "sharded_check.json").read_text())
    (row,) = report["rows"]
    assert row["config"] == "ddp" and row["exit_code"] == 0 and row["steps_logged"] == 4
    assert row["parallelism"] == "parallelism: none, 1 process on cpu; mixed precision: no (fp32)"
    assert row["loss_vs_ddp"]["max_abs_diff"] == 0 and row["loss_vs_ddp"]["within"]
    assert row["resume"]["exit_code"] == 0 and row["resume"]["status"] == "bitwise" and row["resume"]["passed"]
    assert sorted(map(int, row["resume"]["losses"])) == [3, 4]
    assert row["median_step_s"] > 0 and row["final_weights"]["ok"]
    table = (out / "sharded_check.md").read_text()
    (ddp_line,) = [line for line in table.splitlines() if line.startswith("| ddp ")]
    assert ddp_line.startswith("| ddp (ddp.yaml) | yes (exit 0, 4 steps) | none, 1 process on cpu; ")
    assert "| 0 <= 0.01 (bitwise) |" in ddp_line and "| bitwise |" in ddp_line
    assert "resume at step 2" in table
    log = (out / "sharded_check.log").read_text()
    assert "--num-processes 1 --accelerate-config" in log and "run.resume=" in log
    assert "resumed from" in log and "at step 2" in log
