"""Checkpoints written atomically: everything goes into a temporary directory that is renamed
into place only when complete, so a crash mid-save never leaves a half checkpoint behind."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, state: dict, keep: int) -> Path:
    """Save model, optimizer, RNG states (accelerate) and `state` under checkpoints/step-N."""
    root = output_dir / CHECKPOINT_DIR
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())
