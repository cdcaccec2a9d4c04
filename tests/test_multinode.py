"""A run across machines, as two machines on this one: two `seqrl finetune --num-machines 2`
launchers on localhost, one CPU process each over gloo (run.cpu: true).

- SIGTERM to one machine's launcher, mid-step: both processes stop after that step, one
  checkpoint holding both processes' states, both launchers exit 75; resumed (slow), the run
  ends bitwise equal to the uninterrupted two-machine run.
- It makes the same updates as one process with the same global batch (the tolerance of
  tests/test_distributed.py, whose tiny recipe it reuses): compared at that checkpoint, and at
  the end of the uninterrupted run (slow).
- Bad input, one line each: a machine rank out of range, a main process that cannot be reached
  (within --machine-timeout, not a hang), a run directory the machines do not share.

Every process runs under a subprocess timeout; the processes inherit the test's CPU affinity.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import subprocess_work
from safetensors.torch import load_file
from test_distributed import TOLERANCE, _recipe, max_diff
from test_preemption import assert_bitwise_equal

from seqrl.checkpoint import list_checkpoints
from seqrl.preemption import EXIT_PREEMPTED

TIMEOUT = 300  # seconds for any one launcher (a start takes ~10 s of CPU; the test machine's cores are shared)

# A reward of token overlap; on its call STOP_AT_CALL in process STOP_RANK it sends STOP_SIGNAL
# to that process's machine launcher (its parent's parent: seqrl -> accelerate's agent -> process),
# then waits for the signal to come down to it, so the stop lands in a known step.
REWARDS = '''
import os, signal, time

from seqrl import preemption

calls = 0


def _grandparent() -> int:
    with open(f"/proc/{os.getppid()}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def overlap(completion_ids, reference_ids, **kwargs):
    global calls
    calls += 1
    if os.environ.get("STOP_AT_CALL") == str(calls) and os.environ.get("RANK") == os.environ.get("STOP_RANK"):
        os.kill(_grandparent(), getattr(signal, os.environ["STOP_SIGNAL"]))
        deadline = time.monotonic() + 60
        while not preemption.requested() and time.monotonic() < deadline:
            time.sleep(0.01)
    return [len(set(c) & set(r)) / max(len(set(r)), 1) for c, r in zip(completion_ids, reference_ids)]
'''


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict:
    return subprocess_work(tmp_path_factory.mktemp("multinode"), "multinode_rewards", REWARDS)


def recipe_file(work: dict, name: str, processes: int) -> Path:
    """test_distributed's tiny marian recipe (3 XENT + 4 MIXER steps) on the CPU, with the
    overlap reward; per-process batches that make the same global batch on 1 and 2 processes."""
    batch, rl_batch = (8, 4) if processes == 1 else (4, 2)
    recipe = _recipe(work["data"], work["tmp"] / name, "loo", batch, rl_batch)
    recipe["rewards"] = [{"name": "multinode_rewards:overlap"}]
    recipe["run"]["cpu"] = True
    path = work["tmp"] / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher(work: dict, recipe: Path, rank: int, port: int, *args: str, **env: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "seqrl", "finetune", str(recipe), "--num-machines", "2", "--machine-rank", str(rank),
           "--main-process-ip", "127.0.0.1", "--main-process-port", str(port), "--machine-timeout", "60", *args]
    return subprocess.Popen(cmd, cwd=work["tmp"], env=dict(work["env"], **env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def two_machines(work: dict, name: str, *args: str, **env: str) -> list[tuple[int, str]]:
    """Start machine 0 and machine 1 of the run `name`; their (exit status, stderr)."""
    port, recipe = free_port(), recipe_file(work, name, 2)
    procs = [launcher(work, recipe, rank, port, *args, **env) for rank in (0, 1)]
    return [finish(p) for p in procs]


def finish(proc: subprocess.Popen) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired as err:
        proc.kill()
        raise AssertionError(f"a launcher did not end within {TIMEOUT} s: {proc.communicate()[1][-3000:]}") from err
    return proc.returncode, err


def weights(work: dict, name: str) -> dict:
    return load_file(str(work["tmp"] / name / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def one_process(work) -> Path:
    """The run on one process with the same global batch, with a checkpoint after step 5."""
    recipe = recipe_file(work, "one-process", 1)
    proc = subprocess.run([sys.executable, "-m", "seqrl", "finetune", str(recipe), "--set", "run.save_every=5"],
                          cwd=work["tmp"], env=work["env"], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work["tmp"] / "one-process"


@pytest.fixture(scope="module")
def uninterrupted(work) -> dict:
    for code, err in two_machines(work, "two-machines"):
        assert code == 0, err[-3000:]
    return weights(work, "two-machines")


def after_step_5(out: Path) -> dict:
    return load_file(str(out / "checkpoints" / "step-00000005" / "model.safetensors"))


def test_two_machines_equal_one_process(one_process, preempted):
    """After 3 XENT and 2 MIXER steps: the checkpoint the two machines wrote when stopped there
    (below), and the one process's periodic one."""
    out, _ = preempted
    assert '"reward/total"' in (out / "metrics.jsonl").read_text(), "no MIXER step ran"
    worst = max_diff(after_step_5(one_process), after_step_5(out))
    print(f"max |1 process - 2 machines| after step 5 = {worst:.2g}")
    assert worst < TOLERANCE, f"two-machine parameters differ from 1-process by {worst:.3g}"
    assert not list(out.glob(".seqrl-machine-*")), "a machine marker was left behind"


