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
from seqrl.errors import ConfigError

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
    """Append-only metrics file plus trackers; a no-op on every rank but the main one."""

    def __init__(self, accelerator: Accelerator, output_dir: Path, cfg: RecipeConfig):
        self.accelerator = accelerator
        self.file = None
        self.start = time.perf_counter()
        if cfg.log.trackers:
            accelerator.init_trackers(cfg.log.project, config=_flat(to_dict(cfg)))
        if accelerator.is_main_process:
            self.file = (output_dir / METRICS_FILE).open("a", encoding="utf-8")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        clean = {k: (float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None)
                 if not isinstance(v, str) else v for k, v in metrics.items()}
        clean["time/elapsed_s"] = round(time.perf_counter() - self.start, 2)  # since set-up finished
        if self.file is not None:
            self.file.write(json.dumps({"step": step, **clean}) + "\n")
            self.file.flush()
        numeric = {k: v for k, v in clean.items() if isinstance(v, float)}
        self.accelerator.log(numeric, step=step)

    def truncate_after(self, step: int) -> None:
        """Drop lines past `step` (written by an interrupted run after its last checkpoint)."""
        if self.file is None:
            return
        self.file.close()
        path = Path(self.file.name)
        keep = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                if line.strip() and json.loads(line)["step"] <= step]
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(keep), encoding="utf-8")
        tmp.replace(path)
        self.file = path.open("a", encoding="utf-8")

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def read_metrics(output_dir: str | Path) -> list[dict]:
    path = Path(output_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _flat(tree: dict, prefix: str = "") -> dict:
    """Trackers take flat scalar hyper-parameters: `optim.lr`, lists as strings."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat
