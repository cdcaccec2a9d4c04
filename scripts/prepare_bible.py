#!/usr/bin/env python3
"""Build the default English -> Spanish dataset from two public-domain Bibles.

The source texts are the SWORD modules shipped by Debian:

* ``sword-text-kjv``   -> module ``engKJV2006eb`` (King James Version, 1769 text)
* ``sword-text-sparv`` -> module ``spaRV1909eb``  (Reina-Valera 1909)

Both modules are in SWORD's zText format and use KJV versification.  This
script downloads the two ``.deb`` files with ``apt-get download`` (nothing is
installed on the system), unpacks them with ``dpkg-deb -x``, reads the
compressed verse text with a small stdlib-only zText reader, strips the
OSIS/Strong's markup, aligns the verses (realigning the chapters where the
Spanish numbering differs from the KJV) and writes verse pairs, split by
*book*, as deterministic gzip-compressed JSON lines::

    {"id": "Gen.1.1", "book": "Genesis", "en": "...", "es": "..."}

Usage::

    python scripts/prepare_bible.py --out data/bible_en_es
    python scripts/prepare_bible.py --debs DIR_WITH_DEBS --out data/bible_en_es
    python scripts/prepare_bible.py --sword-dir EXTRACTED_TREE --out data/bible_en_es
"""

from __future__ import annotations

import argparse
import gzip
import html
import io
import json
import math
import re
import shlex
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

# --------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------

EN_PACKAGE, EN_MODULE = "sword-text-kjv", "engKJV2006eb"
ES_PACKAGE, ES_MODULE = "sword-text-sparv", "spaRV1909eb"

# --------------------------------------------------------------------------
# Splits: whole books only (neighbouring verses overlap in content, so a
# random verse split would leak).  Books with close parallels elsewhere in
# the Bible (the synoptic gospels, Samuel/Kings/Chronicles, Ephesians/
# Colossians, 2 Peter/Jude, ...) are kept in train so that held-out verses
# are not near-copies of training verses.  Each held-out split mixes genres
# (narrative, poetry/wisdom, prophecy, gospel/history, letters) from both
# Testaments and has roughly 1,400 pairs.  Everything else is train.
# --------------------------------------------------------------------------

VALIDATION_BOOKS: tuple[str, ...] = ("Eccl", "Hab", "Acts", "Phil")
TEST_BOOKS: tuple[str, ...] = ("Ruth", "Esth", "Lam", "Jonah", "John", "Jas")

# --------------------------------------------------------------------------
# KJV versification: (OSIS id, English name, verses in each chapter).
# --------------------------------------------------------------------------

def _verse_counts(counts: str) -> tuple[int, ...]:
    """Parse "31 25 24 ..." (verses in chapter 1, 2, 3, ...)."""
    return tuple(int(n) for n in counts.split())


