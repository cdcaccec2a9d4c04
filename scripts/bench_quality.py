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
Then every run's `best/` decodes the test split greedily, with the honesty guards next to it:
distinct outputs, output/reference length, validation cross-entropy with true vs shuffled
sources; and per task the trivial baselines (copy the source; lead-8 words; the single best
constant output chosen on validation). `table` writes results.md with means, per-seed values
and paired bootstrap intervals of B - A, B - A-restart and B - C on test (a cluster bootstrap over
the data's `family` column where it has one: sibling Debian packages share a first paragraph, so
their truncated sources, and outputs, are often the same: they are not independent examples).

Where things go: --out (default bench/quality)/TASK/seedS/PIECE/.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqrl import diagnostics  # noqa: E402
from seqrl.checkpoint import STATE_FILE, list_checkpoints  # noqa: E402
from seqrl.config import load_recipe  # noqa: E402
from seqrl.metrics import ROUGE_TYPES  # noqa: E402

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
    "B-baseline-greedy": ["reinforce.baseline=greedy"], "B-baseline-learned": ["reinforce.baseline=learned"],
    "B-baseline-none": ["reinforce.baseline=none"],
    # MIXER's rate for its regressor, 0.01 x the network's (here 0.01 x reinforce.lr): under Adam
    # it stays at its initial output (the default before baseline_lr, kept to reproduce that row)
    "B-baseline-learned-mixer-rate": ["reinforce.baseline=learned", "reinforce.baseline_lr=1e-6"],
    # alternate's REINFORCE share of batches rises to 1 over as many steps as MIXER's stages take
    "B-schedule-alternate": ["schedule.kind=alternate", "schedule.stage_steps=null", "schedule.rl_steps=1000000",
                             "schedule.anneal_steps={mixer_steps}"],
    "B-schedule-constant": ["schedule.kind=constant", "schedule.stage_steps=null", "schedule.rl_steps=1000000"],
    "B-delta-4": ["schedule.delta=4"], "B-delta-16": ["schedule.delta=16"],
    "B-stage-steps-x2": ["schedule.stage_steps={stage_steps_x2}"],  # when the stages end before the budget
    # or: the stages as in B, then whole-target sampling until the budget ends
    "B-final-stage-to-budget": ["schedule.final_stage_steps=1000000000"],
    "B-rl-lr-3e-5": ["reinforce.lr=3e-5"], "B-rl-lr-3e-4": ["reinforce.lr=3e-4"],
}

PREDICTIONS = "predictions-test-best.jsonl"  # per run: {"reference", "hypothesis"} of each test pair
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


def xent_overrides(args, metric: str, seed: int) -> list[str]:
    """The XENT piece: a checkpoint only where it stops (arm A continues from there)."""
    steps = [f"run.max_steps={args.xent_steps}"] if args.xent_steps else []
    return [*args.overrides, f"run.seed={seed}", *XENT_ONLY, f"eval.best_metric={metric}", f"eval.patience={args.patience}",
            f"run.max_minutes={args.xent_minutes}", "data.test_split=null", "run.save_every=1000000000",
            "run.keep_checkpoints=1", *steps]


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
    shutil.rmtree(out, ignore_errors=True)
    shutil.copytree(xent, out, ignore=shutil.ignore_patterns("final", "plots", "predictions-*", "quality.json"))
    (out / "branch.json").write_text(json.dumps({"step": state["step"], "seconds": state["seconds"]}))
    finetune(recipe, out, [*xent_overrides(args, metric, seed), "eval.patience=0", f"eval.every={args.arm_eval_every}",
                           f"run.max_minutes={state['seconds'] / 60 + args.budget_minutes}", "run.max_steps=null",
                           "run.resume=auto"])


def arm_piece(args, recipe: str, metric: str, seed: int, name: str, extra: list[str], seed_dir: Path) -> None:
    start = seed_dir / "xent" / "best"
    if not (seed_dir / "xent" / "final").is_dir():  # best/ exists while XENT still runs: wait for the end
        raise SystemExit(f"bench_quality: {seed_dir / 'xent'} has not finished; run the xent piece first (--pieces xent)")
    common = [*args.overrides, f"run.seed={seed}", f"model.name_or_path={start}", "model.architecture=null",
              "model.config={}", "optim.decay=constant", f"eval.best_metric={metric}", "eval.patience=0",
              f"eval.every={args.arm_eval_every}",
              f"run.max_minutes={args.budget_minutes}", "data.test_split=null"]
    finetune(recipe, seed_dir / name, common + arm_overrides(load_recipe(ROOT / recipe, args.overrides), extra))


