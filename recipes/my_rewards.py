"""Example custom rewards for recipes/custom_reward.yaml (the reward contract is TRL's).

    PYTHONPATH=recipes seqrl finetune recipes/custom_reward.yaml
"""

from __future__ import annotations


def length_penalty(completions: list[str], references: list[str], alpha: float = 0.5, **columns) -> list[float]:
    """1 for an output as long as its reference (in words), falling to 0 at (1 + 1/alpha) x or 0 x
    its length: a guard against the short outputs a BLEU reward can drift towards."""
    scores = []
    for hyp, ref in zip(completions, references, strict=True):
        ratio = len(hyp.split()) / max(len(ref.split()), 1)
        scores.append(max(0.0, 1.0 - alpha * abs(ratio - 1.0)))
    return scores


def same_book_bonus(completions: list[str], book: list[str], **columns) -> list[float | None]:
    """Uses an extra dataset column (`book`): None (not applicable) outside the Gospels."""
    gospels = {"Matthew", "Mark", "Luke", "John"}
    return [0.0 if b in gospels else None for b in book]
