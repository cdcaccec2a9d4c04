"""Data cost against corpus size: the Bible training split repeated to 28k, 280k, 1.4M and 2.8M
pairs; for each, a first start (tokenizes into the cache), a second start (opens the cache) and a
2-process first start, each `seqrl finetune` in a fresh process: time to the first optimizer step
and peak resident memory (and, in the JSON lines, the cache's size on disk).

    python scripts/bench_data.py                                   # every size, bench/data.md
    python scripts/bench_data.py --sizes 28224 282240 --out bench/data-small.md
    python scripts/bench_data.py --code /path/to/old/checkout --arms first   # the code before the cache
    python scripts/bench_data.py --padding 32     # padding of shuffled vs length-grouped batches
    python scripts/bench_data.py --step-time 200  # XENT step time, shuffled vs length-grouped batches
    python scripts/bench_data.py --tokenizer-cost # the tokenizers library's own cost per pair (the floor)

The model is the tests' tiny Marian (d_model 32, 1+1 layers), so what grows with the corpus is the
data's cost. Its 300-token BPE tokenizer is trained once on the unrepeated split and named by
`tokenizer.name_or_path`, the same in every arm (and for older code); `--train-tokenizer` trains
it at every start instead, from at most `--tokenizer-cap` examples (`tokenizer.max_train_examples`).
One XENT step (`run.max_steps: 1`), batch 32, sources 64 and targets 64 tokens.

Time to the first step: from the launch until `metrics.jsonl` holds step 1 (written once the first
optimizer step is done). Peak RSS: `os.wait4`'s `ru_maxrss` of the launched process, which for
the 2-process start is the largest of the launcher and its two workers (the peak per process).
`reference` is a first start on 1,000 pairs: the model's and the libraries' share of the memory.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIBLE = ROOT / "data" / "bible_en_es"
SIZES = (28224, 282240, 1411200, 2822400)  # the split repeated 1, 10, 50 and 100 times
ARMS = ("first", "second", "two")
REFERENCE_SIZE = 1000
TINY_MARIAN = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
               "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
               "max_position_embeddings": 256}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", nargs="+", type=int, default=list(SIZES), help="training pairs per corpus")
    p.add_argument("--arms", default=",".join(ARMS), help="comma-separated: first, second, two")
    p.add_argument("--out", default="bench/data.md", help="the markdown table (JSON lines beside it)")
    p.add_argument("--work", default=None, help="directory for corpora, caches and runs (default: beside --out)")
    p.add_argument("--code", default=None, help="a seqrl checkout to measure instead of this one (older code: "
                                                 "no cache fields are set, only `first` makes sense)")
    p.add_argument("--train-tokenizer", action="store_true", help="train the tokenizer at every start")
    p.add_argument("--tokenizer-cap", type=int, default=100_000,
                   help="tokenizer.max_train_examples with --train-tokenizer")
    p.add_argument("--no-reference", action="store_true", help="skip the 1,000-pair reference start")
    p.add_argument("--timeout", type=int, default=7200, help="seconds per start")
    p.add_argument("--padding", type=int, default=0, metavar="BATCH",
                   help="only print the padding of shuffled and length-grouped batches of BATCH rows")
    p.add_argument("--step-time", type=int, default=0, metavar="STEPS",
                   help="only time STEPS XENT steps of recipes/bench/translation.yaml (the quickstart's model, "
                        "batch 64) with shuffled and with length-grouped batches, --reps times each, alternating")
    p.add_argument("--reps", type=int, default=2, help="runs of each arm with --step-time")
    p.add_argument("--tokenizer-cost", action="store_true",
                   help="only time the fixed tokenizer's own Rust encode_batch on both sides of the Bible split")
    return p.parse_args(argv)


def write_corpus(size: int, directory: Path) -> Path:
    """train.jsonl: `size` pairs, the Bible training split repeated (cut in its last repeat);
    validation.jsonl: the first 64 validation pairs."""
    directory.mkdir(parents=True, exist_ok=True)
    with gzip.open(BIBLE / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        lines = f.read().splitlines(keepends=True)
    with open(directory / "train.jsonl", "w", encoding="utf-8") as out:
        for start in range(0, size, len(lines)):
            out.writelines(lines[:min(len(lines), size - start)])
    with gzip.open(BIBLE / "validation.jsonl.gz", "rt", encoding="utf-8") as f:
        (directory / "validation.jsonl").write_text("".join(f.readlines()[:64]), encoding="utf-8")
    return directory


def fixed_tokenizer(directory: Path, python: list[str], env: dict) -> Path:
    """A 300-token BPE tokenizer trained on the unrepeated split, saved once."""
    if not (directory / "tokenizer.json").is_file():
        code = ("import gzip, json, sys\nfrom seqrl.config import TokenizerConfig\nfrom seqrl.tokenizer import "
                "train_tokenizer\nrows = [json.loads(l) for l in gzip.open(sys.argv[1], 'rt')]\n"
                "texts = [r['en'] for r in rows] + [r['es'] for r in rows]\n"
                "train_tokenizer(texts, TokenizerConfig(vocab_size=300)).save_pretrained(sys.argv[2])\n")
        subprocess.run([*python, "-c", code, str(BIBLE / "train.jsonl.gz"), str(directory)], env=env, check=True)
    return directory


def recipe(data: Path, run: Path, cache: Path, tokenizer: Path | None, args: argparse.Namespace) -> dict:
    data_cfg = {"path": str(data), "source_field": "en", "target_field": "es", "test_split": None,
                "max_source_tokens": 64, "max_target_tokens": 64}
    tok_cfg = {"vocab_size": 300} if tokenizer is None else {"name_or_path": str(tokenizer)}
    if args.code is None:  # fields older code does not know
        data_cfg["cache_dir"] = str(cache)
        if tokenizer is None:
            tok_cfg["max_train_examples"] = args.tokenizer_cap
    return {"model": {"architecture": "marian", "config": TINY_MARIAN}, "tokenizer": tok_cfg, "data": data_cfg,
            "xent": {"batch_size": 32}, "schedule": {"kind": "xent", "xent_steps": 1},
            "eval": {"every": 0, "max_examples": 8, "max_new_tokens": 8, "test_after_xent": False},
            "run": {"output_dir": str(run), "max_steps": 1, "overwrite": True, "cpu": True},
            "log": {"every": 1, "progress_bar": False}}


def measure(cmd: list[str], env: dict, run: Path, timeout: int, cwd: Path = ROOT) -> dict:
    """Time to the first step, wall time and peak RSS of `cmd`, and what it printed. It runs in
    `cwd`, the checkout measured: `python -m` puts the working directory before PYTHONPATH."""
    log = run.parent / f"{run.name}.log"
    start = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=cwd)
    first_step = None
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if first_step is None and _has_step(run / "metrics.jsonl"):
            first_step = time.monotonic() - start
        if time.monotonic() - start > timeout:
            proc.kill()
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)  # (reaped here, not by Popen)
    printed = log.read_text(errors="replace")
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}); the end of {log}:\n{printed[-2000:]}")
    if first_step is None and _has_step(run / "metrics.jsonl"):
        first_step = time.monotonic() - start
    found = re.search(r"^data cache\[train\]: (\w+)", printed, re.MULTILINE)  # (older code prints none)
    cache = found.group(1) if found else "-"
    return {"first_step_s": first_step, "wall_s": time.monotonic() - start,
            "peak_rss_mb": usage.ru_maxrss / 1024, "cache": cache}


def _has_step(metrics: Path) -> bool:
    try:
        return any(json.loads(line).get("step", 0) >= 1 for line in metrics.read_text().splitlines() if line.strip())
    except (OSError, ValueError):  # not there yet, or a line half written
        return False


def bench_size(size: int, arms: list[str], work: Path, tokenizer: Path | None, python: list[str], env: dict,
               args: argparse.Namespace) -> list[dict]:
    """The arms at one corpus size, in order (the second start reuses the first's cache)."""
    data = write_corpus(size, work / f"corpus-{size}")
    cache = work / f"cache-{size}"
    results = []
    for arm in arms:
        if arm in ("first", "two"):
            shutil.rmtree(cache, ignore_errors=True)
        run = work / "runs" / f"{size}-{arm}"
        path = work / "runs" / f"{size}-{arm}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(recipe(data, run, cache, tokenizer, args)))  # (JSON is YAML)
        launch = [] if arm != "two" else ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
                                          "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend",
                                          "no", "--main_process_port", "0"]
        result = measure([*python, *launch, "-m", "seqrl", "finetune", str(path)], env, run, args.timeout,
                         Path(args.code).resolve() if args.code else ROOT)
        cached = [f for f in cache.rglob("*") if f.is_file()] if args.code is None else []
        results.append({"pairs": size, "arm": arm, **result,  # (the cache's size on disk, after this start)
                        "cache_mb": sum(f.stat().st_size for f in cached) / 2**20 if cached else None})
        print(json.dumps(results[-1]), flush=True)
    shutil.rmtree(data, ignore_errors=True)  # (gigabytes at the largest sizes)
    return results


