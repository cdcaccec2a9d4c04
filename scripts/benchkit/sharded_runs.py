"""scripts/sharded_check.py's runs: each `seqrl finetune` through an accelerate config in its own
process group, within the check's time budget, and the table's row from it (first run, resume)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from benchkit.sharded_verdicts import (
    compare_weights,
    first_error_line,
    loss_verdict,
    losses,
    median_step_time,
    parallelism_line,
    read_metrics,
    resume_verdict,
)

REPO = Path(__file__).resolve().parents[2]
ACCELERATE_CONFIGS = REPO / "recipes" / "accelerate"
CONFIGS = {"ddp": "ddp.yaml", "fsdp": "fsdp.yaml", "zero2": "deepspeed_zero2.yaml", "zero3": "deepspeed_zero3.yaml"}
"""Short name -> accelerate config file in recipes/accelerate/, in the order they run (DDP first:
the others are compared with it)."""
LOG_TAIL_LINES = 60


def checkpoint_step(steps: int) -> int:
    return steps // 2


# -- running -------------------------------------------------------------------------------------------------


def child_env(cuda: bool) -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", "1")  # (torchrun sets it to 1 too, with a warning)
    if cuda:
        env.setdefault("DS_ACCELERATOR", "cuda")  # (a deepspeed wheel built without a GPU names "cpu")
    else:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def finetune_command(recipe_path: Path, config: str, output_dir: Path, overrides: list[str] = ()) -> list[str]:
    cmd = [sys.executable, "-m", "seqrl", "finetune", str(recipe_path), "--num-processes", "1",
           "--accelerate-config", str(ACCELERATE_CONFIGS / CONFIGS[config]),
           "--set", f"run.output_dir={output_dir}"]
    for item in overrides:
        cmd += ["--set", item]
    return cmd


def run_command(cmd: list[str], env: dict, timeout: float, log) -> tuple[int, str]:
    """Run `cmd` in its own process group; on timeout end that group. Returns (exit code, output)."""
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            errors="replace", start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=max(timeout, 1.0))
        code = proc.returncode
    except subprocess.TimeoutExpired:
        stop(proc)
        output, _ = proc.communicate(timeout=30)
        output += f"\nsharded_check: timed out after {timeout:.0f} s, stopped\n"
        code = 124
    tail = output.splitlines()[-LOG_TAIL_LINES:]
    log.write(f"# exit {code} after {time.monotonic() - started:.1f} s; last {len(tail)} lines:\n")
    log.write("\n".join(tail) + "\n\n")
    log.flush()
    return code, output


def stop(proc: subprocess.Popen) -> None:
    """End a run that ran out of time: SIGTERM to the process group started here (seqrl passes it
    to the launcher; torchrun stops its workers, which start sessions of their own), then SIGKILL
    to whatever of it, and of the processes it started, is left after 15 s."""
    import psutil

    try:
        family = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        family = []
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=15)
    for child in family:
        with contextlib.suppress(psutil.Error):
            child.kill()  # (psutil checks that the pid is still that process)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class Runner:
    """Runs `seqrl finetune` commands within the check's time budget (--budget), logging each."""

    def __init__(self, recipe_path: Path, work: Path, env: dict, timeout: float, budget: float, log):
        self.recipe_path, self.work, self.env, self.timeout, self.log = recipe_path, work, env, timeout, log
        self.deadline = time.monotonic() + budget

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def finetune(self, config: str, output_dir: Path, overrides: list[str] = ()) -> tuple[int, str]:
        timeout = min(self.timeout, self.time_left())
        return run_command(finetune_command(self.recipe_path, config, output_dir, overrides), self.env, timeout,
                           self.log)

    def error(self, code: int, output: str) -> str | None:
        """The run's first error line (None when it exited 0), the work directory written WORK."""
        line = first_error_line(output) if code != 0 else None
        return line.replace(str(self.work), "WORK") if line else line


MIN_SECONDS = 20.0
"""A run is not started with less of the budget left than this."""


def first_run(runner: Runner, config: str, steps: int, reference: dict | None, tolerance: dict) -> dict:
    """`steps` steps from scratch (a checkpoint half-way); the table's row, without the resume."""
    row = {"config": config, "accelerate_config": CONFIGS[config]}
    out = runner.work / config
    started = time.monotonic()
    code, output = runner.finetune(config, out)
    rows = read_metrics(out)
    curve = losses(rows)
    row.update(exit_code=code, error=runner.error(code, output),
               seconds=round(time.monotonic() - started, 1), parallelism=parallelism_line(output),
               steps_logged=len(curve), losses=curve, median_step_s=median_step_time(rows), output_dir=str(out))
    all_steps = list(range(1, steps + 1))
    if reference is None and code == 0:  # DDP against itself: 0 by construction, shown as such
        row["loss_vs_ddp"] = loss_verdict(curve, curve, all_steps, tolerance["loss"])
    elif reference is not None and reference.get("exit_code") == 0 and curve:
        row["loss_vs_ddp"] = loss_verdict(reference["losses"], curve, all_steps, tolerance["loss"])
    if code == 0 or (out / "final").is_dir():
        ref_final = Path(reference["output_dir"]) / "final" if reference else out / "final"
        row["final_weights"] = compare_weights(ref_final, out / "final", tolerance["weights"])
    return row


def resume_run(runner: Runner, row: dict, steps: int, tolerance: dict) -> None:
    """Resume the row's run from its half-way checkpoint into a fresh directory; the row's `resume`."""
    save = checkpoint_step(steps)
    checkpoint = Path(row["output_dir"]) / "checkpoints" / f"step-{save:08d}"
    if not checkpoint.is_dir():
        row["resume"] = {"skipped": f"no checkpoint at step {save}"}
        return
    resumed_dir = runner.work / f"{row['config']}-resumed"
    code, output = runner.finetune(row["config"], resumed_dir, [f"run.resume={checkpoint}"])
    resumed = losses(read_metrics(resumed_dir))
    row["resume"] = {"exit_code": code, "error": runner.error(code, output),
                     "losses": resumed, **resume_verdict(row["losses"], resumed, list(range(save + 1, steps + 1)),
                                                          tolerance["resume"])}
