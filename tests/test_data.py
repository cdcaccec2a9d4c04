"""Loading every supported format, the data errors, and tokenization with its report."""

from __future__ import annotations

import dataclasses
import gzip
import shutil

import datasets
import pytest
from conftest import write_jsonl

from seqrl.config import DataConfig
from seqrl.data import DataReport, load_raw, tokenize
from seqrl.errors import DataError, SeqrlError

SPLITS = ["train", "validation", "test"]
SIZES = {"train": 160, "validation": 20, "test": 20}


def cfg(**kw) -> DataConfig:
    return DataConfig(**{"source_field": "en", "target_field": "es", **kw})


def check_loaded(raw, pairs, sizes=SIZES):
    assert set(raw) == set(sizes)
    start = {"train": 0, "validation": 160, "test": 180}
    for split, n in sizes.items():
        ds = raw[split]
        assert len(ds) == n
        assert set(ds.column_names) == {"en", "es", "topic"}  # the extra column is kept
        assert ds[0] == pairs[start[split]]
        assert list(ds["es"]) == [p["es"] for p in pairs[start[split]:start[split] + n]]


def split_rows(pairs):
    return {"train": pairs[:160], "validation": pairs[160:180], "test": pairs[180:200]}


def test_error_is_seqrl_error():
    assert issubclass(DataError, SeqrlError)


# -- formats -------------------------------------------------------------------------------------


def test_jsonl_dir(toy_data_dir, toy_pairs):
    check_loaded(load_raw(cfg(path=str(toy_data_dir)), SPLITS), toy_pairs)


def test_load_only_requested_splits_in_order(toy_data_dir):
    raw = load_raw(cfg(path=str(toy_data_dir)), ["test", "train"])
    assert list(raw) == ["test", "train"]


def test_jsonl_gz_dir(tmp_path, toy_data_dir, toy_pairs):
    d = tmp_path / "gz"
    d.mkdir()
    for split in SPLITS:
        with open(toy_data_dir / f"{split}.jsonl", "rb") as src, gzip.open(d / f"{split}.jsonl.gz", "wb") as dst:
            shutil.copyfileobj(src, dst)
    check_loaded(load_raw(cfg(path=str(d)), SPLITS), toy_pairs)


def test_json_lines_with_json_extension(tmp_path, toy_pairs):
    d = tmp_path / "js"
    d.mkdir()
    for split, rows in split_rows(toy_pairs).items():
        write_jsonl(d / f"{split}.json", rows)
    check_loaded(load_raw(cfg(path=str(d)), SPLITS), toy_pairs)


def test_csv_dir(tmp_path, toy_pairs):
    d = tmp_path / "csv"
    d.mkdir()
    for split, rows in split_rows(toy_pairs).items():
        datasets.Dataset.from_list(rows).to_csv(str(d / f"{split}.csv"), index=False)
    check_loaded(load_raw(cfg(path=str(d)), SPLITS), toy_pairs)


def test_parquet_dir(tmp_path, toy_pairs):
    d = tmp_path / "pq"
    d.mkdir()
    for split, rows in split_rows(toy_pairs).items():
        datasets.Dataset.from_list(rows).to_parquet(str(d / f"{split}.parquet"))
    check_loaded(load_raw(cfg(path=str(d)), SPLITS), toy_pairs)


def test_save_to_disk_dataset_dict(tmp_path, toy_pairs):
    d = tmp_path / "disk"
    datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in split_rows(toy_pairs).items()}
                         ).save_to_disk(str(d))
    check_loaded(load_raw(cfg(path=str(d)), SPLITS), toy_pairs)


def test_save_to_disk_missing_split(tmp_path, toy_pairs):
    d = tmp_path / "disk"
    datasets.DatasetDict({"train": datasets.Dataset.from_list(toy_pairs[:10])}).save_to_disk(str(d))
    with pytest.raises(DataError, match=r"split\(s\) \['validation'\] not found.*available: \['train'\]"):
        load_raw(cfg(path=str(d)), ["train", "validation"])


