"""The quality benchmark's report: scoring each run on test, the honesty guards, the table with
paired bootstrap intervals, and the validation curves (`scripts/bench_quality.py` runs the pieces
and calls `assess` and `table`).

Every run is scored twice on test: its best model by validation metric (the issue's protocol, and
the table's main columns) and its final model, the one at the end of its budget. On the Debian
summarization data, validation and test disagreed about which checkpoints of one run were better
by up to 4 ROUGE-L points (docs/results.md), so a comparison of best models carries the luck of
each arm's choice; the final models' comparison carries none of it (but a single step's noise).
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchkit import diagnostics  # noqa: E402  scripts/benchkit, beside this file

from seqrl.compare import compare_systems  # noqa: E402
from seqrl.config import load_recipe  # noqa: E402
from seqrl.metrics import ROUGE_TYPES  # noqa: E402

PREDICTIONS = {"best": "predictions-test-best.jsonl", "final": "predictions-test-final.jsonl"}  # per run


def assess(recipe: str, run_dir: Path, metric: str, overrides: list[str]) -> dict:
    """Test scores of `best/` (the model chosen on validation) with the honesty guards, and of
    `final/` (the model at the end of the budget: chosen by nobody, so free of the luck of
    validation's choice), cached in quality.json; a cache from before `final/` was scored gets
    that score added while `final/` is there."""
    cache = run_dir / "quality.json"
    result = json.loads(cache.read_text()) if cache.is_file() else None
    has_final = (run_dir / "final").is_dir()
    if result is not None and ("test_final" in result or not has_final):
        return result
    import torch

    from seqrl import data, evaluate, modeling
    from seqrl.metrics import corpus_scores
    cfg = load_recipe(ROOT / recipe, overrides)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    # only the models still to score (a cache has best/'s already); they share the run's tokenizer,
    # so either tokenizes the data; validation is only for best/'s guards
    to_score = (["best"] if result is None else []) + (["final"] if has_final else [])
    models = {name: modeling.load_saved(run_dir / name) for name in to_score}
    splits = [cfg.data.test_split] + ([cfg.data.eval_split] if result is None else [])
    tokenized, _ = data.tokenize(data.load_raw(cfg.data, splits), models[to_score[0]], cfg.data)
    test = tokenized[cfg.data.test_split]
    refs = list(test[cfg.data.target_field])

    def decode(name: str) -> list[str]:  # greedy test decodes, as every arm is scored, kept beside the run
        text_model = models[name]
        text_model.model.to(device)
        with torch.no_grad():
            hyps = evaluate.decode(text_model, text_model.model, list(test["source_ids"]), batch_size=64, num_beams=1,
                                   max_new_tokens=cfg.eval.max_new_tokens)
        (run_dir / PREDICTIONS[name]).write_text("".join(
            json.dumps({"reference": r, "hypothesis": h}, ensure_ascii=False) + "\n"
            for r, h in zip(refs, hyps, strict=True)))
        return hyps

    if result is None:
        best, hyps, valid = models["best"], decode("best"), tokenized[cfg.data.eval_split]
        with torch.no_grad():
            use = diagnostics.source_use(best, best.model, list(valid["source_ids"]), list(valid["target_ids"]))
        lines, start_step = own_metrics(run_dir)
        result = {"test": corpus_scores(hyps, refs, list(cfg.eval.metrics)),
                  "best": json.loads((run_dir / "best" / "best.json").read_text()),
                  "distinct": diagnostics.distinct_fraction(hyps), "length_ratio": diagnostics.length_ratio(hyps, refs),
                  **use, "minutes": max(line.get("time/elapsed_s", 0) for line in lines) / 60,
                  "steps": max(line["step"] for line in lines) - start_step}
    if has_final:
        result["test_final"] = corpus_scores(decode("final"), refs, list(cfg.eval.metrics))
    tmp = cache.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(cache)
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
    eval_targets = list(raw[cfg.data.eval_split][cfg.data.target_field])
    constant, _ = diagnostics.best_constant_output(candidates, eval_targets, metric)
    trivial[f"best constant output ({constant!r}, chosen on validation)"] = (
        corpus_scores([constant] * len(ref), ref, [metric])[metric])
    out.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(trivial, indent=1))
    return trivial


def table(args, recipe: str, metric: str, task_dir: Path) -> str:
    """Rows: finished runs (final/, or quality.json, which only finished runs get; final/ may be deleted to save
    space)."""
    runs = {seed: {p.name: assess(recipe, p, metric, args.overrides)
                   for p in sorted((task_dir / f"seed{seed}").iterdir())
                   if (p / "final").is_dir() or (p / "quality.json").is_file()}
            for seed in args.seeds if (task_dir / f"seed{seed}").is_dir()}
    names = sorted({name for r in runs.values() for name in r}, key=lambda n: (n != "xent", n))
    split_header = "bleu / brevity penalty / brevity penalty" if metric == "bleu" else f"{metric} precision / recall"
    lines = [f"## {args.task}: test {metric} (greedy), best checkpoint by validation {metric}\n",
             f"Machine: {args.machine}.\n",
             "| run | mean | per seed | sd | final model, per seed | distinct outputs | length / reference "
             "| val xent true -> shuffled sources "
             f"| minutes | steps | the other test metrics, mean (not the reward) | {split_header} |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name in names:
        got = [runs[s][name] for s in runs if name in runs[s]]
        scores = [g["test"][metric] for g in got]
        sd = f"{statistics.stdev(scores):.2f}" if len(scores) > 1 else "—"
        finals = ", ".join(f"{g['test_final'][metric]:.2f}" if "test_final" in g else "—" for g in got)
        lines.append(f"| {name} | {statistics.mean(scores):.2f} | {', '.join(f'{v:.2f}' for v in scores)} | {sd} "
                     f"| {finals} | {statistics.mean(g['distinct'] for g in got):.3f} "
                     f"| {statistics.mean(g['length_ratio'] for g in got):.2f} "
                     f"| {statistics.mean(g['xent_true'] for g in got):.3f} "
                     f"-> {statistics.mean(g['xent_shuffled'] for g in got):.3f} "
                     f"| {statistics.mean(g['minutes'] for g in got):.1f} "
                     f"| {statistics.mean(g['steps'] for g in got):.0f} "
                     f"| {other_metrics(got, metric)} | {score_split(task_dir, runs, name, metric)} |")
    for name, value in trivial_baselines(recipe, args.task, metric, task_dir, args.overrides).items():
        lines.append(f"| {name} | {value:.2f} | | | | | | | | | | |")
    groups = test_groups(recipe, args.overrides, task_dir, runs)
    resampled = ", whole families of sibling packages resampled together" if groups else ""
    lines += ["", f"Paired bootstrap on test (`seqrl compare`'s: 1000 resamples, seed 12345{resampled}): {metric} "
              "difference, 95% interval and p-value"]
    # B, and any ablation run on every seed of the table (a candidate arm B of its own), against A, A-restart and
    # C; then the same between final models: what the runs ended with, without validation's choice of checkpoint
    candidates = ["B", *(n for n in names if n.startswith("B-") and all(n in r for r in runs.values()))]
    for model, others, label in (("best", ("A", "A-restart", "C"), ""), ("final", ("A", "C"), ", final models")):
        if model == "final":
            lines += ["", "The same between the final models (each run's last step, no choice by validation):"]
        for arm in candidates:
            lines += ["", f"| seed | {' | '.join(f'{arm} - {other}{label}' for other in others)} |",
                      "|---" * (len(others) + 1) + "|"]
            for seed in runs:
                diffs = (b_minus(task_dir / f"seed{seed}", other, metric, arm, groups, model) for other in others)
                lines.append(f"| {seed} | {' | '.join(diffs)} |")
    ablated = [(seed, name) for seed in runs for name in runs[seed] if name.startswith("B-")]
    if ablated:
        lines += ["", "| seed | B - ablation | difference [95% interval] |", "|---|---|---|"]
        lines += [f"| {seed} | {name} | {b_minus(task_dir / f'seed{seed}', name, metric, groups=groups)} |"
                  for seed, name in ablated]
    for seed in runs:
        lines.append(f"\n![validation {metric} vs minutes, seed {seed}](curves-seed{seed}.png)")
        plot_curves(task_dir / f"seed{seed}", metric, runs[seed], task_dir / f"curves-seed{seed}.png", args.machine)
    text = "\n".join(lines) + "\n"
    (task_dir / "results.md").write_text(text)
    return text


def other_metrics(results: list[dict], metric: str) -> str:
    """The test metrics besides the reward's, mean over seeds: a gain that is only in the reward shows here."""
    return ", ".join(f"{k} {statistics.mean(r['test'][k] for r in results):.2f}"
                     for k in results[0]["test"] if k != metric)


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


def test_predictions(run_dir: Path, model: str = "best") -> tuple[list[str], list[str]]:
    """The greedy test decodes of a run's best (or final) model and their references, as `assess` wrote them."""
    rows = [json.loads(line) for line in (run_dir / PREDICTIONS[model]).open()]
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


def b_minus(seed_dir: Path, other: str, metric: str, arm: str = "B", groups: list[str] | None = None,
            model: str = "best") -> str:
    """`seqrl compare`'s paired bootstrap of `arm` minus `other` on the test predictions of their best
    (or final) models ("—" if either is missing); with `groups`, whole groups are resampled."""
    if not all((seed_dir / run / PREDICTIONS[model]).is_file() for run in (other, arm)):
        return "—"
    (a, refs), (b, _) = test_predictions(seed_dir / other, model), test_predictions(seed_dir / arm, model)
    (r,) = compare_systems(a, b, refs, [metric], groups=groups)
    return f"{r.delta:+.2f} [{r.low:+.2f}, {r.high:+.2f}] p {r.p_value:.3f}"


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
