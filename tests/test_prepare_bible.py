"""Tests for scripts/prepare_bible.py and scripts/bible/: the pure parts, on synthetic SWORD
modules (no apt)."""

from __future__ import annotations

import gzip
import json
import struct
import sys
import zlib
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))  # as when run: `python scripts/prepare_bible.py` imports scripts/bible/

import prepare_bible as pb  # noqa: E402
from bible import PrepareError, align, text, versification, ztext  # noqa: E402


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def write_ztext(module_dir: Path, testament: str, blocks: list[list[str]]) -> None:
    """Write a zText testament: each inner list is one zlib block of index entries."""
    module_dir.mkdir(parents=True, exist_ok=True)
    bzs, bzz, bzv = bytearray(), bytearray(), bytearray()
    for block_no, entries in enumerate(blocks):
        raw = bytearray()
        for entry in entries:
            data = entry.encode("utf-8")
            bzv += struct.pack("<IIH", block_no, len(raw), len(data))
            raw += data
        compressed = zlib.compress(bytes(raw))
        bzs += struct.pack("<III", len(bzz), len(compressed), len(raw))
        bzz += compressed
    for ext, data in (("bzs", bzs), ("bzz", bzz), ("bzv", bzv)):
        (module_dir / f"{testament}.{ext}").write_bytes(bytes(data))


def write_module(module_dir: Path, verses: dict[str, str]) -> None:
    """A full-size KJV-versified module whose only text is ``verses`` ({"Gen.1.1": ...})."""
    for testament in versification.TESTAMENTS:
        entries = [""] * versification.index_size(testament)
        for ref in versification.verse_refs(testament):
            if ref.verse == 1:  # chapter marker, as osis2mod writes it
                entries[ref.index - 1] = f'<chapter osisID="{ref.book}.{ref.chapter}"/>'
            entries[ref.index] = verses.get(ref.osis_id, "")
        half = len(entries) // 2
        write_ztext(module_dir, testament, [entries[:half], entries[half:]])


# --------------------------------------------------------------------------
# zText reader and versification
# --------------------------------------------------------------------------


def test_read_ztext_returns_entries_across_blocks(tmp_path):
    blocks = [
        ["", "<milestone/>", "In the beginning", "And the earth"],
        ["Y la tierra", "", "último versículo áéí"],
    ]
    write_ztext(tmp_path, "ot", blocks)
    assert ztext.read_ztext(tmp_path, "ot") == blocks[0] + blocks[1]


def test_read_ztext_missing_file_is_a_clear_error(tmp_path):
    write_ztext(tmp_path, "ot", [["a"]])
    (tmp_path / "ot.bzz").unlink()
    with pytest.raises(PrepareError, match="not found"):
        ztext.read_ztext(tmp_path, "ot")


def test_read_ztext_rejects_corrupt_block(tmp_path):
    write_ztext(tmp_path, "ot", [["some text"]])
    (tmp_path / "ot.bzz").write_bytes(b"not zlib data at all")
    with pytest.raises(PrepareError, match="corrupt"):
        ztext.read_ztext(tmp_path, "ot")


def test_kjv_versification_table():
    assert len(versification.OLD_TESTAMENT) == 39 and len(versification.NEW_TESTAMENT) == 27
    assert sum(len(chapters) for _, _, chapters in versification.OLD_TESTAMENT + versification.NEW_TESTAMENT) == 1189
    assert len(versification.verse_refs("ot")) == 23145 and len(versification.verse_refs("nt")) == 7957
    # 2 headers + one intro per book and per chapter, as in the real .bzv files
    assert versification.index_size("ot") == 24115 and versification.index_size("nt") == 8246


def test_verse_refs_layout():
    refs = versification.verse_refs("ot")
    assert (refs[0].osis_id, refs[0].index) == ("Gen.1.1", 4)  # 0-1 headers, 2 book, 3 chapter
    assert (refs[31].osis_id, refs[31].index) == ("Gen.2.1", 36)  # skips the Gen.2 intro
    assert versification.verse_refs("nt")[-1].osis_id == "Rev.22.21"


