"""`seqrl compare A B`: is system B better than system A on the same sources?

Paired significance tests as sacrebleu runs them (`sacrebleu/significance.py`): paired bootstrap
resampling (1,000 resamples) or approximate randomization (10,000 trials), seeded from
SACREBLEU_SEED (default 12345). BLEU, chrF and TER are sacrebleu's metric objects, their
per-sentence statistics and their corpus score from summed statistics; ROUGE (rouge-score's
F-measure with the Porter stemmer, as `seqrl.metrics`) goes through the same resampling, its
statistic the per-example F and a 1 (a resample's mean needs its size).

Two departures from sacrebleu, both for honest answers: a resample or trial whose statistic ties
the observed one counts as at least as extreme (sacrebleu counts only larger ones, so two
identical systems get p = 0.001); and with groups (e.g. sibling packages whose inputs start
alike, not independent examples) whole groups are resampled or swapped together. The 95%
interval of B - A is read off the bootstrap's resampled differences with sacrebleu's order
statistics (the 25th from each end of 1,000).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqrl.errors import DataError, SeqrlError

METRICS = ("bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL")
SACREBLEU_METRICS = ("bleu", "chrf", "ter")
LABELS = {"bleu": "BLEU", "chrf": "chrF", "ter": "TER (lower is better)", "rouge1": "ROUGE-1", "rouge2": "ROUGE-2",
          "rougeL": "ROUGE-L"}
SAMPLES = {"bs": 1000, "ar": 10000}  # sacrebleu's PairedTest defaults
TEST_NAMES = {"bs": "paired bootstrap resampling", "ar": "approximate randomization"}
TIE = 1e-9  # scores are 0-100 floats: closer than this is the same score, only summed in another order


@dataclass(frozen=True)
class Comparison:
    """One metric's row: full-set scores of A and B, the 95% interval of B - A, the p-value."""

    metric: str
    a: float
    b: float
    low: float
    high: float
    p_value: float

    @property
    def delta(self) -> float:
        return self.b - self.a


def sacrebleu_seed() -> int | None:
    """The seed sacrebleu's paired tests use: SACREBLEU_SEED, default 12345, 'none' for unseeded."""
    seed = os.environ.get("SACREBLEU_SEED", "12345")
    if seed.lower() == "none":
        return None
    try:
        return int(seed)
    except ValueError:
        raise SeqrlError(f"SACREBLEU_SEED={seed!r} is not an integer (or 'none'); set it to e.g. 12345") from None


def compare_systems(hyps_a: list[str], hyps_b: list[str], references: list[str], metrics=METRICS, *,
                    groups: list | None = None, test: str = "bs") -> list[Comparison]:
    """B against A on each metric: the paired `test` ("bs" or "ar") for the p-value, the paired
    bootstrap for the interval; with `groups` (one label per example) whole groups move together."""
    if not len(hyps_a) == len(hyps_b) == len(references) or not references:
        raise ValueError(f"{len(hyps_a)} and {len(hyps_b)} hypotheses for {len(references)} references")
    if test not in SAMPLES:
        raise ValueError(f"test must be one of {sorted(SAMPLES)}, got {test!r}")
    if groups is not None and len(groups) != len(references):
        raise ValueError(f"{len(groups)} group labels for {len(references)} examples; give one label per example")
    group_of = (np.arange(len(references)) if groups is None else
                np.unique(np.asarray(groups), return_inverse=True)[1].ravel())
    seed, rows = sacrebleu_seed(), []
    for metric in metrics:
        stats_a, score_of = metric_statistics(metric, hyps_a, references)
        stats_b, _ = metric_statistics(metric, hyps_b, references)
        # Full-set sums added in order, as corpus_scores adds ROUGE's F (so the scores equal its own).
        a, b = score_of(np.cumsum(stats_a, axis=0)[-1]), score_of(np.cumsum(stats_b, axis=0)[-1])
        # sacrebleu's bootstrap sums its statistics in float32 (counts: exact), and so its resampled
        # scores carry float32 rounding: the same here keeps the p-values equal to its own.
        low_precision = np.float32 if metric in SACREBLEU_METRICS else np.float64
        scores_a, scores_b = bootstrap_scores(stats_a.astype(low_precision), stats_b.astype(low_precision), score_of,
                                              group_of, SAMPLES["bs"], seed)
        low, high = order_interval(scores_b - scores_a)
        if test == "bs":
            p = bootstrap_p_value(scores_a, scores_b, abs(b - a))
        else:
            p = randomization_p_value(stats_a, stats_b, score_of, group_of, abs(b - a), seed)
        rows.append(Comparison(metric, a, b, low, high, p))
    return rows