@pytest.mark.slow
def test_two_machines_to_the_end_equal_one_process(work, one_process, uninterrupted):
    worst = max_diff(weights(work, "one-process"), uninterrupted)
    print(f"max |1 process - 2 machines| after 7 steps = {worst:.2g}")
    assert worst < TOLERANCE, f"two-machine parameters differ from 1-process by {worst:.3g}"


def preempt(work: dict, name: str, signal_name: str, machine: int) -> tuple[Path, list[tuple[int, str]]]:
    """A two-machine run whose machine `machine` launcher gets `signal_name` during the reward's
    3rd call in its process (the 1st is the set-up call): step 5, the second MIXER step."""
    stop = {"STOP_AT_CALL": "3", "STOP_RANK": str(machine), "STOP_SIGNAL": signal_name}
    return work["tmp"] / name, two_machines(work, name, **stop)


def assert_both_stopped_after_step_5(out: Path, ends: list[tuple[int, str]], signal_name: str) -> None:
    """Both launchers exit 75, one line (machine 0's), one checkpoint holding both processes'
    states, no final model."""
    (code0, err0), (code1, err1) = ends
    assert (code0, code1) == (EXIT_PREEMPTED, EXIT_PREEMPTED), err0[-2000:] + err1[-2000:]
    line = [ln for ln in err0.splitlines() + err1.splitlines() if ln.startswith("seqrl finetune:")]
    assert line == [f"seqrl finetune: preempted: stopped by {signal_name} after step 5, checkpoint written to "
                    f"{out}/checkpoints/step-00000005; to continue, run the same command with "
                    f"--set run.resume=auto"], err0[-3000:]
    checkpoint, = list_checkpoints(out)
    assert checkpoint.name == "step-00000005"
    # each process saves its own RNG state into the one checkpoint: both stopped at step 5
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                            "random_states_1.pkl"]
    assert not (out / "final").exists()


@pytest.fixture(scope="module")
def preempted(work) -> tuple[Path, list[tuple[int, str]]]:
    return preempt(work, "preempted", "SIGTERM", machine=1)


def test_sigterm_to_one_machine_stops_both(preempted):
    assert_both_stopped_after_step_5(*preempted, "SIGTERM")


@pytest.mark.slow
def test_preempted_two_machine_run_resumes_exactly(work, preempted, uninterrupted):
    for code, err in two_machines(work, "preempted", "--set", "run.resume=auto"):
        assert code == 0, err[-3000:]
    assert_bitwise_equal(weights(work, "preempted"), uninterrupted)


@pytest.mark.slow
def test_sigusr1_to_the_main_machine_stops_both(work):
    """SLURM's warning signal: accelerate's agent would die of it (leaving its processes behind)
    unless the launcher tells it to handle SIGUSR1; then it passes it on."""
    assert_both_stopped_after_step_5(*preempt(work, "usr1", "SIGUSR1", machine=0), "SIGUSR1")


def one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("seqrl finetune: error:")]
    assert len(lines) == 1, err[-3000:]
    return lines[0]


