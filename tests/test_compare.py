"""`seqrl compare`: the paired tests against sacrebleu's own, hand-computed ROUGE and group
resampling, exactness of the full-set scores, and the command's files and errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import make_pairs, write_jsonl
from sacrebleu.metrics import BLEU, CHRF, TER
from sacrebleu.significance import PairedTest

from seqrl.cli import main
from seqrl.compare import METRICS, SAMPLES, bootstrap_scores, compare_systems, metric_statistics
from seqrl.metrics import corpus_scores


def _systems(n: int = 40):
    """References, a weak system (every other word) and a strong one (the reference, except every
    fifth output loses its last word)."""
    refs = [p["es"] for p in make_pairs(n, seed=7)]
    weak = [" ".join(r.split()[::2]) for r in refs]
    strong = [" ".join(r.split()[:-1]) if i % 5 == 0 else r for i, r in enumerate(refs)]
    return refs, weak, strong


def _write(path, sources, refs, hyps, **columns):
    # not strict: the "length" case writes fewer rows than references on purpose
    write_jsonl(path, [{"source": s, "reference": r, "hypothesis": h, **{k: v[i] for k, v in columns.items()}}
                       for i, (s, r, h) in enumerate(zip(sources, refs, hyps, strict=False))])
    return path


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_b_clearly_better_and_full_set_scores_exact(test):
    refs, weak, strong = _systems()
    rows = compare_systems(weak, strong, refs, METRICS if test == "bs" else ["bleu", "ter", "rougeL"], test=test)
    plain = corpus_scores(weak, refs, ["bleu", "chrf", "rouge1", "rouge2", "rougeL"])
    better = corpus_scores(strong, refs, ["bleu", "chrf", "rouge1", "rouge2", "rougeL"])
    for row in rows:
        if row.metric != "ter":
            assert (row.a, row.b) == (plain[row.metric], better[row.metric])  # exactly corpus_scores'
            assert 0 < row.low <= row.delta <= row.high
        else:
            assert row.high < 0  # fewer edits
        assert row.p_value == pytest.approx(1 / (SAMPLES[test] + 1))  # no resample or trial as extreme


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_agrees_with_sacrebleus_paired_test(test):
    # Every output differs and the systems are close: A drops the first or last word, B the other one
    # and adds a word on every second row. TER ties (one edit a row in both): see the last lines.
    refs = _systems()[0]
    words = [r.split() for r in refs]
    a = [" ".join(w[:-1] if i % 2 else w[1:]) for i, w in enumerate(words)]
    b = [" ".join(w[1:] if i % 2 else w[:-1] + ["la"]) for i, w in enumerate(words)]
    # (AR: seconds a metric)
    names = {"bleu": "BLEU", "chrf": "chrF2", "ter": "TER"} if test == "bs" else {"chrf": "chrF2"}
    ours = {r.metric: r for r in compare_systems(a, b, refs, list(names), test=test)}
    scorers = {"BLEU": BLEU(), "chrF2": CHRF(), "TER": TER()}
    _, theirs = PairedTest([("A", a), ("B", b)], {name: scorers[name] for name in names.values()}, references=[refs],
                           test_type=test)()
    for metric, name in names.items():
        baseline, system = theirs[name]
        assert (ours[metric].a, ours[metric].b) == (baseline.score, system.score)
    assert ours["chrf"].p_value == theirs["chrF2"][1].p_value
    assert 0.05 < ours["chrf"].p_value < 0.5
    if test == "bs":
        assert ours["bleu"].p_value == theirs["BLEU"][1].p_value == 1 / (SAMPLES[test] + 1)
        # TER is the same for both: no difference, p = 1 here; sacrebleu counts only strictly larger
        # differences than the observed 0, none, and calls it significant
        assert (ours["ter"].delta, ours["ter"].p_value, theirs["TER"][1].p_value) == (0.0, 1.0, 1 / 1001)


@pytest.mark.parametrize("test", ["bs", "ar"])
def test_identical_systems(test):
    refs, weak, _ = _systems()
    metrics = ["bleu", "ter", "rouge2"] if test == "bs" else ["bleu"]
    for row in compare_systems(weak, list(weak), refs, metrics, test=test):
        assert (row.delta, row.low, row.high, row.p_value) == (0.0, 0.0, 0.0, 1.0)
    if test == "ar":
        return  # (sacrebleu's AR is as wrong here, and takes seconds)
    # sacrebleu counts only strictly larger differences, so it calls the same system significant:
    _, theirs = PairedTest([("A", weak), ("B", list(weak))], {"BLEU": BLEU()}, references=[refs], test_type=test)()
    assert theirs["BLEU"][1].p_value == pytest.approx(1 / (SAMPLES[test] + 1))


def test_rouge_bootstrap_hand_computed():
    # Example 1 scores F 1 for both; example 2 F 0 for A, 1 for B. A resample of 2 draws k copies of
    # example 2: B - A = 100 k / 2. Its 95% interval: 0 and 100 each have chance 1/4 > 2.5%.
    refs, a, b = ["a b", "c d"], ["a b", "x y"], ["a b", "c d"]
    (row,) = compare_systems(a, b, refs, ["rouge1"])
    assert (row.a, row.b, row.low, row.high) == (50.0, 100.0, 0.0, 100.0)
    # The same resamples by hand (sacrebleu's draw): k = copies of example 2, B - A = 50 k; the
    # bootstrap test counts |B - A| minus its mean at least the observed 50.
    copies = (np.random.default_rng(12345).choice(2, size=(1000, 2)) == 1).sum(axis=1)
    deltas = 50.0 * copies
    assert row.p_value == (np.sum(deltas - deltas.mean() >= 50 - 1e-9) + 1) / 1001
    assert 0.2 < row.p_value < 0.3  # about the chance of drawing example 2 twice, 1/4


def test_groups_resample_whole_groups_hand_computed():
    # Examples 1 and 2 are group "x" (F 0 for A, 1 for B), example 3 is "y" (1 for both). Two groups
    # drawn: (x, x) -> 100, (x, y) -> A 1/3, B 1 -> 200/3, (y, y) -> 0; never the per-example 100/3.
    refs, a, b = ["p q", "r s", "t u"], ["z z", "z z", "t u"], ["p q", "r s", "t u"]
    stats_a, score_of = metric_statistics("rouge1", a, refs)
    stats_b, _ = metric_statistics("rouge1", b, refs)
    grouped = bootstrap_scores(stats_a, stats_b, score_of, np.array([0, 0, 1]), 200, 1)
    assert sorted(set(np.round(grouped[1] - grouped[0], 9))) == [0.0, round(200 / 3, 9), 100.0]
    single = bootstrap_scores(stats_a, stats_b, score_of, np.arange(3), 200, 1)
    assert round(100 / 3, 9) in np.round(single[1] - single[0], 9)
    (row,) = compare_systems(a, b, refs, ["rouge1"], groups=["x", "x", "y"])
    assert (row.low, row.high) == (0.0, 100.0)


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rougeL"])
def test_grouped_resamples_are_the_corpus_metric_of_resampled_corpora(metric):
    # Examples 0-5 one group, the rest singletons; each resample's scores must be corpus_scores of the
    # corpus made of the drawn groups' examples (corpus BLEU is not a mean of sentence scores).
    refs, weak, strong = _systems(12)
    groups = np.array([0] * 6 + list(range(1, 7)))
    stats_a, score_of = metric_statistics(metric, weak, refs)
    stats_b, _ = metric_statistics(metric, strong, refs)
    scores_a, scores_b = bootstrap_scores(stats_a, stats_b, score_of, groups, 15, 2)
    for k, drawn in enumerate(np.random.default_rng(2).choice(7, size=(15, 7))):
        idx = [i for g in drawn for i in np.flatnonzero(groups == g)]
        expected = corpus_scores([strong[i] for i in idx], [refs[i] for i in idx], [metric])[metric]
        assert scores_b[k] == pytest.approx(expected, abs=1e-4)


def test_cli_table_from_run_directories_and_group_column(tmp_path, capsys):
    refs, weak, strong = _systems(20)
    sources = [f"source {i}" for i in range(20)]
    (tmp_path / "runA").mkdir()
    _write(tmp_path / "runA" / "predictions-validation.jsonl", sources, refs, weak)
    family = {"family": [i // 4 for i in range(20)]}
    b = _write(tmp_path / "b.jsonl", sources, refs, strong, **family)
    assert main(["compare", str(tmp_path / "runA"), str(b), "--split", "validation", "--metrics", "bleu",
                 "rougeL", "--group-column", "family"]) == 0
    out = capsys.readouterr().out
    assert "groups of 'family' (5 groups)" in out and "| metric | A | B | B - A | 95% interval | p-value |" in out
    row = compare_systems(weak, strong, refs, ["bleu"], groups=family["family"])[0]
    assert f"| BLEU | {row.a:.2f} | {row.b:.2f} | {row.delta:+.2f} | [{row.low:+.2f}, {row.high:+.2f}] " in out


@pytest.mark.parametrize("case", ["sources", "length", "no_run_file", "group_missing"])
def test_cli_one_line_errors(tmp_path, capsys, case):
    refs, weak, strong = _systems(6)
    sources = [f"s{i}" for i in range(6)]
    a = _write(tmp_path / "a.jsonl", sources, refs, weak)
    b = {"sources": lambda: _write(tmp_path / "b.jsonl", sources[::-1], refs, strong),
         "length": lambda: _write(tmp_path / "b.jsonl", sources[:5], refs, strong),
         "no_run_file": lambda: tmp_path,
         "group_missing": lambda: _write(tmp_path / "b.jsonl", sources, refs, strong)}[case]()
    extra = ["--group-column", "family"] if case == "group_missing" else []
    assert main(["compare", str(a), str(b), *extra]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("seqrl compare: error: ")
    assert {"sources": "same sources in the same order", "length": "6 rows", "no_run_file": "predictions-test.jsonl",
            "group_missing": "'family'"}[case] in err


def test_predictions_file_rows_need_their_fields(tmp_path, capsys):
    path = tmp_path / "a.jsonl"
    path.write_text(json.dumps({"reference": "a", "hypothesis": "a"}) + "\n")
    assert main(["compare", str(path), str(path)]) == 2
    assert "line 1 has no 'source' field" in capsys.readouterr().err