def test_read_module_maps_references(tmp_path):
    verses = {"Gen.1.1": "first", "Mal.4.6": "last ot", "Matt.1.1": "first nt", "Rev.22.21": "end"}
    write_module(tmp_path, verses)
    texts = ztext.read_module(tmp_path)
    assert len(texts) == 31102
    assert {key: texts[key] for key in verses} == verses
    assert texts["Gen.1.2"] == ""


def test_read_module_detects_layout_mismatch(tmp_path):
    write_module(tmp_path, {})
    entries = ztext.read_ztext(tmp_path, "nt")
    entries[versification.verse_refs("nt")[0].index - 1] = '<chapter n="1" osisID="Matt.2"/>'
    write_ztext(tmp_path, "nt", [entries])
    with pytest.raises(PrepareError, match="layout mismatch at Matt.1.1"):
        ztext.read_module(tmp_path)


def test_find_module(tmp_path):
    module_dir = tmp_path / "usr/share/sword/modules/texts/ztext/engkjv2006eb"
    write_ztext(module_dir, "ot", [["x"]])
    assert pb.find_module(tmp_path, "engKJV2006eb") == module_dir
    with pytest.raises(PrepareError, match="not found"):
        pb.find_module(tmp_path, "spaRV1909eb")


# --------------------------------------------------------------------------
# Markup cleaning
# --------------------------------------------------------------------------


def test_clean_markup_strips_strongs_tags():
    raw = 'In the <w lemma="strong:H07225">beginning</w> <w lemma="strong:H0430">God</w> created.'
    assert text.clean_markup(raw) == "In the beginning God created."


def test_clean_markup_drops_notes_with_contents():
    raw = (
        'the <w lemma="strong:H2822">darkness</w>.<note placement="foot"><reference '
        'type="annotateRef">1.4 </reference>the light from…: Heb. between</note> '
    )
    assert text.clean_markup(raw) == "the darkness."


def test_clean_markup_unescapes_entities_and_collapses_space():
    raw = "Tom &amp; Jerry\n\t said &quot;caf&#233;&quot;   &lt;ok&gt;  "
    assert text.clean_markup(raw) == 'Tom & Jerry said "café" <ok>'


def test_clean_markup_headings_psalm_titles_and_leftovers():
    raw = (
        '<div type="x-milestone" subType="x-preverse" sID="pv1"/>'
        "<title>THE HEADING</title>"
        '<title canonical="true" type="psalm">A Psalm of David.</title> '
        "¶ <divineName>LORD</divineName>, \\nd LORD\\+nd* hear <transChange "
        'type="added">me</transChange> ;'
    )
    assert text.clean_markup(raw) == "A Psalm of David. LORD, LORD hear me;"


def test_clean_markup_word_boundaries():
    spanish = (
        '<w lemma="strong:H8033">hay allí</w><transChange type="added">también</transChange>'
        '<w lemma="strong:H0916">bdelio</w>, preguntándo<transChange type="added">le</transChange>'
    )
    assert text.clean_markup(spanish) == "hay allí también bdelio, preguntándole"
    assert text.clean_markup('shall be <w lemma="x">give</w>n.') == "shall be given."


def test_clean_markup_keeps_subscription_after_chapter_end():
    raw = 'Amen. <chapter eID="Rom.16"/> <title>Written to the Romans.</title> <div eID="x"/>'
    assert text.clean_markup(raw) == "Amen. Written to the Romans."


def test_clean_spanish_lowers_chapter_capitals():
    assert text.clean_spanish("Gen.1.1", "<w>EN el principio</w>") == "En el principio"
    assert text.clean_spanish("Gen.2.1", "Y FUERON acabados") == "Y fueron acabados"
    assert text.clean_spanish("Ps.23.1", "Salmo de David. JEHOVÁ es") == "Salmo de David. Jehová es"
    # only chapter-initial verses; inscriptions elsewhere stay as printed
    assert text.clean_spanish("Exod.3.14", "YO SOY EL QUE SOY") == "YO SOY EL QUE SOY"


def test_clean_spanish_drops_psalm_119_letters():
    assert text.clean_spanish("Ps.119.9", "BETH ¿Con qué") == "¿Con qué"
    assert text.clean_spanish("Ps.119.17", "GIMEL. Haz bien") == "Haz bien"


# --------------------------------------------------------------------------
# Alignment, splits, output
# --------------------------------------------------------------------------


