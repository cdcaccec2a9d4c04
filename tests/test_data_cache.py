"""The tokenized Arrow cache (`seqrl.tokenized`): reused by a second start without tokenizing,
missed when anything the ids depend on changes, rebuilt when corrupt; length-grouped batches
(`seqrl.batching`) are a function of (seed, epoch) and the same on 1 and 2 processes; a
tokenizer trained from Arrow batches, capped."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from accelerate.data_loader import BatchSamplerShard
from conftest import TINY_CONFIGS, build_tiny, make_pairs, write_jsonl, write_toy_splits
from torch.utils.data import BatchSampler

from seqrl import data_checks, tokenized
from seqrl.batching import LengthGroupedSampler, row_lengths
from seqrl.config import DataConfig, TokenizerConfig, from_dict
from seqrl.data import UTF8_CHECKED, load_raw, tokenize
from seqrl.errors import ConfigError
from seqrl.tokenizer import train_tokenizer, training_texts

SPLITS = ["train", "validation"]


def cfg(data_dir: Path, cache: Path, **kw) -> DataConfig:
    return DataConfig(**{"path": str(data_dir), "source_field": "en", "target_field": "es", "test_split": None,
                         "max_source_tokens": 12, "max_target_tokens": 10, "cache_dir": str(cache), **kw})


@pytest.fixture
def count_encodes(monkeypatch):
    """How many batches `datasets.map` has handed the tokenizing function so far."""
    calls = []
    real = tokenized.encode_batch

    def counted(batch, **kw):
        calls.append(len(batch["en"]))
        return real(batch, **kw)

    monkeypatch.setattr(tokenized, "encode_batch", counted)
    return calls


def cut(ids: list[int], limit: int) -> list[int]:
    """By hand: the first limit - 1 ids and the last (EOS) when too long."""
    return ids[:limit - 1] + ids[-1:] if len(ids) > limit else ids


def rows(ds) -> list[dict]:
    return [ds[i] for i in range(len(ds))]


def test_second_start_tokenizes_nothing_and_reads_the_same_rows(toy_data_dir, tmp_path, tiny_text_model,
                                                                 count_encodes):
    tm, data_cfg = tiny_text_model("marian"), cfg(toy_data_dir, tmp_path / "cache")
    first, reports = tokenize(load_raw(data_cfg, SPLITS), tm, data_cfg)
    assert sum(count_encodes) == 180 and [r.cache for r in reports] == ["built", "built"]
    count_encodes.clear()
    second, again = tokenize(load_raw(data_cfg, SPLITS), tm, data_cfg)
    assert count_encodes == [], "a second start must not tokenize"
    assert [r.cache for r in again] == ["hit", "hit"]
    assert [r.line() for r in again] == [r.line() for r in reports]
    cache_name = again[0].cache_path.split('/')[-1]
    assert again[0].cache_line() == f"data cache[train]: hit at {tmp_path / 'cache'}/{cache_name}"
    for split in SPLITS:
        assert rows(second[split]) == rows(first[split])
        assert second[split].cache_files, "the split must be memory-mapped from the cache"
    row = second["train"][0]
    assert row["source_ids"] == tm.encode_sources([row["en"]])[0][:11] + [tm.tokenizer.eos_token_id]
    cached = sorted(p.name for p in (tmp_path / "cache").iterdir() if p.name != UTF8_CHECKED)
    assert cached == sorted(r.cache_path.split("/")[-1] for r in again)


def test_the_utf8_check_reads_a_file_once(toy_data_dir, tmp_path, monkeypatch):
    """The check reads every byte of the text (at 2.8M pairs, most of a cached start's resident
    memory): a split from the same file (path, size, time) passed it before, so it is skipped."""
    checked = []
    real = data_checks.check_utf8
    monkeypatch.setattr(data_checks, "check_utf8",
                        lambda ds, where, file: checked.append(where) or real(ds, where, file))
    data_cfg = cfg(toy_data_dir, tmp_path / "cache")
    load_raw(data_cfg, SPLITS)
    assert checked == [str(toy_data_dir / f"{split}.jsonl") for split in SPLITS]
    checked.clear()
    load_raw(data_cfg, SPLITS)
    assert checked == []
    os.utime(toy_data_dir / "train.jsonl", ns=(1, 1))  # (a rewritten file)
    load_raw(data_cfg, SPLITS)
    assert checked == [str(toy_data_dir / "train.jsonl")]


def _changed(what: str, data_dir: Path, data_cfg: DataConfig, tm):
    """The inputs with one thing changed, as (config, text model)."""
    if what == "tokenizer":
        texts = [p["en"] for p in make_pairs()[:100]] + [p["es"] for p in make_pairs()[:100]]
        return data_cfg, build_tiny("marian", texts)
    if what == "field":
        return dataclasses.replace(data_cfg, source_field="topic"), tm
    if what == "file":
        pairs = make_pairs()
        pairs[0] = {**pairs[0], "en": "the red dog"}
        write_toy_splits(data_dir, pairs)
        return data_cfg, tm
    if what == "limit":
        return dataclasses.replace(data_cfg, max_target_tokens=4), tm
    return data_cfg, dataclasses.replace(tm, source_prefix="translate: ")  # "prefix"


@pytest.mark.parametrize("what", ["tokenizer", "field", "file", "limit", "prefix"])
def test_a_change_of_what_the_ids_depend_on_misses_the_cache(toy_data_dir, tmp_path, tiny_text_model,
                                                             count_encodes, what):
    tm, data_cfg = tiny_text_model("marian"), cfg(toy_data_dir, tmp_path / "cache")
    before, _ = tokenize(load_raw(data_cfg, ["train"]), tm, data_cfg)
    new_cfg, new_tm = _changed(what, toy_data_dir, data_cfg, tm)
    count_encodes.clear()
    after, (report,) = tokenize(load_raw(new_cfg, ["train"]), new_tm, new_cfg)
    assert sum(count_encodes) == 160 and report.cache == "built"
    first = after["train"][0]
    source = first[new_cfg.source_field]
    assert first["source_ids"] == cut(new_tm.encode_sources([source])[0], new_cfg.max_source_tokens)
    assert first["target_ids"] == cut(new_tm.encode_targets([first["es"]])[0], new_cfg.max_target_tokens)
    assert rows(after["train"]) != rows(before["train"])
    assert len([p for p in (tmp_path / "cache").iterdir() if p.name != UTF8_CHECKED]) == 2


def test_several_tokenizing_processes_write_the_same_rows(toy_data_dir, tmp_path, tiny_text_model):
    tm = tiny_text_model("gpt2")
    one, _ = tokenize(load_raw(cfg(toy_data_dir, tmp_path / "a"), ["train"]), tm, cfg(toy_data_dir, tmp_path / "a"))
    two_cfg = cfg(toy_data_dir, tmp_path / "b", num_proc=2)
    two, (report,) = tokenize(load_raw(two_cfg, ["train"]), tm, two_cfg)
    assert len(two["train"].cache_files) == 2 and rows(two["train"]) == rows(one["train"])
    again, (hit,) = tokenize(load_raw(two_cfg, ["train"]), tm, two_cfg)
    assert hit.cache == "hit" and rows(again["train"]) == rows(one["train"])


def test_skipped_rows_are_left_out_of_the_cache_and_counted_again_on_a_hit(tmp_path, toy_pairs, tiny_text_model):
    pairs = [dict(p) for p in toy_pairs[:12]]
    pairs[3]["es"], pairs[7]["en"] = " ", None
    write_jsonl(tmp_path / "train.jsonl", pairs)
    data_cfg = cfg(tmp_path, tmp_path / "cache")
    for expected in ("built", "hit"):
        out, (report,) = tokenize(load_raw(data_cfg, ["train"]), tiny_text_model("marian"), data_cfg)
        assert report.cache == expected and (report.empty_targets, report.missing_sources) == (1, 1)
        assert list(out["train"]["en"]) == [p["en"] for i, p in enumerate(pairs) if i not in (3, 7)]
        assert "_seqrl_flags" not in out["train"].column_names


def test_a_cache_dir_that_cannot_be_written_is_one_line(toy_data_dir, tmp_path, tiny_text_model):
    (tmp_path / "a_file").write_text("not a directory")
    data_cfg = cfg(toy_data_dir, tmp_path / "a_file" / "cache")
    with pytest.raises(ConfigError, match=r"^data\.cache_dir '.*a_file/cache': cannot write the tokenized data "
                                          r"there \(.*\); set data\.cache_dir to a writable directory$"):
        tokenize(load_raw(data_cfg, ["train"]), tiny_text_model("marian"), data_cfg)


@pytest.mark.parametrize("damage", ["arrow", "manifest", "missing"])
def test_a_corrupt_cache_is_rebuilt_and_said_so(toy_data_dir, tmp_path, tiny_text_model, count_encodes, damage):
    tm, data_cfg = tiny_text_model("marian"), cfg(toy_data_dir, tmp_path / "cache")
    first, (built,) = tokenize(load_raw(data_cfg, ["train"]), tm, data_cfg)
    expected, where = rows(first["train"]), Path(built.cache_path)
    if damage == "arrow":  # a torn file (a new inode: truncating the mapped one would pull pages from under `first`)
        arrow = where / "tokens.arrow"
        head = arrow.read_bytes()[: arrow.stat().st_size // 2]
        arrow.unlink()
        arrow.write_bytes(head)
    elif damage == "manifest":
        (where / "manifest.json").write_text("{not json")
    else:
        (where / "tokens.arrow").unlink()
    count_encodes.clear()
    again, (report,) = tokenize(load_raw(data_cfg, ["train"]), tm, data_cfg)
    assert report.cache.startswith("rebuilt (the cache there could not be read: ") and sum(count_encodes) == 160
    assert "\n" not in report.cache_line()
    assert rows(again["train"]) == expected
    _, (hit,) = tokenize(load_raw(data_cfg, ["train"]), tm, data_cfg)
    assert hit.cache == "hit"


# -- length-grouped batches ----------------------------------------------------------------------


def padding(order: np.ndarray, lengths: np.ndarray, batch: int) -> int:
    """Pad positions of batches of `batch` consecutive rows of `order`."""
    batches = np.split(order, range(batch, len(order), batch))
    return sum(int(lengths[b].max() * len(b) - lengths[b].sum()) for b in batches)


def test_length_grouped_order_is_a_function_of_seed_and_epoch_and_pads_less():
    lengths = np.random.default_rng(0).integers(3, 60, size=1003)
    sampler = LengthGroupedSampler(lengths, 8, seed=5)
    epoch0 = list(sampler)
    assert sorted(epoch0) == list(range(1003))
    assert list(LengthGroupedSampler(lengths, 8, seed=5)) == epoch0
    sampler.set_epoch(1)
    assert list(sampler) != epoch0 and sorted(sampler) == list(range(1003))
    sampler.set_epoch(0)
    assert list(sampler) == epoch0
    assert list(LengthGroupedSampler(lengths, 8, seed=6)) != epoch0
    shuffled = np.random.default_rng(1).permutation(1003)
    assert padding(np.array(epoch0), lengths, 8) < padding(shuffled, lengths, 8) / 5
    # the short batch (1003 = 125 * 8 + 3) stays last; the whole ones are not in length order
    assert len(set(epoch0[-3:]) & set(epoch0[:-3])) == 0
    firsts = [lengths[epoch0[i]] for i in range(0, 1000, 8)]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_length_grouped_global_batches_are_the_same_on_one_and_two_processes():
    """accelerate's own sharding (BatchSamplerShard) of the per-process batches."""
    lengths = np.random.default_rng(0).integers(3, 60, size=160)
    one = list(BatchSampler(LengthGroupedSampler(lengths, 8, seed=2), 8, drop_last=False))
    shards = [list(BatchSamplerShard(BatchSampler(LengthGroupedSampler(lengths, 8, seed=2), 4, drop_last=False),
                                     num_processes=2, process_index=p)) for p in (0, 1)]
    assert [a + b for a, b in zip(*shards, strict=True)] == one


