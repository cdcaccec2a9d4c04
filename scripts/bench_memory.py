"""Peak memory and step time of one XENT step and one MIXER step: full fine-tuning, LoRA, and
LoRA + gradient checkpointing, at t5-small size (about 60M) and bart-base size (about 140M).

    python scripts/bench_memory.py                      # CPU; every arm in a fresh process
    python scripts/bench_memory.py --device cuda        # GPU: torch.cuda.max_memory_allocated
    python scripts/bench_memory.py --models t5-small --steps 2 --out bench/memory.md

Models are built from a config (no hub): T5 and BART at the published sizes, their own vocabulary
sizes (32,128 and 50,265), with a BPE tokenizer trained here on synthetic text. A step is
`seqrl.train.micro_step`, the code `seqrl finetune` runs: the MIXER step samples whole targets
(16 sources x 4 samples, up to 64 tokens, leave-one-out, token-BLEU) and runs the teacher-forced
pass; the XENT step is 64 examples of 64 target tokens (the same rows). Sources are 64 tokens.
Arms: full fine-tuning, LoRA (rank 16, the family's default targets), LoRA + gradient
checkpointing, and for the MIXER step the same with the teacher-forced pass in chunks of 4
sources (`reinforce.chunk_sources: 4`, the same update).

Memory on the CPU is the process's peak resident set (VmHWM) in a process of its own per arm,
and the same minus the resident set just before the model is built (imports and data: the same
in every arm). On a GPU it is the peak of `torch.cuda.max_memory_allocated` over the timed steps.
Time is the median `time/step_s` of the timed steps, after one warm-up step. On the CPU the
table ends with what the output projection alone costs at the MIXER step's shape: the part of
the peak that neither adapters nor checkpointing remove.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODELS = {  # published sizes; dropout as published
    "t5-small": ("t5", {"vocab_size": 32128, "d_model": 512, "d_kv": 64, "d_ff": 2048, "num_layers": 6,
                        "num_decoder_layers": 6, "num_heads": 8}),
    "bart-base": ("bart", {"vocab_size": 50265, "d_model": 768, "encoder_layers": 6, "decoder_layers": 6,
                           "encoder_attention_heads": 12, "decoder_attention_heads": 12, "encoder_ffn_dim": 3072,
                           "decoder_ffn_dim": 3072, "max_position_embeddings": 1024}),
}
# arm -> (model fields, reinforce fields); the chunked arm runs the MIXER step only
MODES = {"full": ({}, {}), "lora": ({"lora": {"rank": 16}}, {}),
         "lora+gc": ({"lora": {"rank": 16}, "gradient_checkpointing": True}, {}),
         "lora+gc+chunks": ({"lora": {"rank": 16}, "gradient_checkpointing": True}, {"chunk_sources": 4})}
STEPS = ("xent", "mixer")
LENGTH = 64  # source and target tokens


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    p.add_argument("--kinds", nargs="+", choices=STEPS, default=list(STEPS), help="which steps to measure")
    p.add_argument("--steps", type=int, default=2, help="timed steps per arm (after one warm-up step)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the table (markdown) here")
    p.add_argument("--arm", help=argparse.SUPPRESS)  # model:mode:step, run in this (fresh) process
    p.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def make_data(work: Path) -> None:
    """Synthetic sentences of made-up words (about one BPE token each), and a tokenizer trained on them."""
    from seqrl.config import TokenizerConfig
    from seqrl.tokenizer import train_tokenizer

    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(2, 7))) for _ in range(3000)]
    rows = [{"source": " ".join(rng.choices(words, k=80)), "target": " ".join(rng.choices(words, k=80))}
            for _ in range(256)]
    (work / "data").mkdir(parents=True)
    for split in ("train", "validation", "test"):
        with open(work / "data" / f"{split}.jsonl", "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in rows)
    texts = [r["source"] for r in rows] + [r["target"] for r in rows]
    train_tokenizer(texts, TokenizerConfig(vocab_size=8000)).save_pretrained(work / "tokenizer")


def rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def projection_arm(args) -> dict:
    """What the output projection alone costs in a step: 64 rows x 64 positions of logits over the
    model's vocabulary, their log-probabilities and the backward pass through them (no model)."""
    import time

    import torch

    from seqrl.losses import token_logprobs

    name = args.arm.split(":")[0]
    rows, vocab = 64, MODELS[name][1]["vocab_size"]
    hidden = torch.randn(rows, LENGTH, 64, requires_grad=True)
    weight = torch.randn(64, vocab) * 0.01
    before = rss_kb("VmRSS")
    start = time.perf_counter()
    logits = hidden @ weight
    token_logprobs(logits, torch.randint(0, vocab, (rows, LENGTH))).sum().backward()
    return {"arm": args.arm, "step_s": time.perf_counter() - start, "trained": 0, "params": 0,
            "peak_mb": (rss_kb("VmHWM") - before) / 1024, "before_model_mb": 0.0,
            "logits_mb": rows * LENGTH * vocab * 4 / 2**20}


