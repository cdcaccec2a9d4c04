"""Tests for scripts/prepare_debian_synopsis.py on a hand-written index file (no apt, no network)."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "prepare_debian_synopsis.py"
spec = importlib.util.spec_from_file_location("prepare_debian_synopsis", SCRIPT)
pd = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pd
spec.loader.exec_module(pd)

LONG = " ".join(f"word{i}" for i in range(25))
INDEX = f"""Package: 0ad
Description-md5: d943033bedada21853d2ae54a2578a7b
Description-en: Real-time strategy game of ancient warfare
 0 A.D. is a free, open-source,
 real-time   strategy game. {LONG}

Package: 0ad-data
Description-md5: 26581e685027d5ae84824362a4ba59ee
Description-en: Real-time strategy game of ancient warfare (data files)
 0 A.D. is a free, open-source,
 real-time   strategy game. {LONG}
 .
 This package contains the main data files required by 0 A.D.

Package: 0ad-twin
Description-md5: 00000000000000000000000000000000
Description-en: A sibling with the very same description
 0 A.D. is a free, open-source,
 real-time   strategy game. {LONG}

Package: tiny
Description-md5: 11111111111111111111111111111111
Description-en: Too short to summarize
 Only a few words here.
"""


def read_jsonl_gz(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for line in f]


def test_parse_joins_lines_and_paragraphs():
    records = pd.parse_translations(INDEX)
    assert [r["package"] for r in records] == ["0ad", "0ad-data", "0ad-twin", "tiny"]
    first = f"0 A.D. is a free, open-source, real-time strategy game. {LONG}"
    assert records[0] == {"package": "0ad", "synopsis": "Real-time strategy game of ancient warfare",
                          "paragraphs": [first]}
    assert records[1]["paragraphs"] == [first, "This package contains the main data files required by 0 A.D."]


def test_pairs_drop_short_and_repeated_descriptions_and_keep_siblings_together():
    splits, counts = pd.build_pairs(pd.parse_translations(INDEX), min_words=20)
    pairs = [p for rows in splits.values() for p in rows]
    assert sorted(p["package"] for p in pairs) == ["0ad", "0ad-data"]  # twin repeats 0ad, tiny is short
    assert counts["dropped: long description already used (sibling package)"] == 1
    assert counts["dropped: long description under 20 words"] == 1
    # 0ad and 0ad-data differ after the first paragraph, but share it, hence a split and a family
    assert len([name for name, rows in splits.items() if rows]) == 1
    by_name = {p["package"]: p for p in pairs}
    first_paragraph = by_name["0ad"]["source"]  # 0ad has one paragraph
    assert by_name["0ad"]["family"] == by_name["0ad-data"]["family"] == pd.paragraph_hash(first_paragraph).hex()
    assert len(by_name["0ad"]["family"]) == 16


def test_split_is_a_stable_function_of_the_first_paragraph():
    assert pd.split_of("Some text  here") == pd.split_of("some text here")  # case and spacing ignored
    shares = [pd.split_of(f"description number {i}") for i in range(4000)]
    assert 0.015 < shares.count("test") / 4000 < 0.035 and 0.015 < shares.count("validation") / 4000 < 0.035


def test_main_writes_the_splits_from_a_lists_directory(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "mirror_dists_main_i18n_Translation-en").write_text(INDEX, encoding="utf-8")
    pd.main(["--lists", str(lists), "--out", str(tmp_path / "out")])
    rows = {name: read_jsonl_gz(tmp_path / "out" / f"{name}.jsonl.gz")
            for name in ("train", "validation", "test")}
    assert sum(len(r) for r in rows.values()) == 2
    assert all(set(row) == {"source", "target", "package", "family"} for r in rows.values() for row in r)
    assert "read 4 descriptions from 1 index file(s)" in capsys.readouterr().out


def test_manifest_names_each_suite_date_and_the_digest_of_each_split(tmp_path, capsys):
    lists = tmp_path / "lists"
    lists.mkdir()
    (lists / "mirror_dists_bookworm_main_i18n_Translation-en").write_text(INDEX, encoding="utf-8")
    (lists / "mirror_dists_bookworm_InRelease").write_text(
        "-----BEGIN PGP SIGNED MESSAGE-----\nOrigin: Debian\nCodename: bookworm\nDate: Sat, 11 Jul 2026 10:16:37 UTC\n")
    (lists / "mirror_dists_bookworm-updates_main_i18n_Translation-en").write_text("", encoding="utf-8")  # no InRelease
    pd.main(["--lists", str(lists), "--out", str(tmp_path / "out")])
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    dates = {i["file"]: i["suite_date"] for i in manifest["indexes"]}
    assert dates == {"mirror_dists_bookworm_main_i18n_Translation-en": "Sat, 11 Jul 2026 10:16:37 UTC",
                     "mirror_dists_bookworm-updates_main_i18n_Translation-en": None}
    for name, entry in manifest["splits"].items():
        with gzip.open(tmp_path / "out" / f"{name}.jsonl.gz", "rb") as f:
            text = f.read()
        assert entry["sha256"] == hashlib.sha256(text).hexdigest()
        assert entry["pairs"] == text.count(b"\n")
    assert sum(e["pairs"] for e in manifest["splits"].values()) == 2
    assert sum(e["families"] for e in manifest["splits"].values()) == 1  # 0ad and 0ad-data: one family
    assert "(bookworm-updates date unknown, bookworm Sat, 11 Jul 2026 10:16:37 UTC)" in capsys.readouterr().out


def test_lists_and_keep_lists_together_are_refused(tmp_path):
    with pytest.raises(SystemExit, match="give one of them"):
        pd.main(["--lists", str(tmp_path), "--keep-lists", str(tmp_path), "--out", str(tmp_path / "out")])