def test_row_lengths_read_the_arrow_offsets(toy_data_dir, tmp_path, tiny_text_model):
    data_cfg = cfg(toy_data_dir, tmp_path / "cache")
    out, _ = tokenize(load_raw(data_cfg, ["validation"]), tiny_text_model("marian"), data_cfg)
    ds = out["validation"]
    assert row_lengths(ds).tolist() == [len(r["source_ids"]) + len(r["target_ids"]) for r in rows(ds)]


# -- the tokenizer trained from Arrow batches ----------------------------------------------------


def test_tokenizer_trained_from_batches_is_the_one_trained_from_lists(toy_data_dir, tmp_path):
    train = load_raw(cfg(toy_data_dir, tmp_path), ["train"])["train"]
    texts, examples = training_texts(train, "en", "es", ">> ", None, 0)
    listed = [">> " + t for t in train["en"]] + list(train["es"])
    tok_cfg = TokenizerConfig(vocab_size=120)
    assert examples == 160
    assert (train_tokenizer(texts, tok_cfg).backend_tokenizer.to_str()
            == train_tokenizer(listed, tok_cfg).backend_tokenizer.to_str())


def test_tokenizer_training_reads_at_most_the_cap(toy_data_dir, tmp_path):
    train = load_raw(cfg(toy_data_dir, tmp_path), ["train"])["train"]
    batches, examples = training_texts(train, "en", "es", "", 25, 3)
    texts = [t for batch in batches for t in batch]
    assert examples == 25 and len(texts) == 50
    sources = set(train["en"])
    assert sum(t in sources for t in texts[:25]) == 25
    again, _ = training_texts(train, "en", "es", "", 25, 3)
    assert [t for batch in again for t in batch] == texts