def table(results: list[dict], reference_mb: float | None) -> str:
    lines = ["| pairs | start | cache | to first step (s) | ms per pair | peak RSS (MB) | above reference (MB) "
             "| KB per pair |", "|---:|---|---|---:|---:|---:|---:|---:|"]
    for r in results:
        above = r["peak_rss_mb"] - reference_mb if reference_mb is not None else None
        step, pairs = r["first_step_s"], r["pairs"]
        above_text = "-" if above is None else f"{above:.0f}"
        per_pair = "-" if above is None else f"{1024 * above / pairs:.2f}"
        lines.append(f"| {pairs:,} | {r['arm']} | {r['cache']} | {step:.1f} | {1000 * step / pairs:.3f} "
                     f"| {r['peak_rss_mb']:.0f} | {above_text} | {per_pair} |")
    return "\n".join(lines) + "\n"


def padding(tokenizer: Path, batch: int, seed: int = 0) -> str:
    """Padded share of the source and target positions of one epoch of the (unrepeated) Bible split,
    shuffled as by default and length-grouped (`data.group_by_length`), at `batch` rows per batch."""
    import numpy as np
    import pyarrow.compute as pc

    from seqrl.batching import LengthGroupedSampler, row_lengths
    from seqrl.config import DataConfig
    from seqrl.data import load_raw, tokenize
    from seqrl.modeling import TextModel
    from seqrl.tokenizer import load_tokenizer

    cfg = DataConfig(path=str(BIBLE), source_field="en", target_field="es", test_split=None,
                     max_source_tokens=64, max_target_tokens=64)
    text_model = TextModel(None, load_tokenizer(str(tokenizer)), True)
    train = tokenize(load_raw(cfg, ["train"]), text_model, cfg)[0]["train"]
    src = pc.list_value_length(train.data.column("source_ids")).to_numpy()
    tgt = pc.list_value_length(train.data.column("target_ids")).to_numpy()
    lines = []
    for name, order in (("shuffled", np.random.default_rng(seed).permutation(len(train))),
                        ("grouped", LengthGroupedSampler(row_lengths(train), batch, seed).order())):
        batches = np.split(order, range(batch, len(order), batch))
        padded = sum(src[b].max() * len(b) - src[b].sum() + tgt[b].max() * len(b) - tgt[b].sum() for b in batches)
        total = sum((src[b].max() + tgt[b].max()) * len(b) for b in batches)
        lines.append(f"{name}: {100 * padded / total:.1f}% of {total:,} positions are padding (batch {batch})")
    return "\n".join(lines)


