"""Chaos: N tiny runs (1 and 2 processes, LoRA and full fine-tuning), each hit at a random moment
of its XENT or MIXER stage by one fault (SIGKILL, SIGTERM, SIGUSR1, a full disk, or, on 2
processes, one worker SIGKILLed), then resumed with `--set run.resume=auto` until done. A fault is
survived when the faulted run ended as it should (bounded in time), every resume ended cleanly,
the final weights equal an uninterrupted run's of the same configuration bitwise, and no
`final/` once written was lost or changed (a resume after the end, as a requeue would start it,
included). Prints and writes (REPORT/chaos.md, REPORT/chaos.jsonl) survived / injected per fault
kind and configuration, and the wall time.

    OMP_NUM_THREADS=1 python scripts/chaos.py --runs 50 --seed 0 --report chaos-report
    OMP_NUM_THREADS=1 python scripts/chaos.py --runs 50 --seed 0 --report chaos-report --continue  # the rest

Each run draws its moment and target from its own generator (seed, run number), so a plan can
be run in sittings (`--max-minutes`, then `--continue`): the report sums their wall times and
names each sitting's code and versions.

A full disk is a real tmpfs per run, filled by a file at the chosen moment and emptied before the
resume (as tests/test_faults.py does); where a tmpfs cannot be mounted (not root), that kind is
left out and the report says so. The faults and what each faulted run must do are in
scripts/chaos_faults.py. Exit status 0 when every injected fault was survived.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml
from chaos_faults import KINDS, RUN_TIMEOUT_S, Tmpfs, expected_end, inject, said, start, wait
from loop_two_process import recipe as two_process_recipe
from loop_two_process import write_data

XENT_STEPS, STAGE_STEPS, DELTA, TARGET_TOKENS = 6, 2, 4, 8
TOTAL_STEPS = XENT_STEPS + STAGE_STEPS * (TARGET_TOKENS // DELTA)
REFUSED_NO_CHECKPOINT = "already holds a run"
REQUEUE_EVERY = 4  # every 4th run is resumed once more after it is done (a requeue after the end)


@dataclass(frozen=True)
class Config:
    processes: int
    lora: bool
    stage: str  # where the fault lands: "xent" or "mixer"

    @property
    def name(self) -> str:
        return f"{self.processes}p-{'lora' if self.lora else 'full'}-{self.stage}"

    @property
    def recipe_key(self) -> str:  # the uninterrupted reference is shared by both stages
        return f"{self.processes}p-{'lora' if self.lora else 'full'}"

    def steps(self) -> range:
        """Steps after which the fault may come (0: during set-up or the first step)."""
        return range(0, XENT_STEPS) if self.stage == "xent" else range(XENT_STEPS, TOTAL_STEPS)


CONFIGS = [Config(p, lora, stage) for p in (1, 2) for lora in (False, True) for stage in ("xent", "mixer")]


def recipe(data: Path, cache: Path, out: Path, lora: bool) -> dict:
    """loop_two_process's tiny marian (dropout on, so RNG state must resume) with checkpoints
    every 3 steps (a killed run redoes up to 2), XENT then two MIXER stages."""
    r = two_process_recipe(data, out)
    r["data"]["cache_dir"] = str(cache)
    r["schedule"] = {"kind": "mixer", "xent_steps": XENT_STEPS, "stage_steps": STAGE_STEPS, "delta": DELTA}
    r["run"] = {"output_dir": str(out), "seed": 3, "save_every": 3, "keep_checkpoints": 2}
    if lora:
        r["model"]["lora"] = {"rank": 2}
    return r


def command(work: Path, cfg: Config, out: Path, *extra: str) -> list[str]:
    path = work / f"recipe-{cfg.recipe_key}.yaml"
    launch = ["--num-processes", str(cfg.processes)] if cfg.processes > 1 else []
    return [sys.executable, "-m", "seqrl", "finetune", str(path), "--set", f"run.output_dir={out}", *launch, *extra]


def weights_digest(out: Path) -> str | None:
    model = out / "final" / "model.safetensors"
    return hashlib.sha256(model.read_bytes()).hexdigest() if model.is_file() else None


def logged_step(out: Path) -> int:
    """The last step metrics.jsonl logged (-1: none yet)."""
    try:
        lines = (out / "metrics.jsonl").read_text().splitlines()
    except OSError:
        return -1
    steps = [json.loads(line).get("step", -1) for line in lines if line.endswith("}")]
    return max(steps, default=-1)


def moment(proc: subprocess.Popen, out: Path, after_step: int, rng: random.Random) -> bool:
    """Wait for the chosen moment: a random time in the first seconds (set-up) for step 0, else
    a random fraction of a step after metrics.jsonl logged `after_step`. False if the run ended first."""
    deadline = time.monotonic() + (rng.uniform(0.5, 5.0) if after_step == 0 else RUN_TIMEOUT_S)
    while time.monotonic() < deadline and (after_step == 0 or logged_step(out) < after_step):
        if proc.poll() is not None:
            return False
        time.sleep(0.01)
    time.sleep(rng.uniform(0.0, 0.2))
    return proc.poll() is None


def resume_until_done(work: Path, cfg: Config, out: Path, record: dict, requeue: bool) -> str | None:
    """`--set run.resume=auto` until a run exits 0 (at most 3 tries); then, if `requeue`, once
    more, as a requeue after the end would, which must leave `final/` as it was. Why it failed,
    or None."""
    overwrite: list[str] = []
    for attempt in range(1, 4):
        code, output = wait(start(command(work, cfg, out, "--set", "run.resume=auto", *overwrite)))
        record["resumes"] += 1
        if code == 0:
            break
        no_checkpoint = not any((out / "checkpoints").glob("step-*"))
        if code == 2 and REFUSED_NO_CHECKPOINT in output and no_checkpoint and not overwrite:
            record["refused_without_checkpoint"] = True  # killed before its first checkpoint: moved aside
            overwrite = ["--set", "run.overwrite=true"]
            continue
        record["output_tail"] = output.strip().splitlines()[-30:]
        return f"resume {attempt}: exit {'hung' if code is None else code}: {said(output)}"
    else:
        return "not done after 3 resumes"
    if not requeue:
        return None
    record["requeued"] = True
    done = weights_digest(out)
    code, output = wait(start(command(work, cfg, out, "--set", "run.resume=auto")))
    if code != 0 or weights_digest(out) != done:
        return f"a resume of the finished run: exit {code}, final/ {'kept' if weights_digest(out) == done else 'LOST'}"
    return None


def fault_run(work: Path, index: int, cfg: Config, kind: str, reference: str, rng: random.Random,
              out: Path) -> dict:
    """One run hit by `kind`, resumed until done; its record (`survived`, and `why` when not)."""
    after_step = rng.choice(list(cfg.steps()))
    record = {"run": index, "config": cfg.name, "kind": kind, "after_step": after_step, "resumes": 0,
              "refused_without_checkpoint": False}
    proc = start(command(work, cfg, out))
    if not moment(proc, out, after_step, rng):
        code, output = wait(proc)
        return {**record, "injected": False, "why": f"the run ended (exit {code}) before the moment"}
    record["at_step"] = logged_step(out)
    hit = time.monotonic()
    record["target"], filler = inject(kind, proc, out, rng)
    code, output = wait(proc)
    record["seconds_to_exit"] = round(time.monotonic() - hit, 2)
    record["exit"] = code
    if filler is not None:
        filler.unlink(missing_ok=True)
    first_final = weights_digest(out)
    why = expected_end(kind, code, output, record["seconds_to_exit"])
    if why:
        record["output_tail"] = output.strip().splitlines()[-30:]
    # (resumed even after a wrong end: whether anything was lost is reported on its own)
    lost = resume_until_done(work, cfg, out, record, requeue=index % REQUEUE_EVERY == 0)
    if lost is None and first_final is not None and weights_digest(out) != first_final:
        lost = "final/ written before the fault changed on resume"
    if lost is None and weights_digest(out) != reference:
        lost = "final weights differ from the uninterrupted run's"
    record["resumed_bitwise"] = lost is None
    why = "; ".join(w for w in (why, lost) if w) or None
    record["leftovers"] = sorted(p.name for p in [*out.glob(".tmp-*"), *out.glob(".old-*"),
                                                  *(out / "checkpoints").glob(".tmp-*")])
    return {**record, "injected": True, "survived": why is None, "why": why}


def plan(n: int, kinds: list[str], configs: list[Config], rng: random.Random) -> list[tuple[Config, str]]:
    """Kinds in turn; each kind goes through the configurations it applies to in a shuffled order
    (a kind that applies to none of `configs` is left out)."""
    fits = {k: [c for c in configs if k != "peer_killed" or c.processes > 1] for k in kinds}
    kinds = [k for k in kinds if fits[k]]
    orders = {k: rng.sample(fits[k], k=len(fits[k])) for k in kinds}
    used = dict.fromkeys(kinds, 0)
    runs = []
    for i in range(n):
        kind = kinds[i % len(kinds)]
        runs.append((orders[kind][used[kind] % len(orders[kind])], kind))
        used[kind] += 1
    return runs


def references(work: Path, needed: list[Config]) -> dict[str, str]:
    """One uninterrupted run per recipe: its final weights' digest."""
    digests = {}
    for cfg in needed:
        if cfg.recipe_key in digests:
            continue
        out = work / "reference" / cfg.recipe_key
        code, output = wait(start(command(work, cfg, out)))
        if code != 0:
            how = f"hung (still running after {RUN_TIMEOUT_S} s)" if code is None else f"failed (exit {code})"
            sys.exit(f"chaos: the uninterrupted {cfg.recipe_key} run {how}:\n{output[-3000:]}")
        digests[cfg.recipe_key] = weights_digest(out)
    return digests


