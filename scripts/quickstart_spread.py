"""How much the quickstart's scores move across seeds and thread counts (issue 36, item 5): run
recipes/quickstart.yaml once per (seed, threads), each pinned to as many cores as threads, and
print the test BLEU at the start and the end of each run, its gain and its wall time.

    python scripts/quickstart_spread.py --seeds 0 1 2 --threads 1          # one core each, in turn
    python scripts/quickstart_spread.py --seeds 0 --threads 2 --cores 0 1

A finished run (final/ present) is not rerun; --out (default bench/quickstart_spread) keeps them.
The run is deterministic for a seed, a thread count and the versions of constraints.txt; the seed
moves the data order and the samples, the thread count the order of floating-point reductions.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqrl import software  # noqa: E402

RECIPE = "recipes/quickstart.yaml"


def run_one(out: Path, seed: int, threads: int, cores: list[int], overrides: list[str]) -> None:
    if (out / "final").is_dir():
        print(f"cached: {out}", flush=True)
        return
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "HF_HUB_OFFLINE": "1"}
    cmd = ["taskset", "-c", ",".join(map(str, cores[:threads])), sys.executable, "-m", "seqrl", "finetune", RECIPE,
           "--set", f"run.seed={seed}", "--set", f"run.output_dir={out}", "--set", "run.overwrite=true",
           *(x for o in overrides for x in ("--set", o))]
    started = time.monotonic()
    subprocess.run(cmd, cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
    (out / "wall.json").write_text(json.dumps({"wall_s": time.monotonic() - started}))


def scores(out: Path) -> dict:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    tests = [r for r in rows if "test/bleu" in r]
    return {"start": tests[0]["test/bleu"], "end": tests[-1]["test/bleu"],
            "wall_min": json.loads((out / "wall.json").read_text())["wall_s"] / 60}


def table(results: dict[tuple[int, int], dict]) -> str:
    lines = ["| seed | threads | test BLEU at start | at end | gain | wall (min) |", "|---|---|---|---|---|---|"]
    for (seed, threads), r in sorted(results.items()):
        lines.append(f"| {seed} | {threads} | {r['start']:.2f} | {r['end']:.2f} | {r['end'] - r['start']:+.2f} "
                     f"| {r['wall_min']:.1f} |")
    gains = [r["end"] - r["start"] for r in results.values()]
    if len(gains) > 1:
        lines.append(f"\ngain: mean {statistics.mean(gains):+.2f}, sd {statistics.stdev(gains):.2f}, "
                     f"range {min(gains):+.2f} .. {max(gains):+.2f} over {len(gains)} runs")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--threads", type=int, nargs="+", default=[1])
    p.add_argument("--cores", type=int, nargs="+", default=[1, 0], help="cores to pin to, first ones first")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "quickstart_spread")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="recipe override for every run")
    args = p.parse_args(argv)
    print(f"software: {software.versions()}")
    results = {}
    for threads in args.threads:
        if threads > len(args.cores):
            p.error(f"--threads {threads} needs as many --cores")
        for seed in args.seeds:
            out = args.out / f"seed{seed}-threads{threads}"
            run_one(out, seed, threads, args.cores, args.overrides)
            results[(seed, threads)] = scores(out)
    print(table(results))


if __name__ == "__main__":
    main()