def test_data_files_mapping_mixed_formats(tmp_path, toy_pairs):
    rows = split_rows(toy_pairs)
    write_jsonl(tmp_path / "my_train_file.jsonl", rows["train"])
    datasets.Dataset.from_list(rows["validation"]).to_csv(str(tmp_path / "dev.csv"), index=False)
    datasets.Dataset.from_list(rows["test"]).to_parquet(str(tmp_path / "held_out.parquet"))
    files = {"train": str(tmp_path / "my_train_file.jsonl"), "validation": str(tmp_path / "dev.csv"),
             "test": str(tmp_path / "held_out.parquet")}
    raw = load_raw(cfg(files=files), SPLITS)
    assert list(raw) == SPLITS
    check_loaded(raw, toy_pairs)


# -- errors --------------------------------------------------------------------------------------


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"data\.path '.*no_such_dir'"):
        load_raw(cfg(path=str(tmp_path / "no_such_dir")), ["train"])


def test_path_is_a_file(toy_data_dir):
    with pytest.raises(DataError, match=r"is a file; name one file per split in data\.files"):
        load_raw(cfg(path=str(toy_data_dir / "train.jsonl")), ["train"])


def test_missing_split_file(toy_data_dir):
    (toy_data_dir / "test.jsonl").unlink()
    with pytest.raises(DataError, match=r"no file for split 'test'"):
        load_raw(cfg(path=str(toy_data_dir)), SPLITS)


def test_missing_file_in_data_files(toy_data_dir, tmp_path):
    files = {"train": str(toy_data_dir / "train.jsonl"), "validation": str(tmp_path / "nope.jsonl")}
    with pytest.raises(DataError, match=r"data\.files: file for split 'validation' not found: .*nope\.jsonl"):
        load_raw(cfg(files=files), ["train", "validation"])


def test_split_not_in_data_files(toy_data_dir):
    with pytest.raises(DataError, match=r"split\(s\) \['validation'\] not found in data\.files"):
        load_raw(cfg(files={"train": str(toy_data_dir / "train.jsonl")}), ["train", "validation"])


def test_unknown_file_format(tmp_path):
    (tmp_path / "train.txt").write_text("hello\n")
    with pytest.raises(DataError, match=r"cannot tell the format"):
        load_raw(cfg(files={"train": str(tmp_path / "train.txt")}), ["train"])


def test_wrong_source_field(toy_data_dir):
    with pytest.raises(DataError, match=r"data\.source_field 'english' is not a column of split 'train'; "
                                        r"columns are \['en', 'es', 'topic'\]"):
        load_raw(cfg(path=str(toy_data_dir), source_field="english"), SPLITS)


def test_wrong_target_field(toy_data_dir):
    with pytest.raises(DataError, match=r"data\.target_field 'spanish' is not a column"):
        load_raw(cfg(path=str(toy_data_dir), target_field="spanish"), SPLITS)


def test_empty_split_from_loader(monkeypatch, toy_pairs):
    """A loader (here a stand-in for the hub) that returns an empty split: named in the error."""
    full = datasets.Dataset.from_list(toy_pairs[:10])
    fake = datasets.DatasetDict({"train": full, "validation": full.select([])})
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: fake)
    with pytest.raises(DataError, match=r"split 'validation' of someone/some-dataset is empty"):
        load_raw(cfg(path="someone/some-dataset"), ["train", "validation"])


def test_hub_dataset_offline_is_a_data_error():
    with pytest.raises(DataError, match=r"data\.path 'someone/not-a-dataset' is neither a local"):
        load_raw(cfg(path="someone/not-a-dataset"), ["train"])


def broken_disk_dir(tmp_path, toy_pairs, kind):
    d = tmp_path / "disk"
    full = datasets.Dataset.from_list(toy_pairs[:10])
    if kind == "empty split":  # datasets writes no shard for a 0-row split, then cannot read it back
        datasets.DatasetDict({"train": full, "validation": full.select([])}).save_to_disk(str(d))
    else:
        d.mkdir()
        (d / "dataset_dict.json").write_text("{")
    return d


@pytest.mark.parametrize("kind", ["empty split", "corrupt"])
def test_broken_save_to_disk_dir_is_a_data_error(tmp_path, toy_pairs, kind):
    with pytest.raises(DataError):
        load_raw(cfg(path=str(broken_disk_dir(tmp_path, toy_pairs, kind))), ["train", "validation"])


