"""Load examples with `datasets`, check them, and tokenize them (`seqrl.tokenized`, cached).

Raw source and reference strings are kept next to the token ids (rewards and corpus metrics
score text, not ids), and every other column is kept as well: custom rewards receive them.
Nothing is dropped or cut silently: empty targets and truncations are counted and reported.
"""

from __future__ import annotations

import hashlib
import json
import logging
import lzma
import zlib
from pathlib import Path

import datasets
import numpy as np
from datasets import DatasetDict

from seqrl import data_checks, tokenized
from seqrl.batching import TrainCollator, probe_batch, reward_columns  # noqa: F401  (re-exported)
from seqrl.config import DataConfig
from seqrl.data_checks import check_text_column, first_bad_json_line, first_non_utf8_line
from seqrl.errors import DataError, first_sentence
from seqrl.modeling import TextModel, looks_local
from seqrl.tokenized import RESERVED_COLUMNS, DataReport, truncate  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

FORMATS = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
COMPRESSIONS = ("", ".gz", ".bz2", ".xz", ".zst")


def needed_splits(cfg: DataConfig) -> list[str]:
    """Train, eval and test split names, without repeats or the empty test split."""
    return [s for s in dict.fromkeys([cfg.train_split, cfg.eval_split, cfg.test_split]) if s]


def load_raw(cfg: DataConfig, splits: list[str]) -> DatasetDict:
    """Load the named splits as text columns (the eval split carved from train with
    `data.validation_from_train`); check the source and target fields exist and hold UTF-8 text."""
    datasets.disable_progress_bars()
    carve = cfg.validation_from_train is not None and cfg.eval_split in splits
    wanted = splits
    if carve:  # train instead of eval from the source
        wanted = list(dict.fromkeys([cfg.train_split if s == cfg.eval_split else s for s in splits]))
    raw, files = _load_source(cfg, wanted)
    if carve:
        if cfg.eval_split in raw or cfg.eval_split in files or _dir_has_split(cfg, cfg.eval_split):
            raise DataError(f"data.validation_from_train is set, but the data has a '{cfg.eval_split}' split "
                            f"already; remove data.validation_from_train, or name another data.eval_split")
        if cfg.train_split in raw:
            raw[cfg.train_split], raw[cfg.eval_split] = carve_validation(raw[cfg.train_split], cfg)
    missing = [s for s in splits if s not in raw]
    if missing:
        raise DataError(f"split(s) {missing} not found in {cfg.path or 'data.files'}; "
                        f"available: {sorted(raw)}")
    raw = DatasetDict({s: raw[s] for s in splits})
    for split, ds in raw.items():
        where = files.get(split) or f"split '{split}' of {cfg.path}"
        if cfg.reference_free and split == cfg.train_split and cfg.target_field.split(".")[0] not in ds.column_names:
            ds = ds.add_column(cfg.target_field, [None] * len(ds))  # (sources only: no target to read)
        raw[split] = ds = nested_fields(ds, cfg, split)
        for role, name in (("source_field", cfg.source_field), ("target_field", cfg.target_field)):
            check_text_column(ds, f"data.{role}", name, where)
        check_utf8_once(cfg, split, ds, where, files.get(split))
        if len(ds) == 0:
            raise DataError(f"split '{split}' of {cfg.path or 'data.files'} is empty")
    if cfg.max_train_examples and cfg.train_split in raw:
        train = raw[cfg.train_split]
        raw[cfg.train_split] = train.select(range(min(cfg.max_train_examples, len(train))))
    return raw


def carve_note(cfg: DataConfig, raw: DatasetDict) -> str | None:
    """The line saying a validation split was carved out of train, and how (None if not)."""
    if cfg.validation_from_train is None or cfg.eval_split not in raw:
        return None
    return (f"data[{cfg.eval_split}]: {len(raw[cfg.eval_split])} examples carved from '{cfg.train_split}' "
            f"(data.validation_from_train {cfg.validation_from_train:g}, data.split_seed {cfg.split_seed}) "
            f"and removed from it")


def carve_validation(train: datasets.Dataset, cfg: DataConfig) -> tuple[datasets.Dataset, datasets.Dataset]:
    """(train without the validation rows, the validation rows): `validation_from_train` rows
    (a fraction below 1, or a count), drawn with `split_seed`, in their original order."""
    size = cfg.validation_from_train
    count = round(size * len(train)) if size < 1 else int(size)
    if not 0 < count < len(train):
        raise DataError(f"data.validation_from_train {size:g} of {len(train)} training examples leaves "
                        f"{'no validation' if count < 1 else 'no training'} example; choose a smaller share")
    order = np.random.default_rng(cfg.split_seed).permutation(len(train))  # (what `Dataset.shuffle` draws)
    held = np.sort(order[:count])
    kept = np.sort(order[count:])
    return train.select(kept), train.select(held)