def step_time(steps: int, reps: int, work: Path, python: list[str], env: dict) -> str:
    """Mean XENT step time (metrics.jsonl's time/step_s, the first logged window left out: warm-up)
    with shuffled and with length-grouped batches, the arms alternating so drift hits both."""
    times: dict[str, list[float]] = {"shuffled": [], "grouped": []}
    for rep in range(reps):
        for name in times:
            run = work / "step-time" / f"{name}-{rep}"
            cmd = [*python, "-m", "seqrl", "finetune", str(ROOT / "recipes" / "bench" / "translation.yaml")]
            for item in ("schedule.kind=xent", "schedule.stage_steps=null", f"schedule.xent_steps={steps}",
                         "eval.every=0", "eval.test_after_xent=false", "data.test_split=null",
                         "eval.max_examples=8", f"log.every={max(1, steps // 10)}", f"run.output_dir={run}",
                         "run.overwrite=true", f"data.group_by_length={name == 'grouped'}",
                         f"data.cache_dir={work / 'step-time-cache'}"):
                cmd += ["--set", item]
            subprocess.run(cmd, env=env, check=True, capture_output=True)
            rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x.strip()]
            logged = [r["time/step_s"] for r in rows if "time/step_s" in r][1:]
            times[name].append(sum(logged) / len(logged))
    mean = {name: sum(v) / len(v) for name, v in times.items()}
    lines = [f"{name}: {mean[name]:.3f} s/step (runs: {', '.join(f'{t:.3f}' for t in v)})" for name, v in times.items()]
    lines.append(f"grouped / shuffled: {mean['grouped'] / mean['shuffled']:.3f}")
    return "\n".join(lines)


