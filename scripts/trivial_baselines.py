"""Scores of outputs that ignore the model, for honest comparison: copy the source, the first
N words of the source (lead-N), and the single most common reference of the training split.

    python scripts/trivial_baselines.py --data data/bible_en_es --source en --target es --split test
"""

from __future__ import annotations

import argparse
from collections import Counter

from seqrl.config import DataConfig
from seqrl.data import load_raw
from seqrl.metrics import corpus_scores


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="data.path of a recipe")
    parser.add_argument("--source", default="source")
    parser.add_argument("--target", default="target")
    parser.add_argument("--split", default="test")
    parser.add_argument("--lead", type=int, default=8, help="N of lead-N")
    args = parser.parse_args()
    cfg = DataConfig(path=args.data, source_field=args.source, target_field=args.target)
    raw = load_raw(cfg, ["train", args.split])
    sources, refs = list(raw[args.split][args.source]), list(raw[args.split][args.target])
    constant = Counter(raw["train"][args.target]).most_common(1)[0][0]
    outputs = {"copy source": sources,
               f"lead-{args.lead} words": [" ".join(s.split()[: args.lead]) for s in sources],
               "most common train reference": [constant] * len(refs)}
    print(f"{args.split}: {len(refs)} pairs ({args.data})")
    print("| output | BLEU | chrF | ROUGE-L |")
    print("|---|---|---|---|")
    for name, hyps in outputs.items():
        s = corpus_scores(hyps, refs, ["bleu", "chrf", "rougeL"])
        print(f"| {name} | {s['bleu']:.2f} | {s['chrf']:.2f} | {s['rougeL']:.2f} |")


if __name__ == "__main__":
    main()
