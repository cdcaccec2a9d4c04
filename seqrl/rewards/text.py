"""Built-in sentence-level rewards on text, from the reference implementations, scaled to [0, 1].

Every function follows the reward contract (see `seqrl.rewards`): keyword arguments
`completions` and `references` (lists of strings) plus its own options, one float per pair;
they name their parameters (no **kwargs), so a misspelled option in a recipe is an error.
Sentence BLEU needs smoothing (a short hypothesis would otherwise score 0 for missing 4-grams):
sacrebleu's `exp` smoothing by default; MIXER used +1 smoothing (`smooth_method="add-k"`).
"""

from __future__ import annotations

from functools import lru_cache

from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF, TER


@lru_cache(maxsize=16)
def _bleu(smooth_method: str, smooth_value: float | None, tokenize: str) -> BLEU:
    return BLEU(effective_order=True, smooth_method=smooth_method, smooth_value=smooth_value, tokenize=tokenize)


def bleu(completions: list[str], references: list[str], *, smooth_method: str = "exp",
         smooth_value: float | None = None, tokenize: str = "13a") -> list[float]:
    """sacrebleu sentence BLEU / 100."""
    metric = _bleu(smooth_method, smooth_value, tokenize)
    return [min(metric.sentence_score(h, [r]).score / 100.0, 1.0) for h, r in zip(completions, references, strict=True)]


def chrf(completions: list[str], references: list[str]) -> list[float]:
    """sacrebleu sentence chrF / 100."""
    metric = CHRF()
    return [metric.sentence_score(h, [r]).score / 100.0 for h, r in zip(completions, references, strict=True)]


def ter(completions: list[str], references: list[str]) -> list[float]:
    """1 - min(TER, 1): edits per reference word, clipped so the reward stays in [0, 1]."""
    metric = TER()
    pairs = zip(completions, references, strict=True)
    return [1.0 - min(metric.sentence_score(h, [r]).score / 100.0, 1.0) for h, r in pairs]


@lru_cache(maxsize=8)
def _rouge(kind: str, use_stemmer: bool) -> rouge_scorer.RougeScorer:
    return rouge_scorer.RougeScorer([kind], use_stemmer=use_stemmer)


def _rouge_f(kind: str, completions: list[str], references: list[str], use_stemmer: bool) -> list[float]:
    scorer = _rouge(kind, use_stemmer)
    return [scorer.score(r, h)[kind].fmeasure for h, r in zip(completions, references, strict=True)]


def rouge1(completions: list[str], references: list[str], *, use_stemmer: bool = True) -> list[float]:
    """rouge-score ROUGE-1 F-measure."""
    return _rouge_f("rouge1", completions, references, use_stemmer)


def rouge2(completions: list[str], references: list[str], *, use_stemmer: bool = True) -> list[float]:
    """rouge-score ROUGE-2 F-measure."""
    return _rouge_f("rouge2", completions, references, use_stemmer)


def rougeL(completions: list[str], references: list[str], *, use_stemmer: bool = True) -> list[float]:  # noqa: N802
    """rouge-score ROUGE-L F-measure."""
    return _rouge_f("rougeL", completions, references, use_stemmer)


BUILTINS = {"bleu": bleu, "chrf": chrf, "ter": ter, "rouge1": rouge1, "rouge2": rouge2, "rougeL": rougeL}
