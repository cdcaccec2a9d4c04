"""Benchmark the batched token-id rewards (seqrl.rewards.fast) against sacrebleu and rouge-score.

    python scripts/bench_rewards.py                 # 1024 pairs of ~30 and of ~120 tokens, 2 threads
    python scripts/bench_rewards.py --threads 1 --repeats 9

Random ids, Zipf-distributed over an 8000-id vocabulary; each hypothesis is its reference with
about half the tokens replaced and a few added or dropped, so scores spread over (0, 1).
The references run on the ids joined by spaces: sacrebleu's BLEU(tokenize="none",
effective_order=True).sentence_score (the object built once, as seqrl's text `bleu` reward does)
and rouge-score's RougeScorer(use_stemmer=False).score. "BLEU vs sentence_bleu" times the
function most code calls, `sacrebleu.sentence_bleu(h, [r], tokenize="none")`, which builds its
metric object on every call (the issue's "134 us per pair"). The fast version is timed on padded
LongTensors (pad_id) and on ragged lists of ids, the form the registered rewards receive
(that time includes reading the lists and padding). Times are the best of --repeats runs.
"""

from __future__ import annotations

import argparse
import functools
import shlex
import sys
import time

import numpy as np
import sacrebleu
import torch
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from seqrl.rewards import fast

VOCAB = 8000
PAD_ID = -1


def zipf_ids(rng: np.random.Generator, size: int) -> np.ndarray:
    """Token ids with p(rank k) proportional to 1 / k, like words in text."""
    weights = 1.0 / np.arange(1, VOCAB + 1)
    return rng.choice(VOCAB, size=size, p=weights / weights.sum())


def make_pairs(rng: np.random.Generator, pairs: int, length: int) -> tuple[list[list[int]], list[list[int]]]:
    """(hypotheses, references): references of length +-25%; hypotheses half copied, half noise."""
    hyps, refs = [], []
    for _ in range(pairs):
        ref = zipf_ids(rng, int(rng.integers(length * 3 // 4, length * 5 // 4 + 1)))
        hyp = ref.copy()
        replaced = rng.random(len(hyp)) < 0.5
        hyp[replaced] = zipf_ids(rng, int(replaced.sum()))
        change = int(rng.integers(-3, 4))  # a few tokens more or fewer than the reference
        hyp = np.concatenate([hyp, zipf_ids(rng, change)]) if change > 0 else hyp[:len(hyp) + change]
        hyps.append(hyp.tolist())
        refs.append(ref.tolist())
    return hyps, refs


def as_padded(seqs: list[list[int]]) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), PAD_ID, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def best_ms(fn, repeats: int) -> tuple[float, object]:
    """Best wall time of `repeats` calls (ms), and the last result."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times), result


def reference_scorers() -> dict:
    """Per metric: a function from (hyp strings, ref strings) to the reference scores."""
    sacre = BLEU(tokenize="none", effective_order=True)  # smooth_method="exp", as fast.bleu's default
    rouge2 = rouge_scorer.RougeScorer(["rouge2"], use_stemmer=False)
    rouge_l = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
    return {
        "BLEU": lambda hs, rs: [sacre.sentence_score(h, [r]).score / 100 for h, r in zip(hs, rs, strict=True)],
        "BLEU vs sentence_bleu": lambda hs, rs: [sacrebleu.sentence_bleu(h, [r], tokenize="none").score / 100
                                                 for h, r in zip(hs, rs, strict=True)],
        "ROUGE-2": lambda hs, rs: [rouge2.score(r, h)["rouge2"].fmeasure for h, r in zip(hs, rs, strict=True)],
        "ROUGE-L": lambda hs, rs: [rouge_l.score(r, h)["rougeL"].fmeasure for h, r in zip(hs, rs, strict=True)],
    }


FAST = {
    "BLEU": lambda h, r, **kw: fast.bleu(h, r, **kw),
    "BLEU vs sentence_bleu": lambda h, r, **kw: fast.bleu(h, r, **kw),
    "ROUGE-2": lambda h, r, **kw: fast.rouge_n(h, r, n=2, **kw),
    "ROUGE-L": lambda h, r, **kw: fast.rouge_l(h, r, **kw),
}


def bench_length(rng, pairs: int, length: int, repeats: int) -> list[str]:
    hyps, refs = make_pairs(rng, pairs, length)
    hyp_text, ref_text = [" ".join(map(str, h)) for h in hyps], [" ".join(map(str, r)) for r in refs]
    hyp_pad, ref_pad = as_padded(hyps), as_padded(refs)
    rows = []
    for metric, reference in reference_scorers().items():
        ref_ms, expected = best_ms(functools.partial(reference, hyp_text, ref_text), max(2, repeats // 5))
        expected = torch.tensor(expected, dtype=torch.float64)
        inputs = {"padded tensors": functools.partial(FAST[metric], hyp_pad, ref_pad, pad_id=PAD_ID),
                  "ragged lists": functools.partial(FAST[metric], hyps, refs)}
        for form, run in inputs.items():
            run()  # warm-up: first calls allocate
            fast_ms, got = best_ms(run, repeats)
            diff = (got - expected).abs().max().item()
            rows.append(f"| {metric} | {form} | {pairs} | ~{length} | {ref_ms:.1f} | {fast_ms:.2f} "
                        f"| {ref_ms / fast_ms:.0f}x | {diff:.1e} |")
    return rows


def profile_bleu(rng, pairs: int, length: int) -> None:
    """Where fast.bleu's time goes: torch operator totals over 10 calls on padded tensors."""
    from torch.profiler import ProfilerActivity, profile

    hyps, refs = make_pairs(rng, pairs, length)
    hyp_pad, ref_pad = as_padded(hyps), as_padded(refs)
    for _ in range(5):
        fast.bleu(hyp_pad, ref_pad, pad_id=PAD_ID)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            fast.bleu(hyp_pad, ref_pad, pad_id=PAD_ID)
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--pairs", type=int, default=1024)
    parser.add_argument("--lengths", type=int, nargs="+", default=[30, 120], help="mean reference lengths")
    parser.add_argument("--repeats", type=int, default=15, help="timed runs of the fast version; best is kept")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="print a torch profile of fast.bleu on the pairs of the first length instead")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    print("command:", shlex.join(["python", *sys.argv]))
    if args.profile:
        profile_bleu(np.random.default_rng(args.seed), args.pairs, args.lengths[0])
        return
    print(f"torch {torch.__version__}, {args.threads} thread(s); times are best of runs "
          f"(reference: {max(2, args.repeats // 5)}, fast: {args.repeats})\n")
    print("| metric | fast input | pairs | length | reference ms | fast ms | speed-up | max abs diff |")
    print("|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(args.seed)
    for length in args.lengths:
        for row in bench_length(rng, args.pairs, length, args.repeats):
            print(row, flush=True)


if __name__ == "__main__":
    main()