def write_empty(d, fmt, toy_pairs):
    if fmt == "jsonl":
        (d / "validation.jsonl").write_text("")
    elif fmt == "csv":
        (d / "validation.csv").write_text("en,es,topic\n")
    else:
        datasets.Dataset.from_list(toy_pairs[:10]).select([]).to_parquet(str(d / "validation.parquet"))


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_empty_split_file_is_a_data_error(tmp_path, toy_pairs, fmt):
    write_jsonl(tmp_path / "train.jsonl", toy_pairs[:10])
    write_empty(tmp_path, fmt, toy_pairs)
    with pytest.raises(DataError):
        load_raw(cfg(path=str(tmp_path)), ["train", "validation"])


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_empty_split_file_message_says_empty(tmp_path, toy_pairs, fmt):
    write_jsonl(tmp_path / "train.jsonl", toy_pairs[:10])
    write_empty(tmp_path, fmt, toy_pairs)
    with pytest.raises(DataError, match=r"split 'validation' .*is empty"):
        load_raw(cfg(path=str(tmp_path)), ["train", "validation"])


def test_max_train_examples(toy_data_dir, toy_pairs):
    raw = load_raw(cfg(path=str(toy_data_dir), max_train_examples=7), SPLITS)
    assert len(raw["train"]) == 7 and list(raw["train"]["en"]) == [p["en"] for p in toy_pairs[:7]]
    assert len(raw["validation"]) == 20 and len(raw["test"]) == 20  # other splits untouched
    raw = load_raw(cfg(path=str(toy_data_dir), max_train_examples=10_000), ["train"])
    assert len(raw["train"]) == 160


# -- tokenize ------------------------------------------------------------------------------------


def test_tokenize_keeps_text_and_extra_columns(toy_data_dir, tiny_text_model):
    tm = tiny_text_model("marian")
    data_cfg = cfg(path=str(toy_data_dir))
    raw = load_raw(data_cfg, SPLITS)
    out, reports = tokenize(raw, tm, data_cfg)
    eos = tm.tokenizer.eos_token_id
    for split in SPLITS:
        ds = out[split]
        assert set(ds.column_names) == {"en", "es", "topic", "source_ids", "target_ids"}
        assert len(ds) == len(raw[split])
        assert list(ds["en"]) == list(raw[split]["en"])
        row = ds[0]
        assert row["source_ids"] == tm.encode_sources([row["en"]])[0]
        assert row["target_ids"] == tm.encode_targets([row["es"]])[0]
        assert row["target_ids"][-1] == eos
        assert tm.decode([row["target_ids"]]) == [row["es"]]
    assert [r.split for r in reports] == SPLITS
    assert all(isinstance(r, DataReport) and r.empty_targets == 0 and r.truncated_sources == 0
               and r.truncated_targets == 0 for r in reports)
    assert reports[0].loaded == 160
    assert "160 examples used of 160" in reports[0].line()


def with_empty_targets(toy_pairs):
    rows = [dict(p) for p in toy_pairs[:12]]
    rows[2]["es"] = ""
    rows[5]["es"] = "   \t "
    rows[9]["es"] = None
    return rows


def test_empty_targets_skipped_and_counted(tmp_path, toy_pairs, tiny_text_model):
    rows = with_empty_targets(toy_pairs)
    write_jsonl(tmp_path / "train.jsonl", rows)
    data_cfg = cfg(path=str(tmp_path))
    raw = load_raw(data_cfg, ["train"])
    out, (report,) = tokenize(raw, tiny_text_model("marian"), data_cfg)
    kept = [r for i, r in enumerate(rows) if i not in (2, 5, 9)]
    assert report.loaded == 12 and report.empty_targets == 3
    assert len(out["train"]) == 9
    assert list(out["train"]["en"]) == [r["en"] for r in kept]
    assert list(out["train"]["topic"]) == [r["topic"] for r in kept]
    assert "9 examples used of 12; 3 empty targets and 0 missing sources skipped" in report.line()


def test_empty_targets_error(tmp_path, toy_pairs, tiny_text_model):
    write_jsonl(tmp_path / "train.jsonl", with_empty_targets(toy_pairs))
    data_cfg = cfg(path=str(tmp_path), empty_targets="error")
    raw = load_raw(data_cfg, ["train"])
    with pytest.raises(DataError, match=r"split 'train': 3 empty or missing targets in 'es' \(first at row 2\)"):
        tokenize(raw, tiny_text_model("marian"), data_cfg)


