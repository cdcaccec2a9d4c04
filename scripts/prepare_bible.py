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
*book*, as deterministic gzip-compressed JSON lines (the reading, cleaning
and aligning live in ``scripts/bible/``; this file holds the splits, the
download and the output)::

    {"id": "Gen.1.1", "book": "Genesis", "en": "...", "es": "..."}

Usage::

    python scripts/prepare_bible.py --out data/bible_en_es
    python scripts/prepare_bible.py --debs DIR_WITH_DEBS --out data/bible_en_es
    python scripts/prepare_bible.py --sword-dir EXTRACTED_TREE --out data/bible_en_es
"""

from __future__ import annotations

import argparse
import gzip
import io
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from bible import PrepareError  # scripts/bible/, beside this file
from bible.align import Pair, build_pairs
from bible.versification import BOOK_NAMES, TESTAMENTS, verse_refs
from bible.ztext import read_module

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
  to references with the KJV versification table in `scripts/bible/`.
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
