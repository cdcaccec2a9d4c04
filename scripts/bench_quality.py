"""XENT vs MIXER on real data: does sequence-level training beat more cross-entropy?

    python scripts/bench_quality.py --task translation --seeds 0 1 2      # everything, cached
    python scripts/bench_quality.py --task summarization --seeds 0 --pieces xent B
    python scripts/bench_quality.py --task translation --seeds 0 --pieces ablations
    python scripts/bench_quality.py --task translation --seeds 0 1 2 --pieces table
    python scripts/bench_quality.py --task translation --seeds 0 --pieces B-delta-4 assess  # one ablation

Per task and seed (each piece is a `seqrl finetune` run; a finished piece is never redone):
- `xent`: cross-entropy from scratch until the validation metric stops improving
  (`eval.patience` evaluations) or `--xent-minutes`; its `best/` is shared by all arms.
- arms, each for the same wall-clock budget (`--budget-minutes`), each keeping its best model
  by validation metric, the model it started from included:
  A = XENT's own run continued (its optimizer, learning rate, data order and best/; from
  XENT's last checkpoint); C = XENT from XENT's best/ with a fresh optimizer at the RL learning
  rate (separates "RL" from "a lower learning rate"); B = the recipe's MIXER schedule from
  XENT's best/ (Δ-annealed suffix sampling, REINFORCE + XENT on the prefix).
  A-restart is the first version of A, kept to reproduce the first results: XENT restarted from
  best/ with a fresh optimizer at the XENT learning rate, best among its own evaluations only.
  A fresh Adam at that rate lost about 1 BLEU in its first 250 steps (docs/results.md).
- `ablations` (one seed): B with other baselines, schedules, Δ and RL learning rates.
Then every run's `best/` and `final/` decode the test split greedily, with the honesty guards
next to them: distinct outputs, output/reference length, validation cross-entropy with true vs
shuffled sources; and per task the trivial baselines (copy the source; lead-8 words; the single
best constant output chosen on validation). `table` writes results.md with means, per-seed values
and paired bootstrap intervals of B - A, B - A-restart and B - C on test, between best models
and between final models (scripts/quality_report.py says why both). The bootstrap resamples
whole groups where the data has a `family` column: sibling Debian packages share a first
paragraph, so their truncated sources, and outputs, are often the same: they are not independent
examples.

From a converged start (`--start DIR`: a shipped start with its run/ part, e.g.
starts/bible-en-es-xent, or the run behind one, with best/, final/ and its last checkpoint;
scripts/build_converged.py): no xent piece; the run is copied in as
every seed's `xent`, the arms start from its best/, and A continues its last checkpoint (its Adam
moments and data order) at a constant `--a-lr` (default: the recipe's reinforce.lr, C's rate, so
that A and C differ only in the optimizer state carried over; the start's own schedule has
decayed to 0, and the recipe's XENT rate restarts it far from its minimum).

    python scripts/bench_quality.py --task translation --seeds 0 --start starts/bible-en-es-xent \
        --pieces A C B B-xent-weight-0.1 B-stage-steps-half B-final-stage-to-budget table

Where things go: --out (default bench/quality)/TASK/seedS/PIECE/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from quality_report import assess, table  # noqa: E402  scripts/, beside this file

from seqrl.checkpoint import CHECKPOINT_DIR, STATE_FILE, list_checkpoints  # noqa: E402
from seqrl.config import load_recipe  # noqa: E402

TASKS = {  # recipe, and the metric that selects checkpoints and is reported
    "translation": ("recipes/bench/translation.yaml", "bleu"),
    "summarization": ("recipes/bench/summarization.yaml", "rougeL"),
    "summarization_pretrained": ("recipes/bench/summarization_pretrained.yaml", "rougeL"),
}
XENT_ONLY = ["schedule.kind=xent", "schedule.xent_steps=1000000", "schedule.stage_steps=null"]
ARMS = {  # the arms that start from XENT's best/ (A continues XENT's run: continue_piece)
    "A-restart": XENT_ONLY,
    "C": XENT_ONLY + ["optim.lr={rl_lr}", "optim.warmup_steps=0", "eval.at_start=true"],
    "B": ["schedule.xent_steps=0", "optim.warmup_steps=0", "eval.at_start=true"],
}
ABLATIONS = {
    "B-baseline-greedy": ["reinforce.baseline.kind=greedy"], "B-baseline-learned": ["reinforce.baseline.kind=learned"],
    "B-baseline-none": ["reinforce.baseline.kind=none"],
    # MIXER's rate for its regressor, 0.01 x the network's (here 0.01 x reinforce.lr): under Adam
    # it stays at its initial output (the default before baseline_lr, kept to reproduce that row)
    "B-baseline-learned-mixer-rate": ["reinforce.baseline.kind=learned", "reinforce.baseline.lr=1e-6"],
    # alternate's REINFORCE share of batches rises to 1 over as many steps as MIXER's stages take
    "B-schedule-alternate": ["schedule.kind=alternate", "schedule.stage_steps=null", "schedule.rl_steps=1000000",
                             "schedule.anneal_steps={mixer_steps}"],
    "B-schedule-constant": ["schedule.kind=constant", "schedule.stage_steps=null", "schedule.rl_steps=1000000"],
    "B-delta-4": ["schedule.delta=4"], "B-delta-16": ["schedule.delta=16"],
    "B-stage-steps-x2": ["schedule.stage_steps={stage_steps_x2}"],  # when the stages end before the budget
    # when they outlast it (translation on one core: stages 1-4 of 6 in 15 minutes)
    "B-stage-steps-half": ["schedule.stage_steps={stage_steps_half}"],
    # or: the stages as in B, then whole-target sampling until the budget ends
    "B-final-stage-to-budget": ["schedule.final_stage_steps=1000000000"],
    "B-rl-lr-3e-5": ["reinforce.lr=3e-5"], "B-rl-lr-3e-4": ["reinforce.lr=3e-4"],
    # issue 21: expected risk in REINFORCE's place (seqrl/objectives.py), with sampled, beam or both
    # candidates; and risk beside token-level XENT on the whole target (Edunov et al.'s best mix)
    "B-risk": ["reinforce.estimator.kind=risk"],
    "B-risk-beam": ["reinforce.estimator.kind=risk", "reinforce.candidates.kind=beam"],
    "B-risk-both": ["reinforce.estimator.kind=risk", "reinforce.candidates.kind=both"],
    "B-risk-reference": ["reinforce.estimator.kind=risk", "reinforce.candidates.reference=true"],
    # a smoother q (Shen et al. chose alpha = 5e-3): the q-weights of unlikely candidates are not ~0
    "B-risk-alpha-0.1": ["reinforce.estimator.kind=risk", "reinforce.estimator.risk_alpha=0.1"],
    "B-risk-beam-alpha-0.1": ["reinforce.estimator.kind=risk", "reinforce.candidates.kind=beam",
                              "reinforce.estimator.risk_alpha=0.1"],
    # the risk alone on the sampled suffix, without MIXER's XENT on the gold prefix beside it
    "B-risk-no-prefix-xent": ["reinforce.estimator.kind=risk", "schedule.xent_weight=0"],
    # the two remedies that arm pointed at: the risk scaled up 9x against the prefix's XENT (alone,
    # its gradient norm was 0.2; beside that XENT, 2.4), and that with q from mean token log p
    "B-risk-scaled": ["reinforce.estimator.kind=risk", "schedule.xent_weight=0.1"],
    "B-risk-scaled-length-norm": ["reinforce.estimator.kind=risk", "schedule.xent_weight=0.1",
                                  "reinforce.estimator.risk_length_normalize=true"],
    # which of the two did it: length normalization alone; and REINFORCE with the same prefix weight
    "B-risk-length-norm": ["reinforce.estimator.kind=risk", "reinforce.estimator.risk_length_normalize=true"],
    "B-xent-weight-0.1": ["schedule.xent_weight=0.1"],
    # issue 33: MBR distillation in REINFORCE's place: cross-entropy toward each source's MBR choice
    # among its samples (no reward, no reference), beside MIXER's XENT on the gold prefix
    "B-mbr-distill": ["reinforce.estimator.kind=mbr"],
    "B-risk-constant": ["reinforce.estimator.kind=risk", "schedule.kind=constant", "schedule.stage_steps=null",
                        "schedule.rl_steps=1000000"],
}

PIECES = ["xent", "A", *ARMS, "ablations", *ABLATIONS, "assess", "table"]


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--recipe", help="override the task's recipe (tests use a tiny one)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--pieces", nargs="+", default=["xent", "A", "C", "B", "table"], choices=PIECES, metavar="PIECE",
                   help="xent, A, C, B, A-restart, ablations (all of them) or one ablation by name, assess (test "
                        "scores and guards of the runs named, cached), table; one of: " + ", ".join(PIECES))
    p.add_argument("--machine", default=None, help="where the runs ran, for the plots and results.md "
                                                     "(default: this machine's GPU, else its CPU count)")
    p.add_argument("--xent-minutes", type=float, default=60.0, help="cap of the XENT piece")
    p.add_argument("--xent-steps", type=int, default=None,
                   help="stop the XENT piece at this step instead (rebuilds, step for step, a cached XENT run that "
                        "stopped on --xent-minutes: its learning rate is constant after warm-up)")
    p.add_argument("--patience", type=int, default=4, help="XENT evaluations without a new best before it stops")
    p.add_argument("--budget-minutes", type=float, default=15.0, help="wall-clock budget of every arm")
    p.add_argument("--arm-eval-every", type=int, default=250, help="optimizer steps between the arms' evaluations")
    p.add_argument("--keep-evaluated", action="store_true",
                   help="XENT, A and the arms keep a checkpoint at every evaluation (for scripts/selection_check.py)")
    p.add_argument("--start", type=Path, default=None, metavar="DIR",
                   help="a converged start for every arm instead of an xent piece: a finished XENT run's directory, "
                        "or a shipped start with its run/ part (starts/bible-en-es-xent)")
    p.add_argument("--a-lr", type=float, default=None,
                   help="with --start: arm A's constant rate (default: the recipe's reinforce.lr)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "quality")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe override")
    return p.parse_args(argv)


def finetune(recipe: str, out: Path, overrides: list[str]) -> None:
    """One piece as its own process (`seqrl finetune`); skipped when its `final/` exists."""
    if (out / "final").is_dir():
        print(f"cached: {out}")
        return
    cmd = [sys.executable, "-m", "seqrl", "finetune", recipe, "--set", f"run.output_dir={out}",
           "--set", "run.overwrite=true"]
    for item in overrides:
        cmd += ["--set", item]
    print("running:", " ".join(cmd[1:]), flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True)


def xent_overrides(args, recipe: str, metric: str, seed: int) -> list[str]:
    """The XENT piece: a checkpoint only where it stops (arm A continues from there); with
    --keep-evaluated, one at each of its evaluations as well, all kept."""
    steps = [f"run.max_steps={args.xent_steps}"] if args.xent_steps else []
    every = load_recipe(ROOT / recipe, args.overrides).eval.every if args.keep_evaluated else 1000000000
    return [*args.overrides, f"run.seed={seed}", *XENT_ONLY, f"eval.best_metric={metric}",
            f"eval.patience={args.patience}", f"run.max_minutes={args.xent_minutes}", "data.test_split=null",
            f"run.save_every={every}",
            f"run.keep_checkpoints={100000 if args.keep_evaluated else 1}", *steps]


def continue_piece(args, recipe: str, metric: str, seed: int, seed_dir: Path) -> None:
    """Arm A: a copy of the XENT run resumed from its last checkpoint with `--budget-minutes` more
    (optimizer, learning rate, data order and best/ carry on, so best/ changes only if more XENT
    finds a better model); branch.json says where the copy starts."""
    xent, out = seed_dir / "xent", seed_dir / "A"
    if (out / "final").is_dir():
        print(f"cached: {out}")
        return
    checkpoints = list_checkpoints(xent)
    if not (xent / "final").is_dir() or not checkpoints:
        raise SystemExit(f"bench_quality: {xent} has no final checkpoint to continue (unfinished, or made before "
                         f"the xent piece saved one); run or rerun the xent piece (--pieces xent)")
    state = json.loads((checkpoints[-1] / STATE_FILE).read_text())
    rate = [] if args.start is None else [  # a converged start's schedule ended at 0: a constant rate instead
        "optim.decay=constant", "optim.warmup_steps=0",
        f"optim.lr={args.a_lr or load_recipe(ROOT / recipe, args.overrides).reinforce.lr}"]
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(xent, out, ignore=shutil.ignore_patterns("final", "plots", "predictions-*", "quality.json",
                                                           "selection.json"))
    (out / "branch.json").write_text(json.dumps({"step": state["step"], "seconds": state["seconds"]}))
    finetune(recipe, out, [*xent_overrides(args, recipe, metric, seed), "eval.patience=0",
                           f"eval.every={args.arm_eval_every}",
                           f"run.max_minutes={state['seconds'] / 60 + args.budget_minutes}", "run.max_steps=null",
                           "run.resume=auto", *rate, *keep_evaluated(args)])


def adopt_start(start: Path, xent: Path) -> None:
    """A converged start as a seed's `xent` piece (copied: arm A writes beside it): a finished run
    with its last checkpoint, whose step the copy keeps (branch.json's start), or a shipped start
    with its run/ part (scripts/build_converged.py --with-checkpoint), laid out as that run."""
    if (xent / "final").is_dir():
        return
    shipped = (start / "run" / "checkpoint" / STATE_FILE).is_file() and (start / "config.json").is_file()
    if not shipped and not ((start / "final").is_dir() and (start / "best").is_dir() and list_checkpoints(start)):
        raise SystemExit(f"bench_quality: --start {start} is neither a finished run with best/, final/ and a "
                         f"checkpoint (runs/converged/...) nor a shipped start with its run/ part (starts/...)")
    shutil.rmtree(xent, ignore_errors=True)
    if shipped:
        unpack_shipped(start, xent)
    else:
        shutil.copytree(start, xent, ignore=shutil.ignore_patterns("plots", "predictions-*", "quality.json"))
    print(f"start: {start} copied to {xent}")


def unpack_shipped(start: Path, xent: Path) -> None:
    """The run a shipped start came from, as far as the arms need it: best/ (the shipped model and
    its best.json), the last checkpoint, final/ (that checkpoint's weights with the model's files),
    the curve and the trained tokenizer."""
    model_files = [p for p in start.iterdir() if p.is_file() and p.name not in ("README.md", "curve.png")]
    step = json.loads((start / "run" / "checkpoint" / STATE_FILE).read_text())["step"]
    for folder in ("best", "final"):
        (xent / folder).mkdir(parents=True)
        for p in model_files:
            shutil.copy2(p, xent / folder / p.name)
    # final/: the checkpoint's weights, as save_pretrained writes them (without the buffers a
    # checkpoint's state dict also holds)
    from safetensors.torch import load_file, save_file
    names = load_file(start / "model.safetensors").keys()
    weights = load_file(start / "run" / "checkpoint" / "model.safetensors")
    save_file({k: weights[k] for k in names}, xent / "final" / "model.safetensors", metadata={"format": "pt"})
    shutil.copytree(start / "run" / "checkpoint", xent / CHECKPOINT_DIR / f"step-{step:08d}")
    for name in ("metrics.jsonl", "recipe.yaml"):
        shutil.copy2(start / "run" / name, xent / name)
    shutil.copy2(start / "run" / "best.json", xent / "best" / "best.json")
    if (start / "run" / "tokenizer").is_dir():
        shutil.copytree(start / "run" / "tokenizer", xent / "tokenizer")


def arm_piece(args, recipe: str, metric: str, seed: int, name: str, extra: list[str], seed_dir: Path) -> None:
    start = seed_dir / "xent" / "best"
    if not (seed_dir / "xent" / "final").is_dir():  # best/ exists while XENT still runs: wait for the end
        raise SystemExit(f"bench_quality: {seed_dir / 'xent'} has not finished; "
                         "run the xent piece first (--pieces xent)")
    common = [*args.overrides, f"run.seed={seed}", f"model.name_or_path={start}", "model.architecture=null",
              "model.config={}", "optim.decay=constant", f"eval.best_metric={metric}", "eval.patience=0",
              f"eval.every={args.arm_eval_every}",
              f"run.max_minutes={args.budget_minutes}", "data.test_split=null", *keep_evaluated(args)]
    finetune(recipe, seed_dir / name, common + arm_overrides(load_recipe(ROOT / recipe, args.overrides), extra))


def keep_evaluated(args) -> list[str]:
    """With --keep-evaluated: a checkpoint at every evaluation, all kept, so that other ways of
    choosing among them can be scored afterwards (scripts/selection_check.py)."""
    return [f"run.save_every={args.arm_eval_every}", "run.keep_checkpoints=100000"] if args.keep_evaluated else []


def arm_overrides(cfg, extra: list[str]) -> list[str]:
    """An arm's overrides with the recipe's numbers filled in: {rl_lr}; {mixer_steps}, the steps
    MIXER's stages take; {stage_steps_x2} and {stage_steps_half}."""
    mixer_steps = cfg.schedule.stage_steps * math.ceil(cfg.data.max_target_tokens / cfg.schedule.delta)
    return [item.format(rl_lr=cfg.reinforce.lr, mixer_steps=mixer_steps, stage_steps_x2=2 * cfg.schedule.stage_steps,
                        stage_steps_half=max(1, cfg.schedule.stage_steps // 2))
            for item in extra]


def this_machine() -> str:
    import os

    import torch
    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()} GPU"
    return f"{os.cpu_count()} CPU cores"


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.start is not None and "xent" in args.pieces:
        raise SystemExit("bench_quality: --start replaces the xent piece; leave `xent` out of --pieces")
    args.machine = args.machine or this_machine()
    recipe, metric = TASKS[args.task]
    recipe = args.recipe or recipe
    task_dir = args.out / args.task
    ablations = ABLATIONS if "ablations" in args.pieces else {n: e for n, e in ABLATIONS.items() if n in args.pieces}
    for seed in args.seeds:
        seed_dir = task_dir / f"seed{seed}"
        trained = []
        if args.start is not None:
            adopt_start(args.start, seed_dir / "xent")
        elif "xent" in args.pieces:
            finetune(recipe, seed_dir / "xent", xent_overrides(args, recipe, metric, seed))
            trained.append("xent")
        if "A" in args.pieces:
            continue_piece(args, recipe, metric, seed, seed_dir)
            trained.append("A")
        for arm in ("C", "B", "A-restart"):
            if arm in args.pieces:
                arm_piece(args, recipe, metric, seed, arm, ARMS[arm], seed_dir)
                trained.append(arm)
        for name, extra in ablations.items():
            arm_piece(args, recipe, metric, seed, name, ARMS["B"] + extra, seed_dir)
            trained.append(name)
        if "assess" in args.pieces:  # lets parallel callers assess their own runs; table reuses the cache
            for name in trained:
                print(name, json.dumps(assess(recipe, seed_dir / name, metric, args.overrides)["test"]), flush=True)
    if "table" in args.pieces:
        print(table(args, recipe, metric, task_dir))


if __name__ == "__main__":
    main()
