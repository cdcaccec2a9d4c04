"""Pair English and Spanish verses, realigning where the two Bibles number them differently.

Where the Spanish Bible numbers verses differently from the KJV (Jonah 1:17
is Spanish 2:1, Job 39-41, Num 13, Hos 12, verses merged at the end of some
letters...), the module stores text under the *Spanish* reference, leaves
the unused KJV slot empty and appends overflow verses to the last verse of
the chapter.  Pairing slot i with slot i would then misalign whole chapters.
A Gale-Church style length-based alignment (dynamic programming over
"beads" of English-Spanish verses: 1-1, 1-0, 0-1, 1-2 and n-1) finds where
the texts really correspond; only 1-1 beads become pairs, keyed by the
English reference.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass

from . import PrepareError
from .text import clean_markup, clean_spanish
from .versification import BOOK_NAMES, book_order

CHAR_RATIO = 0.92  # Spanish characters per English character (measured)
CHAR_VARIANCE = 2.0  # variance of that difference, per English character
# (English verses, Spanish verses, penalty).  Overflow verses are appended to
# the chapter's last Spanish verse, so many-to-one beads are allowed too.
BEAD_PENALTIES: tuple[tuple[int, int, float], ...] = (
    ((1, 1, 0.0), (1, 0, 15.0), (0, 1, 15.0), (1, 2, 12.0))
    + tuple((n, 1, 10.0 + 2.0 * n) for n in range(2, 11))
)
ALIGN_BAND = 12  # max |i - j| explored; numbering differences are small


def length_cost(en_chars: int, es_chars: int) -> float:
    """Negative log-probability that texts of these lengths are translations."""
    if en_chars == 0 or es_chars == 0:
        return 0.0
    delta = abs(es_chars - CHAR_RATIO * en_chars) / math.sqrt(CHAR_VARIANCE * en_chars)
    tail = math.erfc(delta / math.sqrt(2.0))
    return -math.log(tail) if tail > 1e-300 else delta * delta / 2.0


Cell = tuple[float, int, int]  # (best cost so far, di, dj of the last bead)


def _bead_costs(en: Sequence[int], es: Sequence[int]) -> dict[tuple[int, int], Cell]:
    """Fill the DP table over verse lengths: (i, j) -> best way to reach it."""
    table: dict[tuple[int, int], Cell] = {(0, 0): (0.0, 0, 0)}
    for i in range(len(en) + 1):
        for j in range(max(0, i - ALIGN_BAND), min(len(es), i + ALIGN_BAND) + 1):
            best: Cell | None = None
            for di, dj, penalty in BEAD_PENALTIES:
                prev = table.get((i - di, j - dj))
                if prev is None:
                    continue
                cost = prev[0] + penalty + length_cost(sum(en[i - di : i]), sum(es[j - dj : j]))
                if best is None or cost < best[0]:
                    best = (cost, di, dj)
            if best is not None and (i, j) != (0, 0):
                table[(i, j)] = best
    return table


def align_lengths(en: Sequence[int], es: Sequence[int]) -> list[tuple[int, int]]:
    """Return the (en index, es index) pairs joined by 1-1 beads."""
    table = _bead_costs(en, es)
    if (len(en), len(es)) not in table:
        raise PrepareError("alignment failed: verse counts differ by more than the band")
    pairs: list[tuple[int, int]] = []
    i, j = len(en), len(es)
    while (i, j) != (0, 0):
        _, di, dj = table[(i, j)]
        if (di, dj) == (1, 1):
            pairs.append((i - 1, j - 1))
        i, j = i - di, j - dj
    return pairs[::-1]



# 1-1 pairs whose lengths are this implausible (cost = -log p, see
# length_cost) almost always differ in where the verse boundary falls.
MAX_LENGTH_COST = 12.0


@dataclass(frozen=True)
class Pair:
    """One aligned verse pair, keyed by the English (KJV) reference."""

    osis_id: str
    book: str
    en: str
    es: str
    es_id: str  # Spanish module slot the text came from (differs if realigned)

    def to_json(self) -> str:
        record = {"id": self.osis_id, "book": BOOK_NAMES[self.book], "en": self.en, "es": self.es}
        return json.dumps(record, ensure_ascii=False)


def align_book(book: str, en: dict[str, str], es: dict[str, str]) -> list[Pair]:
    """Align one book's cleaned verses (``{osis_id: text}``, in order)."""
    en_ids = [key for key in en if en[key]]
    es_ids = [key for key in es if es[key]]
    pairs = []
    for i, j in align_lengths([len(en[k]) for k in en_ids], [len(es[k]) for k in es_ids]):
        en_text, es_text = en[en_ids[i]], es[es_ids[j]]
        if length_cost(len(en_text), len(es_text)) <= MAX_LENGTH_COST:
            pairs.append(Pair(en_ids[i], book, en_text, es_text, es_ids[j]))
    return pairs


def build_pairs(en_raw: dict[str, str], es_raw: dict[str, str]) -> list[Pair]:
    """Clean both modules and align them book by book, in canonical order."""
    pairs: list[Pair] = []
    for book in book_order():
        prefix = f"{book}."
        en = {k: clean_markup(v) for k, v in en_raw.items() if k.startswith(prefix)}
        es = {k: clean_spanish(k, v) for k, v in es_raw.items() if k.startswith(prefix)}
        pairs.extend(align_book(book, en, es))
    return pairs
