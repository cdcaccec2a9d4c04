"""Run outputs on rank 0: `metrics.jsonl` (one JSON object per line, always with `step`) and
accelerate's trackers (tensorboard, wandb, ...), which must be installed when named."""

from __future__ import annotations

import difflib
import json
import math
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, filter_trackers

from seqrl.config import RecipeConfig, to_dict
from seqrl.errors import ConfigError, SeqrlError

METRICS_FILE = "metrics.jsonl"


def check_trackers(names: list[str]) -> None:
    """Every named tracker must be known to accelerate and importable (accelerate drops them silently)."""
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            guess = difflib.get_close_matches(name, list(LOGGER_TYPE_TO_CLASS), n=1)
            tip = f"; did you mean '{guess[0]}'?" if guess else f"; known: {', '.join(LOGGER_TYPE_TO_CLASS)}"
            raise ConfigError(f"log.trackers: unknown tracker '{name}'{tip}")
        if not filter_trackers([name]):
            raise ConfigError(f"log.trackers: '{name}' is not installed; `pip install {name}` "
                              f"or remove it from log.trackers")


class RunLog:
    """Append-only metrics file plus trackers; writes nothing before `open` (the run's commit)
    and nothing on any rank but the main one."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, cfg: RecipeConfig):
        self.accelerator, self.path, self.cfg = accelerator, output_dir / METRICS_FILE, cfg
        self.file = None
        self.start = time.perf_counter()

    def open(self, after_step: int | None = None) -> None:
        """Start writing; a resumed run first drops the lines past its checkpoint's `after_step`
        (written by the interrupted run after it), and a line torn by a kill."""
        if self.cfg.log.trackers:
            self.accelerator.init_trackers(self.cfg.log.project, config=flatten(to_dict(self.cfg)))
        if not self.accelerator.is_main_process:
            return
        if after_step is not None and self.path.is_file():
            keep = [json.dumps(line) + "\n" for line in read_metrics(self.path.parent) if line["step"] <= after_step]
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text("".join(keep), encoding="utf-8")
            tmp.replace(self.path)
        self.file = self.path.open("a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
                 if not isinstance(v, str) else v for k, v in metrics.items()}
        clean["time/elapsed_s"] = round(time.perf_counter() - self.start, 2)  # since set-up finished
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **clean}) + "\n")
            self.file.flush()
        numeric = {k: v for k, v in clean.items() if isinstance(v, float)}
        self.accelerator.log(numeric, step=step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read_metrics(output_dir: str | Path) -> list[dict]:
    """The lines of a run's metrics.jsonl. A last line cut short (a run killed mid-write) is
    dropped; any other line that is not a JSON object with a `step` is an error naming it."""
    path = Path(output_dir) / METRICS_FILE
    lines = path.read_bytes().split(b"\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict) or not isinstance(row.get("step"), int):
                raise ValueError("not an object with an integer 'step'")
        except ValueError as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
            if number == len(lines):  # no newline after it: the write was cut off
                break
            raise SeqrlError(f"{path} line {number} is damaged ({type(err).__name__}); "
                             f"delete that line to use the file") from None
        rows.append(row)
    return rows


def flatten(tree: dict, prefix: str = "") -> dict:
    """Trackers take flat scalar hyper-parameters: `optim.lr`, lists as strings."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