def metric_statistics(metric: str, hypotheses: list[str], references: list[str]):
    """Per-example statistics (n, columns) and `score_of(summed)`, the corpus score from their sums.

    BLEU, chrF and TER: sacrebleu's own statistics (counts) and score; ROUGE: the per-example
    F-measure and a 1."""
    if metric in SACREBLEU_METRICS:
        from sacrebleu.metrics import BLEU, CHRF, TER  # the defaults of corpus_bleu / corpus_chrf / corpus_ter

        scorer = {"bleu": BLEU, "chrf": CHRF, "ter": TER}[metric]()
        stats = np.array(scorer._extract_corpus_statistics(hypotheses, [references]), dtype=np.float64)
        return stats, lambda summed: float(scorer._compute_score_from_stats(summed).score)
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; known: {', '.join(METRICS)}")
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
    pairs = zip(hypotheses, references, strict=True)
    f = np.array([[scorer.score(ref, hyp)[metric].fmeasure, 1.0] for hyp, ref in pairs])
    return f, lambda summed: 100.0 * float(summed[0]) / float(summed[1])


def bootstrap_scores(stats_a: np.ndarray, stats_b: np.ndarray, score_of, group_of: np.ndarray, samples: int,
                     seed: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Both systems' scores on the same `samples` resamples of the groups, drawn as sacrebleu draws
    them (`default_rng(seed).choice(n, size=(samples, n))`; a group per example is its resampling)."""
    n_groups = int(group_of.max()) + 1
    idx = np.random.default_rng(seed).choice(n_groups, size=(samples, n_groups), replace=True)
    # How often each group occurs in each resample, then each example takes its group's count: a
    # resample's summed statistics are one matrix product instead of a gather.
    counts = np.bincount((idx + np.arange(samples)[:, None] * n_groups).ravel(), minlength=samples * n_groups)
    counts = counts.reshape(samples, n_groups)[:, group_of].astype(stats_a.dtype)
    return (np.array([score_of(s) for s in counts @ stats_a]), np.array([score_of(s) for s in counts @ stats_b]))


def order_interval(deltas: np.ndarray) -> tuple[float, float]:
    """The 95% interval as sacrebleu's `estimate_ci` takes it: the n//40-th value from each end."""
    ordered = np.sort(deltas)
    cut = len(ordered) // 40
    return float(ordered[cut]), float(ordered[len(ordered) - cut - 1])


def tail_p_value(statistics: np.ndarray, observed: float) -> float:
    """(c + 1) / (n + 1), c the trials at least as extreme as `observed` (ties within TIE count)."""
    return float((np.sum(statistics >= observed - TIE) + 1) / (len(statistics) + 1))


def bootstrap_p_value(scores_a: np.ndarray, scores_b: np.ndarray, observed: float) -> float:
    """sacrebleu's paired bootstrap test: the resampled |B - A| centred on its mean, against |B - A|."""
    differences = np.abs(scores_b - scores_a)
    return tail_p_value(differences - differences.mean(), observed)


def randomization_p_value(stats_a: np.ndarray, stats_b: np.ndarray, score_of, group_of: np.ndarray,
                          observed: float, seed: int | None) -> float:
    """sacrebleu's approximate randomization: each trial swaps the two systems' outputs of a random
    half of the groups (`default_rng(seed).integers(2, ...)`), then |A' - B'| against |B - A|."""
    n_groups = int(group_of.max()) + 1
    # sacrebleu's pos_sel: where True, pseudo-system A' takes A's output and B' takes B's, else the other way
    pos = np.random.default_rng(seed).integers(2, size=(SAMPLES["ar"], n_groups), dtype=bool)[:, group_of]
    neg, pos = (~pos).astype(stats_a.dtype), pos.astype(stats_a.dtype)  # (converted once, not per product)
    shuffled_a, shuffled_b = pos @ stats_a + neg @ stats_b, neg @ stats_a + pos @ stats_b
    trials = np.array([abs(score_of(x) - score_of(y)) for x, y in zip(shuffled_a, shuffled_b, strict=True)])
    return tail_p_value(trials, observed)


# ---------------------------------------------------------------------------------------------
# The command: two predictions files (or run directories), one table


def predictions_path(given: str, split: str) -> Path:
    """A predictions .jsonl file, or a run directory's `predictions-SPLIT.jsonl`."""
    path = Path(given)
    if path.is_dir():
        found = path / f"predictions-{split}.jsonl"
        if not found.is_file():
            there = sorted(p.name for p in path.glob("predictions-*.jsonl")) or ["none"]
            raise DataError(f"{found} not found (predictions files there: {', '.join(there)}); pick one with --split "
                            "or give the file")
        return found
    if not path.is_file():
        raise DataError(f"{given}: no such file or run directory")
    return path


def read_predictions(path: Path, needed: tuple[str, ...]) -> list[dict]:
    """The rows of a predictions file (`seqrl.evaluate.write_predictions`: source, reference, hypothesis)."""
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                raise DataError(f"{path} line {number} is not JSON; give a predictions .jsonl file") from None
            missing = [k for k in needed if not isinstance(row, dict) or k not in row]
            if missing:
                raise DataError(f"{path} line {number} has no {missing[0]!r} field; predictions rows hold "
                                f"{', '.join(needed)}")
            rows.append(row)
    if not rows:
        raise DataError(f"{path} holds no predictions")
    return rows


def check_same_examples(rows_a: list[dict], rows_b: list[dict], path_a: Path, path_b: Path) -> None:
    """The two files must score the same sources, with the same references, in the same order."""
    if len(rows_a) != len(rows_b):
        raise DataError(f"{path_a} has {len(rows_a)} rows and {path_b} {len(rows_b)}: not predictions of the same "
                        "sources")
    for number, (a, b) in enumerate(zip(rows_a, rows_b, strict=True), 1):
        for field in ("source", "reference"):
            if a[field] != b[field]:
                raise DataError(f"row {number} of {path_a} and {path_b} has different {field}s: they do not hold "
                                "the same sources in the same order")


def group_labels(rows_a: list[dict], rows_b: list[dict], column: str, paths: tuple[Path, Path]) -> list:
    """The `column` of each row, from whichever file has it on every row (where both do, they must agree)."""
    having = [rows for rows in (rows_a, rows_b) if all(column in row for row in rows)]
    if not having:
        raise DataError(f"--group-column {column!r}: neither {paths[0]} nor {paths[1]} has it on every row; add it "
                        "(e.g. the dataset's family column) or leave the option out")
    labels = [[json.dumps(row[column], sort_keys=True) for row in rows] for rows in having]
    if labels[0] != labels[-1]:
        raise DataError(f"--group-column {column!r}: {paths[0]} and {paths[1]} disagree on it")
    return labels[0]


def table(rows: list[Comparison]) -> str:
    lines = ["| metric | A | B | B - A | 95% interval | p-value |", "|---|---|---|---|---|---|"]
    lines += [f"| {LABELS[r.metric]} | {r.a:.2f} | {r.b:.2f} | {r.delta:+.2f} | [{r.low:+.2f}, {r.high:+.2f}] "
              f"| {r.p_value:.4f} |" for r in rows]
    return "\n".join(lines)


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired significance tests of B against A on the same sources",
                       description=__doc__.splitlines()[0])
    p.add_argument("a", metavar="A", help="run directory (its predictions-SPLIT.jsonl) or predictions .jsonl file")
    p.add_argument("b", metavar="B", help="the same, for the system compared with A")
    p.add_argument("--split", default="test", help="for run directories: which predictions-SPLIT.jsonl (default: test)")
    p.add_argument("--metrics", nargs="+", choices=METRICS, default=list(METRICS), help="default: all")
    p.add_argument("--test", choices=sorted(SAMPLES), default="bs",
                   help="p-value from paired bootstrap resampling (bs, 1000) or approximate randomization (ar, 10000)")
    p.add_argument("--group-column", metavar="COL",
                   help="a field of the predictions rows: examples sharing it are resampled (or swapped) together")


def run(args: argparse.Namespace) -> int:
    path_a, path_b = predictions_path(args.a, args.split), predictions_path(args.b, args.split)
    needed = ("source", "reference", "hypothesis")
    rows_a, rows_b = read_predictions(path_a, needed), read_predictions(path_b, needed)
    check_same_examples(rows_a, rows_b, path_a, path_b)
    groups = None if args.group_column is None else group_labels(rows_a, rows_b, args.group_column, (path_a, path_b))
    results = compare_systems([r["hypothesis"] for r in rows_a], [r["hypothesis"] for r in rows_b],
                              [r["reference"] for r in rows_a], args.metrics, groups=groups, test=args.test)
    unit = "examples" if groups is None else f"groups of {args.group_column!r} ({len(set(groups))} groups)"
    print(f"A: {path_a}\nB: {path_b}\n{len(rows_a)} examples; p-value: {TEST_NAMES[args.test]} "
          f"({SAMPLES[args.test]}), interval: paired bootstrap ({SAMPLES['bs']}), resampling {unit}, "
          f"seed {sacrebleu_seed()}\n")
    print(table(results))
    return 0