def test_align_lengths_identity():
    lengths = [50, 120, 80, 200, 40]
    assert align.align_lengths(lengths, lengths) == [(i, i) for i in range(5)]


def test_align_lengths_recovers_shifted_numbering():
    # English verses 0-5; the Spanish merges English 1+2 into one verse.
    en = [60, 150, 40, 200, 90, 120]
    es = [55, 175, 185, 80, 110]
    assert align.align_lengths(en, es) == [(0, 0), (3, 2), (4, 3), (5, 4)]


def test_align_book_realigns_and_drops_empty():
    en = {"Jonah.1.1": "a" * 100, "Jonah.1.2": "b" * 300, "Jonah.2.1": "c" * 60}
    es = {"Jonah.1.1": "x" * 95, "Jonah.1.2": "", "Jonah.2.1": "y" * 270, "Jonah.2.2": "z" * 55}
    pairs = align.align_book("Jonah", en, es)
    assert [(p.osis_id, p.es_id) for p in pairs] == [
        ("Jonah.1.1", "Jonah.1.1"),
        ("Jonah.1.2", "Jonah.2.1"),
        ("Jonah.2.1", "Jonah.2.2"),
    ]


def _pair(osis_id: str) -> object:
    return align.Pair(osis_id, osis_id.split(".")[0], "en", "és", osis_id)


def test_split_pairs_by_book():
    pairs = [_pair(f"{book}.1.1") for book in ("Gen", pb.VALIDATION_BOOKS[0], pb.TEST_BOOKS[0])]
    splits = pb.split_pairs(pairs)
    assert [[p.book for p in splits[s]] for s in ("train", "validation", "test")] == [
        ["Gen"],
        [pb.VALIDATION_BOOKS[0]],
        [pb.TEST_BOOKS[0]],
    ]
    assert not set(pb.VALIDATION_BOOKS) & set(pb.TEST_BOOKS)
    assert set(pb.VALIDATION_BOOKS + pb.TEST_BOOKS) <= set(versification.BOOK_NAMES)


def test_write_jsonl_gz_is_deterministic_utf8(tmp_path):
    pairs = [align.Pair("Gen.1.1", "Gen", "In the beginning", "En el principio crió", "Gen.1.1")]
    pb.write_jsonl_gz(tmp_path / "a.jsonl.gz", pairs)
    pb.write_jsonl_gz(tmp_path / "b.jsonl.gz", pairs)
    data = (tmp_path / "a.jsonl.gz").read_bytes()
    assert data == (tmp_path / "b.jsonl.gz").read_bytes()
    lines = gzip.decompress(data).decode("utf-8")
    assert "crió" in lines
    assert json.loads(lines) == {
        "id": "Gen.1.1", "book": "Genesis", "en": "In the beginning", "es": "En el principio crió"
    }


def test_main_end_to_end_on_synthetic_tree(tmp_path, capsys):
    root = tmp_path / "tree" / "usr/share/sword/modules/texts/ztext"
    write_module(root / "engKJV2006eb", {
        "Gen.1.1": 'In the <w lemma="strong:H07225">beginning</w> God created the heaven.',
        "John.3.16": "For God so loved the world.",
        "Acts.1.1": "The former treatise have I made.",
    })
    write_module(root / "spaRV1909eb", {
        "Gen.1.1": "EN el principio crió Dios los cielos.",
        "John.3.16": "Porque de tal manera amó Dios al mundo.",
        "Acts.1.1": "EN el primer tratado, oh Teófilo.",
    })
    out = tmp_path / "out"
    assert pb.main(["--sword-dir", str(tmp_path / "tree"), "--out", str(out)]) == 0
    rows = {
        split: read_jsonl_gz(out / f"{split}.jsonl.gz")
        for split in ("train", "validation", "test")
    }
    assert [r["id"] for r in rows["train"]] == ["Gen.1.1"]
    assert rows["train"][0]["es"] == "En el principio crió Dios los cielos."
    assert [r["id"] for r in rows["validation"]] == ["Acts.1.1"]
    assert [r["id"] for r in rows["test"]] == ["John.3.16"]
    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "--sword-dir" in readme and "public domain" in readme.lower()
    assert "train" in capsys.readouterr().out


def test_main_reports_missing_module(tmp_path, capsys):
    assert pb.main(["--sword-dir", str(tmp_path), "--out", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
