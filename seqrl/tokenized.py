"""Tokenized splits as Arrow files, cached on disk and memory-mapped.

A split is tokenized once by `datasets.map(batched=True)` into `<cache root>/<key>/`, the key a
hash of what the ids depend on: the split's origin (`seqrl.data.source_identity`), the fields,
the source prefix, the length limits and the tokenizer itself. Later starts, and the other
processes of a run, open those files instead: nothing is tokenized and no column is ever held
as Python lists. A cache directory appears only complete (built aside, then renamed); one that
cannot be read is rebuilt, and the report says so.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import tokenizers
import transformers
from datasets import Dataset, DatasetDict, Features, List, Value

from seqrl.config import DataConfig
from seqrl.errors import ConfigError, DataError
from seqrl.modeling import TextModel

CACHE_VERSION = 1  # bump when `encode_batch` changes what it writes: every old cache is then missed
MANIFEST = "manifest.json"  # written last: a directory with it is complete
FLAGS = "_seqrl_flags"  # per-row bits, counted into the report and dropped before anything reads rows
MISSING_SOURCE, EMPTY_TARGET, CUT_SOURCE, CUT_TARGET = 1, 2, 4, 8
RESERVED_COLUMNS = ("completions", "completion_ids", "prompts", "references", "reference_ids")


@dataclass
class DataReport:
    """What loading and tokenizing did to one split, for the log and for tests."""

    split: str
    loaded: int
    empty_targets: int = 0
    missing_sources: int = 0
    truncated_sources: int = 0
    truncated_targets: int = 0
    notes: list[str] = field(default_factory=list)
    cache: str = ""
    """`hit` (opened), `built` (tokenized now) or `rebuilt` (the cache was unreadable)."""
    cache_path: str = ""

    def line(self) -> str:
        used = self.loaded - self.empty_targets - self.missing_sources
        return (f"data[{self.split}]: {used} examples used of {self.loaded}; {self.empty_targets} empty targets "
                f"and {self.missing_sources} missing sources skipped; {self.truncated_sources} sources and "
                f"{self.truncated_targets} targets cut to the length limit")

    def cache_line(self) -> str:
        return f"data cache[{self.split}]: {self.cache} at {self.cache_path}"


class CorruptCache(Exception):
    """A cache directory whose files cannot be read back as the split they claim to be."""


def cache_root(cfg: DataConfig) -> Path:
    """`data.cache_dir`, or `seqrl-tokenized` beside the Arrow copies `datasets` keeps of loaded files."""
    return Path(cfg.cache_dir) if cfg.cache_dir else Path(datasets.config.HF_DATASETS_CACHE) / "seqrl-tokenized"


def tokenize(raw: DatasetDict, text_model: TextModel, cfg: DataConfig, identities: dict[str, dict],
             accelerator=None) -> tuple[DatasetDict, list[DataReport]]:
    """Add `source_ids`/`target_ids` to each split, from the cache or tokenized into it; skip (or
    reject) empty targets; cut over-long ones; count both. `identities`: each split's origin."""
    out, reports = DatasetDict(), []
    root = cache_root(cfg)
    for split, ds in raw.items():
        clash = [c for c in ds.column_names if c in RESERVED_COLUMNS]
        if clash:
            raise DataError(f"split '{split}' has a column named '{clash[0]}', a name rewards receive "
                            f"from seqrl itself; rename that column")
        # (only the training split may lack targets; the others are scored against theirs)
        split_cfg = cfg if split == cfg.train_split else dataclasses.replace(cfg, reference_free=False)
        key = cache_key(identities[split], text_model, split_cfg)
        with _main_processes_first(accelerator):
            table, counts, how = open_or_build(ds, root, key, text_model, split_cfg)
        report = DataReport(split, len(ds), counts["empty_targets"], counts["missing_sources"],
                            counts["truncated_sources"], counts["truncated_targets"], cache=how,
                            cache_path=str(root / key))
        _check_skipped(report, counts, cfg)
        if len(table) == 0:
            raise DataError(f"split '{split}' has no example with a source and a non-empty '{cfg.target_field}'")
        out[split] = table
        reports.append(report)
    return out, reports


def _main_processes_first(accelerator):
    """The main process builds a cache before anyone else looks; then each machine's local main
    (which finds it on a shared disk, or builds its own); then the rest, who find it."""
    if accelerator is None:
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(accelerator.main_process_first())
    stack.enter_context(accelerator.local_main_process_first())
    return stack


