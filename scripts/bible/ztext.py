"""A stdlib-only reader for SWORD's zText format (no SWORD library needed).

A testament is three files: ``.bzs`` lists zlib blocks (offset, compressed size, size) in
``.bzz``; ``.bzv`` gives each index entry's (block, offset in block, size).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from pathlib import Path

from . import PrepareError
from .versification import TESTAMENTS, index_size, verse_refs

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