OLD_TESTAMENT: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("Gen", "Genesis", _verse_counts(
        "31 25 24 26 32 22 24 22 29 32 32 20 18 24 21 16 27 33 38 18 34 24 20 67 34 35 46 22 35 "
        "43 55 32 20 31 29 43 36 30 23 23 57 38 34 34 28 34 31 22 33 26"
    )),
    ("Exod", "Exodus", _verse_counts(
        "22 25 22 31 23 30 25 32 35 29 10 51 22 31 27 36 16 27 25 26 36 31 33 18 40 37 21 43 46 "
        "38 18 35 23 35 35 38 29 31 43 38"
    )),
    ("Lev", "Leviticus", _verse_counts(
        "17 16 17 35 19 30 38 36 24 20 47 8 59 57 33 34 16 30 37 27 24 33 44 23 55 46 34"
    )),
    ("Num", "Numbers", _verse_counts(
        "54 34 51 49 31 27 89 26 23 36 35 16 33 45 41 50 13 32 22 29 35 41 30 25 18 65 23 31 40 "
        "16 54 42 56 29 34 13"
    )),
    ("Deut", "Deuteronomy", _verse_counts(
        "46 37 29 49 33 25 26 20 29 22 32 32 18 29 23 22 20 22 21 20 23 30 25 22 19 19 26 68 29 "
        "20 30 52 29 12"
    )),
    ("Josh", "Joshua", _verse_counts(
        "18 24 17 24 15 27 26 35 27 43 23 24 33 15 63 10 18 28 51 9 45 34 16 33"
    )),
    ("Judg", "Judges", _verse_counts(
        "36 23 31 24 31 40 25 35 57 18 40 15 25 20 20 31 13 31 30 48 25"
    )),
    ("Ruth", "Ruth", _verse_counts("22 23 18 22")),
    ("1Sam", "1 Samuel", _verse_counts(
        "28 36 21 22 12 21 17 22 27 27 15 25 23 52 35 23 58 30 24 42 15 23 29 22 44 25 12 25 11 "
        "31 13"
    )),
    ("2Sam", "2 Samuel", _verse_counts(
        "27 32 39 12 25 23 29 18 13 19 27 31 39 33 37 23 29 33 43 26 22 51 39 25"
    )),
    ("1Kgs", "1 Kings", _verse_counts(
        "53 46 28 34 18 38 51 66 28 29 43 33 34 31 34 34 24 46 21 43 29 53"
    )),
    ("2Kgs", "2 Kings", _verse_counts(
        "18 25 27 44 27 33 20 29 37 36 21 21 25 29 38 20 41 37 37 21 26 20 37 20 30"
    )),
    ("1Chr", "1 Chronicles", _verse_counts(
        "54 55 24 43 26 81 40 40 44 14 47 40 14 17 29 43 27 17 19 8 30 19 32 31 31 32 34 21 30"
    )),
    ("2Chr", "2 Chronicles", _verse_counts(
        "17 18 17 22 14 42 22 18 31 19 23 16 22 15 19 14 19 34 11 37 20 12 21 27 28 23 9 27 36 "
        "27 21 33 25 33 27 23"
    )),
    ("Ezra", "Ezra", _verse_counts("11 70 13 24 17 22 28 36 15 44")),
    ("Neh", "Nehemiah", _verse_counts("11 20 32 23 19 19 73 18 38 39 36 47 31")),
    ("Esth", "Esther", _verse_counts("22 23 15 17 14 14 10 17 32 3")),
    ("Job", "Job", _verse_counts(
        "22 13 26 21 27 30 21 22 35 22 20 25 28 22 35 22 16 21 29 29 34 30 17 25 6 14 23 28 25 "
        "31 40 22 33 37 16 33 24 41 30 24 34 17"
    )),
    ("Ps", "Psalms", _verse_counts(
        "6 12 8 8 12 10 17 9 20 18 7 8 6 7 5 11 15 50 14 9 13 31 6 10 22 12 14 9 11 12 24 11 22 "
        "22 28 12 40 22 13 17 13 11 5 26 17 11 9 14 20 23 19 9 6 7 23 13 11 11 17 12 8 12 11 10 "
        "13 20 7 35 36 5 24 20 28 23 10 12 20 72 13 19 16 8 18 12 13 17 7 18 52 17 16 15 5 23 "
        "11 13 12 9 9 5 8 28 22 35 45 48 43 13 31 7 10 10 9 8 18 19 2 29 176 7 8 9 4 8 5 6 5 6 "
        "8 8 3 18 3 3 21 26 9 8 24 13 10 7 12 15 21 10 20 14 9 6"
    )),
    ("Prov", "Proverbs", _verse_counts(
        "33 22 35 27 23 35 27 36 18 32 31 28 25 35 33 33 28 24 29 30 31 29 35 34 28 28 27 28 27 "
        "33 31"
    )),
    ("Eccl", "Ecclesiastes", _verse_counts("18 26 22 16 20 12 29 17 18 20 10 14")),
    ("Song", "Song of Solomon", _verse_counts("17 17 11 16 16 13 13 14")),
    ("Isa", "Isaiah", _verse_counts(
        "31 22 26 6 30 13 25 22 21 34 16 6 22 32 9 14 14 7 25 6 17 25 18 23 12 21 13 29 24 33 9 "
        "20 24 17 10 22 38 22 8 31 29 25 28 28 25 13 15 22 26 11 23 15 12 17 13 12 21 14 21 22 "
        "11 12 19 12 25 24"
    )),
    ("Jer", "Jeremiah", _verse_counts(
        "19 37 25 31 31 30 34 22 26 25 23 17 27 22 21 21 27 23 15 18 14 30 40 10 38 24 22 17 32 "
        "24 40 44 26 22 19 32 21 28 18 16 18 22 13 30 5 28 7 47 39 46 64 34"
    )),
    ("Lam", "Lamentations", _verse_counts("22 22 66 22 22")),
    ("Ezek", "Ezekiel", _verse_counts(
        "28 10 27 17 17 14 27 18 11 22 25 28 23 23 8 63 24 32 14 49 32 31 49 27 17 21 36 26 21 "
        "26 18 32 33 31 15 38 28 23 29 49 26 20 27 31 25 24 23 35"
    )),
    ("Dan", "Daniel", _verse_counts("21 49 30 37 31 28 28 27 27 21 45 13")),
    ("Hos", "Hosea", _verse_counts("11 23 5 19 15 11 16 14 17 15 12 14 16 9")),
    ("Joel", "Joel", _verse_counts("20 32 21")),
    ("Amos", "Amos", _verse_counts("15 16 15 13 27 14 17 14 15")),
    ("Obad", "Obadiah", _verse_counts("21")),
    ("Jonah", "Jonah", _verse_counts("17 10 10 11")),
    ("Mic", "Micah", _verse_counts("16 13 12 13 15 16 20")),
    ("Nah", "Nahum", _verse_counts("15 13 19")),
    ("Hab", "Habakkuk", _verse_counts("17 20 19")),
    ("Zeph", "Zephaniah", _verse_counts("18 15 20")),
    ("Hag", "Haggai", _verse_counts("15 23")),
    ("Zech", "Zechariah", _verse_counts("21 13 10 14 11 15 14 23 17 12 17 14 9 21")),
    ("Mal", "Malachi", _verse_counts("14 17 18 6")),
)