def arm_overrides(cfg, extra: list[str]) -> list[str]:
    """An arm's overrides with the recipe's numbers filled in: {rl_lr}; {mixer_steps}, the steps
    MIXER's stages take; {stage_steps_x2}."""
    mixer_steps = cfg.schedule.stage_steps * math.ceil(cfg.data.max_target_tokens / cfg.schedule.delta)
    return [item.format(rl_lr=cfg.reinforce.lr, mixer_steps=mixer_steps, stage_steps_x2=2 * cfg.schedule.stage_steps)
            for item in extra]


def assess(recipe: str, run_dir: Path, metric: str, overrides: list[str]) -> dict:
    """Test metric of `best/` and the honesty guards, cached in quality.json."""
    cache = run_dir / "quality.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    import torch
    from seqrl import data, modeling
    from seqrl.evaluate import decode
    from seqrl.metrics import corpus_scores
    cfg = load_recipe(ROOT / recipe, overrides)
    text_model = modeling.load_saved(run_dir / "best")
    text_model.model.to("cuda" if torch.cuda.is_available() else "cpu")
    raw = data.load_raw(cfg.data, [cfg.data.eval_split, cfg.data.test_split])
    tokenized, _ = data.tokenize(raw, text_model, cfg.data)
    test, valid = tokenized[cfg.data.test_split], tokenized[cfg.data.eval_split]
    with torch.no_grad():
        hyps = decode(text_model, text_model.model, list(test["source_ids"]), batch_size=64, num_beams=1,
                      max_new_tokens=cfg.eval.max_new_tokens)
        use = diagnostics.source_use(text_model, text_model.model, list(valid["source_ids"]), list(valid["target_ids"]))
    refs = list(test[cfg.data.target_field])
    lines, start_step = own_metrics(run_dir)
    result = {"test": corpus_scores(hyps, refs, list(cfg.eval.metrics)),
              "best": json.loads((run_dir / "best" / "best.json").read_text()),
              "distinct": diagnostics.distinct_fraction(hyps), "length_ratio": diagnostics.length_ratio(hyps, refs),
              **use, "minutes": max(line.get("time/elapsed_s", 0) for line in lines) / 60,
              "steps": max(line["step"] for line in lines) - start_step}
    (run_dir / PREDICTIONS).write_text(
        "".join(json.dumps({"reference": r, "hypothesis": h}, ensure_ascii=False) + "\n" for r, h in zip(refs, hyps)))
    cache.write_text(json.dumps(result, indent=1))
    return result


def own_metrics(run_dir: Path) -> tuple[list[dict], int]:
    """The run's metrics.jsonl lines and its first step; for arm A only those after the branch
    from XENT (its file starts with XENT's history; time/elapsed_s counts from each process's start)."""
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
    if not (run_dir / "branch.json").is_file():
        return lines, 0
    start = json.loads((run_dir / "branch.json").read_text())["step"]
    return [line for line in lines if line["step"] > start], start


def trivial_baselines(recipe: str, task: str, metric: str, out: Path, overrides: list[str]) -> dict:
    cache = out / "trivial.json"
    if cache.is_file():
        return json.loads(cache.read_text())
    from seqrl import data
    from seqrl.metrics import corpus_scores
    cfg = load_recipe(ROOT / recipe, overrides)
    raw = data.load_raw(cfg.data, [cfg.data.train_split, cfg.data.eval_split, cfg.data.test_split])
    test = raw[cfg.data.test_split]
    src, ref = list(test[cfg.data.source_field]), list(test[cfg.data.target_field])
    trivial = {"copy the source" if task == "translation" else "lead-8 words":
               corpus_scores(src if task == "translation" else diagnostics.lead_words(src, 8), ref, [metric])[metric]}
    candidates = diagnostics.frequent_targets(list(raw[cfg.data.train_split][cfg.data.target_field]), 200)
    constant, _ = diagnostics.best_constant_output(candidates, list(raw[cfg.data.eval_split][cfg.data.target_field]), metric)
    trivial[f"best constant output ({constant!r}, chosen on validation)"] = corpus_scores([constant] * len(ref), ref, [metric])[metric]
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(trivial, indent=1))
    return trivial


