"""Profile one XENT step and one MIXER step of seqrl with torch.profiler ("measure first").

    python scripts/profile_step.py --device cpu --arch bart           # the bench_step model, 1.5M
    python scripts/profile_step.py --arch gpt2 --size t5-small --out runs/profile

The step is `seqrl.train.micro_step`, built as scripts/bench_step.py builds its seqrl arm (its
functions, imported: the same 4,000-token BPE trained on the Bible data, 16 prompts x 4 samples x
32 new tokens, token-ID BLEU reward, leave-one-out baseline, AdamW, fp32). The XENT step's batch
is as many rows as the MIXER step teacher-forces (prompts x samples). Each step runs `--warmup`
times unprofiled, then once under the profiler. The MIXER step is profiled at the final stage of
the schedule (delta = --new-tokens: the whole output is sampled), where decoding is longest.

It prints (and with --out DIR writes DIR/profile.md and DIR/profile.json):
- Time per part of each step, from the `seqrl/<part>` record_function regions in seqrl/train.py
  and seqrl/steps.py: XENT forward, backward, optimizer; MIXER rollout (decoding), reward,
  teacher-forced forward (with the loss and everything else `mixer_step` does outside the rollout
  and reward), backward (with gradient clipping), optimizer step. "other" is the rest of
  `micro_step` (logging, the step's own bookkeeping). On CUDA the host times of an asynchronous
  step land where the host waits, so the device (kernel) time of each part is given beside them.
- Per decoding iteration of the rollout: kernel launches and host-device syncs. A decoding
  iteration is one call of the policy's forward inside `seqrl.rollout.rollout` (prefill + one per
  next token: one per decoded token position), counted by a forward hook on the model the rollout
  is given; it is checked against the positions the rollout produced, max(length) - min(prefix).
  * CUDA: kernel launches = cudaLaunchKernel / cuLaunchKernel (and Ex) runtime calls (and
    cudaGraphLaunch calls) inside the rollout region; device kernels = the kernels the region's
    ops ran; syncs = host waits (cudaStreamSynchronize / cudaDeviceSynchronize /
    cudaEventSynchronize / synchronous cudaMemcpy), with device-to-host copies and the
    sync-forcing aten ops beside them.
  * CPU (no kernels, no syncs): the analogues. Leaf aten ops (aten ops with no aten op inside)
    stand for kernel launches (an over-count: views and allocations launch none on a GPU);
    syncs are the ops that WOULD make the host wait on a GPU: aten::_local_scalar_dense /
    item / is_nonzero (`.item()`, `bool(t)`, `int(t)`), aten::equal / allclose, the
    data-dependent shapes (aten::nonzero, masked_select, unique) and `.tolist()` / `.numpy()`
    (seen as a top-level aten::resolve_neg), each counted once however deeply it nests.
  Both are split between the model's forward calls and the rest of the loop (sampling,
  constraints, bookkeeping). All counts over the whole rollout region (encoder pass and buffers
  included), divided by the iterations.
- The 15 ops with the most self time inside the rollout region (`profile_step/model_call` is the
  Python inside the model's forward between its ops; `seqrl/rollout`, the rollout's own Python).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch
from torch.profiler import ProfilerActivity, profile

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT))

from benchkit.profile_events import RolloutProbe, part_times, rollout_counts  # noqa: E402
from benchkit.seqrl_loop import setup_run, watched_loop  # noqa: E402
from benchkit.step_workload import SIZES, bible_tokenizer, load_pairs, seqrl_recipe  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--arch", choices=["gpt2", "bart"], default="bart", help="decoder-only, or encoder-decoder")
    p.add_argument("--size", choices=list(SIZES), default="small",
                   help="small: bench_step's 2-layer, 128-wide model; t5-small: d_model 512, 6 + 6 layers "
                        "(gpt2: 12), 8 heads, ffn 2048")
    p.add_argument("--warmup", type=int, default=3, help="unprofiled steps of each kind before the profiled one")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompts", type=int, default=16, help="sources per MIXER step")
    p.add_argument("--samples", type=int, default=4, help="samples per source (k)")
    p.add_argument("--new-tokens", type=int, default=32, help="max target tokens = decoding positions")
    p.add_argument("--vocab", type=int, default=4000)
    p.add_argument("--out", type=Path, help="directory for profile.md and profile.json")
    return p.parse_args(argv)


# -- the run ------------------------------------------------------------------------------------
def build_run(args, work: Path):
    """seqrl's `Run` for bench_step's recipe: the XENT stage then one MIXER stage (the final one),
    `warmup + 1` steps each."""
    from seqrl.config import from_dict

    tok = bible_tokenizer(args.vocab)
    tok.save_pretrained(work / "tokenizer")
    per_kind = args.warmup + 1
    pairs = load_pairs(tok, per_kind * args.prompts * args.samples, 32)
    bench_args = SimpleNamespace(arch=args.arch, prompts=args.prompts, samples=args.samples, new_tokens=args.new_tokens,
                                 warmup=args.warmup, steps=1, reward="token_bleu", size=args.size, device=args.device)
    recipe = seqrl_recipe(bench_args, work / "tokenizer", pairs, work)
    # delta = new tokens (bench_step's): one MIXER stage, which is the final one (whole output sampled)
    recipe["schedule"].update(xent_steps=per_kind, stage_steps=per_kind)
    recipe["xent"] = {"batch_size": args.prompts * args.samples}
    recipe["eval"]["test_after_xent"] = False  # (no evaluation inside the XENT stage's last step)
    recipe["run"].update(max_steps=2 * per_kind, cpu=args.device == "cpu")
    return setup_run(from_dict(recipe), args.device)


def batches(loader):
    """The loader's batches, epoch after epoch."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def run_kind(run, loop, seen: list[dict], it, kind: str, args, probe: RolloutProbe) -> dict:
    """`--warmup` unprofiled steps, then one under the profiler: its parts (and the rollout's counts)."""
    from seqrl.train import micro_step

    warm = []
    for _ in range(args.warmup):
        start = time.perf_counter()
        micro_step(run, next(it), loop)
        sync(args.device)
        warm.append({**seen[-1], "wall_s": time.perf_counter() - start})
    plan = run.schedule.plan(loop.step)
    if kind == "xent":
        assert plan.is_xent, plan
    else:
        assert plan.n_rl_tokens == run.cfg.data.max_target_tokens, f"not the final stage: {plan}"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if args.device == "cuda" else [])
    probe.calls.clear()
    sync(args.device)
    with profile(activities=activities) as prof:
        start = time.perf_counter()
        micro_step(run, next(it), loop)
        sync(args.device)
        wall = time.perf_counter() - start
    events = prof.events()
    out = part_times(events, kind, wall, args.device)
    out["unprofiled"] = unprofiled_parts(warm, kind)
    if kind == "mixer":
        out["stage"] = {"stage": plan.stage, "sampled_target_tokens": plan.n_rl_tokens, "final": True}
        out["rollout"] = rollout_counts(events, probe.calls, args.device)
        out["probe"] = list(probe.calls)
    return out


