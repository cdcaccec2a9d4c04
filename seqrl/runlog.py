"""Run outputs on rank 0: `metrics.jsonl` (one JSON object per line, always with `step`) and
accelerate's trackers (tensorboard, wandb, ...), which must be installed when named."""

from __future__ import annotations

import contextlib
import difflib
import json
import math
import time
from pathlib import Path

from accelerate import Accelerator
from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers
from accelerate.utils import gather_object

from seqrl.config import RecipeConfig, to_dict
from seqrl.errors import ConfigError, SeqrlError, disk_writes

METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"


PIP_PACKAGES = {"comet_ml": "comet-ml"}
"""Trackers whose pip package is not spelled like accelerate's name for them."""


def check_trackers(names: list[str]) -> None:
    """Every named tracker must be known to accelerate and importable (accelerate drops them silently).
    (accelerate's `filter_trackers` logs through its state-bound logger, which raises before an
    `Accelerator` exists: `seqrl validate` never makes one, `finetune` checks before it does.)"""
    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            guess = difflib.get_close_matches(name, list(LOGGER_TYPE_TO_CLASS), n=1)
            tip = f"; did you mean '{guess[0]}'?" if guess else f"; known: {', '.join(LOGGER_TYPE_TO_CLASS)}"
            raise ConfigError(f"log.trackers: unknown tracker '{name}'{tip}")
        if name not in available:
            raise ConfigError(f"log.trackers: '{name}' is not installed; `pip install "
                              f"{PIP_PACKAGES.get(name, name)}` or remove it from log.trackers")


