"""Guards against reward hacking, as rewards to weight beside the metric being optimised: outputs
that game a metric drift too short, too long or into another language (He et al., NAACL 2024).

`length_ratio`: 0 inside a band of output length / reference length (or / source length, for
reference-free use), a penalty down to -1 outside it. `language_id`: the share of the output that
CLD2 (pycld2, its model compiled in) finds in the target language, 0 to 1. On the shipped Bible
validation verses, en against es, CLD2 with `bestEffort` judged 99.3% of whole verses, 87.9% of
their first 4 words and 76.5% of their first 2 words right, at about 0.2 ms a text; py3langid
99.3% / 66.7% / 18.8% at 1-2 ms, lingua (low accuracy mode) 97.8% / 59.1% at 2-11 ms."""

from __future__ import annotations

import numpy as np


def _lengths(texts: list[str], unit: str) -> np.ndarray:
    return np.array([len(t.split()) if unit == "words" else len(t.strip()) for t in texts], dtype=np.float64)


def length_ratio(completions: list[str], references: list[str] | None = None, prompts: list[str] | None = None, *,
                 low: float = 0.8, high: float = 1.25, against: str = "reference", unit: str = "words") -> list[float]:
    """0 where the output's length is within [low, high] times its reference's (`against: source`:
    its source's); below, -(low - ratio) / low; above, -(ratio - high) / high; never below -1."""
    if against not in ("reference", "source"):
        raise ValueError(f"against must be 'reference' or 'source', got {against!r}")
    if unit not in ("words", "chars"):
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    if not 0 < low <= high:
        raise ValueError(f"need 0 < low <= high, got low={low}, high={high}")
    others = references if against == "reference" else prompts
    ratio = _lengths(completions, unit) / np.maximum(_lengths(others, unit), 1.0)  # an empty one counts 1
    penalty = np.where(ratio < low, (low - ratio) / low, np.where(ratio > high, (ratio - high) / high, 0.0))
    return (-np.minimum(penalty, 1.0)).tolist()


def known_language(code: str) -> bool:
    import pycld2

    return code in {c for _, c in pycld2.LANGUAGES}


def language_id(completions: list[str], *, language: str | None = None) -> list[float]:
    """Share of each output in `language` (ISO 639-1, CLD2's codes), 0 to 1; an empty output 0.
    The target is `tokenizer.tgt_lang` / `tokenizer.languages` unless kwargs give `language`."""
    import pycld2

    if language is None:
        raise ValueError("no target language: set tokenizer.languages (or tokenizer.tgt_lang), "
                         "or kwargs {language: es}")
    shares = []
    for text in completions:
        clean = "".join(ch for ch in text if ch.isprintable() or ch.isspace())  # CLD2 refuses control bytes
        clean = clean.encode("utf-8", "replace").decode("utf-8")  # and lone surrogates
        if not clean.strip():
            shares.append(0.0)
            continue
        _, _, found = pycld2.detect(clean, bestEffort=True)
        shares.append(sum(percent for _, code, percent, _ in found if code == language) / 100.0)
    return shares


BUILTINS = {"length_ratio": length_ratio, "language_id": language_id}
