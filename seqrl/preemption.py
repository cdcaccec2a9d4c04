"""Preemption: SIGTERM (how SLURM, Kubernetes and spot instances stop a job, shortly before
SIGKILL) and SIGUSR1 (SLURM's `--signal=USR1@N` warning) end a run cleanly.

The handler only records the signal, from the first line of a run (`session.finetune`); before
that, during the command's imports, `stop_before_start` ends it at once. A signal during set-up
stops the run just before its first write. The training loop looks at it after each optimizer step,
agrees with the other processes (any one of them signalled stops them all at the same step),
writes a checkpoint atomically and exits with `EXIT_PREEMPTED` and one line saying how to
continue. An evaluation under way when the signal arrives stops at its next batch (all processes
agree on it after each batch) and runs again when the run is resumed; `final/` and `best/` are
written to a temporary directory renamed into place, so a signal (or a kill) while they are
written leaves the previous one whole.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "a temporary failure; the user is invited to retry"
SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

_received: list[int] = []


class Preempted(Exception):
    """Raised by `finetune` after the checkpoint of a preempted run is written; says how to resume."""

    def __init__(self, message: str):
        super().__init__(message)


def requested() -> int:
    """The first stop signal received while `stop_signals_caught` was active (0 = none)."""
    return _received[0] if _received else 0


@contextmanager
def _stop_signals_handled_by(handler):
    """`handler` for SIGTERM and SIGUSR1 during the block, the previous ones after it (in the main
    thread only: handlers live there)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextmanager
def stop_signals_caught():
    """Record SIGTERM/SIGUSR1 instead of dying of them, for the duration of the block."""
    _received.clear()
    try:
        with _stop_signals_handled_by(_record):
            yield
    finally:
        _received.clear()


def signal_name(signum: float) -> str:
    """SIGTERM for 15 (a number agreed across processes arrives as a float)."""
    return signal.Signals(int(signum)).name


def _record(signum: int, frame) -> None:
    _received.append(signum)


def stop_before_start():
    """Until a run's own handler takes over (`stop_signals_caught`, once its set-up begins), a stop
    signal ends the command at once with EXIT_PREEMPTED (through `Preempted`): nothing has been
    written yet, so nothing is lost, and a requeue that waits for 75 runs the command again.
    Without it, a signal in a run's first seconds (its imports) killed it silently."""
    return _stop_signals_handled_by(_stop_now)


def _stop_now(signum: int, frame) -> None:
    raise Preempted(f"stopped by {signal_name(signum)} before the run began; nothing was written: "
                    f"run the same command again")
