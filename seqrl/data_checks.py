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