def test_all_targets_empty(tmp_path, toy_pairs, tiny_text_model):
    write_jsonl(tmp_path / "train.jsonl", [{**p, "es": " "} for p in toy_pairs[:3]])
    data_cfg = cfg(path=str(tmp_path))
    with pytest.raises(DataError, match=r"no example with a source and a non-empty 'es'"):
        tokenize(load_raw(data_cfg, ["train"]), tiny_text_model("marian"), data_cfg)


@pytest.mark.parametrize("architecture", ["marian", "gpt2"])
def test_truncation_keeps_eos_and_counts(toy_data_dir, tiny_text_model, architecture):
    tm = tiny_text_model(architecture)
    limit_src, limit_tgt = 6, 5
    data_cfg = cfg(path=str(toy_data_dir), max_source_tokens=limit_src, max_target_tokens=limit_tgt)
    raw = load_raw(data_cfg, ["validation"])
    full_src = tm.encode_sources(list(raw["validation"]["en"]))
    full_tgt = tm.encode_targets(list(raw["validation"]["es"]))
    out, (report,) = tokenize(raw, tm, data_cfg)
    assert report.truncated_sources == sum(len(s) > limit_src for s in full_src) > 0
    assert report.truncated_targets == sum(len(t) > limit_tgt for t in full_tgt) > 0
    eos = tm.tokenizer.eos_token_id
    for src, tgt, fs, ft in zip(out["validation"]["source_ids"], out["validation"]["target_ids"],
                                full_src, full_tgt, strict=True):
        assert len(src) == min(len(fs), limit_src) and len(tgt) == min(len(ft), limit_tgt)
        assert tgt[-1] == eos and src[-1] == fs[-1]
        assert src[:-1] == fs[:len(src) - 1] and tgt[:-1] == ft[:len(tgt) - 1]
    assert f"{report.truncated_sources} sources and {report.truncated_targets} targets cut" in report.line()


def test_source_prefix_is_encoded(toy_data_dir, tiny_text_model):
    tm = tiny_text_model("marian")
    prefixed = dataclasses.replace(tm, source_prefix="translate: ")
    data_cfg = cfg(path=str(toy_data_dir))
    raw = load_raw(data_cfg, ["test"])
    out, _ = tokenize(raw, prefixed, data_cfg)
    row = out["test"][0]
    assert row["source_ids"] == tm.encode_sources(["translate: " + row["en"]])[0]
    assert row["en"] == raw["test"][0]["en"]  # the raw text is kept without the prefix


def test_csv_empty_cells_are_empty_targets(tmp_path, tiny_text_model):
    (tmp_path / "train.csv").write_text('en,es,topic\nthe dog,el perro,a\nthe cat,,b\nred,"  ",c\n',
                                        encoding="utf-8")
    data_cfg = cfg(path=str(tmp_path))
    raw = load_raw(data_cfg, ["train"])
    assert list(raw["train"]["es"]) == ["el perro", None, "  "]
    out, (report,) = tokenize(raw, tiny_text_model("marian"), data_cfg)
    assert report.empty_targets == 2 and list(out["train"]["en"]) == ["the dog"]


def test_null_sources_are_skipped_and_counted(tmp_path, toy_pairs, tiny_text_model):
    """A null source is missing data (not the empty string): skipped and counted like an empty
    target, or named with `data.empty_targets: error`; an empty-string source is text and kept."""
    rows = [dict(r) for r in toy_pairs[:12]]
    rows[1]["en"], rows[4]["en"], rows[4]["es"], rows[7]["en"] = None, None, None, ""
    write_jsonl(tmp_path / "train.jsonl", rows)
    data_cfg = cfg(path=str(tmp_path))
    out, (report,) = tokenize(load_raw(data_cfg, ["train"]), tiny_text_model("marian"), data_cfg)
    assert (report.missing_sources, report.empty_targets) == (2, 0)
    assert list(out["train"]["en"]) == [r["en"] for i, r in enumerate(rows) if i not in (1, 4)]
    assert "10 examples used of 12; 0 empty targets and 2 missing sources skipped" in report.line()
    strict = cfg(path=str(tmp_path), empty_targets="error")
    with pytest.raises(DataError, match=r"split 'train': 2 missing sources in 'en' \(first at row 1\)"):
        tokenize(load_raw(strict, ["train"]), tiny_text_model("marian"), strict)


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "parquet"])
def test_columns_that_are_not_text_are_named(tmp_path, toy_pairs, fmt):
    """Numbers where text belongs are an error naming the column, the file, the first bad row
    and its type, whatever the file format (JSON may even mix types within a column)."""
    rows = [dict(r) for r in toy_pairs[:6]]
    for r in rows:
        r["en"] = len(r["en"])  # an integer column
    path = tmp_path / f"train.{fmt}"
    datasets.Dataset.from_list(rows).to_json(path) if fmt == "jsonl" else \
        getattr(datasets.Dataset.from_list(rows), f"to_{fmt}")(str(path))
    with pytest.raises(DataError, match=rf"data.source_field 'en' in .*train.{fmt} must hold text; row 0 holds int "):
        load_raw(cfg(path=str(tmp_path)), ["train"])