def nested_fields(ds: datasets.Dataset, cfg: DataConfig, split: str) -> datasets.Dataset:
    """Columns named with dots (`translation.en`, the shape of the hub's WMT and opus datasets)
    come from flattening nested columns; a missing name is an error listing what there is."""
    for role, name in (("source_field", cfg.source_field), ("target_field", cfg.target_field)):
        if name not in ds.column_names and "." in name and name.split(".")[0] in ds.column_names:
            ds = ds.flatten()
        if name not in ds.column_names:
            root = name.split(".")[0]
            inner = sorted(c.split(".", 1)[1] for c in ds.column_names if c.startswith(root + "."))
            what = (f"'{root}' has {', '.join(inner)}" if inner else f"columns are {ds.column_names}")
            raise DataError(f"data.{role} '{name}' is not a column of split '{split}'; {what}")
    return ds


def _load_source(cfg: DataConfig, splits: list[str]) -> tuple[DatasetDict, dict[str, str]]:
    """The splits from data.files, a directory or the hub; also the split -> file map."""
    files: dict[str, str] = {}  # split -> the file it was read from, for error messages
    local = bool(cfg.files) or Path(cfg.path).exists() or looks_local(cfg.path)
    if cfg.hub_config is not None and local:
        raise DataError(f"data.hub_config '{cfg.hub_config}' names a configuration of a hub dataset, and the data "
                        f"is local ({cfg.path or 'data.files'}); remove data.hub_config")
    if cfg.files:
        files = {s: cfg.files[s] for s in splits if s in cfg.files}
        raw = _load_files(files, "data.files")
    elif Path(cfg.path).is_dir():
        raw, files = _load_dir(Path(cfg.path), splits)
    elif Path(cfg.path).is_file():
        raise DataError(f"data.path '{cfg.path}' is a file; name one file per split in data.files "
                        f"(e.g. data.files: {{train: {cfg.path}}})")
    elif looks_local(cfg.path):  # not worth the hub's retries
        raise DataError(f"data.path '{cfg.path}': directory not found")
    else:
        raw = _load_hub(cfg)
    return raw, files


def _dir_has_split(cfg: DataConfig, split: str) -> bool:
    path = Path(cfg.path) if cfg.path else None
    return bool(path and path.is_dir() and _split_files(path, split))


def _load_dir(path: Path, splits: list[str]) -> tuple[DatasetDict, dict[str, str]]:
    """A `save_to_disk` directory, or one file per split; also the split -> file map."""
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        try:
            loaded = datasets.load_from_disk(str(path))
        except Exception as err:  # corrupt metadata, unreadable arrow files: many types
            raise DataError(f"data.path '{path}' looks like a save_to_disk directory but cannot be read: "
                            f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}") from None
        return (loaded if isinstance(loaded, DatasetDict) else DatasetDict({"train": loaded})), {}
    files = {}
    for split in splits:
        found = _split_files(path, split)
        if not found:
            raise DataError(f"data.path '{path}' has no file for split '{split}' "
                            f"(looked for {split}.jsonl/.json/.csv/.parquet, optionally .gz)")
        files[split] = str(found[0])
    return _load_files(files, "data.path"), files


def _load_files(files: dict[str, str], where: str) -> DatasetDict:
    """One `load_dataset` per split, so an error names its file and splits' types stay apart."""
    out = DatasetDict()
    for split, name in files.items():
        if not Path(name).is_file():
            raise DataError(f"{where}: file for split '{split}' not found: {name}")
        suffixes = [s for s in Path(name).suffixes if s not in COMPRESSIONS]
        fmt = FORMATS.get(suffixes[-1] if suffixes else "")
        if fmt is None:
            raise DataError(f"{where}: cannot tell the format of {name}; use .jsonl, .json, .csv or .parquet")
        if _is_empty_file(Path(name)):
            raise DataError(f"{where}: split '{split}' is empty ({name} holds no rows)")
        verbosity = datasets.logging.get_verbosity()
        datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # its own ERROR log would be a 2nd line
        try:
            out[split] = datasets.load_dataset(fmt, data_files={split: name}, split=split)
        except Exception as err:  # datasets raises many types for malformed files
            raise DataError(f"{where}: could not read {name} as {fmt}: {_diagnose(Path(name), fmt, err)}") from None
        finally:
            datasets.logging.set_verbosity(verbosity)
    return out


def _diagnose(path: Path, fmt: str, err: BaseException) -> str:
    """The file's first bad line where we can find it (Arrow reports positions within its
    blocks, not lines), else the innermost error. A compressed file that cannot be decompressed
    (cut short, damaged) is said to be so, not read again."""
    try:
        non_utf8 = first_non_utf8_line(path)
        if non_utf8:
            return f"line {non_utf8} is not UTF-8"
        return (first_bad_json_line(path) if fmt == "json" else None) or _root_cause(err)
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as broken:  # (gzip.BadGzipFile is an OSError)
        return (f"it cannot be decompressed, cut short or damaged ({type(broken).__name__}: "
                f"{first_sentence(broken, 100)}); copy or compress it again")


