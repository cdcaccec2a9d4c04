"""Ship a converged start: check the plateau rule on a finished XENT run's validation curve, plot
the curve, score its best/ on the test split, and copy best/ into starts/NAME/ with a model card
(command, steps, hours, machine, versions, curve, test scores, sha256 of every file).

    python scripts/build_converged.py --task translation      # runs/converged/bible_en_es -> starts/bible-en-es-xent
    python scripts/build_converged.py --task summarization    # runs/converged/debian_synopsis -> starts/debian-...
    python scripts/build_converged.py --run DIR --recipe R --name NAME [--check-only]

The plateau rule (issue 36): the run reached its last scheduled step (a cosine schedule ends at
rate 0 there), its last third holds at least 8 evaluations, and none of them beats the best
evaluation before that third by more than 0.3 (on the recipe's eval.best_metric). A run that
fails it is not shipped (exit 1, the numbers printed). best/ ships (the validation-best model,
from which scripts/bench_quality.py --start starts its arms); the run's own final/ and its last
checkpoint stay in the run directory (arm A continues from there).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqrl import software  # noqa: E402
from seqrl.checkpoint import list_checkpoints  # noqa: E402
from seqrl.config import load_recipe  # noqa: E402
from seqrl.model_card import card_metadata  # noqa: E402

TASKS = {  # recipe, shipped name
    "translation": ("recipes/converged/bible_en_es.yaml", "bible-en-es-xent"),
    "summarization": ("recipes/converged/debian_synopsis.yaml", "debian-synopsis-xent"),
}
SHIPPED = ROOT / "starts"
RUN_PART = "run"  # with --with-checkpoint: the last checkpoint, metrics.jsonl and recipe.yaml
MIN_EVALS, TOLERANCE = 8, 0.3


@dataclass
class Plateau:
    met: bool
    reason: str
    best_before: float | None  # the best evaluation up to two thirds of the run
    best_last_third: float | None
    evals_last_third: int
    finished: bool = True  # the run reached its last scheduled step


def plateau(evals: list[tuple[int, float]], total_steps: int, min_evals: int = MIN_EVALS,
            tolerance: float = TOLERANCE) -> Plateau:
    """The plateau rule on (step, metric) evaluations of a run of `total_steps` steps."""
    cut = total_steps * 2 / 3
    before = [v for s, v in evals if s <= cut]
    last = [v for s, v in evals if s > cut]
    best_before, best_last = (max(before) if before else None), (max(last) if last else None)
    if not evals or max(s for s, _ in evals) < total_steps:
        reached = max((s for s, _ in evals), default=0)
        return Plateau(False, f"not finished: last evaluation at step {reached} of {total_steps}",
                       best_before, best_last, len(last), finished=False)
    if len(last) < min_evals or best_before is None:
        return Plateau(False, f"{len(last)} evaluations in the last third (at least {min_evals} needed)",
                       best_before, best_last, len(last))
    gain = best_last - best_before
    if gain > tolerance:
        return Plateau(False, f"still improving: the last third's best {best_last:.2f} beats the best before "
                              f"it {best_before:.2f} by {gain:.2f} (> {tolerance})", best_before, best_last, len(last))
    return Plateau(True, f"plateau: the last third's best {best_last:.2f} vs {best_before:.2f} before it "
                         f"({gain:+.2f}, at most +{tolerance}) over {len(last)} evaluations",
                   best_before, best_last, len(last))


def read_metrics(run: Path) -> list[dict]:
    rows = []
    for line in (run / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:  # a torn last line of a killed run
            continue
    return rows


def compute_hours(rows: list[dict]) -> float:
    """Steps x mean logged step time + the evaluations' time: the run's computation, without the
    pauses of a run trained in pieces."""
    steps = [r for r in rows if "time/step_s" in r]
    last_step = max((r["step"] for r in rows), default=0)
    mean_step = sum(r["time/step_s"] for r in steps) / len(steps) if steps else 0.0
    evaluations = sum(r.get("eval/seconds", 0.0) + r.get("test/seconds", 0.0) for r in rows)
    return (last_step * mean_step + evaluations) / 3600


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def test_scores(recipe: str, model: Path, overrides: list[str], predictions: Path) -> dict[str, float]:
    """The model decoded greedily on the test split by `seqrl evaluate` (its last line is the JSON)."""
    cmd = [sys.executable, "-m", "seqrl", "evaluate", recipe, "--model", str(model), "--output", str(predictions)]
    for item in overrides:
        cmd += ["--set", item]
    printed = subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True).stdout
    scores = json.loads(printed.strip().splitlines()[-1])
    return {f"test/{k}": v for k, v in scores.items() if isinstance(v, float)}


def plot_curve(evals: list[tuple[int, float]], metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([s for s, _ in evals], [v for _, v in evals], marker=".")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"validation {metric}")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def card(name: str, cfg, command: str, found: Plateau, evals, scores, hours: float, machine: str,
         files: dict[str, str], fp32_scores: dict[str, float] | None = None) -> str:
    meta = card_metadata(cfg, True, scores, None)
    meta.tags = ["seqrl", "cross-entropy", "converged-start"]
    meta.model_name = name
    lines = ["---", meta.to_yaml().strip(), "---", "", f"# {name}", "",
             f"A converged start made by seqrl: a {cfg.model.architecture} built from a config (random weights) "
             f"and trained with cross-entropy alone until validation {cfg.eval.best_metric} stopped moving. "
             "Load it with `from_pretrained`, or name this folder as a recipe's `model.name_or_path`.", ""]
    if not found.met:
        lines += [f"**The plateau rule is not met** ({found.reason}): shipped all the same "
                  "(`--ship-unmet`); see the curve below.", ""]
    lines += ["## How it was made", "", "```bash", command, "```", "",
              f"- {max(s for s, _ in evals)} optimizer steps, batch {cfg.xent.batch_size}, learning rate "
              f"{cfg.optim.lr:g} with {cfg.optim.warmup_steps} warm-up steps and `{cfg.optim.decay}` decay to 0",
              f"- {hours:.1f} hours of computation (steps x mean step time + evaluations) on {machine}",
              f"- versions: {software.versions()}",
              f"- data: `{cfg.data.path}` ({cfg.data.source_field} -> {cfg.data.target_field}), sources and targets "
              f"cut to {cfg.data.max_source_tokens} / {cfg.data.max_target_tokens} tokens",
              "- the shipped weights are the run's `best/` (the best validation evaluation)"]
    if f"{RUN_PART}/checkpoint/trainer_state.json" in files:
        lines.append(f"- `{RUN_PART}/`: the run's last checkpoint (Adam moments and data position included), its "
                     "metrics.jsonl and recipe: arm A of `scripts/bench_quality.py --start` continues it")
    lines += ["", "## Validation curve", "", "![validation curve](curve.png)", "",
              "| step | " + cfg.eval.best_metric + " |", "|---|---|"]
    lines += [f"| {s} | {v:.2f} |" for s, v in evals]
    lines += ["", f"Plateau rule (the last third of the run, at least {MIN_EVALS} evaluations, no gain over the "
                  f"best before it above {TOLERANCE}): {'met' if found.met else '**not met**'}: {found.reason}.", "",
              "## Test scores (greedy)", "", "| metric | score |", "|---|---|"]
    if fp32_scores is None:
        lines += [f"| {k} | {v:.2f} |" for k, v in sorted(scores.items()) if not k.endswith("seconds")]
    else:  # shipped in bf16: its scores, and the fp32 model's it was rounded from
        lines[-2:] = ["| metric | shipped (bf16 weights) | fp32 before rounding |", "|---|---|---|"]
        lines += [f"| {k} | {v:.2f} | {fp32_scores[k]:.2f} |" for k, v in sorted(scores.items())
                  if not k.endswith("seconds")]
    lines += ["", "## Files", "", "| file | sha256 |", "|---|---|"]
    lines += [f"| {f} | `{h}` |" for f, h in sorted(files.items())]
    return "\n".join(lines) + "\n"


def this_machine() -> str:
    import os
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"one core of a {os.cpu_count()}-core {cpu or platform.machine()} (OMP_NUM_THREADS=1)"


def store_bf16(weights: Path) -> None:
    """Rewrite a safetensors file with its float tensors in bfloat16 (loaded back as the recipe's
    `model.dtype`, float32 by default: transformers casts on load)."""
    import torch
    from safetensors.torch import load_file, save_file

    tensors = load_file(weights)
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()}, weights,
              metadata={"format": "pt"})


def ship_last_checkpoint(run: Path, part: Path) -> None:
    """The run's last checkpoint (weights, Adam moments, data position), its curve, recipe,
    best.json and trained tokenizer, under `run/`: what `scripts/bench_quality.py --start` needs for arm A,
    which continues the run."""
    last = list_checkpoints(run)[-1]
    part.mkdir()
    shutil.copytree(last, part / "checkpoint")
    shutil.copy2(run / "metrics.jsonl", part / "metrics.jsonl")
    shutil.copy2(run / "recipe.yaml", part / "recipe.yaml")
    shutil.copy2(run / "best" / "best.json", part / "best.json")  # (the shipped model's step and score)
    if (run / "tokenizer").is_dir():  # a tokenizer the run trained: its checkpoints are read with it
        shutil.copytree(run / "tokenizer", part / "tokenizer")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(TASKS))
    p.add_argument("--recipe", help="the converged run's recipe (default: the task's)")
    p.add_argument("--run", type=Path, help="the run directory (default: the recipe's run.output_dir)")
    p.add_argument("--name", help="the shipped folder's name under --out (default: the task's)")
    p.add_argument("--out", type=Path, default=SHIPPED)
    p.add_argument("--check-only", action="store_true", help="only check the plateau rule")
    p.add_argument("--ship-unmet", action="store_true",
                   help="ship a finished run that misses the plateau rule all the same; its card says so first")
    p.add_argument("--bf16", action="store_true",
                   help="store the shipped weights in bfloat16 (half the size) if no test score moves by more "
                        "than --bf16-tolerance; the card gives both")
    p.add_argument("--bf16-tolerance", type=float, default=0.2)
    p.add_argument("--with-checkpoint", action="store_true",
                   help="also ship the run's last checkpoint and curve under run/ (for the benchmark's arm A)")
    p.add_argument("--machine", default=None, help="where it trained (default: this machine, one core)")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override (as trained)")
    args = p.parse_args(argv)
    if args.task is None and not (args.recipe and args.name):
        p.error("give --task, or --recipe and --name")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    recipe, name = TASKS[args.task] if args.task else (args.recipe, args.name)
    recipe, name = args.recipe or recipe, args.name or name
    cfg = load_recipe(ROOT / recipe, args.overrides)
    run = args.run or ROOT / cfg.run.output_dir
    metric = cfg.eval.best_metric
    if not (run / "metrics.jsonl").is_file():
        print(f"{run}: no metrics.jsonl: the run has not started (or --run names another directory)")
        return 1
    rows = read_metrics(run)
    evals = sorted((r["step"], r[f"eval/{metric}"]) for r in rows if f"eval/{metric}" in r)
    found = plateau(evals, cfg.schedule.xent_steps, MIN_EVALS, TOLERANCE)
    print(f"{run}: {found.reason}")
    if not found.met and not (args.ship_unmet and found.finished):
        return 1
    if args.check_only:
        return 0
    out = args.out / name
    tmp = out.with_name(f".{name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(run / "best", tmp, ignore=shutil.ignore_patterns("best.json", "README.md"))
    plot_curve(evals, metric, tmp / "curve.png")
    scores = test_scores(recipe, tmp, args.overrides, run / "predictions-test-best.jsonl")
    fp32_scores = None
    if args.bf16:  # half the size, if the scores hold
        fp32_scores = scores
        store_bf16(tmp / "model.safetensors")
        scores = test_scores(recipe, tmp, args.overrides, run / "predictions-test-best-bf16.jsonl")
        moved = {k: scores[k] - v for k, v in fp32_scores.items() if not k.endswith("seconds")}
        print(f"bf16 - fp32 on test: {json.dumps({k: round(v, 3) for k, v in moved.items()})}")
        if any(abs(v) > args.bf16_tolerance for v in moved.values()):
            print(f"not shipped: a test score moved more than --bf16-tolerance {args.bf16_tolerance} in bf16; "
                  "ship it in fp32 (leave --bf16 out)")
            shutil.rmtree(tmp)
            return 1
    if args.with_checkpoint:
        ship_last_checkpoint(run, tmp / RUN_PART)
    files = {p.relative_to(tmp).as_posix(): sha256(p) for p in sorted(tmp.rglob("*")) if p.is_file()}
    command = (f"OMP_NUM_THREADS=1 taskset -c 0 seqrl finetune {recipe} --set run.resume=auto"
               + "".join(f" --set {o}" for o in args.overrides))
    (tmp / "README.md").write_text(card(name, cfg, command, found, evals, scores, compute_hours(rows),
                                        args.machine or this_machine(), files, fp32_scores), encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 2**20
    print(f"shipped: {out} ({size:.1f} MB); test {json.dumps({k: round(v, 2) for k, v in scores.items()})}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
