"""Sharded training on one GPU: DDP, FSDP, DeepSpeed ZeRO-2 and ZeRO-3, side by side (issue 20).

    python scripts/sharded_check.py --out report/            # on a machine with CUDA
    python scripts/sharded_check.py --device-check           # only say what would run, and why not
    python scripts/sharded_check.py --allow-cpu --configs ddp --steps 4 --out /tmp/r   # the CPU test

For each accelerate config in recipes/accelerate/ (ddp.yaml, fsdp.yaml, deepspeed_zero2.yaml,
deepspeed_zero3.yaml) this runs the same small recipe for `--steps` (20) MIXER optimizer steps,
one process, through the command users run:

    seqrl finetune RECIPE --num-processes 1 --accelerate-config recipes/accelerate/X.yaml

which is `accelerate launch --config_file X.yaml --mixed_precision no --num_processes 1 -m seqrl
finetune RECIPE`. What makes accelerate 1.15 use the config's distributed type with one process
(read in accelerate/commands/launch.py and state.py): the config file, not a flag, selects the
launcher, and for MULTI_GPU, FSDP and DEEPSPEED on one machine that is torchrun
(`torch.distributed.run`) even for one process, so LOCAL_RANK is set; a process with LOCAL_RANK
and CUDA forms a 1-process NCCL group and becomes MULTI_GPU, then FSDP under ACCELERATE_USE_FSDP
or DEEPSPEED under ACCELERATE_USE_DEEPSPEED. (`--multi_gpu --num_processes 1`, what
`--num-processes 1` without a config file passes, is refused by accelerate: "at least 2
processes"; a plain `python -m seqrl finetune` has no LOCAL_RANK and is distributed type NO.)
With one process DDP is MULTI_GPU without the DistributedDataParallel wrapper (accelerate wraps
only when there are 2+ processes), FSDP2 shards over a 1-GPU mesh, and ZeRO partitions over one
rank: the same code paths as N GPUs (state-dict types, flat buffers, hooks that gather), the
collectives trivial. Each run's own header line `parallelism: ...` says what was set up.

Written to --out: sharded_check.md (a table), sharded_check.json (the same, and every setting),
sharded_check.log (each command and the end of its output). The runs themselves go to --work (a
temporary directory, removed unless --keep; WORK in the table's error lines), so that --out holds
only those three files.

Per config, two runs:
  1. `--steps` steps from scratch, a checkpoint at step `--steps // 2` (run.save_every), one
     metrics line per step (log.every 1). Reported: ran (exit code; else the first error line),
     the `parallelism:` line, steps logged, max |train/loss - DDP's train/loss| over all steps,
     median time/step_s, and whether final/model.safetensors holds the full weights (shapes as
     DDP's, none empty, none non-finite) and how far they are from DDP's.
  2. resumed from that checkpoint (run.resume=.../checkpoints/step-N) into a fresh output dir;
     its steps N+1..`--steps` against run 1's: "bitwise" when every train/loss is the same
     float, "within tolerance" when the largest difference is within RESUME_TOLERANCE, else
     "differs". On the CPU seqrl's resume is bitwise (tests/test_resume.py); on a GPU kernels
     with atomic adds (embedding and scatter backward) may change the last bits, hence the
     tolerance.

`--lora RANK` runs the same with LoRA adapters (rank RANK, q/v projections, no adapter dropout)
instead of every weight. Its resume is the check that matters: a LoRA checkpoint holds the
adapters and a fingerprint of the frozen base weights, and the resume refuses other base weights.
Under ZeRO-3 each process holds only its part of every weight (the module's own tensor is an
empty placeholder), so the fingerprint adds each process's part (`seqrl.lora.base_fingerprint`),
and it is taken before the checkpoint loads (a ZeRO-3 checkpoint holds the whole model; loading it
puts its base back). On the CPU (DeepSpeed 0.19.8, DS_ACCELERATOR=cpu, the refusal bypassed as
below; `--configs zero3 --lora 8`): ZeRO-3 within 4.8e-7 of DDP's loss, its resume bitwise, its
fingerprint DDP's to the last digit, and a resume onto a base with one weight matrix moved by 0.01
refused (accepted before the fingerprint moved ahead of the load).

The recipe (`recipe()` below): a bart (2 + 2 layers, 128 wide, 4 heads, FFN 512, no dropout, so
that the comparison measures the sharding rather than whether each scheme draws dropout masks in
the same order) with a BPE tokenizer of 2000 trained on the first 2000 training verses of
data/bible_en_es (shipped), built and saved once by this script (`build_start`), so that every
run loads the same starting weights: under ZeRO-3 a model built from a config inside the run is
initialised in deepspeed.zero.Init (accelerate hands transformers its ZeRO-3 config whatever
zero3_init_flag says), from other random draws than DDP's, and its loss differed from DDP's by
0.005 at step 1, before any update (measured on the CPU, below). Then 16 sources x 4 samples per
step, targets cut to 32 tokens, sentence-BLEU reward, leave-one-out baseline, AdamW lr 1e-3 with
warm-up over the first quarter and linear decay, clipping at 1.0, fp32 (`--mixed-precision` no).
MIXER from step 1: schedule.xent_steps 0, four stages of `--steps // 4` steps sampling the last
6, 12, 18, 24 target tokens (every step keeps a teacher-forced prefix, so train/loss holds its
cross-entropy). Evaluation only at the end, on 16 validation verses. On 2 CPU cores a run takes
~20 s.

Clipping: DeepSpeed clips at its config's `gradient_clipping` (1.0 in the shipped yamls), never
at the recipe's optim.max_grad_norm (accelerate's clip_grad_norm_ only reads DeepSpeed's norm);
the recipe here clips at 1.0 too, so the rows compare like with like. Its gradient norms are
0.5-0.9 before step 20, so clipping barely acts: this check does not test it.

Tolerances (train/loss falls from 3.82 at step 1 to ~3.40 at step 20):
  LOSS_TOLERANCE = 0.01 (fp32). With one process every collective is a copy, so in fp32 a
  sharded run does DDP's arithmetic in another order or memory layout (FSDP2's all-gathered
  parameters, ZeRO's flat fp32 partitions and its own norm for clipping), which changes the last
  bits. MIXER then samples: a draw that lands within rounding of a CDF boundary takes another
  token, and the runs drift apart from there. Measured on the CPU with this recipe (torch 2.13):
  the same fp32 run with 1 and with 2 intra-op threads (matrix products summed in another order,
  nothing else changed) differed by at most 1.1e-4 in train/loss over 20 steps. DeepSpeed on
  the CPU (0.19.8, DS_ACCELERATOR=cpu, seqrl's refusal bypassed for the experiment; accelerate
  launch of this recipe with the shipped yamls, 1 process): ZeRO-2 was bitwise DDP's, ZeRO-3
  within 1.1e-4 (and, before train.py saved gathered weights, its final/ held 39 empty
  tensors: ZeRO-3's placeholders). The bugs a
  sharded set-up could bring differ by more: a learning rate 10% high or low (say, a schedule
  that does not reach ZeRO's optimizer) moved train/loss by up to 0.077 and 0.053 (by more
  than 0.01 at 14 and 12 of the 20 steps); an optimizer that does not step (lr ~0) left it 0.50
  above DDP's at step 20. 0.01 is ~100x the rounding drift and ~5x below the 10%-lr error.
  BF16_LOSS_TOLERANCE = 0.3 (`--mixed-precision bf16`). fp32 against bf16 autocast, same code,
  measured: 0.14. DeepSpeed's bf16 is not autocast (bf16 weights, fp32 master copies in the
  optimizer) and FSDP2's reduces in bf16, so against DDP's autocast they differ at least as
  much as bf16 from fp32; 0.3 is ~2x that. In bf16 the comparison says that a run trains like
  DDP, no more.
  RESUME_TOLERANCE = 1e-3: a resume repeats the same scheme's arithmetic, bitwise on the CPU;
  on a GPU atomics (embedding and scatter backward) may change the last bits: 1e-3 is ~10x the
  rounding drift above and ~20x below the 10%-lr error over steps 11-20.
  final/ weights: max |w - w_DDP| within 2e-3 (fp32; 0.03 in bf16). Measured as above: 2.4e-4
  with 2 threads, 0.011-0.015 with the lr 10% off, 0.012 for bf16 against fp32. Mainly this
  column says whether final/ holds whole weights: a sharded save can write a shard, or ZeRO-3's
  empty placeholders.

What the GPU machine needs (it has no network): CUDA torch, accelerate, sacrebleu, sentencepiece,
tokenizers, pyyaml, matplotlib (its python3 has them), and what it lacks: datasets (with dill,
multiprocess), rouge-score (with nltk) and, for the DeepSpeed rows, deepspeed (with hjson,
pydantic). This checkout's .venv cannot go there (2 GB, a CPU build of torch, Python 3.11 against
3.12 there, and 64 MiB travel). So, where the package registry is reachable, once:

    bash scripts/gpu_wheels.sh          # -> .whl/ (git-ignored), ~23 MiB

(pip download of wheels for CPython 3.12 x86-64 at this checkout's versions, and pip wheel for
deepspeed and rouge-score, which the registry has as sources only; deepspeed with DS_BUILD_OPS=0:
no compiled ops, and seqrl uses none: its optimizer is torch's AdamW.) Then on the GPU machine, with `.whl`
carried, one command:

    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site:$PWD || exit
    python3 scripts/sharded_check.py --device-check
    PYTHONUNBUFFERED=1 python3 scripts/sharded_check.py --out $OUT

--device-check (seconds) prints the GPU, the versions, whether seqrl's imports and deepspeed load,
and which configs would run. The check itself keeps to --budget (420 s) for all its runs: a run
is not started with under 20 s left, and one still running at the end is stopped (SIGTERM, then
SIGKILL 15 s later); --timeout (150 s) bounds each. Runs that did not happen say why in the table.

Where deepspeed is installed by hand instead, it goes into the environment that runs this
(`pip install deepspeed`, or `pip install -e '.[sharded]'`); this script cannot install it on the
GPU machine. Without it the two DeepSpeed rows say "not run: deepspeed is not installed".
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchkit.sharded_runs import CONFIGS, MIN_SECONDS, Runner, checkpoint_step, child_env, first_run, resume_run
from benchkit.sharded_verdicts import REFERENCE, markdown_table, ran_cell, resume_cell, tolerances

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "data" / "bible_en_es"

DEEPSPEED = {"zero2", "zero3"}
REPORT_MD, REPORT_JSON, REPORT_LOG = "sharded_check.md", "sharded_check.json", "sharded_check.log"


# -- the recipe ------------------------------------------------------------------------------------------


MODEL = {"architecture": "bart",
         "config": {"encoder_layers": 2, "decoder_layers": 2, "d_model": 128, "encoder_attention_heads": 4,
                    "decoder_attention_heads": 4, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512,
                    "max_position_embeddings": 64, "dropout": 0.0, "attention_dropout": 0.0,
                    "activation_dropout": 0.0}}
"""The starting model, built once by `build_start` (2 + 2 layers, 128 wide, no dropout)."""
TOKENIZER = {"vocab_size": 2000}


def recipe(steps: int, mixed_precision: str = "no", start: Path | None = None, data_dir: Path = DATA,
           lora_rank: int | None = None) -> dict:
    """The small MIXER recipe every config runs (see the module docstring): from the saved
    starting model `start` (None: built from MODEL's config, as `build_start` does); with
    `lora_rank`, LoRA adapters of that rank on the attention q/v projections train instead of every
    weight (no adapter dropout, for the same reason the model has none)."""
    if steps < 2:
        raise ValueError("--steps must be >= 2 (a checkpoint at steps // 2, then a resume)")
    stage = max(1, steps // 4)
    model, tokenizer = ({"name_or_path": str(start)}, {}) if start is not None else (dict(MODEL), TOKENIZER)
    if lora_rank is not None:
        model["lora"] = {"rank": lora_rank, "alpha": 2.0 * lora_rank, "dropout": 0.0}
    return {
        "model": model,
        "tokenizer": tokenizer,
        "data": {"path": str(data_dir), "source_field": "en", "target_field": "es", "max_source_tokens": 32,
                 "max_target_tokens": 32, "max_train_examples": 2000, "test_split": None},
        "xent": {"batch_size": 16},
        # MIXER from the first step: four stages sample the last 6, 12, 18, 24 target tokens, so
        # every step has a teacher-forced prefix (targets are cut to 32) and train/loss carries its
        # cross-entropy; the schedule's last stage is long enough that run.max_steps ends the run.
        "schedule": {"kind": "mixer", "xent_steps": 0, "stage_steps": stage, "delta": 6, "xent_weight": 0.5,
                     "final_stage_steps": steps},
        "reinforce": {"batch_size": 16, "candidates": {"num_samples": 4}, "baseline": {"kind": "loo"}},
        "rewards": [{"name": "bleu"}],
        "optim": {"lr": 1e-3, "warmup_steps": stage, "decay": "linear", "max_grad_norm": 1.0},
        "eval": {"every": 0, "max_examples": 16, "batch_size": 16, "max_new_tokens": 32, "test_after_xent": False,
                 "metrics": ["bleu"]},
        "run": {"seed": 0, "max_steps": steps, "save_every": steps // 2, "save_every_minutes": None,
                "keep_checkpoints": 2, "mixed_precision": mixed_precision, "overwrite": True},
        "log": {"every": 1, "progress_bar": False, "samples_every": 0},
    }


def build_start(directory: Path, data_dir: Path = DATA, seed: int = 0) -> Path:
    """Train the tokenizer and build the starting model as `seqrl finetune` does for MODEL (in
    this process, on the CPU), and save both to `directory` for every run to load. Every config
    then starts from the same weights: under ZeRO-3 a model built from a config is initialised
    inside deepspeed.zero.Init (accelerate hands transformers its ZeRO-3 config whatever
    zero3_init_flag says), which draws other weights than DDP's from the same seed."""
    import torch
    import transformers

    sys.path.insert(0, str(REPO))
    from seqrl import data, modeling

    transformers.utils.logging.disable_progress_bar()
    from seqrl.config import TokenizerConfig, from_dict
    from seqrl.tokenizer import train_tokenizer

    cfg = from_dict(recipe(2, data_dir=data_dir))
    train = data.load_raw(cfg.data, [cfg.data.train_split])[cfg.data.train_split]
    texts = [s for s in train[cfg.data.source_field] if isinstance(s, str)]
    texts += [t for t in train[cfg.data.target_field] if isinstance(t, str)]
    directory = Path(directory)
    train_tokenizer(texts, cfg.tokenizer).save_pretrained(directory / "tokenizer")
    torch.manual_seed(seed)
    text_model = modeling.build(cfg.model, TokenizerConfig(name_or_path=str(directory / "tokenizer")), cfg.data)
    text_model.save(directory / "model")
    return directory / "model"




def versions() -> dict:
    from importlib import metadata

    out = {}
    for name in ("torch", "accelerate", "transformers", "deepspeed", "datasets", "peft"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_description() -> tuple[bool, str]:
    import torch

    if torch.cuda.is_available():
        return True, f"{torch.cuda.device_count()} x {torch.cuda.get_device_name(0)} (CUDA {torch.version.cuda})"
    return False, f"no CUDA ({platform.processor() or platform.machine()}, {os.cpu_count()} CPUs)"


def skip_reason(config: str, cuda: bool) -> str | None:
    if not cuda and config != REFERENCE:
        return "no CUDA (FSDP and DeepSpeed run only on GPUs; seqrl refuses them on the CPU)"
    if config in DEEPSPEED and importlib.util.find_spec("deepspeed") is None:
        return ("deepspeed is not installed (pip install deepspeed into the environment that runs this, before; "
                "see the docstring)")
    return None


def device_check(configs: list[str]) -> int:
    """What would run here, without training: CUDA, versions, seqrl's imports, each config."""
    sys.path.insert(0, str(REPO))  # (the runs get it through PYTHONPATH)
    cuda, device = device_description()
    print(f"device: {device}")
    print("versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in versions().items()))
    problems = 0
    modules = ["datasets", "rouge_score", "sacrebleu", "seqrl.session"] + (
        ["deepspeed"] if any(c in DEEPSPEED for c in configs) else [])
    for module in modules:
        try:
            __import__(module)
            print(f"import {module}: ok")
        except Exception as err:  # noqa: BLE001
            problems += 1
            print(f"import {module}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
    for config in configs:
        reason = skip_reason(config, cuda)
        print(f"{config} ({CONFIGS[config]}): {'would run' if reason is None else 'not run: ' + reason}")
    return 0 if cuda and not problems else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", choices=list(CONFIGS), default=list(CONFIGS),
                   help="which accelerate configs (default: all; ddp is always run first, as the reference)")
    p.add_argument("--steps", type=int, default=20, help="MIXER optimizer steps per run (checkpoint at steps // 2)")
    p.add_argument("--out", type=Path, help="directory for sharded_check.md/.json/.log")
    p.add_argument("--work", type=Path, help="directory for the runs (default: a temporary one)")
    p.add_argument("--keep", action="store_true", help="keep the runs' directories")
    p.add_argument("--mixed-precision", choices=["no", "bf16"], default="no",
                   help="run.mixed_precision of every run (bf16: looser loss tolerance, see the docstring)")
    p.add_argument("--timeout", type=float, default=150.0, help="seconds allowed to each run")
    p.add_argument("--budget", type=float, default=420.0,
                   help="seconds for all the runs together: a run is not started with under 20 s left, and is "
                        "stopped at the budget's end (default 420: 8 runs of ~30 s on a GPU, with room)")
    p.add_argument("--lora", dest="lora_rank", type=int, default=None, metavar="RANK",
                   help="train LoRA adapters of this rank instead of every weight (the resume then checks the "
                        "adapters' base-weight fingerprint, summed over each process's part under ZeRO-3 and FSDP)")
    p.add_argument("--allow-cpu", action="store_true",
                   help="run without CUDA (only DDP can run; for testing this script)")
    p.add_argument("--device-check", action="store_true",
                   help="only report CUDA, versions, imports and which configs would run (exit 1 if not ready)")
    args = p.parse_args(argv)
    if not args.device_check and args.out is None:
        p.error("--out is required")
    if args.steps < 2:
        p.error("--steps must be >= 2")
    if args.lora_rank is not None and args.lora_rank < 1:
        p.error("--lora must be a rank >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    configs = [c for c in CONFIGS if c in args.configs or c == REFERENCE]  # DDP first, always
    if args.device_check:
        return device_check(configs)
    cuda, device = device_description()
    if not cuda and not args.allow_cpu:
        print(f"sharded_check: error: no CUDA device here ({device}); this check needs a GPU "
              f"(--allow-cpu runs DDP alone on the CPU, for testing)", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    work = args.work or Path(tempfile.mkdtemp(prefix="sharded_check-"))
    work.mkdir(parents=True, exist_ok=True)
    import yaml

    print("sharded_check: building the starting model ...", flush=True)
    start = build_start(work / "start")
    recipe_path = work / "recipe.yaml"
    recipe_path.write_text(yaml.safe_dump(recipe(args.steps, args.mixed_precision, start, lora_rank=args.lora_rank),
                                          sort_keys=False))
    env = child_env(cuda)
    tolerance = tolerances(args.mixed_precision)
    settings = report_settings(args, device, tolerance)
    rows, reference = [], None
    try:
        with open(args.out / REPORT_LOG, "w", encoding="utf-8") as log:
            runner = Runner(recipe_path, work, env, args.timeout, args.budget, log)
            # Every config's first run, then the resumes: out of time, the loss comparisons come first.
            for config in configs:
                reason = skip_reason(config, cuda)
                if reason is None and runner.time_left() < MIN_SECONDS:
                    reason = f"out of time (--budget {args.budget:g} s)"
                if reason is not None:
                    row = {"config": config, "accelerate_config": CONFIGS[config], "skipped": reason,
                           "exit_code": None, "steps_logged": 0}
                else:
                    print(f"sharded_check: {config} ...", flush=True)
                    row = first_run(runner, config, args.steps, reference, tolerance)
                    reference = row if config == REFERENCE else reference
                    print(f"sharded_check: {config}: {ran_cell(row)} in {row['seconds']} s", flush=True)
                rows.append(row)
                write_report(args.out, rows, settings)  # after each run: a later hang loses nothing
            for row in rows:
                if row.get("skipped"):
                    continue
                if runner.time_left() < MIN_SECONDS:
                    row["resume"] = {"skipped": f"out of time (--budget {args.budget:g} s)"}
                else:
                    print(f"sharded_check: {row['config']}: resuming ...", flush=True)
                    resume_run(runner, row, args.steps, tolerance)
                    print(f"sharded_check: {row['config']}: resume {resume_cell(row)}", flush=True)
                write_report(args.out, rows, settings)
    finally:
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print((args.out / REPORT_MD).read_text(), end="")
    return 0


def report_settings(args: argparse.Namespace, device: str, tolerance: dict) -> dict:
    """What the report says the check ran with (the recipe with the start and data paths as names)."""
    return {"date": time.strftime("%Y-%m-%d %H:%M"), "device": device, "versions": versions(),
            "steps": args.steps, "checkpoint_step": checkpoint_step(args.steps),
            "mixed_precision": args.mixed_precision, "tolerance": tolerance, "lora_rank": args.lora_rank,
            "recipe": recipe(args.steps, args.mixed_precision, Path("START"), Path("data/bible_en_es"), args.lora_rank),
            "start": {"model": MODEL, "tokenizer": TOKENIZER, "seed": 0}}


def write_report(out: Path, rows: list[dict], settings: dict) -> None:
    (out / REPORT_MD).write_text(markdown_table(rows, settings), encoding="utf-8")
    (out / REPORT_JSON).write_text(json.dumps({"settings": settings, "rows": rows}, indent=1, default=str),
                                   encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