NEW_TESTAMENT: tuple[tuple[str, str, tuple[int, ...]], ...] = (
    ("Matt", "Matthew", _verse_counts(
        "25 23 17 25 48 34 29 34 38 42 30 50 58 36 39 28 27 35 30 34 46 46 39 51 46 75 66 20"
    )),
    ("Mark", "Mark", _verse_counts("45 28 35 41 43 56 37 38 50 52 33 44 37 72 47 20")),
    ("Luke", "Luke", _verse_counts(
        "80 52 38 44 39 49 50 56 62 42 54 59 35 35 32 31 37 43 48 47 38 71 56 53"
    )),
    ("John", "John", _verse_counts(
        "51 25 36 54 47 71 53 59 41 42 57 50 38 31 27 33 26 40 42 31 25"
    )),
    ("Acts", "Acts", _verse_counts(
        "26 47 26 37 42 15 60 40 43 48 30 25 52 28 41 40 34 28 41 38 40 30 35 27 27 32 44 31"
    )),
    ("Rom", "Romans", _verse_counts("32 29 31 25 21 23 25 39 33 21 36 21 14 23 33 27")),
    ("1Cor", "1 Corinthians", _verse_counts("31 16 23 21 13 20 40 13 27 33 34 31 13 40 58 24")),
    ("2Cor", "2 Corinthians", _verse_counts("24 17 18 18 21 18 16 24 15 18 33 21 14")),
    ("Gal", "Galatians", _verse_counts("24 21 29 31 26 18")),
    ("Eph", "Ephesians", _verse_counts("23 22 21 32 33 24")),
    ("Phil", "Philippians", _verse_counts("30 30 21 23")),
    ("Col", "Colossians", _verse_counts("29 23 25 18")),
    ("1Thess", "1 Thessalonians", _verse_counts("10 20 13 18 28")),
    ("2Thess", "2 Thessalonians", _verse_counts("12 17 18")),
    ("1Tim", "1 Timothy", _verse_counts("20 15 16 16 25 21")),
    ("2Tim", "2 Timothy", _verse_counts("18 26 17 22")),
    ("Titus", "Titus", _verse_counts("16 15 15")),
    ("Phlm", "Philemon", _verse_counts("25")),
    ("Heb", "Hebrews", _verse_counts("14 18 19 16 14 20 28 13 28 39 40 29 25")),
    ("Jas", "James", _verse_counts("27 26 18 17 20")),
    ("1Pet", "1 Peter", _verse_counts("25 25 22 19 14")),
    ("2Pet", "2 Peter", _verse_counts("21 22 18")),
    ("1John", "1 John", _verse_counts("10 29 24 21 21")),
    ("2John", "2 John", _verse_counts("13")),
    ("3John", "3 John", _verse_counts("14")),
    ("Jude", "Jude", _verse_counts("25")),
    ("Rev", "Revelation", _verse_counts(
        "20 29 22 11 14 17 17 13 21 11 19 17 18 20 8 21 18 24 21 15 27 21"
    )),
)

