"""Built-in sentence-level rewards on token ids: BLEU, ROUGE-N and ROUGE-L, scaled to [0, 1].

They follow the reward contract (see `seqrl.rewards`) but read ids, not text:
`completion_ids` (the sampled ids, end-of-sequence stripped) against `reference_ids` (the gold
target ids, end-of-sequence stripped). Each scores the whole batch at once with
`seqrl.rewards.fast` and equals its text counterpart on the ids joined by spaces: `bleu` with
`tokenize="none"`, rouge-score without stemming. Skipping decoding and re-tokenising makes them
cheap enough to score every sample of every step; the price is that they count the model's
subword pieces, not words.

They do not take `completions`, so a step whose rewards are all token-ID ones decodes nothing.
Parameters are named (no **kwargs), so a misspelled option in a recipe is an error.
"""

from __future__ import annotations

from seqrl.rewards import fast


def _require_reference_ids(name: str, reference_ids) -> None:
    if reference_ids is None:
        raise ValueError(f"{name} scores ids against reference_ids (the gold target ids), "
                         f"but none were passed to the reward")


def token_bleu(completion_ids: list[list[int]], reference_ids: list[list[int]] | None = None,
               *, smooth_method: str = "exp", smooth_value: float | None = None, max_order: int = 4) -> list[float]:
    """sacrebleu sentence BLEU / 100 of the ids (as `bleu` with tokenize="none")."""
    _require_reference_ids("token_bleu", reference_ids)
    return fast.bleu(completion_ids, reference_ids, max_order=max_order, smooth=smooth_method,
                     smooth_value=smooth_value).tolist()


def token_rouge_n(completion_ids: list[list[int]], reference_ids: list[list[int]] | None = None, *,
                  n: int = 2) -> list[float]:
    """rouge-score ROUGE-N F-measure of the ids (n = 2: ROUGE-2)."""
    _require_reference_ids("token_rouge_n", reference_ids)
    return fast.rouge_n(completion_ids, reference_ids, n=n).tolist()


def token_rouge_l(completion_ids: list[list[int]], reference_ids: list[list[int]] | None = None) -> list[float]:
    """rouge-score ROUGE-L F-measure of the ids (longest common subsequence)."""
    _require_reference_ids("token_rouge_l", reference_ids)
    return fast.rouge_l(completion_ids, reference_ids).tolist()


BUILTINS = {"token_bleu": token_bleu, "token_rouge_n": token_rouge_n, "token_rouge_l": token_rouge_l}