# -- the same batches on 1 and 2 processes, through the cache --------------------------------------

BATCHES_SCRIPT = """
import json, sys, dataclasses
from pathlib import Path
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, gather_object
from seqrl import batching
from seqrl.config import load_recipe
from seqrl.run import setup
from seqrl.session import teardown

cfg = load_recipe(sys.argv[1])
acc = Accelerator(cpu=True, dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
run = setup(cfg, acc, Path(cfg.run.output_dir), [])
grouped_cfg = dataclasses.replace(cfg.data, group_by_length=True)
grouped = acc.prepare(batching.train_loader(run.datasets["train"], cfg.xent.batch_size, grouped_cfg, cfg.run.seed,
                                            acc.num_processes, batching.TrainCollator(run.text_model, cfg.data)))
seen = {}
for name, loader in (("plain", run.loader), ("grouped", grouped)):
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        seen[f"{name}-{epoch}"] = [b["columns"]["row"] for b in loader]
    loader.set_epoch(1)
    seen[f"{name}-resumed"] = [b["columns"]["row"] for b in acc.skip_first_batches(loader, 3)]
everything = gather_object([seen])
if acc.is_main_process:
    Path(sys.argv[2]).write_text(json.dumps(everything))
del grouped, loader
teardown(acc, run, clean=True)  # a process that exits with gloo still up can abort ("terminate called ...")
"""