TESTAMENTS = {"ot": OLD_TESTAMENT, "nt": NEW_TESTAMENT}
BOOK_NAMES = {osis: name for books in TESTAMENTS.values() for osis, name, _ in books}


class PrepareError(RuntimeError):
    """A problem reported to the user as a one-line error."""


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


# --------------------------------------------------------------------------
# Versification
# --------------------------------------------------------------------------


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


# --------------------------------------------------------------------------
# zText reader
# --------------------------------------------------------------------------

BLOCK_ENTRY = struct.Struct("<III")  # offset, compressed size, uncompressed size
VERSE_ENTRY = struct.Struct("<IIH")  # block number, offset in block, size


def read_blocks(bzs: bytes, bzz: bytes) -> list[bytes]:
    """Decompress every block listed in a ``.bzs`` file from a ``.bzz`` file."""
    if len(bzs) % BLOCK_ENTRY.size:
        raise PrepareError("corrupt zText block index (.bzs): truncated entry")
    blocks: list[bytes] = []
    for offset, size, raw_size in BLOCK_ENTRY.iter_unpack(bzs):
        try:
            data = zlib.decompress(bzz[offset : offset + size]) if size else b""
        except zlib.error as error:
            raise PrepareError(f"corrupt zText block at offset {offset}: {error}") from error
        if len(data) != raw_size:
            raise PrepareError(f"corrupt zText block at offset {offset}: size mismatch")
        blocks.append(data)
    return blocks


def read_ztext(module_dir: Path, testament: str) -> list[str]:
    """Return the raw (marked-up) text of every index entry of one testament."""
    paths = [module_dir / f"{testament}.{ext}" for ext in ("bzs", "bzz", "bzv")]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise PrepareError(f"zText module file not found: {missing[0]}")
    bzs, bzz, bzv = (p.read_bytes() for p in paths)
    blocks = read_blocks(bzs, bzz)
    if len(bzv) % VERSE_ENTRY.size:
        raise PrepareError(f"{paths[2]}: truncated verse index")
    entries: list[str] = []
    for block_no, offset, size in VERSE_ENTRY.iter_unpack(bzv):
        if size == 0:
            entries.append("")
        elif block_no >= len(blocks):
            raise PrepareError(f"{paths[2]}: verse points at missing block {block_no}")
        else:
            entries.append(blocks[block_no][offset : offset + size].decode("utf-8", "replace"))
    return entries


def read_module(module_dir: Path) -> dict[str, str]:
    """Read a KJV-versified zText module into ``{"Gen.1.1": raw_text, ...}``."""
    texts: dict[str, str] = {}
    for testament in TESTAMENTS:
        entries = read_ztext(module_dir, testament)
        if len(entries) != index_size(testament):
            raise PrepareError(
                f"{module_dir}: {testament} index has {len(entries)} entries, "
                f"KJV versification needs {index_size(testament)}"
            )
        check_layout(module_dir, testament, entries)
        for ref in verse_refs(testament):
            texts[ref.osis_id] = entries[ref.index]
    return texts


def check_layout(module_dir: Path, testament: str, entries: Sequence[str]) -> None:
    """Check that book/chapter intro entries carry the expected OSIS markers.

    osis2mod writes a book's ``<div osisID="Gen" type="book">`` into the book
    intro entry and a chapter's ``<chapter osisID="Gen.1">`` into the entry
    just before verse 1, so this validates the versification table against
    the module (where the module has such markers at all).
    """
    for ref in verse_refs(testament):
        if ref.verse != 1:
            continue
        expected = [(ref.index - 1, "<chapter", f'osisID="{ref.book}.{ref.chapter}"')]
        if ref.chapter == 1:
            expected.append((ref.index - 2, 'type="book"', f'osisID="{ref.book}"'))
        for index, tag, marker in expected:
            if tag in entries[index] and marker not in entries[index]:
                raise PrepareError(f"{module_dir}: index layout mismatch at {ref.osis_id}")


