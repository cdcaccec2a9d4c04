"""Corpus metrics for evaluation, from the reference implementations (sacrebleu, rouge-score).

BLEU and chrF are sacrebleu's corpus scores (0-100, default 13a tokenization); ROUGE is the
mean of rouge-score's per-pair F-measure with the Porter stemmer, times 100.
"""

from __future__ import annotations

import sacrebleu
from rouge_score import rouge_scorer

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def corpus_scores(hypotheses: list[str], references: list[str], names: list[str]) -> dict[str, float]:
    """The named metrics of hypotheses against one reference each."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    if not hypotheses:
        raise ValueError("no hypotheses to score")
    scores: dict[str, float] = {}
    if "bleu" in names:
        scores["bleu"] = sacrebleu.corpus_bleu(hypotheses, [references]).score
    if "chrf" in names:
        scores["chrf"] = sacrebleu.corpus_chrf(hypotheses, [references]).score
    rouge = [r for r in ROUGE_TYPES if r in names]
    if rouge:
        scorer = rouge_scorer.RougeScorer(rouge, use_stemmer=True)
        totals = dict.fromkeys(rouge, 0.0)
        for hyp, ref in zip(hypotheses, references, strict=True):
            for name, score in scorer.score(ref, hyp).items():
                totals[name] += score.fmeasure
        scores.update({name: 100.0 * total / len(hypotheses) for name, total in totals.items()})
    return scores