def _batches(tmp_path: Path, data_dir: Path, processes: int, capsys) -> list[dict]:
    """What each process saw (1 process: in this one, to spare a start; 2: launched by accelerate)."""
    recipe = {"model": {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"])},
              "tokenizer": {"vocab_size": 120},
              "data": {"path": str(data_dir), "source_field": "en", "target_field": "es", "test_split": None,
                       "max_source_tokens": 16, "max_target_tokens": 8,
                       "cache_dir": str(tmp_path / f"cache{processes}")},
              "xent": {"batch_size": 8 // processes}, "schedule": {"kind": "xent", "xent_steps": 2},
              "eval": {"max_new_tokens": 8}, "run": {"output_dir": str(tmp_path / f"run{processes}"), "seed": 4}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    (tmp_path / "batches.py").write_text(BATCHES_SCRIPT)
    script = [str(tmp_path / "batches.py"), str(tmp_path / "recipe.yaml"), str(tmp_path / f"seen{processes}.json")]
    if processes == 1:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(sys, "argv", script)
            runpy.run_path(script[0], run_name="__main__")
        stdout = capsys.readouterr().out
    else:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
               "--num_processes", str(processes), "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", "0", *script]
        env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
                   TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(Path(__file__).parents[1]))
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=240)
        assert proc.returncode == 0, proc.stderr[-3000:]
        stdout = proc.stdout
    # printed once, by the main process
    assert len(re.findall(r"^data cache\[\w+\]: built at ", stdout, re.MULTILINE)) == 2, stdout
    entries = sorted(p.name for p in (tmp_path / f"cache{processes}").iterdir() if p.name != UTF8_CHECKED)
    assert len(entries) == 2 and not any(e.startswith(".") for e in entries), entries  # one cache per split
    return json.loads((tmp_path / f"seen{processes}.json").read_text())


def test_the_cached_path_gives_the_same_global_batches_on_one_and_two_processes(tmp_path, capsys):
    pairs = [{**p, "row": i} for i, p in enumerate(make_pairs())]
    data_dir = write_toy_splits(tmp_path / "data", pairs)
    (one,), two = _batches(tmp_path, data_dir, 1, capsys), _batches(tmp_path, data_dir, 2, capsys)
    for key, batches in one.items():
        assert [a + b for a, b in zip(two[0][key], two[1][key], strict=True)] == batches, key
        if not key.endswith("resumed"):
            assert sorted(r for b in batches for r in b) == list(range(160)), key
    for name in ("plain", "grouped"):
        assert one[f"{name}-resumed"] == one[f"{name}-1"][3:]
        assert one[f"{name}-0"] != one[f"{name}-1"]
    assert one["plain-0"] != one["grouped-0"]


@pytest.mark.parametrize("field", ["data.num_proc", "tokenizer.max_train_examples"])
def test_new_counts_must_be_positive(tiny_recipe, field):
    section, name = field.split(".")
    tiny_recipe.setdefault(section, {})[name] = 0
    with pytest.raises(ConfigError, match=rf"^{field} must be > 0 \(or empty\), got 0$"):
        from_dict(tiny_recipe)