# --------------------------------------------------------------------------
# Markup cleaning
# --------------------------------------------------------------------------

NOTE_RE = re.compile(r"<note\b[^>]*>.*?</note>", re.DOTALL)
# The KJV module marks the Pauline subscriptions ("Written to the Romans from
# Corinthus...") as a title after the chapter's end tag; the Spanish module has
# them as plain text in the last verse, so they are kept on both sides.
SUBSCRIPTION_RE = re.compile(r"(<chapter eID=[^>]*>\s*)<title>(.*?)</title>", re.DOTALL)
# Headings are dropped; canonical psalm titles ("A Psalm of David.") are part
# of verse 1 in the Spanish text, so their words are kept in English too.
TITLE_RE = re.compile(r"<title\b(?![^>]*canonical=\"true\")[^>]*>.*?</title>", re.DOTALL)
# "...</w><transChange>..." separates two words; elsewhere tags may sit inside
# a word ("give</w>n", "preguntándo<transChange>le"), so tags are deleted.
WORD_BOUNDARY_RE = re.compile(r"(</(?:w|transChange)>)(?=<(?:w|transChange)\b)")
TAG_RE = re.compile(r"<[^>]*>")
USFM_RE = re.compile(r"\\\+?[a-z]+\d*\*?")  # leftover USFM markers, e.g. "\nd", "\+nd*"
SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([,.;:!?)\]])")
SPACE_AFTER_OPEN_RE = re.compile(r"([(\[¡¿])\s+")


def clean_markup(raw: str) -> str:
    """Turn an OSIS verse into plain text.

    Notes and headings are dropped with their contents; other tags
    (``<w lemma=...>``, ``<transChange>``, ``<divineName>``, ``<q>``...) are
    removed but keep their text.  HTML entities are unescaped, pilcrows and
    stray USFM markers removed, and whitespace collapsed.
    """
    text = NOTE_RE.sub(" ", raw)
    text = SUBSCRIPTION_RE.sub(r"\1 \2", text)
    text = TITLE_RE.sub(" ", text)
    text = WORD_BOUNDARY_RE.sub(r"\1 ", text)
    text = TAG_RE.sub("", text)
    text = USFM_RE.sub(" ", text)
    text = html.unescape(text).replace("\u00b6", " ")
    text = " ".join(text.split())
    text = SPACE_BEFORE_PUNCT_RE.sub(r"\1", text)
    return SPACE_AFTER_OPEN_RE.sub(r"\1", text)


# Ps 119 is an acrostic: the Spanish text prefixes the first verse of each
# stanza with the Hebrew letter's name ("ALEPH.", "BETH", ...), which the
# English module marks as a (dropped) heading instead.
HEBREW_LETTERS = (
    "ALEPH|BETH|GIMEL|DALETH|HE|VAU|ZAIN|CHETH|TETH|JOD|CAPH|LAMED|MEM|NUN|"
    "SAMECH|AIN|PE|TZADDI|KOPH|COPH|RESH|SCHIN|SIN|TAU"
)
ACROSTIC_RE = re.compile(rf"^(?:{HEBREW_LETTERS})\b\.?\s*")
# The Spanish text prints the first word(s) of every chapter in capitals
# ("EN el principio", "Y FUERON acabados", "Salmo de David. JEHOVÁ es mi
# pastor"); the first such run in a chapter's first verse is lower-cased.
CAPS_WORD = r"[A-ZÁÉÍÓÚÜÑÂÊÎÔÛ]{2,}"
CHAPTER_CAPS_RE = re.compile(rf"\b(?:[AEOYÁ] )?{CAPS_WORD}(?: {CAPS_WORD})*\b")


