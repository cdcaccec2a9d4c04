"""Summarization pairs from Debian's package descriptions: long description -> synopsis.

    python scripts/prepare_debian_synopsis.py --out data/debian_synopsis

Fetches the English description indexes with `apt-get update` into a private directory (the
system's apt state is not touched; root needed, as on CI), or reads ones already fetched
(`--lists DIR`). The texts carry no explicit licence, so the corpus is built at run time and
never committed (`data/debian_synopsis/` is git-ignored).

Choices, each printed with its count:
- the source is the long description, paragraphs joined by spaces; the target is the synopsis
  (the first line of Description-en);
- descriptions under `--min-words` words are dropped (nothing to summarize);
- one pair per distinct long description (sibling packages repeat it), the package name first
  in sort order keeping its synopsis;
- split by a hash of the *first paragraph*, not the package name: siblings (0ad / 0ad-data /
  0ad-data-common) share their first paragraph and so land in the same split, even where later
  paragraphs differ. Each pair's `family` column is that hash: siblings stay in one split but
  are not independent examples (their sources start alike, and cut to a model's first tokens
  are often identical), so `bench_quality.py` bootstraps whole families.

The corpus follows the archive: the bookworm-security and bookworm-updates suites change every
few days, so two runs weeks apart can differ by a few pairs. `manifest.json` beside the splits
records each index file's suite date and digest and each split's digest (of its uncompressed
text), so a result can say which corpus it used; `--keep-lists DIR` keeps the fetched indexes
(in DIR/lists) and `--lists DIR/lists` rebuilds that exact corpus from them later.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

SPLITS = (("test", 0.025), ("validation", 0.025))  # the rest is train


def fetch_lists(work: Path) -> Path:
    """`apt-get update` into `work`, English descriptions only; returns the lists directory."""
    lists, cache = work / "lists", work / "cache"
    (lists / "partial").mkdir(parents=True, exist_ok=True)
    (cache / "archives" / "partial").mkdir(parents=True, exist_ok=True)
    cmd = ["apt-get", "update", "-o", f"Dir::State::Lists={lists}", "-o", f"Dir::Cache={cache}",
           "-o", "Acquire::Languages=en", "-o", "Acquire::GzipIndexes=false"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"prepare_debian_synopsis: `{' '.join(cmd)}` failed (exit {proc.returncode}; root and "
                 f"network access to the Debian mirror are needed): {proc.stderr.strip()[-500:]}")
    return lists


def suite_of(index_name: str) -> str:
    """The suite part of an apt index file's name: `<mirror>_dists_<suite>_main_i18n_Translation-en`."""
    return index_name.split("_main_")[0]


def release_date(index: Path) -> str | None:
    """The `Date:` of the suite an index file came from (apt keeps `<suite>_InRelease` beside
    `<suite>_main_i18n_Translation-en`); None where that file is missing."""
    release = index.with_name(f"{suite_of(index.name)}_InRelease")
    if "_main_" not in index.name or not release.is_file():
        return None
    for line in release.read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("Date:"):
            return line.split(":", 1)[1].strip()
    return None


