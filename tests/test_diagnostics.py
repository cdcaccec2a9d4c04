"""Honesty guards (scripts/benchkit/diagnostics.py): hand-computed values for the small functions and
the source-use gap on tiny models. (The paired tests between systems: tests/test_compare.py.)"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
from conftest import make_pairs

from seqrl.metrics import corpus_scores

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # as when a script runs
from benchkit.diagnostics import (  # noqa: E402
    best_constant_output,
    bleu_brevity_split,
    derangement,
    distinct_fraction,
    frequent_targets,
    lead_words,
    length_ratio,
    rouge_precision_recall,
    source_use,
)


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