def versions() -> str:
    import accelerate
    import torch
    import transformers

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "unknown"
    return (f"seqrl {commit}, Python {sys.version.split()[0]}, torch {torch.__version__}, transformers "
            f"{transformers.__version__}, accelerate {accelerate.__version__}; OMP_NUM_THREADS="
            f"{os.environ.get('OMP_NUM_THREADS', '1')}, {len(os.sched_getaffinity(0))} CPU core(s) allowed")


def earlier(path: Path) -> tuple[list[dict], list[dict]]:
    """The runs and the sittings (one line each: the code, its wall time) of an earlier chaos.jsonl."""
    lines = [json.loads(x) for x in path.read_text().splitlines() if x.strip()] if path.is_file() else []
    return [x for x in lines if "run" in x], [x for x in lines if "sitting" in x]


def report(records: list[dict], sittings: list[dict], skipped: str | None, args: argparse.Namespace) -> str:
    """The markdown table: survived / injected per configuration (rows) and fault kind (columns)."""
    kinds = [k for k in KINDS if any(r["kind"] == k for r in records)]
    hit = [r for r in records if r["injected"]]

    def cell(rows: list[dict]) -> str:
        return f"{sum(r['survived'] for r in rows)} / {len(rows)}" if rows else "-"

    lines = ["| configuration | " + " | ".join(kinds) + " | all |", "|---" * (len(kinds) + 2) + "|"]
    for name in [c.name for c in CONFIGS if any(r["config"] == c.name for r in hit)]:
        rows = [r for r in hit if r["config"] == name]
        lines.append(f"| {name} | " + " | ".join(cell([r for r in rows if r["kind"] == k]) for k in kinds)
                     + f" | {cell(rows)} |")
    lines.append("| **all** | " + " | ".join(cell([r for r in hit if r["kind"] == k]) for k in kinds)
                 + f" | **{cell(hit)}** |")
    seconds = sum(s["seconds"] for s in sittings)
    pieces = f" in {len(sittings)} sittings" if len(sittings) > 1 else ""
    notes = [f"faults survived / faults injected: {cell(hit)} in {seconds / 60:.1f} min wall time{pieces} "
             f"(`{' '.join(['scripts/chaos.py', *sys.argv[1:]])}`)."]
    notes += [f"sitting {i}: runs up to {s['runs']}, {s['seconds'] / 60:.1f} min; {s['sitting']}"
              for i, s in enumerate(sittings, 1)]
    if len({json.dumps(s.get("references"), sort_keys=True) for s in sittings}) > 1:
        notes.append("the uninterrupted runs' weights differ between sittings: each sitting's runs were compared "
                     "with its own")
    if len(records) < args.runs:
        notes.append(f"{len(records)} of the {args.runs} planned runs done: --max-minutes {args.max_minutes:g} "
                     f"reached.")
    missed = [r for r in records if not r["injected"]]
    if missed:
        notes.append(f"{len(missed)} planned fault(s) not injected: the run ended before the moment.")
    if skipped:
        notes.append(f"full_disk left out: a tmpfs cannot be mounted here ({skipped}).")
    refused = sum(r.get("refused_without_checkpoint", False) for r in hit)
    if refused:
        notes.append(f"{refused} run(s) killed before their first checkpoint: `run.resume=auto` refused the "
                     f"directory in one line and the rerun with `run.overwrite=true` moved it aside.")
    for r in hit:
        if not r["survived"]:
            notes.append(f"NOT survived: run {r['run']} ({r['config']}, {r['kind']} to {r['target']} after step "
                         f"{r['at_step']}, --seed {args.seed}): {r['why']}")
    return "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50, help="faulted runs")
    parser.add_argument("--seed", type=int, default=0, help="chooses configurations, moments and targets")
    parser.add_argument("--report", type=Path, default=Path("chaos-report"), help="folder for chaos.md, chaos.jsonl")
    parser.add_argument("--work", type=Path, default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("--configs", default=",".join(c.name for c in CONFIGS),
                        help="comma-separated configurations to draw from (default: all eight)")
    parser.add_argument("--kinds", default=",".join(KINDS),
                        help=f"comma-separated fault kinds to inject (default: all of {', '.join(KINDS)})")
    parser.add_argument("--max-minutes", type=float, default=None,
                        help="start no further run after this long; the report counts the runs done")
    parser.add_argument("--continue", dest="resume", action="store_true",
                        help="keep the runs REPORT/chaos.jsonl holds and run the rest of the plan (the same "
                             "--seed and --runs); each sitting reruns the uninterrupted runs on its own code")
    args = parser.parse_args()
    configs = [c for c in CONFIGS if c.name in args.configs.split(",")]
    unknown = set(args.configs.split(",")) - {c.name for c in configs}
    if unknown or not configs:
        parser.error(f"--configs: unknown {sorted(unknown)}; choose from {', '.join(c.name for c in CONFIGS)}")
    unknown_kinds = set(args.kinds.split(",")) - set(KINDS)
    if unknown_kinds:
        parser.error(f"--kinds: unknown {sorted(unknown_kinds)}; choose from {', '.join(KINDS)}")
    started, rng, ran = time.monotonic(), random.Random(args.seed), versions()  # (the code as it starts)
    work = args.work or Path(tempfile.mkdtemp(prefix="seqrl-chaos-"))
    (work / "data").mkdir(parents=True, exist_ok=True)
    write_data(work / "data")
    for key, lora in (("1p-full", False), ("1p-lora", True), ("2p-full", False), ("2p-lora", True)):
        path = work / f"recipe-{key}.yaml"
        path.write_text(yaml.safe_dump(recipe(work / "data", work / "cache", work / "unused", lora)))
    disks = Tmpfs(work / "disk")
    kinds = [k for k in KINDS if k in args.kinds.split(",") and (k != "full_disk" or disks.available)]
    runs = plan(args.runs, kinds, configs, rng)
    digests = references(work, [cfg for cfg, _ in runs])
    args.report.mkdir(parents=True, exist_ok=True)
    records, sittings = earlier(args.report / "chaos.jsonl") if args.resume else ([], [])
    done = {r["run"] for r in records}
    with (args.report / "chaos.jsonl").open("w") as jsonl:
        for line in [*records, *sittings]:
            jsonl.write(json.dumps(line) + "\n")
        for index, (cfg, kind) in enumerate(runs, 1):
            if index in done:
                continue
            if args.max_minutes is not None and time.monotonic() - started > args.max_minutes * 60:
                print(f"--max-minutes {args.max_minutes:g} reached: {index - 1} of {len(runs)} runs done", flush=True)
                break
            point = disks.mount(f"run-{index:03d}") if kind == "full_disk" else None
            out = (point or work / "runs") / f"run-{index:03d}"
            shutil.rmtree(out, ignore_errors=True)  # (what a sitting stopped mid-run left)
            began = time.monotonic()
            draws = random.Random(f"{args.seed}:{index}")  # (its own: a later sitting draws the same)
            record = fault_run(work, index, cfg, kind, digests[cfg.recipe_key], draws, out)
            record["seconds"] = round(time.monotonic() - began, 1)
            if point is not None:
                disks.unmount(point)
            records.append(record)
            jsonl.write(json.dumps(record) + "\n")
            jsonl.flush()
            verdict = "survived" if record.get("survived") else "NOT SURVIVED" if record["injected"] else "missed"
            print(f"run {index}/{len(runs)} {cfg.name} {kind} -> {record.get('target', '-')} after step "
                  f"{record.get('at_step', '-')}: {verdict}" + (f" ({record['why']})" if record["why"] else ""),
                  flush=True)
        sittings.append({"sitting": ran, "seconds": round(time.monotonic() - started, 1), "runs": len(records),
                         "references": digests})
        table = report(records, sittings, disks.why, args)
        jsonl.write(json.dumps(sittings[-1]) + "\n")
    (args.report / "chaos.md").write_text(table)
    print(table)
    sys.exit(0 if all(r.get("survived", True) for r in records) else 1)


if __name__ == "__main__":
    main()
