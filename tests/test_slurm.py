"""recipes/slurm/finetune.sbatch under bash, with the SLURM variables of a 2-node job set and
stand-ins for `srun`, `scontrol` and `seqrl` that record their arguments (no SLURM cluster in
the test suite): one task per node, each starting its node's share with its SLURM_NODEID as
machine rank and the job's first node as main; a job whose launchers exit 75 is requeued."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "recipes" / "slurm" / "finetune.sbatch"

STAND_INS = {
    # scontrol: `show hostnames LIST` expands the job's node list; anything else is recorded only
    "scontrol": '''#!/bin/bash
printf '%q ' scontrol "$@" >> "$RECORD"; echo >> "$RECORD"
if [ "$1 $2" = "show hostnames" ]; then printf 'gpu-a17\\ngpu-b03\\n'; fi
''',
    # srun: one task per node, each with its own SLURM_NODEID; exits with the highest task status
    "srun": '''#!/bin/bash
printf '%q ' srun "$@" >> "$RECORD"; echo >> "$RECORD"
while [[ "$1" == --* ]]; do shift; done
highest=0
for ((node = 0; node < SLURM_NNODES; node++)); do
    SLURM_NODEID=$node "$@"; code=$?
    if ((code > highest)); then highest=$code; fi
done
exit $highest
''',
    "seqrl": '''#!/bin/bash
printf '%q ' "node-$SLURM_NODEID" seqrl "$@" >> "$RECORD"; echo >> "$RECORD"
exit "${SEQRL_EXIT:-0}"
''',
}


def submit(tmp: Path, *args: str, seqrl_exit: int = 0) -> tuple[subprocess.CompletedProcess, list[list[str]]]:
    """Run the script as the batch step of job 4242 on 2 nodes with 4 GPUs each; (the process,
    the recorded commands)."""
    bin_dir = tmp / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in STAND_INS.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    record = tmp / "record.txt"
    record.write_text("")
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "RECORD": str(record), "SEQRL_EXIT": str(seqrl_exit),
           "SLURM_JOB_ID": "4242", "SLURM_JOB_NODELIST": "gpu-[a17,b03]", "SLURM_NNODES": "2",
           "SLURM_GPUS_ON_NODE": "4", "SLURM_NODEID": "0"}
    proc = subprocess.run(["bash", str(SCRIPT), *args], cwd=tmp, env=env, capture_output=True, text=True, timeout=30)
    return proc, [shlex.split(line) for line in record.read_text().splitlines()]


def test_header_asks_for_one_task_per_node_the_warning_signal_and_requeue():
    options = [line.split(None, 1)[1] for line in SCRIPT.read_text().splitlines() if line.startswith("#SBATCH")]
    assert {"--ntasks-per-node=1", "--signal=USR1@90", "--requeue", "--open-mode=append"} <= set(options)


def test_each_node_starts_its_share_with_the_first_node_as_main(tmp_path):
    proc, commands = submit(tmp_path, "recipe.yaml", "--set", "optim.lr=1e-4")
    assert proc.returncode == 0, proc.stderr
    share = ["finetune", "recipe.yaml", "--num-machines", "2", "--machine-rank", "{rank}", "--main-process-ip",
             "gpu-a17", "--main-process-port", str(20000 + 4242), "--num-processes", "8", "--machine-timeout", "300",
             "--set", "run.resume=auto", "--set", "optim.lr=1e-4"]
    assert commands[0] == ["scontrol", "show", "hostnames", "gpu-[a17,b03]"]
    assert commands[1][:4] == ["srun", "--nodes=2", "--ntasks-per-node=1", "--kill-on-bad-exit=0"]
    assert commands[2:] == [[f"node-{rank}", "seqrl", *(a.format(rank=rank) for a in share)] for rank in (0, 1)]
    assert "main gpu-a17:24242" in proc.stdout


def test_a_preempted_job_is_requeued(tmp_path):
    proc, commands = submit(tmp_path, "recipe.yaml", seqrl_exit=75)
    assert proc.returncode == 75
    assert commands[-1] == ["scontrol", "requeue", "4242"]
    assert "preempted, requeueing job 4242" in proc.stdout


@pytest.mark.parametrize("status", [0, 1, 2])
def test_other_ends_are_not_requeued(tmp_path, status):
    proc, commands = submit(tmp_path, "recipe.yaml", seqrl_exit=status)
    assert proc.returncode == status
    assert not [c for c in commands if c[:2] == ["scontrol", "requeue"]]


def test_no_recipe_is_a_usage_line(tmp_path):
    proc, commands = submit(tmp_path)
    assert proc.returncode == 2 and commands == []
    assert proc.stderr == "usage: sbatch recipes/slurm/finetune.sbatch RECIPE.yaml [--set key=value ...]\n"
