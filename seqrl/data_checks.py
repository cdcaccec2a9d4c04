"""Checks on loaded data, each failing with one line that names the file (or split), the row or
line, and what is wrong: the columns trained on must hold text, every text column must be
valid UTF-8, and a file `datasets` could not parse is read again to name its first bad line.

They look at Arrow's column types and run Arrow's own validation (C++, no Python objects per
row); the slow, exact searches for a row or a line run only once something is known to be wrong.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
from pathlib import Path
from typing import Any

import pyarrow as pa
from datasets import Dataset, Value

from seqrl.errors import DataError

OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def check_text_column(ds: Dataset, field_name: str, column: str, where: str) -> None:
    """`column` (read for the recipe field `field_name`) holds strings or nulls, nothing else."""
    feature = ds.features[column]
    if isinstance(feature, Value) and feature.dtype in ("string", "large_string", "null"):
        return  # (a column of nulls only: counted as missing by `data.tokenize`)
    values = list(ds[column])  # only here, where something is wrong: find the first culprit
    bad = next(((i, v) for i, v in enumerate(values) if v is not None and not isinstance(v, str)), None)
    if bad is None:  # e.g. a Json-typed column that holds strings and nulls after all
        return
    row, value = bad
    raise DataError(f"{field_name} '{column}' in {where} must hold text; row {row} holds "
                    f"{type(value).__name__} {_short(value)}; fix the data or name another column")


def check_utf8(ds: Dataset, where: str, file: str | None) -> None:
    """Every string column is valid UTF-8 (Arrow's JSON and CSV readers do not check)."""
    for column, feature in ds.features.items():
        if not (isinstance(feature, Value) and feature.dtype in ("string", "large_string")):
            continue
        data = ds.data.column(column)
        try:
            data.validate(full=True)
        except pa.ArrowInvalid:
            line = first_non_utf8_line(Path(file)) if file else None
            at = f"line {line} of {file}" if line else f"row {_first_non_utf8_row(data)} of {where}"
            raise DataError(f"{at} is not UTF-8 text (column '{column}'); save the file as UTF-8") from None


def _first_non_utf8_row(data: pa.ChunkedArray) -> int:
    offset = 0
    for chunk in data.chunks:
        for i, raw in enumerate(chunk.cast(pa.binary()).to_pylist()):
            try:
                if raw is not None:
                    raw.decode("utf-8")
            except UnicodeDecodeError:
                return offset + i
        offset += len(chunk)
    return -1


def _open_bytes(path: Path):
    return OPENERS.get(path.suffix, open)(path, "rb")


def first_non_utf8_line(path: Path) -> int | None:
    """1-based number of the first line of `path` (decompressed) that is not UTF-8, if any."""
    with _open_bytes(path) as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def first_bad_json_line(path: Path) -> str | None:
    """`line N: problem` for the first line of a JSON-lines file that is not one JSON object
    (for a file holding one JSON array: where that array stops parsing)."""
    with _open_bytes(path) as f:
        if f.read(4096).lstrip()[:1] == b"[":
            f.seek(0)
            try:
                json.loads(f.read())
            except ValueError as err:
                return f"line {getattr(err, 'lineno', '?')}: {str(err).split(':')[0]}"
            return None
        f.seek(0)
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
                return f"line {number}: {str(err).split(':')[0]}"
            if not isinstance(row, dict):
                return f"line {number}: a {type(row).__name__}, not a JSON object"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


UNKNOWN_SHARE_LIMIT = 0.1  # above this, the tokenizer was not made for this data (a language, a script)
UNKNOWN_SAMPLE_ROWS = 1000


def check_known_tokens(ds: Dataset, unk_id: int | None, where: str, fields: dict[str, str]) -> None:
    """The tokenizer can encode the data: in the first UNKNOWN_SAMPLE_ROWS rows of each tokenized
    column (`fields`: column -> the recipe field it came from), at most UNKNOWN_SHARE_LIMIT of the
    tokens are the unknown token. A start model's tokenizer meeting text in another script encodes
    it as unknowns, and training on them would go on for hours learning nothing. Tokenizers
    without an unknown token (byte-level) can encode any text: nothing to check."""
    if unk_id is None:
        return
    sample = ds.select(range(min(len(ds), UNKNOWN_SAMPLE_ROWS)))
    for column, field_name in fields.items():
        if column not in sample.column_names:
            continue
        rows = [r for r in sample[column] if r]
        total = sum(len(r) for r in rows)
        unknown = sum(r.count(unk_id) for r in rows)
        if total and unknown / total > UNKNOWN_SHARE_LIMIT:
            raise DataError(f"{field_name} in {where}: {unknown / total:.0%} of the tokens of the first {len(rows):,} "
                            f"rows are the tokenizer's unknown token; the tokenizer (the model's) was not made for "
                            f"this text (another language or script?): use a model and tokenizer that know it")
