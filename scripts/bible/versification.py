"""KJV versification: the books, their chapters' verse counts, and the zText index layout.

Both Debian modules (``engKJV2006eb``, ``spaRV1909eb``) use it, so index entry i of one module is
the same verse slot as entry i of the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _read_books(path: Path) -> dict[str, tuple[tuple[str, str, tuple[int, ...]], ...]]:
    """testament ("ot", "nt") -> its books as (OSIS id, name, verses in chapter 1, 2, 3, ...), from
    the table beside this file (one book a line: testament, OSIS id, name, counts; tab-separated)."""
    books: dict[str, list] = {"ot": [], "nt": []}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith("#"):
            testament, osis, name, counts = line.split("\t")
            books[testament].append((osis, name, tuple(int(n) for n in counts.split())))
    return {testament: tuple(rows) for testament, rows in books.items()}


_BOOKS = _read_books(Path(__file__).with_name("kjv_verse_counts.tsv"))
OLD_TESTAMENT: tuple[tuple[str, str, tuple[int, ...]], ...] = _BOOKS["ot"]
NEW_TESTAMENT: tuple[tuple[str, str, tuple[int, ...]], ...] = _BOOKS["nt"]

TESTAMENTS = {"ot": OLD_TESTAMENT, "nt": NEW_TESTAMENT}
BOOK_NAMES = {osis: name for books in TESTAMENTS.values() for osis, name, _ in books}


@dataclass(frozen=True)
class VerseRef:
    """One verse and its position in a testament's zText index."""

    book: str  # OSIS id, e.g. "Gen"
    chapter: int
    verse: int
    index: int

    @property
    def osis_id(self) -> str:
        return f"{self.book}.{self.chapter}.{self.verse}"


def verse_refs(testament: str) -> list[VerseRef]:
    """Map a testament's zText index entries to verses.

    Index layout: entries 0 and 1 are module/testament headers; then for each
    book one book-intro entry, and for each chapter one chapter-intro entry
    followed by that chapter's verses.
    """
    refs: list[VerseRef] = []
    index = 2
    for osis, _name, chapters in TESTAMENTS[testament]:
        index += 1  # book intro
        for chapter, n_verses in enumerate(chapters, start=1):
            index += 1  # chapter intro
            for verse in range(1, n_verses + 1):
                refs.append(VerseRef(osis, chapter, verse, index))
                index += 1
    return refs


def index_size(testament: str) -> int:
    """Number of entries a KJV-versified testament index must have."""
    return verse_refs(testament)[-1].index + 1


def book_order() -> list[str]:
    """OSIS ids of all 66 books in canonical order."""
    return [osis for books in TESTAMENTS.values() for osis, _, _ in books]