def lower_chapter_capitals(text: str) -> str:
    """Undo the typographic capitals at the start of a Spanish chapter."""
    match = CHAPTER_CAPS_RE.search(text)
    if match is None:
        return text
    words = match.group(0).lower().split(" ")
    words[0] = words[0].capitalize()
    return text[: match.start()] + " ".join(words) + text[match.end() :]


def clean_spanish(osis_id: str, raw: str) -> str:
    """Clean a Spanish verse: markup, Ps 119 acrostic letters, chapter capitals."""
    text = clean_markup(raw)
    if osis_id.startswith("Ps.119."):
        text = ACROSTIC_RE.sub("", text)
    if osis_id.endswith(".1"):
        text = lower_chapter_capitals(text)
    return text


# --------------------------------------------------------------------------
# Alignment
# --------------------------------------------------------------------------
#
# Where the Spanish Bible numbers verses differently from the KJV (Jonah 1:17
# is Spanish 2:1, Job 39-41, Num 13, Hos 12, verses merged at the end of some
# letters...), the module stores text under the *Spanish* reference, leaves
# the unused KJV slot empty and appends overflow verses to the last verse of
# the chapter.  Pairing slot i with slot i would then misalign whole chapters.
# A Gale-Church style length-based alignment (dynamic programming over
# "beads" of English-Spanish verses: 1-1, 1-0, 0-1, 1-2 and n-1) finds where
# the texts really correspond; only 1-1 beads become pairs, keyed by the
# English reference.

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


# --------------------------------------------------------------------------
# Verse pairs
# --------------------------------------------------------------------------

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


def book_order() -> list[str]:
    """OSIS ids of all 66 books in canonical order."""
    return [osis for books in TESTAMENTS.values() for osis, _, _ in books]


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


def split_pairs(pairs: Iterable[Pair]) -> dict[str, list[Pair]]:
    """Assign pairs to train/validation/test by book."""
    splits: dict[str, list[Pair]] = {"train": [], "validation": [], "test": []}
    for pair in pairs:
        if pair.book in VALIDATION_BOOKS:
            splits["validation"].append(pair)
        elif pair.book in TEST_BOOKS:
            splits["test"].append(pair)
        else:
            splits["train"].append(pair)
    return splits


def write_jsonl_gz(path: Path, pairs: Iterable[Pair]) -> None:
    """Write pairs as gzip-compressed JSON lines, byte-for-byte reproducibly."""
    payload = "".join(pair.to_json() + "\n" for pair in pairs).encode("utf-8")
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buffer, compresslevel=9, mtime=0) as gz:
        gz.write(payload)
    path.write_bytes(buffer.getvalue())


# --------------------------------------------------------------------------
# Getting the modules
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where one module came from (for the dataset README)."""

    package: str
    module: str
    deb_file: str  # .deb file name, or "" for a pre-extracted tree
    module_version: str


def require_tool(name: str, alternative: str) -> None:
    """Fail with a one-line hint if an external command is missing."""
    if shutil.which(name) is None:
        raise PrepareError(f"'{name}' not found; without it, use {alternative}")


def run_command(cmd: Sequence[str], cwd: Path | None = None) -> bool:
    """Run a command quietly; True on success."""
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    return result.returncode == 0


def apt_download(dest: Path) -> None:
    """``apt-get download`` both packages into ``dest`` (no system changes).

    On a machine without package lists, fetch private ones first so that the
    system's apt state is never touched.
    """
    require_tool("apt-get", "--debs DIR or --sword-dir DIR")
    packages = [EN_PACKAGE, ES_PACKAGE]
    if run_command(["apt-get", "download", *packages], cwd=dest):
        return
    lists, cache = dest / "apt-lists", dest / "apt-cache"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    options = ["-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}"]
    if not run_command(["apt-get", "update", *options], cwd=dest):
        raise PrepareError("'apt-get update' failed; fetch the .deb files by hand and use --debs")
    if not run_command(["apt-get", "download", *options, *packages], cwd=dest):
        raise PrepareError(f"'apt-get download {' '.join(packages)}' failed")


def find_deb(deb_dir: Path, package: str) -> Path:
    """The newest-named ``PACKAGE_*.deb`` in a directory."""
    debs = sorted(deb_dir.glob(f"{package}_*.deb"))
    if not debs:
        raise PrepareError(f"{package}_*.deb not found in {deb_dir}")
    return debs[-1]


def extract_debs(deb_dir: Path, dest: Path) -> dict[str, str]:
    """Unpack both packages into ``dest``; return {package: .deb file name}."""
    require_tool("dpkg-deb", "--sword-dir DIR (an already-extracted tree)")
    names = {}
    for package in (EN_PACKAGE, ES_PACKAGE):
        deb = find_deb(deb_dir, package)
        if not run_command(["dpkg-deb", "-x", str(deb), str(dest)]):
            raise PrepareError(f"'dpkg-deb -x {deb}' failed")
        names[package] = deb.name
    return names


def find_module(root: Path, module: str) -> Path:
    """Locate a zText module directory (holding ``ot.bzv``) under ``root``."""
    for index in sorted(root.rglob("ot.bzv")):
        if index.parent.name.lower() == module.lower():
            return index.parent
    raise PrepareError(f"SWORD module '{module}' (ot.bzv) not found under {root}")


def module_version(root: Path, module: str) -> str:
    """``Version=`` from the module's ``mods.d/*.conf``, or "unknown"."""
    for conf in sorted(root.rglob("*.conf")):
        if conf.stem.lower() == module.lower():
            for line in conf.read_text(encoding="utf-8", errors="replace").splitlines():
                if line.startswith("Version="):
                    return line.split("=", 1)[1].strip()
    return "unknown"