def test_machine_rank_out_of_range(work):
    proc = subprocess.run([sys.executable, "-m", "seqrl", "finetune", str(recipe_file(work, "bad-rank", 2)),
                           "--num-machines", "2", "--machine-rank", "2", "--main-process-ip", "127.0.0.1",
                           "--main-process-port", "29500"],
                          cwd=work["tmp"], env=work["env"], capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 2
    assert proc.stderr == ("seqrl finetune: error: --machine-rank 2 is out of range for --num-machines 2: "
                           "give 0 to 1\n")


def test_main_process_that_cannot_be_reached(work):
    """Machine 1 alone: nobody listens on the main port; it gives up after --machine-timeout."""
    port = free_port()
    proc = launcher(work, recipe_file(work, "no-main", 2), 1, port, "--machine-timeout", "2")
    code, err = finish(proc)
    assert code == 2
    assert err == (f"seqrl finetune: error: --main-process-ip 127.0.0.1 --main-process-port {port}: the main process "
                   f"(machine 0) cannot be reached within 2 s (Connection refused); start machine 0's launcher, "
                   f"check the address and that the port is open between the machines, or raise "
                   f"--machine-timeout\n")
    assert not (work["tmp"] / "no-main").exists()


def test_run_directory_not_shared(work):
    """What each machine sees when run.output_dir is not shared, simulated honestly on one host:
    each launcher is given its own directory; the markers machine 1 leaves never reach machine
    0's. Both stop with the same line naming machine 0's directory, nothing trained."""
    main_dir, other_dir = work["tmp"] / "not-shared-0", work["tmp"] / "not-shared-1"
    (code0, err0), (code1, err1) = _not_shared(work)
    expected = (f"seqrl finetune: error: run.output_dir '{main_dir}' is not shared between the machines: machine 0 "
                f"does not see what machine 1 wrote there within 2 s; put run.output_dir on a filesystem that "
                f"every machine mounts at the same path (NFS, Lustre, ...)")
    assert code0 == 2 and code1 == 2  # (a user error in the launched processes: 2, not the launcher's 1)
    assert one_line(err0) == expected and one_line(err1) == expected
    for directory in (main_dir, other_dir):
        assert not (directory / "metrics.jsonl").exists() and not list(directory.glob(".seqrl-*"))


def _not_shared(work: dict) -> list[tuple[int, str]]:
    port, recipe = free_port(), recipe_file(work, "not-shared-0", 2)
    other = ["--set", f"run.output_dir={work['tmp'] / 'not-shared-1'}"]
    procs = [launcher(work, recipe, 0, port, SEQRL_SHARED_DIR_WAIT_S="2"),
             launcher(work, recipe, 1, port, *other, SEQRL_SHARED_DIR_WAIT_S="2")]
    return [finish(p) for p in procs]


# -- in-process: the launch command, the launcher's environment, the markers -------------------------


def test_launch_command_for_machine_1_of_2():
    from seqrl.cli import build_parser
    from seqrl.launch import launch_command

    args = build_parser().parse_args(["finetune", "r.yaml", "--num-machines", "2", "--machine-rank", "1",
                                      "--main-process-ip", "node-a", "--main-process-port", "29400",
                                      "--num-processes", "8", "--machine-timeout", "45", "--set", "optim.lr=1e-4"])
    assert launch_command(args, "bf16") == [
        sys.executable, "-m", "seqrl.launcher", "--multi_gpu", "--mixed_precision", "bf16",
        "--dynamo_backend", "no", "--num_machines", "2", "--machine_rank", "1", "--main_process_ip", "node-a",
        "--main_process_port", "29400", "--rdzv_conf", "timeout=45", "--num_processes", "8",
        "-m", "seqrl", "finetune", "r.yaml", "--set", "optim.lr=1e-4"]


@pytest.mark.parametrize("flags, message", [
    (["--num-machines", "2", "--machine-rank", "-1"],
     "--machine-rank -1 is out of range for --num-machines 2: give 0 to 1"),
    (["--num-machines", "2"], "--num-machines 2 needs --machine-rank"),
    (["--machine-rank", "1"], "--machine-rank needs --num-machines"),
    (["--num-machines", "2", "--machine-rank", "0"], "needs --main-process-ip and --main-process-port"),
    (["--num-machines", "2", "--machine-rank", "0", "--main-process-ip", "h", "--main-process-port", "1",
      "--num-processes", "3"], "--num-processes 3 is the total over the machines and must be a multiple of"),
    (["--num-machines", "0"], "--num-machines must be >= 1, got 0"),
])
def test_machine_flags_that_cannot_start(flags, message):
    from seqrl.cli import build_parser
    from seqrl.errors import SeqrlError
    from seqrl.launch import launch_command

    with pytest.raises(SeqrlError, match=re.escape(message)):
        launch_command(build_parser().parse_args(["finetune", "r.yaml", *flags]))


def test_the_launcher_keeps_accelerates_agent_alive_through_sigusr1():
    from seqrl.launch import STOP_GRACE_S, launch_env

    env = launch_env({"PATH": "/bin"})
    assert env["PET_SIGNALS_TO_HANDLE"] == "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
    assert env["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == str(STOP_GRACE_S)
    assert launch_env({"TORCH_ELASTIC_SHUTDOWN_TIMEOUT": "30"})["TORCH_ELASTIC_SHUTDOWN_TIMEOUT"] == "30"


def test_only_this_starts_markers_count(tmp_path):
    """A marker left by an earlier start (another token) is not this machine's; seen markers are
    removed."""
    from seqrl.rundir import _unseen_markers

    (tmp_path / ".seqrl-machine-1").write_text("old-token")
    (tmp_path / ".seqrl-machine-2").write_text("this-start")
    env = {"SEQRL_SHARED_DIR_WAIT_S": "0.3"}
    assert "machine 0 does not see what machine 1 wrote there within 0.3 s" in _unseen_markers(
        tmp_path, 3, "this-start", env)
    (tmp_path / ".seqrl-machine-1").write_text("this-start")
    assert _unseen_markers(tmp_path, 3, "this-start", env) is None
    assert list(tmp_path.iterdir()) == []
    assert "got 'soon'" in _unseen_markers(tmp_path, 2, "t", {"SEQRL_SHARED_DIR_WAIT_S": "soon"})