def test_one_number_among_json_targets(tmp_path, toy_pairs):
    rows = [dict(r) for r in toy_pairs[:6]]
    rows[4]["es"] = 3.5
    write_jsonl(tmp_path / "train.jsonl", rows)
    with pytest.raises(DataError,
                       match=r"data.target_field 'es' in .*train.jsonl must hold text; row 4 holds float 3.5"):
        load_raw(cfg(path=str(tmp_path)), ["train"])


def test_non_utf8_in_an_extra_column_and_a_gzip_file_are_named(tmp_path, toy_pairs):
    """Every text column is checked (rewards read the extra ones), compressed files too."""
    text = "".join(f'{{"en": "{p["en"]}", "es": "{p["es"]}", "topic": "{p["topic"]}"}}\n' for p in toy_pairs[:6])
    data = text.encode().replace(b'"topic": "home"', b'"topic": "h\xf6me"', 1)
    line = next(i for i, row in enumerate(data.splitlines(), 1) if b"\xf6" in row)
    with gzip.open(tmp_path / "train.jsonl.gz", "wb") as f:
        f.write(data)
    with pytest.raises(DataError, match=rf"line {line} of .*train.jsonl.gz is not UTF-8 text \(column 'topic'\)"):
        load_raw(cfg(path=str(tmp_path)), ["train"])