def obtain_sword_tree(args: argparse.Namespace, tmp: Path) -> tuple[Path, dict[str, str]]:
    """Return (root of an extracted SWORD tree, {package: .deb name})."""
    if args.sword_dir is not None:
        if not args.sword_dir.is_dir():
            raise PrepareError(f"--sword-dir {args.sword_dir} is not a directory")
        return args.sword_dir, {}
    deb_dir = args.debs
    if deb_dir is None:
        deb_dir = tmp / "debs"
        deb_dir.mkdir()
        apt_download(deb_dir)
    root = tmp / "root"
    return root, extract_debs(deb_dir, root)


def load_modules(
    root: Path, debs: dict[str, str]
) -> tuple[dict[str, str], dict[str, str], list[Source]]:
    """Read both modules; return (English raw, Spanish raw, sources)."""
    texts, sources = [], []
    for package, module in ((EN_PACKAGE, EN_MODULE), (ES_PACKAGE, ES_MODULE)):
        texts.append(read_module(find_module(root, module)))
        sources.append(Source(package, module, debs.get(package, ""), module_version(root, module)))
    return texts[0], texts[1], sources


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------

LICENCE_TEXT = """\
Both texts are in the public domain, and so is this derived dataset.

* **King James Version** (1611, standardized text of 1769): public domain
  everywhere except that in the United Kingdom printing is restricted by the
  Crown's letters patent (held by Cambridge University Press, Oxford
  University Press and Collins); the module is distributed as
  `Copyright=PUBLIC DOMAIN`.
* **Reina-Valera 1909**: published in 1909; its copyright has expired and
  the module is distributed as `Copyright=PUBLIC DOMAIN` ("Dominio Público")."""

PROCESSING_TEXT = """\
* Verses are read straight from the zText files (no SWORD library) and mapped
  to references with the KJV versification table in the script.
* Markup is stripped: Strong's `<w>` tags, `<transChange>`, `<divineName>`,
  quotes etc. keep their words; footnotes and section/book headings are
  dropped with their contents; HTML entities are unescaped, pilcrows and
  stray USFM markers removed, whitespace collapsed.
* Psalm superscriptions ("A Psalm of David.") and the Pauline subscriptions
  ("Written to the Romans from Corinthus...") are kept, since the Spanish
  text has them inside the verse; the Hebrew letter names of Psalm 119
  ("ALEPH.") are removed from the Spanish; the printed capitals that open
  each Spanish chapter ("EN el principio") are lower-cased ("En el principio").
* Where the Spanish verse numbering differs from the KJV (e.g. Jonah 1:17 =
  Spanish 2:1, Job 38:39-41:34, Numbers 13, Hosea 12, 1 Samuel 24) the module
  files the text under the Spanish reference, so the verses are realigned by
  a length-based (Gale-Church style) alignment per book; pairs keep the KJV
  reference as `id`. Verses that have no 1-1 counterpart (merged or split
  differently) or whose lengths are implausible are dropped.
* Spelling is left as printed: the KJV's archaic English and the 1909
  Spanish orthography (accented "á", "fué", "crió")."""