def unprofiled_parts(warm: list[dict], kind: str) -> dict | None:
    """ms per part from seqrl's own timers (time/*_s), median of the warm-up steps after the first."""
    if not warm:
        return None
    steps = warm[1:] or warm
    med = {key: 1000 * statistics.median(s[key] for s in steps)
           for key in ("time/step_s", "time/backward_s", "time/optimizer_s", "wall_s")}
    if kind == "xent":
        parts = {"forward": med["time/step_s"] - med["time/backward_s"] - med["time/optimizer_s"]}
    else:
        parts = {label: 1000 * statistics.median(s[key] for s in steps) for label, key in
                 (("rollout (decoding)", "time/rollout_s"), ("reward", "time/reward_s"),
                  ("teacher-forced forward", "time/forward_s"))}
    parts.update({"backward": med["time/backward_s"], "optimizer": med["time/optimizer_s"],
                  "other": med["wall_s"] - med["time/step_s"]})
    return {"parts_ms": parts, "step_ms": med["wall_s"], "steps": len(steps)}


def profile_steps(args) -> dict:
    from seqrl.session import teardown

    with tempfile.TemporaryDirectory() as tmp:
        acc, run = build_run(args, Path(tmp))
        model = acc.unwrap_model(run.model)
        info = {"arch": args.arch, "size": args.size, "device": args.device,
                "parameters": sum(p.numel() for p in model.parameters()), "threads": torch.get_num_threads(),
                "prompts": args.prompts, "samples": args.samples, "new_tokens": args.new_tokens,
                "xent_rows": args.prompts * args.samples, "vocab": len(run.text_model.tokenizer),
                "warmup": args.warmup, "torch": torch.__version__}
        loop, seen = watched_loop()
        with RolloutProbe() as probe:
            result = {"config": info,
                      "xent": run_kind(run, loop, seen, batches(run.loader), "xent", args, probe),
                      "mixer": run_kind(run, loop, seen, batches(run.rl_loader), "mixer", args, probe)}
        teardown(acc, run, clean=True)
    return result


