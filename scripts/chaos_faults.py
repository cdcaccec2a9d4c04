"""scripts/chaos.py's faults: starting and waiting for a run in its own process group, injecting
SIGKILL, SIGTERM, SIGUSR1, a full disk (a real tmpfs, filled) or a killed peer, and what the faulted
run's end must be."""

from __future__ import annotations

import os
import random
import signal
import subprocess
from pathlib import Path

import psutil

KINDS = ("SIGKILL", "SIGTERM", "SIGUSR1", "full_disk", "peer_killed")
RUN_TIMEOUT_S = 600  # a start still running this long counts as hung (a 2-process run took 218 s on a loaded core)
PEER_BOUND_S = 120  # a run whose worker was killed must end within this long (torch's grace before SIGKILL: 300 s)
TMPFS_BYTES = 48 << 20


def start(cmd: list[str]) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # its own process group: SIGKILL takes every process


def wait(proc: subprocess.Popen, timeout: float = RUN_TIMEOUT_S) -> tuple[int | None, str]:
    """(exit status, output); None when it outlived `timeout` (then its whole group is killed)."""
    try:
        out, _ = proc.communicate(timeout=timeout)
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return None, out


def workers(proc: subprocess.Popen) -> dict[int, psutil.Process]:
    """The training processes under a `--num-processes` launch, by RANK."""
    found = {}
    try:
        for child in psutil.Process(proc.pid).children(recursive=True):
            rank = child.environ().get("RANK")
            if rank is not None and "seqrl" in " ".join(child.cmdline()):
                found[int(rank)] = child
    except psutil.Error:
        pass
    return found


def fill(directory: Path) -> Path:
    """A file that takes every free byte of `directory`'s filesystem."""
    filler = directory.parent / "filler"
    try:
        with filler.open("wb") as f:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
    except OSError:
        pass
    return filler


def inject(kind: str, proc: subprocess.Popen, out: Path, rng: random.Random) -> tuple[str, Path | None]:
    """The fault `kind` now; returns what was hit (and the filler file of a full disk)."""
    if kind == "SIGKILL":
        os.killpg(proc.pid, signal.SIGKILL)
        return "every process", None
    if kind in ("SIGTERM", "SIGUSR1"):
        sig = getattr(signal, kind)
        targets = {"launcher": lambda: proc.send_signal(sig), "every process": lambda: os.killpg(proc.pid, sig)}
        ranks = workers(proc)
        for rank, worker in ranks.items():
            targets[f"rank {rank} only"] = lambda w=worker: w.send_signal(sig)
        name = rng.choice(sorted(targets)) if ranks else "launcher"
        targets[name]()
        return name, None
    if kind == "full_disk":
        return "the run's filesystem", fill(out)
    ranks = workers(proc)  # peer_killed
    if not ranks:
        return "no worker found (the run had ended)", None
    rank = rng.choice(sorted(ranks))
    ranks[rank].send_signal(signal.SIGKILL)
    return f"rank {rank}", None


def said(output: str) -> str:
    """seqrl's own last line (`seqrl finetune: ...`), else the output's last line."""
    lines = output.strip().splitlines() or [""]
    return next((line for line in reversed(lines) if line.startswith("seqrl finetune:")), lines[-1])


def expected_end(kind: str, code: int | None, output: str, seconds: float) -> str | None:
    """Why the faulted invocation's end is wrong (None: it ended as it should)."""
    if code is None:
        return f"hung: still running {RUN_TIMEOUT_S} s after the fault"
    if code == 0:
        return None  # the fault came after the last write that it could hit
    tail = said(output)
    if kind == "SIGKILL":
        return None
    if kind in ("SIGTERM", "SIGUSR1"):
        ok = code == 75 and "preempted: stopped by" in output
        return None if ok else f"exit {code} (expected 75 with one 'preempted' line): {tail}"
    if kind == "full_disk":
        ok = code == 2 and "Traceback" not in output and "cannot write" in tail
        return None if ok else f"exit {code} (expected 2 with one 'cannot write' line): {tail}"
    if seconds > PEER_BOUND_S:
        return f"the other process took {seconds:.0f} s to stop (bound {PEER_BOUND_S} s)"
    return None


class Tmpfs:
    """A real tmpfs per full-disk run (root only); `available` says whether one can be mounted."""

    def __init__(self, root: Path):
        self.root, self.mounted = root, []
        self.why = None
        probe = self.mount("probe")
        if probe is not None:
            self.unmount(probe)

    @property
    def available(self) -> bool:
        return self.why is None

    def mount(self, name: str) -> Path | None:
        point = self.root / name
        point.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            self.why = done.stderr.strip() or f"mount exited {done.returncode}"
            return None
        self.mounted.append(point)
        return point

    def unmount(self, point: Path) -> None:
        subprocess.run(["umount", "-l", str(point)], check=False)
        self.mounted.remove(point)
