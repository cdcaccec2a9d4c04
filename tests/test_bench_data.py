"""scripts/bench_data.py at a tiny size: its corpus, and a first and a second start measured in
fresh processes (the second opening the first's cache)."""

from __future__ import annotations

import gzip
import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("bench_data", REPO / "scripts" / "bench_data.py")
bench_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_data)


def test_corpus_repeats_the_bible_split(tmp_path, monkeypatch):
    bible = tmp_path / "bible"
    bible.mkdir()
    rows = [json.dumps({"en": f"e{i}", "es": f"s{i}"}) + "\n" for i in range(7)]
    for split in ("train", "validation"):
        with gzip.open(bible / f"{split}.jsonl.gz", "wt") as f:
            f.writelines(rows)
    monkeypatch.setattr(bench_data, "BIBLE", bible)
    corpus = bench_data.write_corpus(17, tmp_path / "corpus")
    written = (corpus / "train.jsonl").read_text().splitlines(keepends=True)
    assert written == rows + rows + rows[:3]
    assert (corpus / "validation.jsonl").read_text().splitlines(keepends=True) == rows


def test_first_and_second_start_at_a_tiny_size(tmp_path):
    out = tmp_path / "data.md"
    assert bench_data.main(["--sizes", "200", "--arms", "first,second", "--out", str(out), "--no-reference",
                            "--train-tokenizer", "--tokenizer-cap", "150", "--timeout", "300"]) == 0
    results = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [(r["pairs"], r["arm"], r["cache"]) for r in results] == [(200, "first", "built"), (200, "second", "hit")]
    for r in results:
        assert 0 < r["first_step_s"] <= r["wall_s"] and r["peak_rss_mb"] > 50
    log = (tmp_path / "bench-data-work" / "runs" / "200-first.log").read_text()
    assert "tokenizer: trained on 150 of 200 training examples" in log
    table = out.read_text().splitlines()
    assert len(table) == 4 and table[2].startswith("| 200 | first | built |") and "| - | - |" in table[2]