# -- report --------------------------------------------------------------------------------------
def report(result: dict) -> str:
    c = result["config"]
    cuda = c["device"] == "cuda"
    head = (f"{c['arch']} {c['size']} ({c['parameters'] / 1e6:.2f}M parameters, vocab {c['vocab']}), {c['device']}, "
            f"{c['threads']} threads, torch {c['torch']}; MIXER: {c['prompts']} prompts x {c['samples']} samples x "
            f"{c['new_tokens']} new tokens; XENT: {c['xent_rows']} rows; one profiled step of each after "
            f"{c['warmup']} unprofiled")
    lines = [head, ""]
    m = result["mixer"]
    titles = {"xent": "XENT step",
              "mixer": f"MIXER step, final stage (all {m['stage']['sampled_target_tokens']} target tokens sampled)"}
    for kind, title in titles.items():
        r = result[kind]
        un = r["unprofiled"]
        lines += [f"**{title}**", "",
                  "| part | ms (profiled) | share | " + ("device ms | " if cuda else "")
                  + "ms unprofiled (seqrl's timers) |",
                  "|---|---|---|" + ("---|" if cuda else "") + "---|"]
        for label, v in list(r["parts"].items()) + [("step", {"ms": r["step_ms"]})]:
            row = f"| {label} | {v['ms']:.1f} | {v['ms'] / r['step_ms']:.0%} | "
            if cuda:
                row += f"{v['device_ms']:.1f} | " if "device_ms" in v else "n/a | "
            ref = un and (un["step_ms"] if label == "step" else un["parts_ms"].get(label))
            row += f"{ref:.1f} |" if ref is not None else "n/a (--warmup 0) |"
            lines.append(row)
        lines.append("")
    ro = m["rollout"]
    summary = (f"**Rollout**: {ro['iterations']} decoding iterations ({ro['iterations_from']}; the rollout's "
               f"positions, max length - min prefix: {ro['positions']}), {ro['rows']} rows, {ro['sampled_tokens']} "
               f"sampled tokens; {ro['rollout_ms']:.1f} ms, of which {ro['model_ms']:.1f} in the model's forward calls")
    lines += [summary, "",
              "| per decoding iteration | whole rollout | in the model's forward | outside it (sampling, loop) |",
              "|---|---|---|---|"]
    names = {"leaf_aten_ops": "leaf aten ops" + ("" if cuda else " (CPU analogue of kernel launches)"),
             "leaf_compute_ops": "of which compute ops (views, allocations left out)",
             "top_level_aten_ops": "top-level aten ops (dispatcher calls from Python)",
             "sync_ops": "sync-forcing ops" + ("" if cuda else " (CPU analogue of host-device syncs)"),
             "kernel_launches": "kernel launches", "device_kernels": "device kernels",
             "host_waits": "host-device syncs (host waits)", "d2h_copies": "device-to-host copies",
             "memcpy_calls": "cudaMemcpy/Memset calls"}
    order = (["kernel_launches", "device_kernels", "host_waits", "d2h_copies", "memcpy_calls"] if cuda else []) + \
        ["leaf_aten_ops", "leaf_compute_ops", "top_level_aten_ops", "sync_ops"]
    for key in order:
        s = ro["split_per_iteration"][key]
        label = f"**{names[key]}**" if key in ("kernel_launches", "host_waits") or not cuda and key in (
            "leaf_aten_ops", "sync_ops") else names[key]
        lines.append(f"| {label} | {ro['per_iteration'][key]:.1f} | {s['in_model']:.1f} | {s['outside_model']:.1f} |")
    by_name = ", ".join(f"{n} {k / ro['iterations']:.2f}" for n, k in sorted(ro["sync_ops_by_name"].items()))
    lines += ["", f"sync-forcing ops per iteration by name: {by_name or 'none'}", "",
              f"**Top {len(ro['top_ops'])} ops by self time inside the rollout region**", "",
              "| op | calls | per iteration | self ms | share of rollout |" + (" self device ms |" if cuda else ""),
              "|---|---|---|---|---|" + ("---|" if cuda else "")]
    for op in ro["top_ops"]:
        lines.append(f"| {op['op']} | {op['calls']} | {op['calls_per_iteration']:.1f} | {op['self_ms']:.1f} | "
                     f"{op['share_of_rollout']:.0%} |" + (f" {op['self_device_ms']:.1f} |" if cuda else ""))
    return "\n".join(lines)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("profile_step: no CUDA device; pass --device cpu")
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    logging.getLogger("transformers").setLevel(logging.ERROR)
    command = "python scripts/profile_step.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print("command: " + command.strip())
    result = profile_steps(args)
    result["command"] = command.strip()
    text = report(result)
    print("\n" + text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "profile.md").write_text(f"`{result['command']}`\n\n{text}\n")
        (args.out / "profile.json").write_text(json.dumps(result, indent=1))
        print(f"\nwritten: {args.out / 'profile.md'}, {args.out / 'profile.json'}")
    return result


if __name__ == "__main__":
    main()
