"""Run a 2-process (gloo, CPU) XENT -> MIXER training N times in a row and count clean exits,
failures and hangs (a run that outlives its timeout is a hang). Teardown used to hang about
1 run in 4 on gloo when the DDP model outlived `end_training`.

    python scripts/loop_two_process.py --runs 20
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

WORDS = {"the": "el", "a": "un", "cat": "gato", "dog": "perro", "runs": "corre", "sees": "ve",
         "big": "grande", "small": "pequeño", "house": "casa", "tree": "árbol"}


def write_data(root: Path) -> None:
    rng = random.Random(0)
    for split, n in (("train", 160), ("validation", 20)):
        with (root / f"{split}.jsonl").open("w") as f:
            for _ in range(n):
                en = [rng.choice(list(WORDS)) for _ in range(rng.randint(3, 8))]
                f.write(json.dumps({"en": " ".join(en), "es": " ".join(WORDS[w] for w in en)}) + "\n")


def recipe(data: Path, out: Path) -> dict:
    model = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
             "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
             "max_position_embeddings": 64}
    return {"model": {"architecture": "marian", "config": model}, "tokenizer": {"vocab_size": 120},
            "data": {"path": str(data), "source_field": "en", "target_field": "es", "max_source_tokens": 16,
                     "max_target_tokens": 8, "test_split": None},
            "xent": {"batch_size": 4}, "schedule": {"kind": "mixer", "xent_steps": 3, "stage_steps": 2, "delta": 4},
            "reinforce": {"baseline": {"kind": "loo"}, "candidates": {"num_samples": 2}, "batch_size": 2},
            "rewards": [{"name": "bleu"}],
            "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 8},
            "run": {"output_dir": str(out), "overwrite": True}, "log": {"every": 1, "progress_bar": False}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--timeout", type=int, default=180, help="seconds before a run counts as hung")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="seqrl-loop-"))
    write_data(root)
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe(root, root / "run")))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "seqrl", "finetune", str(path)]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    counts = {"ok": 0, "failed": 0, "hung": 0}
    for i in range(args.runs):
        start = time.perf_counter()
        try:
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=args.timeout)
            outcome = "ok" if proc.returncode == 0 else "failed"
        except subprocess.TimeoutExpired:
            outcome = "hung"
        counts[outcome] += 1
        print(f"run {i + 1}/{args.runs}: {outcome} in {time.perf_counter() - start:.1f} s", flush=True)
    print(f"{counts['ok']} clean, {counts['failed']} failed, {counts['hung']} hung of {args.runs} runs")
    sys.exit(0 if counts["ok"] == args.runs else 1)


if __name__ == "__main__":
    main()