def table(args, recipe: str, metric: str, task_dir: Path) -> str:
    """Rows: finished runs (final/, or quality.json, which only finished runs get; final/ may be deleted to save space)."""
    runs = {seed: {p.name: assess(recipe, p, metric, args.overrides) for p in sorted((task_dir / f"seed{seed}").iterdir())
                   if (p / "final").is_dir() or (p / "quality.json").is_file()} for seed in args.seeds if (task_dir / f"seed{seed}").is_dir()}
    names = sorted({name for r in runs.values() for name in r}, key=lambda n: (n != "xent", n))
    split_header = "bleu / brevity penalty / brevity penalty" if metric == "bleu" else f"{metric} precision / recall"
    lines = [f"## {args.task}: test {metric} (greedy), best checkpoint by validation {metric}\n",
             f"Machine: {args.machine}.\n",
             "| run | mean | per seed | sd | distinct outputs | length / reference | val xent true -> shuffled sources "
             f"| minutes | steps | the other test metrics, mean (not the reward) | {split_header} |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        got = [runs[s][name] for s in runs if name in runs[s]]
        scores = [g["test"][metric] for g in got]
        sd = f"{statistics.stdev(scores):.2f}" if len(scores) > 1 else "—"
        lines.append(f"| {name} | {statistics.mean(scores):.2f} | {', '.join(f'{v:.2f}' for v in scores)} | {sd} "
                     f"| {statistics.mean(g['distinct'] for g in got):.3f} | {statistics.mean(g['length_ratio'] for g in got):.2f} "
                     f"| {statistics.mean(g['xent_true'] for g in got):.3f} -> {statistics.mean(g['xent_shuffled'] for g in got):.3f} "
                     f"| {statistics.mean(g['minutes'] for g in got):.1f} | {statistics.mean(g['steps'] for g in got):.0f} "
                     f"| {other_metrics(got, metric)} | {score_split(task_dir, runs, name, metric)} |")
    for name, value in trivial_baselines(recipe, args.task, metric, task_dir, args.overrides).items():
        lines.append(f"| {name} | {value:.2f} | | | | | | | | | |")
    groups = test_groups(recipe, args.overrides, task_dir, runs)
    resampled = ", whole families of sibling packages resampled together" if groups else ""
    lines += ["", f"Paired bootstrap on test (1000 resamples{resampled}): {metric} difference and 95% interval"]
    # B, and any ablation run on every seed of the table (a candidate arm B of its own), against A, A-restart and C
    for arm in ["B", *(n for n in names if n.startswith("B-") and all(n in r for r in runs.values()))]:
        lines += ["", f"| seed | {arm} - A | {arm} - A-restart | {arm} - C |", "|---|---|---|---|"]
        lines += [f"| {seed} | {' | '.join(b_minus(task_dir / f'seed{seed}', other, metric, seed, arm, groups) for other in ('A', 'A-restart', 'C'))} |"
                  for seed in runs]
    ablated = [(seed, name) for seed in runs for name in runs[seed] if name.startswith("B-")]
    if ablated:
        lines += ["", "| seed | B - ablation | difference [95% interval] |", "|---|---|---|"]
        lines += [f"| {seed} | {name} | {b_minus(task_dir / f'seed{seed}', name, metric, seed, groups=groups)} |" for seed, name in ablated]
    for seed in runs:
        lines.append(f"\n![validation {metric} vs minutes, seed {seed}](curves-seed{seed}.png)")
        plot_curves(task_dir / f"seed{seed}", metric, runs[seed], task_dir / f"curves-seed{seed}.png", args.machine)
    text = "\n".join(lines) + "\n"
    (task_dir / "results.md").write_text(text)
    return text


def other_metrics(results: list[dict], metric: str) -> str:
    """The test metrics besides the reward's, mean over seeds: a gain that is only in the reward shows here."""
    return ", ".join(f"{k} {statistics.mean(r['test'][k] for r in results):.2f}" for k in results[0]["test"] if k != metric)


def score_split(task_dir: Path, runs: dict, name: str, metric: str) -> str:
    """Which side a test gain came from, mean over the seeds that ran `name`: a ROUGE metric's
    precision / recall; BLEU's n-gram precision part (BLEU / brevity penalty) / its brevity
    penalty, the factor that charges short outputs; blank for chrF."""
    predictions = [test_predictions(task_dir / f"seed{seed}" / name) for seed in runs if name in runs[seed]]
    if metric == "bleu":
        pairs = [diagnostics.bleu_brevity_split(*p) for p in predictions]
        return f"{statistics.mean(p for p, _ in pairs):.2f} / {statistics.mean(bp for _, bp in pairs):.3f}"
    if metric not in ROUGE_TYPES:
        return ""
    pairs = [diagnostics.rouge_precision_recall(*p, metric) for p in predictions]
    return f"{statistics.mean(p for p, _ in pairs):.2f} / {statistics.mean(r for _, r in pairs):.2f}"


def test_predictions(run_dir: Path) -> tuple[list[str], list[str]]:
    """The greedy test decodes of a run's best model and their references, as `assess` wrote them."""
    rows = [json.loads(line) for line in (run_dir / PREDICTIONS).open()]
    return [r["hypothesis"] for r in rows], [r["reference"] for r in rows]


def test_groups(recipe: str, overrides: list[str], task_dir: Path, runs: dict) -> list[str] | None:
    """The test split's `family` column (sibling packages: prepare_debian_synopsis.py), in the order
    of the test predictions, or None where the data has no such column (every example its own group)."""
    from seqrl import data
    cfg = load_recipe(ROOT / recipe, overrides)
    test = data.load_raw(cfg.data, [cfg.data.test_split])[cfg.data.test_split]
    if "family" not in test.column_names:
        return None
    first = next(((seed, name) for seed in runs for name in runs[seed]), None)
    if first is None:
        return None
    seed, run = first
    _, refs = test_predictions(task_dir / f"seed{seed}" / run)
    if list(test[cfg.data.target_field]) != refs:
        sys.exit(f"bench_quality: the test predictions of {task_dir / f'seed{seed}' / run} do not match the rows of "
                 f"test split '{cfg.data.test_split}' one for one; rebuild the data or rerun --pieces assess")
    return list(test["family"])


def b_minus(seed_dir: Path, other: str, metric: str, seed: int, arm: str = "B", groups: list[str] | None = None) -> str:
    """Paired bootstrap of `arm` minus `other` on the test predictions of their best models ("—" if either
    is missing); with `groups`, whole groups are resampled (a cluster bootstrap)."""
    if not all((seed_dir / run / PREDICTIONS).is_file() for run in (other, arm)):
        return "—"
    (a, refs), (b, _) = test_predictions(seed_dir / other), test_predictions(seed_dir / arm)
    r = diagnostics.paired_bootstrap(metric, a, b, refs, seed=seed, groups=groups)
    return f"{r['delta']:+.2f} [{r['low']:+.2f}, {r['high']:+.2f}]"


def plot_curves(seed_dir: Path, metric: str, results: dict, path: Path, machine: str) -> None:
    """Validation metric against wall-clock minutes: XENT from 0, each arm from where XENT ended
    (the compute XENT spent to find its best model, patience included, is spent for every arm);
    the test score of each arm's best model as a star at the arm's end."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def curve(run: str) -> tuple[list[float], list[float]]:
        points = [(m["time/elapsed_s"] / 60, m[f"eval/{metric}"]) for m in own_metrics(seed_dir / run)[0]
                  if f"eval/{metric}" in m]
        return [p[0] for p in points], [p[1] for p in points]

    xent_x, xent_y = curve("xent")
    end = xent_x[-1]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(xent_x, xent_y, color="black", label="XENT (from scratch)")
    for run, color in (("A", "tab:blue"), ("A-restart", "tab:purple"), ("C", "tab:green"), ("B", "tab:red"),
                       ("B-final-stage-to-budget", "tab:orange")):
        if run in results:
            x, y = curve(run)
            ax.plot([end + v for v in x], y, color=color, label=f"arm {run}")
            ax.scatter([end + results[run]["minutes"]], [results[run]["test"][metric]], color=color, marker="*", s=80)
    ax.set_xlabel(f"wall-clock minutes ({machine})")
    ax.set_ylabel(f"validation {metric} (stars: test, best checkpoint)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def this_machine() -> str:
    import os
    import torch
    if torch.cuda.is_available():
        return f"one {torch.cuda.get_device_name()} GPU"
    return f"{os.cpu_count()} CPU cores"


def main(argv=None) -> None:
    args = parse_args(argv)
    args.machine = args.machine or this_machine()
    recipe, metric = TASKS[args.task]
    recipe = args.recipe or recipe
    task_dir = args.out / args.task
    ablations = ABLATIONS if "ablations" in args.pieces else {n: e for n, e in ABLATIONS.items() if n in args.pieces}
    for seed in args.seeds:
        seed_dir = task_dir / f"seed{seed}"
        trained = []
        if "xent" in args.pieces:
            finetune(recipe, seed_dir / "xent", xent_overrides(args, metric, seed))
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
