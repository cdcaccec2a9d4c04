"""Corpus metrics equal the reference implementations (sacrebleu, rouge-score)."""

from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer

from seqrl.metrics import ROUGE_TYPES, corpus_scores

ALL = ["bleu", "chrf", "rouge1", "rouge2", "rougeL"]

HYPS = [
    "the small dog eats a red apple",
    "a man reads the old book near the river",
    "the cats were running quickly",
    "green house",
    "el árbol pequeño está aquí",
]
REFS = [
    "the little dog eats the red apple",
    "the man reads an old book by the river",
    "the cat runs quickly",
    "the green houses are big",
    "el árbol pequeño",
]


def reference_scores(hyps, refs):
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    pairs = [scorer.score(r, h) for h, r in zip(hyps, refs, strict=True)]
    return {
        "bleu": sacrebleu.corpus_bleu(hyps, [refs]).score,
        "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score,
        **{name: 100 * sum(p[name].fmeasure for p in pairs) / len(pairs) for name in ROUGE_TYPES},
    }


def test_equals_reference_implementations():
    ours = corpus_scores(HYPS, REFS, ALL)
    theirs = reference_scores(HYPS, REFS)
    assert set(ours) == set(ALL)
    for name in ALL:
        assert ours[name] == pytest.approx(theirs[name], abs=1e-9), name
        assert 0 < ours[name] < 100, name


def test_corpus_bleu_is_not_mean_of_sentence_bleu():
    ours = corpus_scores(HYPS, REFS, ["bleu"])["bleu"]
    sentence_mean = sum(sacrebleu.sentence_bleu(h, [r]).score for h, r in zip(HYPS, REFS, strict=True)) / len(HYPS)
    assert ours != pytest.approx(sentence_mean)


def test_identical_is_100():
    texts = ["the cat sat on the mat today", "a very old man reads a book"]
    scores = corpus_scores(texts, texts, ALL)
    for name in ALL:
        assert scores[name] == pytest.approx(100.0), name


def test_disjoint_is_0():
    scores = corpus_scores(["alpha beta gamma delta"], ["one two three four"], ["bleu", "rouge1", "rougeL"])
    assert scores == {"bleu": pytest.approx(0.0), "rouge1": 0.0, "rougeL": 0.0}


def test_rouge_by_hand():
    # hyp "the cat sat" vs ref "the cat sat down": P = 3/3, R = 3/4, F = 2PR/(P+R) = 6/7
    scores = corpus_scores(["the cat sat"], ["the cat sat down"], ["rouge1", "rouge2", "rougeL"])
    assert scores["rouge1"] == pytest.approx(100 * 6 / 7)
    assert scores["rougeL"] == pytest.approx(100 * 6 / 7)
    # bigrams: hyp {the cat, cat sat}, ref {the cat, cat sat, sat down}: P = 1, R = 2/3, F = 4/5
    assert scores["rouge2"] == pytest.approx(80.0)


def test_rouge_is_mean_over_pairs():
    scores = corpus_scores(["the cat sat", "x y"], ["the cat sat", "p q"], ["rouge1"])
    assert scores["rouge1"] == pytest.approx(50.0)


def test_rouge_uses_stemmer():
    # Porter stems: dogs -> dog, running/runs -> run; without stemming only "the" would match
    scores = corpus_scores(["the dogs running"], ["the dog runs"], ["rouge1"])
    assert scores["rouge1"] == pytest.approx(100.0)


def test_only_requested_metrics():
    assert set(corpus_scores(HYPS, REFS, ["chrf"])) == {"chrf"}
    assert set(corpus_scores(HYPS, REFS, ["rouge2", "bleu"])) == {"rouge2", "bleu"}
    assert corpus_scores(HYPS, REFS, []) == {}


def test_mismatched_lengths_raise():
    with pytest.raises(ValueError, match=r"2 hypotheses for 3 references"):
        corpus_scores(["a", "b"], ["a", "b", "c"], ["bleu"])


def test_empty_raises():
    with pytest.raises(ValueError, match=r"no hypotheses"):
        corpus_scores([], [], ["bleu"])
