"""The run directory: one run owns it at a time, and nothing in it changes before every check
has passed.

- `claim` takes an exclusive lock on `output_dir` for the whole run (`fcntl.flock` on
  `.seqrl.lock`, by the main process only), then checks what the directory holds. A second run
  started on the same directory gets one line naming the holder's pid and host. The kernel
  drops a flock when its process dies, SIGKILL included, so a killed run never blocks a rerun;
  its lock file, left behind, is simply locked again.
- A directory that holds another run is refused unless `run.overwrite` is set. A resume counts
  as the same run only when its checkpoint lies in `output_dir` itself; a checkpoint of another
  run continues into an empty (or overwritable) directory, never over a finished run.
- Across machines, every machine leaves a marker in `output_dir` that the main process must
  see (`check_shared`): a directory that is not shared stops the run with one line.
- Set-up writes nothing but its lock and a hidden temporary tokenizer; the old run is moved aside
  (`RUN.replaced-<UTC time>/`, or deleted with `run.overwrite: delete`) and the new `recipe.yaml`
  written by `commit`, after data, model and checkpoint have loaded.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object

from seqrl.errors import SeqrlError, disk_writes
from seqrl.runlog import METRICS_FILE, SAMPLES_FILE

LOCK_FILE = ".seqrl.lock"
RUN_MARKERS = ("recipe.yaml", METRICS_FILE)
RUN_OUTPUTS = (*RUN_MARKERS, SAMPLES_FILE, "final", "best", "checkpoints", "tokenizer", "plots")
NEW_TOKENIZER = ".tmp-tokenizer"  # a tokenizer trained by set-up, moved to tokenizer/ by commit
MACHINE_MARKER = ".seqrl-machine-{}"  # left by each machine of a run across machines (`check_shared`)
SHARED_DIR_WAIT_S = 60  # (NFS caches directory contents up to 60 s by default: acdirmax)


class RunDirLock:
    """An exclusive lock on a run directory, held from `acquire` to `release`; a no-op lock
    (`held=False`) on the processes that are not the main one."""

    def __init__(self, out: Path, held: bool = True):
        self.out, self.held, self.fd, self.created = out, held, None, []

    def acquire(self) -> None:
        if not self.held:
            return
        self._make_dirs()
        path = self.out / LOCK_FILE
        while self.fd is None:
            fd = _open(path, self.out)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise SeqrlError(f"run.output_dir '{self.out}' is in use by another seqrl run ({holder}); "
                                 f"wait for it to end, or choose another run.output_dir") from None
            except OSError as err:  # a filesystem without locks: say so rather than run unguarded
                os.close(fd)
                raise SeqrlError(f"run.output_dir '{self.out}': cannot lock {LOCK_FILE} ({err.strerror}); "
                                 f"use a directory on a filesystem with file locks") from None
            if _same_file(fd, path):  # not unlinked by a holder releasing it meanwhile
                self.fd = fd
            else:
                os.close(fd)
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()})
        with disk_writes(path):
            os.ftruncate(self.fd, 0)
            os.write(self.fd, record.encode())

    def release(self) -> None:
        """Unlink the lock file while still holding it (so nobody locks a file about to vanish),
        then remove the directories `acquire` made if nothing else was put in them."""
        if self.fd is None:
            return
        (self.out / LOCK_FILE).unlink(missing_ok=True)
        os.close(self.fd)
        self.fd = None
        shutil.rmtree(self.out / NEW_TOKENIZER, ignore_errors=True)
        for directory in reversed(self.created):
            try:
                directory.rmdir()
            except OSError:
                break  # not empty: it holds a run, or something of the user's

    def _make_dirs(self) -> None:
        if self.out.exists() and not self.out.is_dir():
            raise SeqrlError(f"run.output_dir '{self.out}' is a file; name a directory")
        missing = [p for p in [self.out, *self.out.parents] if not p.exists()]
        for directory in reversed(missing):
            try:
                directory.mkdir()
            except FileExistsError:  # made meanwhile by another process: fine if a directory
                if not directory.is_dir():
                    raise SeqrlError(f"run.output_dir '{self.out}': {directory} is a file") from None
                continue
            except OSError as err:
                raise SeqrlError(f"run.output_dir '{self.out}' cannot be created ({err.strerror}: "
                                 f"{directory}); choose a writable place") from None
            self.created.append(directory)


def _open(path: Path, out: Path) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        why = "not writable" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS) else "unusable"
        raise SeqrlError(f"run.output_dir '{out}' is {why} ({err.strerror}); choose a writable directory") from None


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == path.stat().st_ino
    except FileNotFoundError:
        return False


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0) or b"{}")
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder["started"]))
        return f"pid {holder['pid']} on host {holder['host']}, started {started}"
    except (ValueError, KeyError, TypeError, OSError):
        return "its pid is not recorded yet"


def check_output_dir(out: Path, overwrite: bool | str, resume_from: Path | None) -> None:
    """Refuse a directory that holds another run, unless `overwrite`; a checkpoint inside `out`
    continues that run."""
    held = [m for m in RUN_MARKERS if (out / m).exists()]
    if not held or overwrite or (resume_from is not None and is_inside(resume_from, out)):
        return
    if resume_from is not None:
        raise SeqrlError(f"run.output_dir '{out}' already holds a run ({held[0]}), and run.resume names a "
                         f"checkpoint of another run; continue into an empty run.output_dir, or set "
                         f"run.overwrite=true to replace it")
    raise SeqrlError(f"run.output_dir '{out}' already holds a run ({held[0]}); choose another "
                     f"run.output_dir or set run.overwrite=true to replace it")


def is_inside(checkpoint: Path, out: Path) -> bool:
    return out.resolve() in checkpoint.resolve().parents


def claim(out: Path, overwrite: bool | str, resume_from: Path | None, accelerator: Accelerator) -> RunDirLock:
    """Lock `out` (main process) and check it; every process raises the same error if either fails."""
    lock = RunDirLock(out, held=accelerator.is_main_process)
    problem = None
    if accelerator.is_main_process:
        try:
            lock.acquire()
            check_output_dir(out, overwrite, resume_from)
        except SeqrlError as err:
            lock.release()
            problem = str(err)
    if accelerator.num_processes > 1:
        problem = broadcast_object_list([problem])[0]
    if problem is not None:
        raise SeqrlError(problem)
    try:
        check_shared(out, accelerator)
    except SeqrlError:
        lock.release()
        raise
    return lock


def check_shared(out: Path, accelerator: Accelerator, env=os.environ) -> None:
    """Across machines (torch's GROUP_WORLD_SIZE), `out` must be one directory that all of them
    see: the first process of each machine leaves a marker holding a token of this start, and
    the main process must see every one within SHARED_DIR_WAIT_S seconds (a network filesystem
    may show a new file late); otherwise every process raises the same one line."""
    machines, machine = int(env.get("GROUP_WORLD_SIZE", "1")), int(env.get("GROUP_RANK", "0"))
    if machines < 2:
        return
    token = broadcast_object_list([secrets.token_hex(8) if accelerator.is_main_process else None])[0]
    marker = out / MACHINE_MARKER.format(machine)
    writes = accelerator.is_local_main_process and not accelerator.is_main_process
    created = writes and not out.exists()
    problem = _leave_marker(out, marker, token) if writes else None
    problems = gather_object([problem])
    if accelerator.is_main_process:
        problem = next((p for p in problems if p), None) or _unseen_markers(out, machines, token, env)
    problem = broadcast_object_list([problem])[0]
    if writes:
        marker.unlink(missing_ok=True)
        if created and problem is not None:  # a directory of this machine's own, made for the marker
            with contextlib.suppress(OSError):  # not empty after all: leave it
                out.rmdir()
    if problem is not None:
        raise SeqrlError(problem)


def _leave_marker(out: Path, marker: Path, token: str) -> str | None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        write_atomically(marker, token)
    except OSError as err:
        return (f"run.output_dir '{out}' cannot be written on {socket.gethostname()} ({err.strerror}); it must be "
                f"one directory that every machine can write")
    return None


def _unseen_markers(out: Path, machines: int, token: str, env) -> str | None:
    """Wait up to SEQRL_SHARED_DIR_WAIT_S seconds for every other machine's marker (listing the
    directory each time: NFS may answer a lookup from a stale cache); remove them once seen."""
    try:
        wait = float(env.get("SEQRL_SHARED_DIR_WAIT_S", SHARED_DIR_WAIT_S))
    except ValueError:
        return f"SEQRL_SHARED_DIR_WAIT_S must be a number of seconds, got {env['SEQRL_SHARED_DIR_WAIT_S']!r}"
    deadline = time.monotonic() + wait
    while True:
        names = set(os.listdir(out))
        markers = [out / MACHINE_MARKER.format(m) for m in range(1, machines)]
        unseen = [m for m in range(1, machines) if markers[m - 1].name not in names or _read(markers[m - 1]) != token]
        if not unseen:
            for marker in markers:
                marker.unlink(missing_ok=True)
            return None
        if time.monotonic() >= deadline:
            which = f"machine{'s' if len(unseen) > 1 else ''} {', '.join(map(str, unseen))}"
            return (f"run.output_dir '{out}' is not shared between the machines: machine 0 does not see what {which} "
                    f"wrote there within {wait:g} s; put run.output_dir on a filesystem that every machine mounts at "
                    f"the same path (NFS, Lustre, ...)")
        time.sleep(0.2)


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except OSError:
        return None


def clear_run(out: Path, also: tuple[str, ...] = (), overwrite: bool | str = False) -> None:
    """Move what an earlier run left aside to `RUN.replaced-<UTC time>/` (reached only with
    run.overwrite or a directory without a run), or remove it with `overwrite='delete'`, saying
    which; `also`: more names of its outputs (the trackers' directory)."""
    old = [p for p in sorted(out.iterdir())
           if p.name in (*RUN_OUTPUTS, *also) or p.name.startswith("predictions-")]
    if not any(p.name in RUN_MARKERS for p in old):  # no earlier run: leftovers of a refused one
        aside = None
    elif overwrite == "delete":
        aside = None
        print(f"run.overwrite=delete: removing the earlier run in {out} ({_listing(old)})", flush=True)
    else:
        aside = _aside_name(out.resolve())
        print(f"run.overwrite: moving the earlier run in {out} ({_listing(old)}) aside to {aside}/ "
              f"(run.overwrite=delete removes it instead)", flush=True)
        aside.mkdir()
    for path in old:
        if aside is not None:
            shutil.move(path, aside / path.name)
        elif path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()


def _aside_name(out: Path) -> Path:
    """`RUN.replaced-<UTC time>` beside `out`, numbered when a run was replaced within the second."""
    stem = f"{out.name}.replaced-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
    aside, number = out.with_name(stem), 1
    while aside.exists():
        number += 1
        aside = out.with_name(f"{stem}-{number}")
    return aside


def _listing(paths: list[Path]) -> str:
    names = [p.name + ("/" if p.is_dir() else "") for p in paths]
    return ", ".join(names[:6]) + (f" and {len(names) - 6} more" if len(names) > 6 else "")


def commit(out: Path, fresh: bool, recipe_text: str, tokenizer: Path | None, also_clear: tuple[str, ...] = (),
           overwrite: bool | str = False) -> None:
    """The run's first writes, once every check has passed (main process): clear the old run if
    this one starts afresh (`clear_run`: moved aside, or deleted with `overwrite='delete'`), put
    its tokenizer in place, write the resolved recipe atomically."""
    if fresh:
        clear_run(out, also_clear, overwrite)
    if tokenizer is not None and tokenizer != out / "tokenizer":
        if tokenizer.name == NEW_TOKENIZER:
            tokenizer.rename(out / "tokenizer")
        else:  # a resume from another run's checkpoint: its tokenizer comes along
            shutil.rmtree(out / "tokenizer", ignore_errors=True)
            shutil.copytree(tokenizer, out / "tokenizer")
    write_atomically(out / "recipe.yaml", recipe_text)


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