def tracker_destinations(names: list[str], output_dir: Path, project: str) -> list[str]:
    """Where each tracker writes, for the run's header (accelerate's defaults, under which seqrl
    starts them: `logging_dir` = the run directory, the run name = `log.project`)."""
    where = {"tensorboard": f"{output_dir / project}/ (tensorboard --logdir {output_dir})",
             "wandb": f"W&B project '{project}' (local files in ./wandb/ or $WANDB_DIR)",
             "trackio": f"trackio project '{project}' (its local database: $TRACKIO_DIR, else the Hugging "
                        f"Face cache's trackio/; `trackio show`)",
             "mlflow": f"MLflow run '{project}' ($MLFLOW_TRACKING_URI, else ./mlruns/)",
             "aim": f"Aim repository {output_dir}/.aim, run '{project}'"}
    return [f"tracker {name}: {where.get(name, f'project {project!r}, where {name} is configured to write')}"
            for name in names]


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
            for line in tracker_destinations(self.cfg.log.trackers, self.path.parent, self.cfg.log.project):
                self.accelerator.print(line)
        if not self.accelerator.is_main_process:
            return
        with disk_writes(self.path):
            self._truncate(after_step)
            self.file = self.path.open("a", encoding="utf-8")

    def _truncate(self, after_step: int | None) -> None:
        if after_step is not None:
            for path in (self.path, self.path.parent / SAMPLES_FILE):
                if path.is_file():
                    keep = [json.dumps(line, ensure_ascii=False) + "\n" for line in read_metrics(path.parent, path.name)
                            if line["step"] <= after_step]
                    tmp = path.with_suffix(".tmp")
                    tmp.write_text("".join(keep), encoding="utf-8")
                    tmp.replace(path)

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
                 if not isinstance(v, str) else v for k, v in metrics.items()}
        clean["time/elapsed_s"] = round(time.perf_counter() - self.start, 2)  # since set-up finished
        if self.file is not None:
            with disk_writes(self.path):
                self.file.write(json.dumps({"step": step, **clean}) + "\n")
                self.file.flush()
        numeric = {k: v for k, v in clean.items() if isinstance(v, float)}
        self.accelerator.log(numeric, step=step)

    def samples_due(self, step: int) -> bool:
        every = self.cfg.log.samples_every
        return bool(every) and step % every == 0 and self.accelerator.is_main_process

    def write_samples(self, step: int, rows: list[dict], plan) -> None:
        """Sampled rows to samples.jsonl and to every tracker that shows tables or text."""
        rows = [{"step": step, "stage": plan.stage, "delta": plan.n_rl_tokens, **row} for row in rows]
        if self.file is not None:
            samples = self.path.parent / SAMPLES_FILE
            with disk_writes(samples), samples.open("a", encoding="utf-8") as f:
                f.writelines(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        if rows and self.cfg.log.trackers:
            log_samples_to_trackers(self.accelerator, step, rows)

    def close(self) -> None:
        if self.file is not None:
            with contextlib.suppress(OSError):  # a line refused by a full disk: already reported by `write`
                self.file.close()
            self.file = None


def read_metrics(output_dir: str | Path, name: str = METRICS_FILE) -> list[dict]:
    """The lines of a run's metrics.jsonl (or samples.jsonl). A last line cut short (a run killed
    mid-write) is dropped; any other line that is not a JSON object with a `step` is an error naming it."""
    path = Path(output_dir) / name
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


def log_samples_to_trackers(accelerator: Accelerator, step: int, rows: list[dict]) -> None:
    """TensorBoard: a markdown table as a text summary; wandb and trackio: a table."""
    columns = list(dict.fromkeys(key for row in rows for key in row))
    data = [[row.get(c) for c in columns] for row in rows]
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            cell = lambda v: str(v).replace("|", "\\|").replace("\n", " ")  # noqa: E731
            table = "\n".join(["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
                              + ["| " + " | ".join(cell(v) for v in row) + " |" for row in data])
            tracker.writer.add_text("samples", table, global_step=step)
            tracker.writer.flush()
        elif tracker.name == "wandb":
            tracker.log_table("samples", columns=columns, data=data, step=step)
        elif tracker.name == "trackio":
            import trackio

            trackio.log({"samples": trackio.Table(columns=columns, data=data)}, step=step)


def last_scores(output_dir: str | Path) -> dict[str, float]:
    """A run's latest evaluation scores (`eval/...`, `test/...`) from its metrics.jsonl."""
    if not (Path(output_dir) / METRICS_FILE).is_file():
        return {}
    scores: dict[str, float] = {}
    for line in read_metrics(output_dir):
        scores.update({k: v for k, v in line.items() if k.split("/")[0] in ("eval", "test") and v is not None})
    return scores


class LogWindow:
    """Training statistics between two log lines: means, and `*_tokens` counts as rates."""

    def __init__(self):
        self.sums, self.counts, self.start = {}, {}, time.perf_counter()

    def add(self, stats: dict[str, float]) -> None:
        self.add_sums(stats, dict.fromkeys(stats, 1))

    def gathered(self) -> list:
        """Every process's statistics since the last log line, for a checkpoint: a resumed run's
        first log line then averages the same steps as the uninterrupted run's (a collective)."""
        return gather_object([[self.sums, self.counts]])

    def load(self, windows: list, accelerator: Accelerator) -> None:
        """This process's part of `gathered` (on another number of processes, all on the first)."""
        if len(windows) == accelerator.num_processes:
            self.sums, self.counts = (dict(part) for part in windows[accelerator.process_index])
        elif windows and accelerator.is_main_process:
            for sums, counts in windows:
                self.add_sums(sums, counts)

    def add_sums(self, sums: dict[str, float], counts: dict[str, int]) -> None:
        for key, value in sums.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + counts[key]

    def flush(self, accelerator: Accelerator) -> dict[str, float]:
        """Averaged over steps and processes (gathered as small dicts: key sets may differ by rank)."""
        seconds = time.perf_counter() - self.start
        windows = gather_object([(self.sums, self.counts)])
        self.sums, self.counts, self.start = {}, {}, time.perf_counter()
        keys = sorted({k for sums, _ in windows for k in sums})
        out = {}
        for key in keys:
            total = sum(sums.get(key, 0.0) for sums, _ in windows)
            if key.endswith("_tokens"):  # summed over processes: throughput of the whole run
                out[f"train/{key}_per_s"] = total / seconds
            else:
                out[key] = total / sum(counts.get(key, 0) for _, counts in windows)
        return out