def tokenizer_cost(tokenizer: Path) -> str:
    """Milliseconds per pair of `tokenizers`' own encode_batch (no seqrl, no datasets) on both
    sides of the unrepeated Bible split: the floor of a first start's cost per pair."""
    from tokenizers import Tokenizer

    with gzip.open(BIBLE / "train.jsonl.gz", "rt", encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    backend = Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    start = time.perf_counter()
    backend.encode_batch([r["en"] for r in rows])
    backend.encode_batch([r["es"] for r in rows])
    return f"encode_batch: {1000 * (time.perf_counter() - start) / len(rows):.3f} ms per pair ({len(rows):,} pairs)"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.tokenizer_cost:
        work = Path(args.work) if args.work else Path(args.out).parent / "bench-data-work"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
        print(tokenizer_cost(fixed_tokenizer(work / "tokenizer-300", [sys.executable], env)))
        return 0
    if args.step_time:
        work = Path(args.work) if args.work else Path(args.out).parent / "bench-data-work"
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
        print(step_time(args.step_time, args.reps, work, [sys.executable], env))
        return 0
    if args.padding:
        sys.path.insert(0, str(ROOT))
        work = Path(args.work) if args.work else Path(args.out).parent / "bench-data-work"
        python = [sys.executable]
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONPATH=str(ROOT))
        print(padding(fixed_tokenizer(work / "tokenizer-300", python, env), args.padding))
        return 0
    arms = [a for a in args.arms.split(",") if a]
    unknown = sorted(set(arms) - set(ARMS))
    if unknown:
        raise SystemExit(f"--arms: unknown {unknown}; choose from {', '.join(ARMS)}")
    out = Path(args.out)
    work = Path(args.work) if args.work else out.parent / "bench-data-work"
    code = Path(args.code).resolve() if args.code else ROOT
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=str(code) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    python = [sys.executable]
    tokenizer = None if args.train_tokenizer else fixed_tokenizer(work / "tokenizer-300", python, env)
    results = []
    reference_mb = None
    if not args.no_reference:
        results += bench_size(REFERENCE_SIZE, ["first"], work, tokenizer, python, env, args)
        results[-1]["arm"] = "reference"
        reference_mb = results[-1]["peak_rss_mb"]
    for size in args.sizes:
        results += bench_size(size, arms, work, tokenizer, python, env, args)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(table(results, reference_mb))
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    print(table(results, reference_mb))
    return 0


if __name__ == "__main__":
    sys.exit(main())