def test_a_truncated_gzip_file_is_one_line(tmp_path, toy_pairs):
    """Cut short (a copy interrupted): said so in one line, not a traceback from re-reading it."""
    whole = gzip.compress("".join(f'{{"en": "{p["en"]}", "es": "{p["es"]}"}}\n' for p in toy_pairs).encode())
    (tmp_path / "train.jsonl.gz").write_bytes(whole[:len(whole) // 2])
    with pytest.raises(DataError, match=r"could not read .*train.jsonl.gz as json: it cannot be decompressed, cut "
                                         r"short or damaged \(EOFError: Compressed file ended before the end-of-stream "
                                         r"marker was reached\); copy or compress it again$"):
        load_raw(cfg(path=str(tmp_path)), ["train"])


def test_a_broken_json_line_is_named_by_its_line(tmp_path, toy_pairs):
    rows = "".join(f'{{"en": "{p["en"]}", "es": "{p["es"]}"}}\n' for p in toy_pairs[:30])
    lines = rows.splitlines(keepends=True)
    lines[21] = '{"en": "the dog", "es": "el perro"\n'  # line 22: the closing brace is missing
    (tmp_path / "train.jsonl").write_text("".join(lines))
    with pytest.raises(DataError, match=r"could not read .*train.jsonl as json: line 22: Expecting"):
        load_raw(cfg(path=str(tmp_path)), ["train"])


def test_a_local_looking_data_path_fails_at_once(tmp_path, monkeypatch):
    """`data/bible_en_ez` with a local `data/`: a typo, not a hub name; no hub lookup (which
    retries for half a minute offline). `org/name` without a local `org/` still goes to the hub."""
    (tmp_path / "data").mkdir()
    monkeypatch.chdir(tmp_path)
    tried = []
    monkeypatch.setattr("seqrl.data._load_hub", lambda c: tried.append(c.path) or datasets.DatasetDict())
    for path in ("data/bible_en_ez", "./bible", "a/b/c", "~/nope"):
        with pytest.raises(DataError, match=rf"data.path '{path}': directory not found"):
            load_raw(cfg(path=path), ["train"])
    with pytest.raises(DataError):
        load_raw(cfg(path="Helsinki-NLP/opus-100"), ["train"])
    assert tried == ["Helsinki-NLP/opus-100"]


# -- hub dataset shapes: nested columns, no validation split -----------------------------------


def wmt_like(directory, pairs, splits=("train", "validation", "test"), features=True):
    """A `save_to_disk` DatasetDict shaped like the hub's WMT datasets: one `translation` column
    (a `Translation` feature, or a plain struct as opus datasets have) holding both languages."""
    sizes = {"train": (0, 160), "validation": (160, 180), "test": (180, 200)}
    feats = datasets.Features({"translation": datasets.Translation(languages=["en", "es"])}) if features else None
    parts = {s: datasets.Dataset.from_dict(
        {"translation": [{"en": p["en"], "es": p["es"]} for p in pairs[slice(*sizes[s])]]}, features=feats)
        for s in splits}
    datasets.DatasetDict(parts).save_to_disk(str(directory))
    return directory


@pytest.mark.parametrize("features", [True, False], ids=["Translation-feature", "struct"])
def test_dotted_fields_read_nested_columns(tmp_path, toy_pairs, features):
    path = wmt_like(tmp_path / "wmt", toy_pairs, features=features)
    raw = load_raw(DataConfig(path=str(path), source_field="translation.en", target_field="translation.es"), SPLITS)
    assert {s: len(raw[s]) for s in SPLITS} == SIZES
    assert list(raw["validation"]["translation.en"]) == [p["en"] for p in toy_pairs[160:180]]
    assert list(raw["test"]["translation.es"]) == [p["es"] for p in toy_pairs[180:200]]


def test_a_missing_nested_field_names_what_is_there(tmp_path, toy_pairs):
    path = wmt_like(tmp_path / "wmt", toy_pairs)
    with pytest.raises(DataError, match=r"data.target_field 'translation.fr' is not a column of split 'train'; "
                                        r"'translation' has en, es"):
        load_raw(DataConfig(path=str(path), source_field="translation.en", target_field="translation.fr"), ["train"])


@pytest.mark.parametrize("share,count", [(0.1, 16), (25, 25)])
def test_validation_carved_from_train(tmp_path, toy_pairs, share, count):
    """A fraction or a count of training rows, drawn with data.split_seed, removed from train,
    kept in their order; the same rows every time, others with another seed; the test split is
    untouched."""
    path = wmt_like(tmp_path / "wmt", toy_pairs, splits=("train", "test"))
    cfg = DataConfig(path=str(path), source_field="translation.en", target_field="translation.es",
                     validation_from_train=share)
    raw = load_raw(cfg, SPLITS)
    train, held = list(raw["train"]["translation.en"]), list(raw["validation"]["translation.en"])
    original = [p["en"] for p in toy_pairs[:160]]
    assert len(held) == count and len(train) == 160 - count
    assert sorted(train + held) == sorted(original)
    index = {text: i for i, text in enumerate(original)}  # (the toy sources are distinct)
    assert [index[t] for t in held] == sorted(index[t] for t in held)
    assert list(load_raw(cfg, SPLITS)["validation"]["translation.en"]) == held
    other = load_raw(dataclasses.replace(cfg, split_seed=1), SPLITS)
    assert list(other["validation"]["translation.en"]) != held
    assert len(raw["test"]) == 20
    alone = load_raw(cfg, ["validation"])  # `seqrl evaluate --split validation` carves the same rows
    assert list(alone["validation"]["translation.en"]) == held


def test_carving_over_an_existing_validation_split_is_refused(tmp_path, toy_pairs, toy_data_dir):
    for path in (wmt_like(tmp_path / "wmt", toy_pairs), toy_data_dir):
        fields = {"source_field": "translation.en", "target_field": "translation.es"} if path != toy_data_dir else \
            {"source_field": "en", "target_field": "es"}
        with pytest.raises(DataError, match=r"data.validation_from_train is set, but the data has a 'validation' "
                                            r"split already"):
            load_raw(DataConfig(path=str(path), validation_from_train=0.1, **fields), SPLITS)


def test_carving_more_than_train_holds_is_refused(tmp_path, toy_pairs):
    path = wmt_like(tmp_path / "wmt", toy_pairs, splits=("train",))
    with pytest.raises(DataError, match=r"data.validation_from_train 160 of 160 training examples leaves no "
                                        r"training example"):
        load_raw(DataConfig(path=str(path), source_field="translation.en", target_field="translation.es",
                            validation_from_train=160, test_split=None), ["train", "validation"])
