"""Which way of choosing a run's checkpoint on validation agrees best with test?

    python scripts/bench_quality.py --task summarization --seeds 0 --keep-evaluated ...   # first
    python scripts/selection_check.py --task summarization --seed-dirs bench/quality/summarization/seed0

docs/results.md found validation and test disagreeing about which checkpoints of one run are
better by up to 4 ROUGE-L points: as much as the effects the benchmark measures. This scores every
candidate a run chose among (the arms' shared start, XENT's best/, and each evaluated checkpoint,
kept by `bench_quality.py --keep-evaluated`; for XENT, its evaluated checkpoints only) on the whole
validation split, on validation with one example per family (sibling Debian packages share their
text), and on test, all with greedy decoding, offline (cached in each run's selection.json).
Then, per rule, the test score of the candidate it picks against the best test score among the
run's candidates (the regret), and how often validation and test order two candidates differently
(the discordance):
- `best`: the highest validation score (seqrl's `eval.select_window: 1`, what the arms use);
- `mean-of-3`: the highest mean of the last 3 validation scores, its newest model
  (`eval.select_window: 3`);
- `family`: the highest validation score over one example per family.
Test is only read here to measure the rules, never to choose.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqrl.config import load_recipe  # noqa: E402

TASKS = {"translation": ("recipes/bench/translation.yaml", "bleu"),
         "summarization": ("recipes/bench/summarization.yaml", "rougeL")}
RULES = {"best": ("validation", 1), "mean-of-3": ("validation", 3), "family": ("validation_family", 1)}


def window_choice(values: list[float], window: int) -> int:
    """The index `eval.select_window` keeps: the first highest mean of the last `window` values
    (fewer at the start), as train.track_best computes it online."""
    means = [statistics.fmean(values[max(0, i + 1 - window):i + 1]) for i in range(len(values))]
    return means.index(max(means))


def discordance(validation: list[float], test: list[float]) -> float:
    """The share of candidate pairs that validation and test order differently (ties in either
    count as half)."""
    pairs = [(i, j) for i in range(len(test)) for j in range(i + 1, len(test))]
    if not pairs:
        return 0.0
    agreement = [(validation[i] - validation[j]) * (test[i] - test[j]) for i, j in pairs]  # < 0: opposite orders
    return sum(1.0 if a < 0 else 0.5 if a == 0 else 0.0 for a in agreement) / len(pairs)


def rule_rows(scores: list[dict]) -> dict[str, dict]:
    """Per rule: the candidate chosen, its test score and the regret against the best test score."""
    test = [s["test"] for s in scores]
    out = {}
    for rule, (key, window) in RULES.items():
        chosen = window_choice([s[key] for s in scores], window)
        out[rule] = {"chosen": scores[chosen]["name"], "test": test[chosen], "regret": max(test) - test[chosen]}
    return out


def candidates(run_dir: Path) -> list[tuple[str, Path]]:
    """(name, weights file) of what the run chose among, in order: its start (the arms' shared
    one, XENT's best/; XENT itself has none), then its evaluated checkpoints (for A, those after
    the step it branched from XENT at)."""
    branch = json.loads((run_dir / "branch.json").read_text())["step"] if (run_dir / "branch.json").is_file() else -1
    start = [] if run_dir.name == "xent" else [("start", run_dir.parent / "xent" / "best" / "model.safetensors")]
    steps = sorted(run_dir.glob("checkpoints/step-*"), key=lambda p: int(p.name[5:]))
    return start + [(f"step {int(p.name[5:])}", p / "model.safetensors") for p in steps if int(p.name[5:]) > branch]


def load_weights(model, path: Path) -> None:
    """A checkpoint's (or saved model's) weights into `model`; a name missing from the file must be
    one the model ties to a name that is in it, or one it never saves (Marian's sinusoidal positions)."""
    from safetensors.torch import load_file

    from seqrl.modeling import tied_names
    state = load_file(str(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = {n for names in tied_names(model) if any(x in state for x in names) for n in names}
    tied |= {n for n in missing if any(re.search(pattern, n) for pattern in model._keys_to_ignore_on_save or [])}
    if unexpected or set(missing) - tied:
        sys.exit(f"selection_check: {path} does not match the run's model (missing {sorted(set(missing) - tied)[:3]}, "
                 f"unexpected {unexpected[:3]})")


def score_run(run_dir: Path, recipe: str, metric: str, overrides: list[str]) -> list[dict]:
    """Every candidate's validation, family-validation and test scores, cached in selection.json."""
    cache = run_dir / "selection.json"
    done = {s["name"]: s for s in json.loads(cache.read_text())} if cache.is_file() else {}
    todo = [(n, p) for n, p in candidates(run_dir) if n not in done]
    if todo:
        import torch

        from seqrl import data, evaluate, modeling
        from seqrl.metrics import corpus_scores
        cfg = load_recipe(ROOT / recipe, overrides)
        text_model = modeling.load_saved(run_dir / "final")
        splits = [cfg.data.eval_split, cfg.data.test_split]
        tokenized, _ = data.tokenize(data.load_raw(cfg.data, splits), text_model, cfg.data)
        valid, test = tokenized[cfg.data.eval_split], tokenized[cfg.data.test_split]
        families = list(valid["family"]) if "family" in valid.column_names else list(range(len(valid)))
        first = sorted({f: i for i, f in reversed(list(enumerate(families)))}.values())
        for name, path in todo:
            load_weights(text_model.model, path)
            row = {"name": name}
            for split, key in ((valid, "validation"), (test, "test")):
                with torch.no_grad():
                    hyps = evaluate.decode(text_model, text_model.model, list(split["source_ids"]), batch_size=64,
                                           num_beams=1, max_new_tokens=cfg.eval.max_new_tokens)
                refs = list(split[cfg.data.target_field])
                row[key] = corpus_scores(hyps, refs, [metric])[metric]
                if key == "validation":
                    row["validation_family"] = corpus_scores([hyps[i] for i in first], [refs[i] for i in first],
                                                             [metric])[metric]
            done[name] = row
            print(f"{run_dir.name} {name}: " + ", ".join(f"{k} {v:.2f}" for k, v in row.items() if k != "name"),
                  flush=True)
            cache.write_text(json.dumps([done[n] for n, _ in candidates(run_dir) if n in done], indent=1))
    return [done[n] for n, _ in candidates(run_dir)]


def report(results: dict[Path, list[dict]], metric: str) -> str:
    """A markdown table per run and the rules' means over runs."""
    lines = ["| run | candidates | best test | " + " | ".join(f"{r}: pick, test, regret" for r in RULES)
             + " | discordance (all / family) |", "|---" * (4 + len(RULES)) + "|"]
    regrets = {r: [] for r in RULES}
    discord = {"validation": [], "validation_family": []}
    for run_dir, scores in results.items():
        rows = rule_rows(scores)
        test = [s["test"] for s in scores]
        d = {k: discordance([s[k] for s in scores], test) for k in discord}
        for k in discord:
            discord[k].append(d[k])
        for r in RULES:
            regrets[r].append(rows[r]["regret"])
        lines.append(f"| {run_dir.parent.name}/{run_dir.name} | {len(scores)} | {max(test):.2f} | " + " | ".join(
            f"{rows[r]['chosen']}, {rows[r]['test']:.2f}, {rows[r]['regret']:.2f}" for r in RULES)
            + f" | {d['validation']:.2f} / {d['validation_family']:.2f} |")
    lines.append("| **mean** | | | " + " | ".join(f"regret {statistics.fmean(regrets[r]):.2f} (max "
                                                      f"{max(regrets[r]):.2f})" for r in RULES)
                 + f" | {statistics.fmean(discord['validation']):.2f} / "
                   f"{statistics.fmean(discord['validation_family']):.2f} |")
    return f"Test {metric} of the candidate each rule picks (greedy decoding)\n\n" + "\n".join(lines)


def offline_vs_logged(results: dict[Path, list[dict]], metric: str) -> str:
    """How far the offline validation scores are from those the runs logged at the same steps
    (the same model and greedy decode: they should agree to rounding)."""
    gaps = []
    for run_dir, scores in results.items():
        lines = map(json.loads, (run_dir / "metrics.jsonl").open())
        logged = {m["step"]: m[f"eval/{metric}"] for m in lines if f"eval/{metric}" in m}
        gaps += [abs(s["validation"] - logged[int(s["name"][5:])]) for s in scores
                 if s["name"] != "start" and int(s["name"][5:]) in logged]
    return (f"Offline validation {metric} against the runs' logged scores, {len(gaps)} checkpoints: largest gap "
            f"{max(gaps, default=0.0):.2g}.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=list(TASKS), required=True)
    p.add_argument("--recipe", help="override the task's recipe (tests use a tiny one)")
    p.add_argument("--seed-dirs", type=Path, nargs="+", required=True)
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra recipe override")
    args = p.parse_args(argv)
    recipe, metric = TASKS[args.task]
    recipe = args.recipe or recipe
    results = {}
    for seed_dir in args.seed_dirs:
        for run_dir in sorted(d for d in seed_dir.iterdir() if (d / "checkpoints").is_dir()):
            if not (run_dir / "final").is_dir():
                print(f"skipped {run_dir}: not finished (no final/)")
                continue
            if len(candidates(run_dir)) < 2:
                print(f"skipped {run_dir}: no evaluated checkpoints (run bench_quality.py with --keep-evaluated)")
                continue
            results[run_dir] = score_run(run_dir, recipe, metric, args.overrides)
    if not results:
        sys.exit("selection_check: no run with evaluated checkpoints under " + " ".join(map(str, args.seed_dirs)))
    text = report(results, metric) + "\n\n" + offline_vs_logged(results, metric)
    print(text)
    (args.seed_dirs[0].parent / "selection.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