def run_arm(args) -> dict:
    """One arm in this process: set up, one warm-up step, `--steps` timed steps."""
    import torch
    from benchkit.seqrl_loop import make_accelerator, setup_run, watched_loop  # scripts/benchkit, beside this file

    from seqrl.config import from_dict
    from seqrl.train import micro_step

    torch.set_num_threads(args.threads)
    name, mode, kind = args.arm.split(":")
    arch, config = MODELS[name]
    n = 1 + args.steps
    schedule = ({"kind": "xent", "xent_steps": n} if kind == "xent" else
                {"kind": "mixer", "xent_steps": 0, "stage_steps": n, "delta": LENGTH})
    cfg = from_dict({
        "model": {"architecture": arch, "config": dict(config), **MODES[mode][0]},
        "tokenizer": {"name_or_path": str(args.work / "tokenizer")},
        "data": {"path": str(args.work / "data"), "max_source_tokens": LENGTH, "max_target_tokens": LENGTH},
        "xent": {"batch_size": 64},
        "schedule": schedule,
        "reinforce": {"batch_size": 16, "candidates": {"num_samples": 4}, "baseline": {"kind": "loo"},
                      **MODES[mode][1]},
        "rewards": [{"name": "token_bleu"}],
        "optim": {"lr": 1e-4, "warmup_steps": 0, "decay": "constant"},
        "eval": {"every": 0, "max_new_tokens": LENGTH},
        "run": {"output_dir": str(args.work / f"run-{name}-{mode}-{kind}"), "max_steps": n,
                "cpu": args.device == "cpu"},
        "log": {"every": 10**6, "progress_bar": False},
    })
    acc = make_accelerator(args.device)
    before_model = rss_kb("VmRSS")
    _, run = setup_run(cfg, args.device, acc)
    loop, seen = watched_loop()
    loader = run.loader if kind == "xent" else run.rl_loader
    peaks = []
    for batch in loader:
        if args.device == "cuda":
            torch.cuda.reset_peak_memory_stats()
        micro_step(run, batch, loop)
        if args.device == "cuda":
            peaks.append(torch.cuda.max_memory_allocated())
        if loop.step >= n:
            break
    times = [s["time/step_s"] for s in seen[1:]]
    out = {"arm": args.arm, "step_s": statistics.median(times),
           "trained": sum(p.numel() for p in run.model.parameters() if p.requires_grad),
           "params": sum(p.numel() for p in run.model.parameters())}
    if args.device == "cuda":
        out["peak_mb"] = max(peaks[1:]) / 2**20
    else:
        out["peak_mb"], out["before_model_mb"] = rss_kb("VmHWM") / 1024, before_model / 1024
    if kind == "mixer":
        out["sampled_tokens"] = statistics.median(s["rl_tokens"] for s in seen[1:])
    return out


def table(results: dict[str, dict], device: str) -> str:
    memory = "peak RSS, MB (above the pre-model RSS)" if device == "cpu" else "peak allocated, MB"
    lines = [f"| model | step | arm | trained / all parameters | {memory} | vs full | s/step | vs full |",
             "|---|---|---|---|---|---|---|---|"]
    for name in MODELS:
        for kind in STEPS:
            full = results.get(f"{name}:full:{kind}")
            for mode in MODES:
                r = results.get(f"{name}:{mode}:{kind}")
                if r is None:
                    continue
                mem = f"{r['peak_mb']:,.0f}"
                if device == "cpu":
                    mem += f" ({r['peak_mb'] - r['before_model_mb']:,.0f})"
                ratio = {key: f"{r[key] / full[key]:.2f}x" if full else "" for key in ("peak_mb", "step_s")}
                mem_ratio = ratio["peak_mb"]
                if device == "cpu" and full:
                    own, full_own = r['peak_mb'] - r['before_model_mb'], full['peak_mb'] - full['before_model_mb']
                    mem_ratio += f" ({own / full_own:.2f}x)"
                lines.append(f"| {name} | {kind} | {mode} | {r['trained'] / 1e6:.2f}M / {r['params'] / 1e6:.1f}M "
                             f"| {mem} | {mem_ratio} | {r['step_s']:.2f} | {ratio['step_s']} |")
    for name in MODELS:
        r = results.get(f"{name}:projection")
        if r:
            lines.append(f"\n{name}: the output projection alone (64 x {LENGTH} positions x "
                         f"{MODELS[name][1]['vocab_size']:,} logits, {r['logits_mb']:,.0f} MB in float32, their "
                         f"log-probabilities and backward pass) peaks {r['peak_mb']:,.0f} MB above its start.")
    return "\n".join(lines)


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.arm:
        print(json.dumps(projection_arm(args) if ":projection" in args.arm else run_arm(args)))
        return
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        make_data(work)
        for name in args.models:
            for kind in args.kinds:
                for mode in [m for m in MODES if kind == "mixer" or not MODES[m][1]]:
                    arm = f"{name}:{mode}:{kind}"
                    cmd = [sys.executable, __file__, "--arm", arm, "--work", str(work), "--device", args.device,
                           "--steps", str(args.steps), "--threads", str(args.threads)]
                    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
                    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                    if proc.returncode != 0:
                        sys.exit(f"bench_memory: arm {arm} failed:\n{proc.stderr[-3000:]}")
                    results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
                    print(f"{arm}: {results[arm]}", file=sys.stderr, flush=True)
            if args.device == "cpu":  # what no adapter or checkpointing removes: the output projection
                arm = f"{name}:projection"
                proc = subprocess.run([sys.executable, __file__, "--arm", arm, "--work", str(work)],
                                      capture_output=True, text=True, env=dict(os.environ))
                results[arm] = json.loads(proc.stdout.strip().splitlines()[-1])
    text = table(results, args.device)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
