"""scripts/sharded_check.py's verdicts and table: reading each run's metrics.jsonl and log, the loss,
resume and final-weight comparisons against DDP with their tolerances (sharded_check.py's docstring
says why these), and the markdown report."""

from __future__ import annotations

import json
import math
import re
import statistics
from pathlib import Path

REFERENCE = "ddp"
"""The config the others are compared with."""

LOSS_TOLERANCE = 0.01
BF16_LOSS_TOLERANCE = 0.3
RESUME_TOLERANCE = 1e-3
WEIGHT_TOLERANCE = 2e-3
BF16_WEIGHT_TOLERANCE = 0.03


def tolerances(mixed_precision: str) -> dict:
    """The tolerances of the module docstring, for run.mixed_precision `no` or `bf16`."""
    fp32 = mixed_precision == "no"
    return {"loss": LOSS_TOLERANCE if fp32 else BF16_LOSS_TOLERANCE, "resume": RESUME_TOLERANCE,
            "weights": WEIGHT_TOLERANCE if fp32 else BF16_WEIGHT_TOLERANCE}


# -- reading a run ---------------------------------------------------------------------------------------


def read_metrics(run_dir: Path) -> list[dict]:
    """metrics.jsonl's lines ([] when there is none); a line cut short by a kill is dropped."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue
        if isinstance(row, dict) and isinstance(row.get("step"), int):
            rows.append(row)
    return rows


def losses(rows: list[dict]) -> dict[int, float]:
    """train/loss by optimizer step (the lines with one; log.every 1 gives one per step)."""
    return {row["step"]: row["train/loss"] for row in rows if isinstance(row.get("train/loss"), (int, float))}


def median_step_time(rows: list[dict]) -> float | None:
    """Median time/step_s over the logged steps (the first step's warm-up does not move it)."""
    times = [row["time/step_s"] for row in rows if isinstance(row.get("time/step_s"), (int, float))]
    return statistics.median(times) if times else None


def compare(reference: dict[int, float], other: dict[int, float], steps: list[int]) -> dict:
    """Largest |other - reference| over `steps`: {max_abs_diff, bitwise, missing (steps either lacks)}."""
    missing = [s for s in steps if s not in reference or s not in other]
    diffs = [abs(other[s] - reference[s]) for s in steps if s in reference and s in other]
    nan = any(math.isnan(d) for d in diffs)
    return {"max_abs_diff": (math.nan if nan else max(diffs)) if diffs else None,
            "bitwise": bool(diffs) and not missing and all(other[s] == reference[s] for s in steps),
            "missing": missing}


def loss_verdict(reference: dict[int, float], other: dict[int, float], steps: list[int], tolerance: float) -> dict:
    """A run's train/loss against DDP's over every step: within `tolerance` or not."""
    out = compare(reference, other, steps)
    diff = out["max_abs_diff"]
    out["tolerance"] = tolerance
    out["within"] = not out["missing"] and diff is not None and diff <= tolerance  # (NaN compares False)
    return out


def resume_verdict(uninterrupted: dict[int, float], resumed: dict[int, float], steps: list[int],
                   tolerance: float) -> dict:
    """The resumed run's steps against the uninterrupted run's: `bitwise`, `within tolerance`,
    `differs` or `missing steps`; `passed` for the first two."""
    out = compare(uninterrupted, resumed, steps)
    diff = out["max_abs_diff"]
    if out["missing"]:
        status = "missing steps"
    elif out["bitwise"]:
        status = "bitwise"
    elif diff is not None and diff <= tolerance:
        status = "within tolerance"
    else:
        status = "differs"
    out.update(status=status, tolerance=tolerance, passed=status in ("bitwise", "within tolerance"))
    return out


_RANK_PREFIX = re.compile(r"^\[(?:rank|default)\d+\]:\s?")


def first_error_line(text: str) -> str | None:
    """The line that says what went wrong: seqrl's own one-line error if there is one, else the
    exception line of the first traceback (torchrun's `[rankN]:` prefixes removed), else the last
    line mentioning an error."""
    lines = [_RANK_PREFIX.sub("", line.rstrip()) for line in text.splitlines()]
    for line in lines:
        if line.startswith("sharded_check: timed out"):
            return line
    for line in lines:
        if re.match(r"^seqrl \w+: (error|preempted|interrupted)", line):
            return line
    for i, line in enumerate(lines):
        if line.startswith("Traceback (most recent call last)"):
            for after in lines[i + 1:]:
                if after and not after[0].isspace() and not after.startswith(("Traceback", "During handling",
                                                                               "The above exception")):
                    return after
    errors = [line for line in lines if re.search(r"error|exception|killed|timed out", line, re.IGNORECASE)]
    return errors[-1] if errors else None


def parallelism_line(text: str) -> str | None:
    """The run header's `parallelism: ...` line."""
    for line in text.splitlines():
        line = _RANK_PREFIX.sub("", line.strip())
        if line.startswith("parallelism:"):
            return line
    return None


def compare_weights(reference_dir: Path, other_dir: Path, tolerance: float = WEIGHT_TOLERANCE) -> dict:
    """final/model.safetensors of a run against DDP's: same names and shapes, nothing empty or
    non-finite (a sharded save that wrote only a shard, or ZeRO-3's empty placeholders, fails
    here), and the largest |w - w_DDP|."""
    from safetensors.torch import load_file

    ref_path, path = Path(reference_dir) / "model.safetensors", Path(other_dir) / "model.safetensors"
    if not path.is_file():
        return {"ok": False, "problem": f"no {path.parent.name}/{path.name}"}
    try:
        weights = load_file(str(path))
        reference = load_file(str(ref_path)) if ref_path.is_file() else None
    except Exception as err:  # noqa: BLE001  (a torn or foreign file: reported, not raised)
        return {"ok": False, "problem": f"unreadable: {type(err).__name__}: {str(err).splitlines()[0][:120]}"}
    empty = sorted(name for name, w in weights.items() if w.numel() == 0)
    if empty:
        return {"ok": False, "problem": f"{len(empty)} empty tensors ({empty[0]}, ...)"}
    bad = sorted(name for name, w in weights.items() if w.is_floating_point() and not bool(w.float().isfinite().all()))
    if bad:
        return {"ok": False, "problem": f"non-finite values in {bad[0]}"}
    if reference is None:
        return {"ok": True, "max_abs_diff": None}
    shapes = {n: tuple(w.shape) for n, w in weights.items()}
    ref_shapes = {n: tuple(w.shape) for n, w in reference.items()}
    if shapes != ref_shapes:
        differ = sorted(set(shapes.items()) ^ set(ref_shapes.items()))
        return {"ok": False, "problem": f"tensors differ from DDP's: {differ[0][0]} {differ[0][1]}"}
    diff = max((float((w.float() - reference[n].float()).abs().max()) for n, w in weights.items() if w.numel()),
               default=0.0)
    return {"ok": diff <= tolerance, "max_abs_diff": diff, "tolerance": tolerance,
            **({} if diff <= tolerance else {"problem": f"max |w - w_DDP| {diff:.3g} > {tolerance:g}"})}


# -- the table ---------------------------------------------------------------------------------------------


def _num(value: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and math.isnan(value):
        return "nan"
    return "0" if value == 0 else f"{value:.{digits}g}"


def _cell(text: str | None, limit: int = 280) -> str:
    text = "-" if text is None else " ".join(str(text).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return text.replace("|", "\\|")


def ran_cell(row: dict) -> str:
    if row.get("skipped"):
        return f"not run: {row['skipped']}"
    if row["exit_code"] == 0:
        return f"yes (exit 0, {row['steps_logged']} steps)"
    return f"no (exit {row['exit_code']}, {row['steps_logged']} steps): {row.get('error') or 'no error line'}"


def loss_cell(row: dict) -> str:
    verdict = row.get("loss_vs_ddp")
    if not verdict:
        return "-" if row.get("skipped") or row.get("exit_code") is None or row["config"] == REFERENCE \
            else "no DDP curve to compare"
    diff, tol = verdict["max_abs_diff"], verdict["tolerance"]
    if verdict["missing"]:
        text = f"{_num(diff)}; steps missing: {_steps(verdict['missing'])}"
    else:
        text = f"{_num(diff)} {'<=' if verdict['within'] else '>'} {tol:g}"
    return text + (" (bitwise)" if verdict["bitwise"] else "") + ("" if verdict["within"] else " FAIL")


def resume_cell(row: dict) -> str:
    resume = row.get("resume")
    if not resume:
        return "-"
    if resume.get("skipped"):
        return f"not run: {resume['skipped']}"
    if resume["exit_code"] != 0:
        failed = f"exit {resume['exit_code']}: {resume.get('error') or 'no error line'}"
        if resume["status"] in ("bitwise", "within tolerance"):  # the steps came out right, the end did not
            return f"FAIL: steps {resume['status']} ({_num(resume['max_abs_diff'])}), then {failed}"
        return f"FAIL: {failed}"
    if resume["status"] == "bitwise":
        return "bitwise"
    if resume["status"] == "missing steps":
        return f"FAIL: steps missing: {_steps(resume['missing'])}"
    word = "within tolerance" if resume["passed"] else "FAIL: differs"
    return f"{word}: {_num(resume['max_abs_diff'])} {'<=' if resume['passed'] else '>'} {resume['tolerance']:g}"


def weights_cell(row: dict) -> str:
    weights = row.get("final_weights")
    if not weights:
        return "-"
    if not weights["ok"]:
        return f"FAIL: {weights['problem']}"
    if weights.get("max_abs_diff") is None:
        return "complete (no DDP weights to compare)"
    return f"complete, max abs diff {_num(weights['max_abs_diff'])} <= {weights['tolerance']:g}"


def _steps(steps: list[int]) -> str:
    return ", ".join(map(str, steps[:5])) + (f" (+{len(steps) - 5})" if len(steps) > 5 else "")


def markdown_table(rows: list[dict], settings: dict) -> str:
    """The report: a header saying what ran where, then one row per config."""
    n, save = settings["steps"], settings["checkpoint_step"]
    lines = [
        f"# Sharded training check ({settings['date']})",
        "",
        (f"Machine: {settings['device']}; torch {settings['versions'].get('torch')}, accelerate "
         f"{settings['versions'].get('accelerate')}, transformers {settings['versions'].get('transformers')}, "
         f"deepspeed {settings['versions'].get('deepspeed') or 'not installed'}."),
        "",
        (f"Each config: {n} MIXER steps of the recipe in scripts/sharded_check.py"
         + (f" with LoRA (rank {settings['lora_rank']}; only the adapters train)" if settings.get("lora_rank") else "")
         + ", 1 process "
         f"(`seqrl finetune RECIPE --num-processes 1 --accelerate-config recipes/accelerate/X.yaml`), "
         f"run.mixed_precision {settings['mixed_precision']}. Loss: max |train/loss - DDP's| over steps 1-{n} "
         f"(tolerance {settings['tolerance']['loss']:g}). Resume: a checkpoint at step {save}, resumed into a "
         f"fresh output dir; steps {save + 1}-{n} against the uninterrupted run (bitwise, or within "
         f"{settings['tolerance']['resume']:g}). final/: the saved weights against DDP's (max abs difference, "
         f"tolerance {settings['tolerance']['weights']:g})."),
        "",
        f"| config | ran | parallelism | loss vs DDP | median step (s) | resume at step {save} | final/ weights |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c) for c in (
            f"{row['config']} ({row['accelerate_config']})", ran_cell(row),
            (row.get("parallelism") or "-").removeprefix("parallelism: "), loss_cell(row),
            _num(row.get("median_step_s")), resume_cell(row), weights_cell(row))) + " |")
    return "\n".join(lines) + "\n"