def word_median(pairs: Sequence[Pair], lang: str) -> float:
    """Median number of whitespace-separated words on one side."""
    return statistics.median(len(getattr(p, lang).split()) for p in pairs) if pairs else 0.0


def books_in(pairs: Sequence[Pair]) -> str:
    """Comma-separated book names, in canonical order."""
    return ", ".join(dict.fromkeys(BOOK_NAMES[p.book] for p in pairs))


def readme_text(splits: dict[str, list[Pair]], sources: Sequence[Source], command: str) -> str:
    """The dataset card written next to the data files."""
    all_pairs = [p for split in splits.values() for p in split]
    n_verses = sum(len(ref) for ref in map(verse_refs, TESTAMENTS))
    realigned = sum(p.osis_id != p.es_id for p in all_pairs)
    rows = "\n".join(
        f"| {name} | {len(pairs):,} | {word_median(pairs, 'en'):g} "
        f"| {word_median(pairs, 'es'):g} |"
        for name, pairs in splits.items()
    )
    book_lists = "\n".join(f"* **{name}**: {books_in(pairs)}" for name, pairs in splits.items())
    source_rows = "\n".join(
        f"| {s.package} | `{s.deb_file or 'pre-extracted tree'}` | `{s.module}` "
        f"| {s.module_version} |"
        for s in sources
    )
    return f"""# bible_en_es: English (KJV) -> Spanish (Reina-Valera 1909) verse pairs

{len(all_pairs):,} aligned Bible verse pairs (of the KJV's {n_verses:,} verses;
{realigned} realigned across a numbering difference), split by book.

## Source

Debian packages of SWORD Bible modules (CrossWire / eBible.org):

| package | .deb | SWORD module | module version |
| --- | --- | --- | --- |
{source_rows}

## Licence

{LICENCE_TEXT}

## How it was made

```
{command}
```

{PROCESSING_TEXT}

## Format

`{{train,validation,test}}.jsonl.gz`: gzip-compressed JSON lines in canonical
Bible order, e.g.
`{{"id": "Gen.1.1", "book": "Genesis", "en": "...", "es": "..."}}`.
The files are byte-for-byte reproducible.

## Splits

Whole books only (neighbouring verses overlap), chosen to avoid books with
close parallels elsewhere (synoptic gospels, Samuel/Kings/Chronicles).

{book_lists}

| split | pairs | median English words | median Spanish words |
| --- | --- | --- | --- |
{rows}
| all | {len(all_pairs):,} | {word_median(all_pairs, 'en'):g} | {word_median(all_pairs, 'es'):g} |
"""


def write_dataset(
    out: Path, splits: dict[str, list[Pair]], sources: Sequence[Source], command: str
) -> None:
    """Write the three splits and the README into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    for name, pairs in splits.items():
        write_jsonl_gz(out / f"{name}.jsonl.gz", pairs)
    (out / "README.md").write_text(readme_text(splits, sources, command), encoding="utf-8")


# --------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--out", type=Path, default=Path("data/bible_en_es"), help="output directory"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--debs", type=Path, help=f"directory with {EN_PACKAGE}_*.deb and {ES_PACKAGE}_*.deb"
    )
    source.add_argument(
        "--sword-dir", type=Path, help="already-extracted tree containing both modules"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the dataset; return the process exit status."""
    args = parse_args(argv)
    given = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "scripts/prepare_bible.py", *given])
    try:
        with tempfile.TemporaryDirectory(prefix="prepare_bible_") as tmp:
            root, debs = obtain_sword_tree(args, Path(tmp))
            en_raw, es_raw, sources = load_modules(root, debs)
        splits = split_pairs(build_pairs(en_raw, es_raw))
        write_dataset(args.out, splits, sources, command)
    except PrepareError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    for name, pairs in splits.items():
        print(f"{name:>10}: {len(pairs):6,} pairs")
    print(f"{'total':>10}: {sum(map(len, splits.values())):6,} pairs -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