def write_splits(splits: dict[str, list[dict]], out: Path, indexes: list[Path]) -> dict:
    """`<split>.jsonl.gz` per split and `manifest.json`: the corpus's provenance and digests."""
    out.mkdir(parents=True, exist_ok=True)
    manifest = {"indexes": [{"file": f.name, "suite_date": release_date(f),
                             "sha256": hashlib.sha256(f.read_bytes()).hexdigest()} for f in indexes], "splits": {}}
    for name, rows in splits.items():
        text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
        with gzip.open(out / f"{name}.jsonl.gz", "wt", encoding="utf-8") as f:
            f.write(text)
        manifest["splits"][name] = {"pairs": len(rows), "families": len({r["family"] for r in rows}),
                                    "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return manifest


def parse_translations(text: str) -> list[dict]:
    """Records {package, synopsis, paragraphs} from a `*_i18n_Translation-en` file."""
    records = []
    for block in text.split("\n\n"):
        package, synopsis, paragraphs, current = None, None, [], []
        in_description = False
        for line in block.splitlines():
            if line.startswith("Package:"):
                package = line.split(":", 1)[1].strip()
            elif line.startswith("Description-en:"):
                synopsis, in_description = line.split(":", 1)[1].strip(), True
            elif in_description and line.startswith(" "):
                if line.strip() == ".":  # paragraph break
                    paragraphs.append(" ".join(current))
                    current = []
                else:
                    current.append(" ".join(line.split()))
            else:
                in_description = False
        if current:
            paragraphs.append(" ".join(current))
        paragraphs = [p for p in paragraphs if p]
        if package and synopsis is not None:
            records.append({"package": package, "synopsis": synopsis, "paragraphs": paragraphs})
    return records


def paragraph_hash(first_paragraph: str) -> bytes:
    """The hash of the (normalised) first paragraph that names a family of sibling packages."""
    return hashlib.blake2b(" ".join(first_paragraph.lower().split()).encode(), digest_size=8).digest()


def split_of(first_paragraph: str) -> str:
    """A split chosen by a hash of the (normalised) first paragraph."""
    bucket = int.from_bytes(paragraph_hash(first_paragraph), "little") / 2**64
    edge = 0.0
    for name, share in SPLITS:
        edge += share
        if bucket < edge:
            return name
    return "train"


def build_pairs(records: list[dict], min_words: int) -> tuple[dict[str, list[dict]], Counter]:
    counts: Counter = Counter(records=len(records))
    seen, splits = set(), {"train": [], "validation": [], "test": []}
    for rec in sorted(records, key=lambda r: r["package"]):
        source = " ".join(rec["paragraphs"])
        if not rec["synopsis"] or not source:
            counts["dropped: no synopsis or no long description"] += 1
            continue
        if len(source.split()) < min_words:
            counts[f"dropped: long description under {min_words} words"] += 1
            continue
        if source in seen:
            counts["dropped: long description already used (sibling package)"] += 1
            continue
        seen.add(source)
        splits[split_of(rec["paragraphs"][0])].append(
            {"source": source, "target": rec["synopsis"], "package": rec["package"],
             "family": paragraph_hash(rec["paragraphs"][0]).hex()})
    return splits, counts


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/debian_synopsis"))
    parser.add_argument("--lists", type=Path, help="a directory already holding *_i18n_Translation-en files")
    parser.add_argument("--keep-lists", type=Path, help="fetch the indexes into DIR/lists and keep them (to "
                                                          "rebuild this exact corpus later with --lists DIR/lists)")
    parser.add_argument("--min-words", type=int, default=20)
    args = parser.parse_args(argv)
    if args.lists and args.keep_lists:
        sys.exit("prepare_debian_synopsis: --lists reads indexes fetched before, --keep-lists fetches new ones; "
                 "give one of them")
    with tempfile.TemporaryDirectory() as tmp:
        lists = args.lists or fetch_lists(args.keep_lists or Path(tmp))
        files = sorted(lists.glob("*_i18n_Translation-en"))
        if not files:
            sys.exit(f"prepare_debian_synopsis: no *_i18n_Translation-en file in {lists}")
        records = [r for f in files for r in parse_translations(f.read_text(encoding="utf-8", errors="replace"))]
        splits, counts = build_pairs(records, args.min_words)
        manifest = write_splits(splits, args.out, files)
    dates = ", ".join(f"{suite_of(i['file']).split('_dists_')[-1]} {i['suite_date'] or 'date unknown'}"
                      for i in manifest["indexes"])
    print(f"read {counts.pop('records')} descriptions from {len(files)} index file(s) ({dates})")
    for reason, n in sorted(counts.items()):
        print(f"  {reason}: {n}")
    for name, rows in splits.items():
        words = sorted(len(r["source"].split()) for r in rows)
        syn = sorted(len(r["target"].split()) for r in rows)
        families = Counter(r["family"] for r in rows)
        family, largest = families.most_common(1)[0] if families else ("", 0)
        first = next((r["package"] for r in rows if r["family"] == family), "-")
        print(f"{name}: {len(rows)} pairs in {len(families)} families, "
              f"the largest {largest} pairs ({first}, ...) (median "
              f"{words[len(words) // 2] if words else 0} source words, "
              f"{syn[len(syn) // 2] if syn else 0} synopsis words) "
              f"-> {args.out / (name + '.jsonl.gz')}")
    print(f"digests and suite dates -> {args.out / 'manifest.json'}")


if __name__ == "__main__":
    main()