def _check_skipped(report: DataReport, counts: dict, cfg: DataConfig) -> None:
    if cfg.empty_targets != "error" or not (report.missing_sources or report.empty_targets):
        return
    if report.missing_sources:
        what, n, first, name = "missing sources", report.missing_sources, counts["first_missing"], cfg.source_field
    else:
        what, n, first, name = "empty or missing targets", report.empty_targets, counts["first_empty"], cfg.target_field
    raise DataError(f"split '{report.split}': {n} {what} in '{name}' (first at row {first}); "
                    f"fix the data or set data.empty_targets: skip")


def cache_key(identity: dict, text_model: TextModel, cfg: DataConfig) -> str:
    """A hash of everything the tokenized split depends on (also `map`'s `new_fingerprint`, so
    that `datasets` never hashes the function or the tokenizer by pickling them)."""
    parts = {"version": CACHE_VERSION, "data": identity, "fields": [cfg.source_field, cfg.target_field],
             "prefix": text_model.source_prefix, "limits": [cfg.max_source_tokens, cfg.max_target_tokens],
             "seq2seq": text_model.is_seq2seq, "tokenizer": tokenizer_digest(text_model.tokenizer),
             "libraries": [datasets.__version__, tokenizers.__version__, transformers.__version__]}
    if cfg.reference_free:  # (rows without a target kept: another table; earlier keys unchanged)
        parts["reference_free"] = True
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:40]


def tokenizer_digest(tokenizer) -> str:
    """A hash of what the tokenizer does: its serialized JSON (fast tokenizers) or its saved files,
    its special tokens and its language settings."""
    digest = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        digest.update(backend.to_str().encode())
    else:  # a slow (sentencepiece, vocab-file) tokenizer: its files are what it is
        with tempfile.TemporaryDirectory() as tmp:
            tokenizer.save_pretrained(tmp)
            for path in sorted(Path(tmp).rglob("*")):
                if path.is_file():
                    digest.update(path.name.encode() + path.read_bytes())
    extra = [tokenizer.special_tokens_map, getattr(tokenizer, "src_lang", None), getattr(tokenizer, "tgt_lang", None)]
    digest.update(json.dumps(extra, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def open_or_build(ds: Dataset, root: Path, key: str, text_model: TextModel,
                  cfg: DataConfig) -> tuple[Dataset, dict, str]:
    """The tokenized split from `root/key`, built there first if need be; its counts; and how it
    was had: `hit`, `built`, or `rebuilt (why)`."""
    where, how = root / key, "built"
    if (where / MANIFEST).is_file():
        try:
            return *open_cache(where, len(ds)), "hit"
        except CorruptCache as err:
            how = f"rebuilt (the cache there could not be read: {err})"
    shutil.rmtree(where, ignore_errors=True)  # (corrupt, or a directory without its manifest: never completed)
    build(ds, root, key, text_model, cfg)
    return *open_cache(where, len(ds)), how


def open_cache(where: Path, loaded: int) -> tuple[Dataset, dict]:
    """The cached split, memory-mapped, and its counts; `CorruptCache` if it cannot be that."""
    try:
        manifest = json.loads((where / MANIFEST).read_text())
        parts = [Dataset.from_file(str(where / name)) for name in manifest["files"]]
        table = datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0] if parts else Dataset.from_dict({})
        counts = manifest["counts"]
    except Exception as err:  # JSON, Arrow and file errors all mean the same: rebuild
        raise CorruptCache(f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}") from None
    kept = counts["loaded"] - counts["missing_sources"] - counts["empty_targets"]
    columns_missing = kept and not {"source_ids", "target_ids"} <= set(table.column_names)
    if counts["loaded"] != loaded or len(table) != kept or columns_missing:
        raise CorruptCache(f"it holds {len(table)} rows of {counts['loaded']}, expected {loaded}")
    if FLAGS in table.column_names:
        table = table.remove_columns(FLAGS)
    return table, counts


def build(ds: Dataset, root: Path, key: str, text_model: TextModel, cfg: DataConfig) -> None:
    """Tokenize `ds` into a temporary directory beside `root/key`, then rename it into place."""
    try:
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=root))
    except OSError as err:
        raise ConfigError(f"data.cache_dir '{root}': cannot write the tokenized data there ({err.strerror or err}); "
                          f"set data.cache_dir to a writable directory") from None
    try:
        files, counts = _write(ds, tmp, key, text_model, cfg)
        (tmp / MANIFEST).write_text(json.dumps({"files": files, "counts": counts}))
        try:
            os.rename(tmp, root / key)
        except OSError:
            if not (root / key / MANIFEST).is_file():  # (else another process built it meanwhile)
                raise
    except OSError as err:
        raise ConfigError(f"data.cache_dir '{root}': writing the tokenized data failed ({err.strerror or err}); "
                          f"free space there or set data.cache_dir to another directory") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _write(ds: Dataset, tmp: Path, key: str, text_model: TextModel, cfg: DataConfig) -> tuple[list[str], dict]:
    """Tokenize into `tmp`; keep only usable rows; return the files and the counts."""
    ids = List(Value("int32"))
    features = Features({**ds.features, "source_ids": ids, "target_ids": ids, FLAGS: Value("uint8")})
    encoder = dataclasses.replace(text_model, model=None)  # what the worker processes receive
    mapped = ds.map(encode_batch, batched=True, num_proc=cfg.num_proc, features=features,
                    cache_file_name=str(tmp / "tokens.arrow"), load_from_cache_file=False, new_fingerprint=key,
                    fn_kwargs={"encoder": encoder, "cfg": cfg}, desc="tokenize")
    flags = mapped.data.column(FLAGS).to_numpy()
    missing, empty = (flags & MISSING_SOURCE) != 0, (flags & EMPTY_TARGET) != 0
    counts = {"loaded": len(ds), "missing_sources": int(missing.sum()), "empty_targets": int(empty.sum()),
              "truncated_sources": int(((flags & CUT_SOURCE) != 0).sum()),
              "truncated_targets": int(((flags & CUT_TARGET) != 0).sum()),
              "first_missing": int(np.argmax(missing)), "first_empty": int(np.argmax(empty))}
    files = sorted(Path(f["filename"]).name for f in mapped.cache_files)
    if missing.any() or empty.any():  # the cache holds only usable rows: readers see no indices mapping
        usable = np.flatnonzero(~(missing | empty))
        if len(usable):
            kept = mapped.remove_columns(FLAGS).select(usable, keep_in_memory=True)
            kept.flatten_indices(cache_file_name=str(tmp / "kept.arrow"), new_fingerprint=key + "k")
        for name in files:
            (tmp / name).unlink()
        files = ["kept.arrow"] if len(usable) else []
    return files, counts


