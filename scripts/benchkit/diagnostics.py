"""Honesty guards for the XENT-vs-MIXER quality benchmark.

A score alone hides a model that ignores its input or emits one generic output; these small
functions make that visible: output diversity and length, the lead-n and best-constant-output
baselines, and how much the model's cross-entropy depends on the true source. (The paired tests
between two systems are `seqrl compare`'s, in seqrl/compare.py.)
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from seqrl.losses import xent_sum
from seqrl.metrics import ROUGE_TYPES, corpus_scores
from seqrl.modeling import TextModel

METRICS = ("bleu", "chrf") + ROUGE_TYPES


def distinct_fraction(hypotheses: list[str]) -> float:
    """Distinct outputs / outputs (1.0: all different, 1/n: one output for everything; 0.0 if empty)."""
    return len(set(hypotheses)) / len(hypotheses) if hypotheses else 0.0


def length_ratio(hypotheses: list[str], references: list[str]) -> float:
    """Total whitespace words of the hypotheses / those of the references (sacrebleu's sys_len / ref_len,
    counted in plain words)."""
    _check_pairs(hypotheses, references)
    ref_words = sum(len(r.split()) for r in references)
    if ref_words == 0:
        raise ValueError("the references have no words")
    return sum(len(h.split()) for h in hypotheses) / ref_words


def rouge_precision_recall(hypotheses: list[str], references: list[str], metric: str) -> tuple[float, float]:
    """Mean per-pair precision and recall (0-100) of a ROUGE metric, whose F-measure is the score:
    shorter outputs trade recall for precision, and this shows which side a gain came from."""
    _check_pairs(hypotheses, references)
    if metric not in ROUGE_TYPES:
        raise ValueError(f"rouge_precision_recall: {metric!r} is not one of {ROUGE_TYPES}")
    scorer = rouge_scorer.RougeScorer([metric], use_stemmer=True)
    scores = [scorer.score(r, h)[metric] for h, r in zip(hypotheses, references, strict=True)]
    return (100.0 * sum(s.precision for s in scores) / len(scores), 100.0 * sum(s.recall for s in scores) / len(scores))


def bleu_brevity_split(hypotheses: list[str], references: list[str]) -> tuple[float, float]:
    """Corpus BLEU split into its two factors, (BLEU / brevity penalty, brevity penalty): a gain
    that only lengthens short outputs raises the second, better n-gram matches the first."""
    _check_pairs(hypotheses, references)
    score = BLEU().corpus_score(hypotheses, [references])  # the defaults of corpus_bleu, as corpus_scores
    return (score.score / score.bp if score.bp > 0 else 0.0), score.bp


def lead_words(sources: list[str], n: int) -> list[str]:
    """The first `n` whitespace words of each source: the summarization lead-n baseline."""
    return [" ".join(s.split()[:n]) for s in sources]


def frequent_targets(targets: list[str], k: int) -> list[str]:
    """The `k` most frequent target strings, ties broken by first occurrence: the candidates for
    `best_constant_output`."""
    return [text for text, _ in Counter(targets).most_common(k)]  # most_common keeps insertion order on ties


def best_constant_output(candidates: list[str], references: list[str], metric: str) -> tuple[str, float]:
    """The candidate which, output for every example, scores the highest corpus `metric` against
    `references`, and that score (the first candidate wins ties).

    Each candidate costs one full `corpus_scores` pass over the references (about 0.04 s for BLEU,
    0.1 s for ROUGE, per 1,400 short references on one core), so pass a few hundred (e.g.
    `frequent_targets(train_targets, 200)`), not every distinct training target.
    """
    _check_metric(metric)
    if not candidates:
        raise ValueError("no candidate outputs")
    best, best_score = candidates[0], float("-inf")
    for candidate in candidates:
        score = corpus_scores([candidate] * len(references), references, [metric])[metric]
        if score > best_score:
            best, best_score = candidate, score
    return best, best_score


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric '{metric}'; known: {', '.join(METRICS)}")


def _check_pairs(hypotheses: list[str], references: list[str]) -> None:
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not references:
        raise ValueError("no examples")


# ---------------------------------------------------------------------------------------------
# Does the model read its input?


def derangement(n: int, seed: int) -> list[int]:
    """A permutation of range(n) with no fixed points: a random n-cycle (needs n >= 2)."""
    if n < 2:
        raise ValueError(f"a permutation without fixed points needs at least 2 items, got {n}")
    order = np.random.default_rng(seed).permutation(n).tolist()
    perm = [0] * n
    for i in range(n):
        perm[order[i]] = order[(i + 1) % n]  # each item takes the next one's place in the cycle
    return perm


def source_use(text_model: TextModel, model: torch.nn.Module, source_ids: list[list[int]],
               target_ids: list[list[int]], *, batch_size: int = 64, seed: int = 0) -> dict[str, float]:
    """Cross-entropy (nats per target token) of the gold targets given their true sources, and
    given sources shuffled across examples (`derangement(n, seed)`); "gap" = shuffled - true.

    A model that ignores its input has gap ~0. Evaluated in eval mode without gradients; the
    model's train/eval mode is restored afterwards.
    """
    if len(source_ids) != len(target_ids):
        raise ValueError(f"{len(source_ids)} sources for {len(target_ids)} targets")
    shuffled = [source_ids[j] for j in derangement(len(source_ids), seed)]
    was_training = model.training
    model.eval()
    try:
        true = _mean_xent(text_model, model, source_ids, target_ids, batch_size)
        wrong = _mean_xent(text_model, model, shuffled, target_ids, batch_size)
    finally:
        model.train(was_training)
    return {"xent_true": true, "xent_shuffled": wrong, "gap": wrong - true}


@torch.no_grad()
def _mean_xent(text_model: TextModel, model: torch.nn.Module, source_ids: list[list[int]],
               target_ids: list[list[int]], batch_size: int) -> float:
    """Token-weighted mean cross-entropy of the targets over the whole set."""
    device = next(model.parameters()).device
    total, tokens = 0.0, 0
    for start in range(0, len(target_ids), batch_size):
        features = [{"source_ids": s, "target_ids": t} for s, t in
                    zip(source_ids[start:start + batch_size], target_ids[start:start + batch_size], strict=True)]
        batch = {k: v.to(device) for k, v in text_model.collate(features).items()}
        logits, labels, _ = text_model.target_logits(model, batch)
        loss, n_tokens = xent_sum(logits, labels)
        total += loss.item()
        tokens += int(n_tokens)
    if tokens == 0:
        raise ValueError("no target tokens to score")
    return total / tokens
