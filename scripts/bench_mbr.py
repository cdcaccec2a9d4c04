"""The decoding table of MBR (issue 33): greedy, beam 4 and MBR with N candidates (8 and 16) of one
trained model on one split, on the recipe's corpus metrics (the test metric, and one that is not
the utility: chrF beside a BLEU utility), with decoding seconds per source.

    python scripts/bench_mbr.py RECIPE --model RUN/final [--split test] [--candidates 8 16]
        [--utility token_bleu] [--max-examples N] [--out table.json] [--set key=value ...]

MBR's candidates, temperature, utility and pair batch are the recipe's `mbr` section (`--utility`
overrides its utility); the seed is `run.seed`. Prints a Markdown table and writes the numbers as
JSON with `--out`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipe")
    p.add_argument("--model", required=True, help="a saved model directory (RUN/final)")
    p.add_argument("--split", help="split to decode (default: data.test_split)")
    p.add_argument("--candidates", type=int, nargs="+", default=[8, 16], help="MBR's N (each >= 2)")
    p.add_argument("--beams", type=int, default=4, help="the beam-search row's beams")
    p.add_argument("--utility", help="override mbr.utility")
    p.add_argument("--max-examples", type=int, help="decode only the first N examples")
    p.add_argument("--out", help="write the rows as JSON here")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = p.parse_args(argv)
    if any(n < 2 for n in args.candidates):
        p.error("--candidates: MBR needs at least 2 candidates per source")
    return args


def rows(args: argparse.Namespace) -> list[dict]:
    from accelerate import Accelerator

    from seqrl import data, modeling
    from seqrl.config import load_recipe
    from seqrl.evaluate import evaluate_split
    from seqrl.mbr import build_decoder

    cfg = load_recipe(args.recipe, args.overrides)
    if args.utility:
        cfg.mbr.utility = args.utility
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    text_model = modeling.load_saved(args.model)
    accelerator = Accelerator(cpu=cfg.run.cpu)
    dataset = data.tokenize(data.load_raw(cfg.data, [split]), text_model, cfg.data, accelerator)[0][split]
    model = text_model.model.to(accelerator.device)
    settings = [("greedy", 1, None), (f"beam {args.beams}", args.beams, None)]
    settings += [(f"MBR N={n} ({cfg.mbr.candidates}, {cfg.mbr.utility})", 1, n) for n in args.candidates]
    out = []
    for name, beams, n in settings:
        eval_cfg = dataclasses.replace(cfg.eval, num_beams=beams, decode="mbr" if n else "search")
        mbr = (build_decoder(text_model, dataclasses.replace(cfg.mbr, num_candidates=n), cfg.eval.max_new_tokens,
                             cfg.run.seed) if n else None)
        start = time.perf_counter()
        scores = evaluate_split(text_model, model, dataset, accelerator, cfg.data, eval_cfg,
                                max_examples=args.max_examples, progress=False, mbr=mbr)
        examples = min(args.max_examples or len(dataset), len(dataset))
        out.append({"decoding": name, **scores, "seconds_per_source": (time.perf_counter() - start) / examples,
                    "split": split, "examples": examples})
    return out


def table(results: list[dict], metrics: list[str]) -> str:
    lines = ["| decoding | " + " | ".join(metrics) + " | s/source |", "|---" * (len(metrics) + 2) + "|"]
    for r in results:
        lines.append(f"| {r['decoding']} | " + " | ".join(f"{r[m]:.2f}" for m in metrics)
                     + f" | {r['seconds_per_source']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    results = rows(args)
    metrics = [k for k in results[0] if k not in ("decoding", "seconds_per_source", "split", "examples")]
    print(table(results, metrics))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
