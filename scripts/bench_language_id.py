"""Which offline language identifier for the `language_id` reward: accuracy on short outputs and
speed, on the shipped Bible validation verses (en and es), whole and cut to their first 4 and 2
words. "Right" = the probability of the true language above 0.5. Candidates not installed are
skipped with a line (`pip install pycld2 py3langid lingua-language-detector`).

    python scripts/bench_language_id.py
"""

from __future__ import annotations

import gzip
import json
import statistics
import time
from pathlib import Path

DATA = Path(__file__).resolve().parents[1] / "data" / "bible_en_es" / "validation.jsonl.gz"


def texts(words: int | None) -> list[tuple[str, str]]:
    with gzip.open(DATA, "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    cut = (lambda t: " ".join(t.split()[:words])) if words else (lambda t: t)
    return [(cut(r[lang]), lang) for lang in ("en", "es") for r in rows]


def pycld2_scorer():
    import pycld2

    def p(text: str, lang: str) -> float:
        details = pycld2.detect(text, bestEffort=True)[2]
        return next((pct / 100 for _, code, pct, _ in details if code == lang), 0.0)
    return p


def py3langid_scorer():
    from py3langid.langid import _load_identifier

    identifier = _load_identifier(norm_probs=True)
    return lambda text, lang: dict(identifier.rank(text)).get(lang, 0.0)


def lingua_scorer():
    from lingua import Language, LanguageDetectorBuilder

    detector = LanguageDetectorBuilder.from_all_languages().with_low_accuracy_mode().build()
    languages = {"en": Language.ENGLISH, "es": Language.SPANISH}
    return lambda text, lang: detector.compute_language_confidence(text, languages[lang])


def main() -> None:
    sets = {"whole verses": texts(None), "first 4 words": texts(4), "first 2 words": texts(2)}
    for name, make in (("pycld2 (bestEffort)", pycld2_scorer), ("py3langid", py3langid_scorer),
                       ("lingua (low accuracy)", lingua_scorer)):
        try:
            score = make()
        except ImportError as err:
            print(f"{name}: not installed ({err.name})")
            continue
        for label, data in sets.items():
            start = time.perf_counter()
            probs = [score(text, lang) for text, lang in data]
            ms = (time.perf_counter() - start) / len(data) * 1e3
            right = sum(p > 0.5 for p in probs) / len(probs)
            print(f"{name:22s} {label:14s} right {right:.1%}  mean p {statistics.mean(probs):.3f}  {ms:.3f} ms/text")


if __name__ == "__main__":
    main()