def encode_batch(batch: dict, encoder: TextModel, cfg: DataConfig) -> dict:
    """`map`'s function: ids (cut to the limits, EOS kept) and the row's flags. With
    `data.reference_free` a row without a target is kept, its target ids empty."""
    sources, targets = batch[cfg.source_field], batch[cfg.target_field]
    has_target = [bool(t and t.strip()) for t in targets]
    flags = [MISSING_SOURCE if s is None else (0 if has or cfg.reference_free else EMPTY_TARGET)
             for s, has in zip(sources, has_target, strict=True)]
    usable = [i for i, f in enumerate(flags) if f == 0]
    src_ids = encoder.encode_sources([sources[i] for i in usable]) if usable else []
    labelled = [i for i in usable if has_target[i]]
    encoded = dict(zip(labelled, encoder.encode_targets([targets[i] for i in labelled]) if labelled else [],
                       strict=True))
    tgt_ids = [encoded.get(i, []) for i in usable]
    source_ids, target_ids = [[] for _ in flags], [[] for _ in flags]
    for i, src, tgt in zip(usable, src_ids, tgt_ids, strict=True):
        source_ids[i], cut_source = cut(src, cfg.max_source_tokens)
        target_ids[i], cut_target = cut(tgt, cfg.max_target_tokens)
        flags[i] |= (CUT_SOURCE if cut_source else 0) | (CUT_TARGET if cut_target else 0)
    return {"source_ids": source_ids, "target_ids": target_ids, FLAGS: flags}


def cut(row: list[int], limit: int) -> tuple[list[int], bool]:
    """`row` cut to `limit` ids keeping the last one (the end-of-sequence token)."""
    return (row[: limit - 1] + row[-1:], True) if len(row) > limit else (row, False)


def truncate(rows: list[list[int]], limit: int) -> tuple[list[list[int]], int]:
    """Each row cut to `limit` ids keeping the last one; also how many were cut."""
    cuts = [cut(row, limit) for row in rows]
    return [row for row, _ in cuts], sum(was_cut for _, was_cut in cuts)