def _root_cause(err: BaseException) -> str:
    """The innermost exception's first line (datasets wraps parse errors in generic ones)."""
    while (err.__cause__ or err.__context__) is not None:
        err = err.__cause__ or err.__context__
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0][:160]}" if text else type(err).__name__


def _is_empty_file(path: Path) -> bool:
    """No rows: an empty or blank text file, a CSV with only a header, a parquet with 0 rows."""
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq

        return pq.ParquetFile(path).metadata.num_rows == 0
    if path.suffix in COMPRESSIONS[1:]:
        return False  # compressed files are read by datasets; its own error stands
    with path.open("rb") as f:
        lines = [line for line in f.read(1 << 16).splitlines() if line.strip()]
    return not lines or (path.suffix == ".csv" and len(lines) == 1 and path.stat().st_size < (1 << 16))


def _load_hub(cfg: DataConfig) -> DatasetDict:
    try:
        return datasets.load_dataset(cfg.path, cfg.hub_config)
    except Exception as err:  # offline, unknown name, gated: all end here
        raise DataError(f"data.path '{cfg.path}' is neither a local file/directory nor a loadable hub "
                        f"dataset: {str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def tokenize(raw: DatasetDict, text_model: TextModel, cfg: DataConfig,
             accelerator=None) -> tuple[DatasetDict, list[DataReport]]:
    """Add `source_ids`/`target_ids` (memory-mapped from the tokenized cache, `seqrl.tokenized`);
    skip (or reject) empty targets; cut and count over-long ones."""
    identities = {split: source_identity(cfg, split, ds) for split, ds in raw.items()}
    return tokenized.tokenize(raw, text_model, cfg, identities, accelerator)


UTF8_CHECKED = "utf8-checked"  # data.cache_dir's folder of markers, beside the tokenized splits' folders


def check_utf8_once(cfg: DataConfig, split: str, ds: datasets.Dataset, where: str, file: str | None) -> None:
    """The split's text is UTF-8 (Arrow's readers do not check; `data_checks.check_utf8`), checked
    once per origin (`source_identity`: the same files, sizes and times), a marker in the cache
    directory saying it passed. The check reads every byte, which at every start put the whole
    corpus in the process's resident memory (about 0.3 KB a pair)."""
    identity = json.dumps(source_identity(cfg, split, ds), sort_keys=True, default=str)
    marker = tokenized.cache_root(cfg) / UTF8_CHECKED / hashlib.sha256(identity.encode()).hexdigest()[:40]
    if marker.is_file():
        return
    data_checks.check_utf8(ds, where, file)
    try:
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
    except OSError:  # (not recorded: checked again next time; an unwritable cache is said when it is built)
        pass


def check_known_tokens(tokenized: DatasetDict, unk_id: int | None, cfg: DataConfig) -> None:
    """A pretrained tokenizer encodes each split with few unknown tokens (`data_checks`)."""
    columns = {"source_ids": f"data.source_field '{cfg.source_field}'",
               "target_ids": f"data.target_field '{cfg.target_field}'"}
    for split, rows in tokenized.items():
        data_checks.check_known_tokens(rows, unk_id, f"split '{split}'", columns)


def source_identity(cfg: DataConfig, split: str, ds: datasets.Dataset) -> dict:
    """What a loaded split's rows come from, for the tokenized cache's key: each local file's path,
    size and modification time, and how the split was cut from them (carved, first N); for a hub
    dataset, the fingerprint `datasets` gives it. Size and mtime rather than a content hash: they
    cost nothing whatever the corpus's size (hashing gigabytes would take seconds at every start),
    and rewriting a file changes its mtime."""
    carved = cfg.validation_from_train is not None and split in (cfg.train_split, cfg.eval_split)
    files = _origin_files(cfg, cfg.train_split if carved else split)
    return {"files": [[str(f.resolve()), f.stat().st_size, f.stat().st_mtime_ns] for f in files] if files else None,
            "fingerprint": None if files else ds._fingerprint,  # (hub datasets: their revision and config)
            "carved": [cfg.validation_from_train, cfg.split_seed, split == cfg.eval_split] if carved else None,
            "first": cfg.max_train_examples if split == cfg.train_split else None,
            "rows": len(ds)}


def _origin_files(cfg: DataConfig, split: str) -> list[Path]:
    """The local files a split is read from (every file of a `save_to_disk` directory); [] for the hub."""
    if cfg.files:
        return [Path(cfg.files[split])] if split in cfg.files else []
    path = Path(cfg.path) if cfg.path else None
    if path is None or not path.is_dir():
        return []
    if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
        return sorted(f for f in path.rglob("*") if f.is_file())
    return _split_files(path, split)[:1]


def _split_files(path: Path, split: str) -> list[Path]:
    """The files in directory `path` that could hold `split`, in the order they are preferred."""
    return [path / f"{split}{ext}{comp}" for ext in FORMATS for comp in COMPRESSIONS
            if (path / f"{split}{ext}{comp}").is_file()]
