"""Honesty guards: hand-computed values for the small functions, exactness of the paired bootstrap
against `corpus_scores`, and the source-use gap on tiny models."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from seqrl.diagnostics import (
    best_constant_output,
    bleu_brevity_split,
    bootstrap_indices,
    derangement,
    distinct_fraction,
    frequent_targets,
    lead_words,
    length_ratio,
    paired_bootstrap,
    rouge_precision_recall,
    source_use,
)
from seqrl.metrics import corpus_scores
from conftest import make_pairs


def test_distinct_fraction():
    assert distinct_fraction(["a b", "a b", "c", "a b"]) == 2 / 4
    assert distinct_fraction(["x", "y", "z"]) == 1.0
    assert distinct_fraction([]) == 0.0


def test_length_ratio_counts_whitespace_words():
    # hypotheses 2 + 3 = 5 words, references 4 + 6 = 10 words
    assert length_ratio(["a b", "c d e"], ["a b c d", "a  b c d e f"]) == 0.5
    with pytest.raises(ValueError):
        length_ratio(["a"], ["a", "b"])


def test_lead_words():
    assert lead_words(["one two three four", " a  b ", "x"], 2) == ["one two", "a b", "x"]


def test_frequent_targets_ties_by_first_occurrence():
    targets = ["b", "a", "b", "c", "a", "d", "e", "e"]
    assert frequent_targets(targets, 2) == ["b", "a"]  # b, a, e all twice; b and a come first
    assert frequent_targets(targets, 4) == ["b", "a", "e", "c"]


def test_rouge_precision_recall_hand_computed():
    # "the cat" vs "the cat sat": 2 of 2 words match (P 1), 2 of 3 reference words (R 2/3);
    # "a dog barked loudly" vs "a dog": P 2/4, R 1. Means: P 3/4, R 5/6.
    p, r = rouge_precision_recall(["the cat", "a dog barked loudly"], ["the cat sat", "a dog"], "rougeL")
    assert (p, r) == (pytest.approx(75.0), pytest.approx(100 * 5 / 6))
    with pytest.raises(ValueError, match="'bleu' is not one of"):
        rouge_precision_recall(["a"], ["a"], "bleu")


def test_bleu_brevity_split_hand_computed():
    # "a b c d" against "a b c d e f": every n-gram matches (BLEU / BP = 100), 4 of 6 words:
    # brevity penalty exp(1 - 6/4) = exp(-0.5). As long as the reference: no penalty.
    without_bp, bp = bleu_brevity_split(["a b c d"], ["a b c d e f"])
    assert (without_bp, bp) == (pytest.approx(100.0), pytest.approx(math.exp(-0.5)))
    assert bleu_brevity_split(["a b c d"], ["a b c d"]) == (pytest.approx(100.0), pytest.approx(1.0))
    without_bp, bp = bleu_brevity_split(["a b c d", "x y z w"], ["a b c d", "x y z q"])
    score = corpus_scores(["a b c d", "x y z w"], ["a b c d", "x y z q"], ["bleu"])["bleu"]
    assert bp == pytest.approx(1.0) and without_bp == pytest.approx(score)  # the split multiplies back to BLEU


def test_best_constant_output_hand_computed_rouge1():
    references = ["the cat sat", "the cat ran", "a dog barked"]
    # rouge1 F per reference: "the cat sat" -> 1, 2/3, 0 (mean 5/9); "the cat" -> 0.8, 0.8, 0 (8/15);
    # "a dog barked" -> 0, 0, 1 (1/3); "zebra" -> 0. The majority phrase, whole, wins.
    candidates = ["the cat", "a dog barked", "the cat sat", "zebra"]
    text, score = best_constant_output(candidates, references, "rouge1")
    assert text == "the cat sat"
    assert score == pytest.approx(100 * 5 / 9)
    with pytest.raises(ValueError, match="unknown metric"):
        best_constant_output(candidates, references, "meteor")


def test_best_constant_output_bleu_is_the_majority_reference():
    references = ["the old man reads a book today"] * 3 + ["a green tree near the river"]
    candidates = ["a green tree near the river", "the old man reads a book today", "the"]
    text, score = best_constant_output(candidates, references, "bleu")
    assert text == "the old man reads a book today"
    assert score == corpus_scores([text] * 4, references, ["bleu"])["bleu"]


def _systems(n: int = 40):
    """References, a weak system (half the words dropped) and a strong one (the reference, except
    every fifth output loses its last word)."""
    refs = [p["es"] for p in make_pairs(n, seed=7)]
    weak = [" ".join(r.split()[::2]) for r in refs]
    strong = [" ".join(r.split()[:-1]) if i % 5 == 0 else r for i, r in enumerate(refs)]
    return refs, weak, strong


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rouge1", "rouge2", "rougeL"])
def test_paired_bootstrap_full_set_equals_corpus_scores(metric):
    refs, weak, strong = _systems()
    result = paired_bootstrap(metric, weak, strong, refs, samples=50)
    a = corpus_scores(weak, refs, [metric])[metric]
    b = corpus_scores(strong, refs, [metric])[metric]
    assert (result["a"], result["b"], result["delta"]) == (a, b, b - a)  # exactly
    assert result["low"] > 0 and result["p_b_not_better"] == 0.0  # clearly better
    assert result["low"] <= result["high"]


@pytest.mark.parametrize("metric", ["bleu", "rouge1"])
def test_paired_bootstrap_identical_systems(metric):
    refs, weak, _ = _systems()
    result = paired_bootstrap(metric, weak, list(weak), refs, samples=30)
    assert result["delta"] == 0.0 and result["low"] == 0.0 and result["high"] == 0.0
    assert result["p_b_not_better"] == 1.0


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rougeL"])
def test_paired_bootstrap_recomputes_the_corpus_metric_per_resample(metric):
    # The resampled deltas must be those of corpus_scores on the resampled corpora: corpus BLEU
    # is not a mean of sentence scores, so this fails if the statistics were averaged wrongly.
    refs, weak, strong = _systems(20)
    samples, seed = 12, 3
    deltas = []
    for idx in bootstrap_indices(len(refs), samples, seed):
        r = [refs[i] for i in idx]
        deltas.append(corpus_scores([strong[i] for i in idx], r, [metric])[metric]
                      - corpus_scores([weak[i] for i in idx], r, [metric])[metric])
    result = paired_bootstrap(metric, weak, strong, refs, samples=samples, seed=seed)
    low, high = np.percentile(deltas, [2.5, 97.5])
    assert result["low"] == pytest.approx(low, abs=1e-9)
    assert result["high"] == pytest.approx(high, abs=1e-9)
    assert result == paired_bootstrap(metric, weak, strong, refs, samples=samples, seed=seed)


def test_derangement_has_no_fixed_points():
    for n in (2, 3, 10):
        perm = derangement(n, seed=n)
        assert sorted(perm) == list(range(n))
        assert all(perm[i] != i for i in range(n))
    assert derangement(10, 5) == derangement(10, 5)
    with pytest.raises(ValueError):
        derangement(1, 0)


def _encoded(text_model, n: int = 12):
    pairs = make_pairs(n, seed=11)
    return (text_model.encode_sources([p["en"] for p in pairs]),
            text_model.encode_targets([p["es"] for p in pairs]))


@pytest.mark.parametrize("architecture", ["marian", "gpt2"])
def test_source_use_finite_and_zero_gap_for_identical_sources(tiny_text_model, architecture):
    text_model = tiny_text_model(architecture)
    model = text_model.model
    sources, targets = _encoded(text_model)
    model.train()
    try:
        result = source_use(text_model, model, sources, targets, batch_size=5)
        assert model.training  # mode restored
    finally:
        model.eval()
    assert all(math.isfinite(v) for v in result.values())
    assert result["gap"] == result["xent_shuffled"] - result["xent_true"]
    assert result["xent_true"] > 0
    # Every example has the same source: shuffling changes nothing, so the gap is exactly 0.
    same = source_use(text_model, model, [sources[0]] * len(targets), targets, batch_size=5)
    assert same["gap"] == 0.0 and same["xent_true"] == same["xent_shuffled"]


def test_source_use_gap_vanishes_when_the_encoder_output_is_blanked(tiny_text_model):
    # A model that ignores its input: the encoder's output is zeroed, so cross-attention sees only
    # the value bias whatever the source; the gap is 0 up to rounding. The untrained model reads its
    # input only a little (gap ~5e-5 nats), but measurably.
    text_model = tiny_text_model("marian")
    model = text_model.model
    sources, targets = _encoded(text_model)
    reading = source_use(text_model, model, sources, targets)

    def blank(module, inputs, output):
        output.last_hidden_state = torch.zeros_like(output.last_hidden_state)
        return output

    handle = model.get_encoder().register_forward_hook(blank)
    try:
        ignoring = source_use(text_model, model, sources, targets)
    finally:
        handle.remove()
    assert abs(ignoring["gap"]) < 1e-6
    assert abs(reading["gap"]) > 1e-5


@pytest.mark.parametrize("metric", ["bleu", "rougeL"])
def test_paired_bootstrap_with_distinct_groups_is_the_per_example_bootstrap(metric):
    refs, weak, strong = _systems(20)
    plain = paired_bootstrap(metric, weak, strong, refs, samples=40, seed=5)
    assert paired_bootstrap(metric, weak, strong, refs, samples=40, seed=5, groups=list(range(20))) == plain


@pytest.mark.parametrize("metric", ["bleu", "chrf", "rougeL"])
def test_paired_bootstrap_groups_resample_whole_groups(metric):
    # Examples 0-5 are one group, the rest singletons: each resample draws group labels and takes
    # all of a drawn group's examples, as many times as it was drawn.
    refs, weak, strong = _systems(12)
    groups = [0] * 6 + list(range(1, 7))
    members = {g: [i for i, x in enumerate(groups) if x == g] for g in range(7)}
    samples, seed = 15, 2
    deltas = []
    for drawn in bootstrap_indices(7, samples, seed):
        idx = [i for g in drawn for i in members[g]]
        r = [refs[i] for i in idx]
        deltas.append(corpus_scores([strong[i] for i in idx], r, [metric])[metric]
                      - corpus_scores([weak[i] for i in idx], r, [metric])[metric])
    result = paired_bootstrap(metric, weak, strong, refs, samples=samples, seed=seed, groups=groups)
    low, high = np.percentile(deltas, [2.5, 97.5])
    assert result["low"] == pytest.approx(low, abs=1e-9)
    assert result["high"] == pytest.approx(high, abs=1e-9)
    assert result["p_b_not_better"] == pytest.approx(np.mean(np.array(deltas) <= 0))


def test_paired_bootstrap_rejects_groups_of_the_wrong_length():
    refs, weak, strong = _systems(5)
    with pytest.raises(ValueError, match="4 group labels for 5 examples"):
        paired_bootstrap("bleu", weak, strong, refs, groups=[0, 1, 2, 3])
