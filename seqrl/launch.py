"""`seqrl finetune --num-processes / --accelerate-config / --num-machines`: re-launch the run
through `accelerate launch`, on one machine or as one machine's share of a run across several.

Across machines (measured with accelerate 1.15 and torch 2.13): accelerate hands the launch to
torch's elastic agent with a static rendezvous at `--main-process-ip:--main-process-port`; the
agent of machine 0 listens there and waits for the others. Its `timeout` (`--rdzv_conf`) bounds
both waits, a machine that cannot reach the main process and a main process whose machines never
come. The agent dies of SIGUSR1 unless told to handle it (`PET_SIGNALS_TO_HANDLE`); SLURM sends
`--signal=USR1@N` to every process of a job step, so it is told to. It passes a stop signal on
to its processes and SIGKILLs them `TORCH_ELASTIC_SHUTDOWN_TIMEOUT` seconds later (30 by
default: too short for the checkpoint of a large model, hence `STOP_GRACE_S`).
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

from seqrl.errors import EXIT_USER_ERROR, USER_ERROR_DIR, SeqrlError
from seqrl.preemption import EXIT_PREEMPTED, SIGNALS

if TYPE_CHECKING:
    from seqrl.config import RecipeConfig

MACHINE_TIMEOUT_S = 300
"""Default `--machine-timeout`: how long a machine waits to reach the main process, and the main
process for the other machines to join."""

STOP_GRACE_S = 300
"""Seconds the elastic agent leaves its processes, after passing them a stop signal, to write
their checkpoint before it kills them (unless TORCH_ELASTIC_SHUTDOWN_TIMEOUT is set)."""


def add_launch_args(p: argparse.ArgumentParser) -> None:
    """The `seqrl finetune` flags that re-launch it through `accelerate launch`."""
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="re-launch through `accelerate launch` with N processes (prints the command); with "
                        "--num-machines, N is the total over all machines (default: one per machine)")
    p.add_argument("--accelerate-config", metavar="FILE",
                   help="accelerate config for the re-launch (e.g. recipes/accelerate/ddp.yaml)")
    p.add_argument("--num-machines", type=int, metavar="M",
                   help="run across M machines: start the same command on each, with its own --machine-rank; "
                        "run.output_dir must be a directory they all see")
    p.add_argument("--machine-rank", type=int, metavar="R", help="this machine's rank, 0 to M-1 (0: the main one)")
    p.add_argument("--main-process-ip", metavar="HOST", help="address of machine 0, reachable from every machine")
    p.add_argument("--main-process-port", type=int, metavar="PORT", help="a free port on machine 0")
    p.add_argument("--machine-timeout", type=float, default=MACHINE_TIMEOUT_S, metavar="SECONDS",
                   help=f"how long a machine waits to reach machine 0, and machine 0 for the others "
                        f"(default {MACHINE_TIMEOUT_S})")


def wants_launch(args: argparse.Namespace) -> bool:
    return any(getattr(args, name) is not None for name in
               ("num_processes", "accelerate_config", "num_machines", "machine_rank", "main_process_ip",
                "main_process_port"))


def machine_args(args: argparse.Namespace) -> list[str]:
    """accelerate's flags for this machine's share of a run across `--num-machines` machines
    (none for one machine); a one-line error for a combination that cannot start."""
    machines = args.num_machines
    if machines is None:
        given = [f"--{n.replace('_', '-')}" for n in ("machine_rank", "main_process_ip", "main_process_port")
                 if getattr(args, n) is not None]
        if given:
            raise SeqrlError(f"{given[0]} needs --num-machines (the number of machines of the run)")
        return []
    if machines < 1:
        raise SeqrlError(f"--num-machines must be >= 1, got {machines}")
    rank = args.machine_rank if args.machine_rank is not None else (0 if machines == 1 else None)
    if rank is None:
        raise SeqrlError(f"--num-machines {machines} needs --machine-rank (0 on the main machine, 1 to "
                         f"{machines - 1} on the others)")
    if not 0 <= rank < machines:
        raise SeqrlError(f"--machine-rank {rank} is out of range for --num-machines {machines}: "
                         f"give 0 to {machines - 1}")
    if machines > 1 and (args.main_process_ip is None or args.main_process_port is None):
        raise SeqrlError(f"--num-machines {machines} needs --main-process-ip and --main-process-port "
                         f"(machine 0's address and a free port there), the same on every machine")
    if args.main_process_port is not None and not 0 < args.main_process_port < 65536:
        raise SeqrlError(f"--main-process-port must be a port number (1 to 65535), got {args.main_process_port}")
    if not args.machine_timeout > 0:
        raise SeqrlError(f"--machine-timeout must be > 0 seconds, got {args.machine_timeout:g}")
    processes = args.num_processes if args.num_processes is not None else machines
    if processes % machines:
        raise SeqrlError(f"--num-processes {processes} is the total over the machines and must be a multiple of "
                         f"--num-machines {machines} (each machine runs as many)")
    flags = ["--num_machines", str(machines), "--machine_rank", str(rank)]
    if args.main_process_ip is not None:
        flags += ["--main_process_ip", args.main_process_ip, "--main_process_port", str(args.main_process_port),
                  "--rdzv_conf", f"timeout={max(1, round(args.machine_timeout))}"]
    return flags


def launch_command(args: argparse.Namespace, mixed_precision: str = "no") -> list[str]:
    """The `accelerate launch` command equivalent to this `seqrl finetune` call; it names the
    recipe's `run.mixed_precision`, which is what the processes use whatever a config file says."""
    cmd = [sys.executable, "-m", "seqrl.launcher"]  # (accelerate launch; see seqrl.launcher)
    machines = machine_args(args)
    if args.accelerate_config:
        if not Path(args.accelerate_config).is_file():
            raise SeqrlError(f"--accelerate-config file not found: {args.accelerate_config}")
        cmd += ["--config_file", args.accelerate_config, "--mixed_precision", mixed_precision]
    else:  # plain data parallel; on a machine without GPUs these are CPU processes over gloo
        cmd += ["--multi_gpu", "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
        cmd += [] if machines else ["--num_machines", "1"]
    cmd += machines
    if args.num_processes is not None and args.num_processes < 1:
        raise SeqrlError(f"--num-processes must be >= 1, got {args.num_processes}")
    if args.num_processes is not None or machines:
        cmd += ["--num_processes", str(args.num_processes or args.num_machines)]
    cmd += ["-m", "seqrl"] + (["--debug"] if args.debug else []) + ["finetune", args.recipe]
    for key in getattr(args, "unsets", ()):  # (the unsets first, as `load_recipe` applies them)
        cmd += ["--unset", key]
    for item in args.overrides:
        cmd += ["--set", item]
    return cmd


def launch_env(env=os.environ) -> dict[str, str]:
    """The launcher's environment: its elastic agent survives SLURM's SIGUSR1 and passes it on,
    and leaves the processes STOP_GRACE_S to write their checkpoint (see the module's doc)."""
    env = dict(env)
    handled = env.get("PET_SIGNALS_TO_HANDLE", "SIGTERM,SIGINT,SIGHUP,SIGQUIT").split(",")
    env["PET_SIGNALS_TO_HANDLE"] = ",".join(dict.fromkeys([*handled, *(s.name for s in SIGNALS)]))
    env.setdefault("TORCH_ELASTIC_SHUTDOWN_TIMEOUT", str(STOP_GRACE_S))
    return env


def wait_for_main(host: str, port: int, timeout: float) -> None:
    """On a machine other than the main one: wait until machine 0's launcher listens at
    host:port, or stop with one line after `timeout` seconds (torch's agent would fail with a
    traceback). A connection opened and closed again is ignored by torch's store."""
    deadline, why = time.monotonic() + timeout, "no answer"
    while True:
        try:
            with socket.create_connection((host, port), timeout=min(5.0, timeout)):
                return
        except OSError as err:
            why = err.strerror or type(err).__name__
        if time.monotonic() >= deadline:
            raise SeqrlError(f"--main-process-ip {host} --main-process-port {port}: the main process (machine 0) "
                             f"cannot be reached within {timeout:g} s ({why}); start machine 0's launcher, check the "
                             f"address and that the port is open between the machines, or raise --machine-timeout")
        time.sleep(0.5)


def relaunch(args: argparse.Namespace, cfg: RecipeConfig) -> int:
    """Run the `accelerate launch` command, once the set-up it asks for is known to run on this
    machine (`seqrl.distributed.check_launch`) and, on machines other than the main one, machine 0
    can be reached; a stop signal sent to this process is passed on. accelerate's launcher exits
    non-zero with a report of its own when its processes stop on a signal, so a run they ended
    with a checkpoint (its last metrics line says `preempted`) exits EXIT_PREEMPTED here."""
    from seqrl.distributed import check_launch

    cmd = launch_command(args, cfg.run.mixed_precision)  # (checks the arguments first)
    for note in check_launch(args.accelerate_config, cfg.run.mixed_precision, cfg.run.cpu):
        print(f"seqrl finetune: warning: {note}", file=sys.stderr)
    if args.num_machines and args.num_machines > 1 and args.machine_rank:
        wait_for_main(args.main_process_ip, args.main_process_port, args.machine_timeout)
    print("running: " + shlex.join(cmd), flush=True)
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="seqrl-exit-") as exits:
        child = subprocess.Popen(cmd, env={**launch_env(), USER_ERROR_DIR: exits})
        previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in SIGNALS}
        try:
            code = child.wait()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        if code != 0 and any(Path(exits).iterdir()):  # (a process that failed later may have been first)
            return EXIT_USER_ERROR
    return EXIT_PREEMPTED if code != 0 and ended_preempted(Path(cfg.run.output_dir), started) else code


def ended_preempted(output_dir: Path, since: float) -> bool:
    """Whether this launch's processes stopped the run with a checkpoint (metrics.jsonl, written
    since `since`, ends with the `preempted` line)."""
    from seqrl.runlog import METRICS_FILE, read_metrics

    metrics = output_dir / METRICS_FILE
    try:
        if not metrics.is_file() or metrics.stat().st_mtime < since:
            return False
        lines = read_metrics(output_dir)
    except (SeqrlError, OSError):
        return False
    return bool(lines) and bool(lines[-1].get("preempted"))
