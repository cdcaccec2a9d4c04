"""User-facing errors: the CLI prints them as one line and exits non-zero (no traceback)."""

import errno
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

from safetensors import SafetensorError

EXIT_USER_ERROR = 2  # what `seqrl` exits with after the one line of a SeqrlError
USER_ERROR_DIR = "SEQRL_USER_ERROR_DIR"  # where launched processes mark a user error (`seqrl.launch`)


def note_user_error() -> None:
    """In a launched process that stops on a user error (exit 2, one line): leave a mark for the
    launching `seqrl`, so that it exits 2 as well, not accelerate launcher's 1, and for the other
    processes on this machine, whose collectives then fail (`peer_stopped_on_user_error`)."""
    marks = _user_error_marks()
    if marks is not None:
        (marks / _my_mark()).touch()


def peer_stopped_on_user_error() -> bool:
    """Another launched process on this machine stopped on a user error (and said its line)."""
    marks = _user_error_marks()
    return marks is not None and any(f.name != _my_mark() for f in marks.iterdir())


def _user_error_marks() -> Path | None:
    """The launching `seqrl`'s folder of marks (None outside a launch by `seqrl finetune`)."""
    directory = os.environ.get(USER_ERROR_DIR)
    return Path(directory) if directory and Path(directory).is_dir() else None


def _my_mark() -> str:
    return f"rank-{os.environ.get('RANK', '0')}"


class SeqrlError(Exception):
    """A problem with the user's input (recipe, data, model, files): message says what to do."""


class ConfigError(SeqrlError):
    """A recipe that cannot be loaded: unknown key, wrong type, out-of-range value."""


class DataError(SeqrlError):
    """Data that cannot be used: missing file, wrong field name, empty split."""


# A sentence ends at . ! or ? followed by a space and a capital (or the end); not after these
# abbreviations, nor inside numbers (1.5), names (model.safetensors) or paths (./a/b).
_ABBREVIATIONS = ("e.g", "i.e", "etc", "vs", "cf", "approx", "incl", "no", "fig", "resp")
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(\[])")


def first_sentence(text: str, limit: int = 300) -> str:
    """The first sentence of a (library's) message, on one line, for a one-line error. Never cut
    inside a sentence, except one longer than `limit` characters, which ends at a word with '...'."""
    text = " ".join(str(text).split())
    end = len(text)
    for match in _SENTENCE_END.finditer(text):
        word = text[:match.start()].rsplit(" ", 1)[-1].rstrip(".!?").lower()
        if word in _ABBREVIATIONS or len(word) == 1:  # "e.g. Foo", "J. Smith"
            continue
        end = match.start()
        break
    sentence = text[:end].removesuffix(".")  # (it is set inside a sentence of seqrl's)
    if len(sentence) > limit:
        sentence = sentence[:limit].rsplit(" ", 1)[0] + " ..."
    return sentence


DISK_ERRNOS = {errno.ENOSPC: "no space left on the device", errno.EDQUOT: "disk quota exceeded",
               errno.EROFS: "read-only file system"}
# torch.save reports a failed write as a RuntimeError from its zip writer, without the errno.
_TORCH_WRITE_FAILED = ("file write failed", "inline_container", "unexpected pos")
# safetensors (0.8) reports it as SafetensorError("... I/O error: No space left on device (os error 28)").
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")


class DiskFull(SeqrlError):
    """A write of the run failed for lack of space or write access (ENOSPC, EDQUOT, EROFS)."""


def disk_fault(err: BaseException, path: Path | str, need: int | None = None) -> DiskFull | None:
    """The one-line error for `err`, raised while writing `path`, when the filesystem refused the
    write (`need`: the bytes that write takes, when known); None for any other error."""
    code = err.errno if isinstance(err, OSError) else _rust_errno(err)
    if code in DISK_ERRNOS:
        why = f"{DISK_ERRNOS[code]} ({errno.errorcode[code]})"
    elif isinstance(err, RuntimeError) and any(s in str(err) for s in _TORCH_WRITE_FAILED) \
            and free_bytes(path) < max(need or 0, 1 << 20):
        why = "no space left on the device"
    else:
        return None
    space = f"; a checkpoint needs about {megabytes(need)}, {megabytes(free_bytes(path))} free" if need else ""
    return DiskFull(f"cannot write {path}: {why}{space}; free space, then rerun with --set run.resume=auto")


def _rust_errno(err: BaseException) -> int | None:
    """The OS error number in a safetensors write error's message (None for other errors)."""
    found = _RUST_OS_ERROR.search(str(err)) if isinstance(err, SafetensorError) else None
    return int(found.group(1)) if found else None


@contextmanager
def disk_writes(path: Path | str, need: int | None = None):
    """Turn a refused write under the block into `disk_fault`'s one line naming `path`."""
    try:
        yield
    except (OSError, RuntimeError, SafetensorError) as err:
        fault = disk_fault(err, path, need)
        if fault is None:
            raise
        raise fault from None


def free_bytes(path: Path | str) -> int:
    """Free bytes on the filesystem of `path` (or of its nearest existing parent)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 0


def megabytes(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"
