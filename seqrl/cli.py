"""`seqrl finetune | validate | evaluate | generate | plot | push`.

User errors (bad recipe, missing file, unloadable model) print one line and exit with code 2;
`--debug` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

from seqrl.errors import SeqrlError
from seqrl.preemption import EXIT_PREEMPTED, SIGNALS, Preempted

if TYPE_CHECKING:
    from seqrl.config import RecipeConfig


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field, e.g. --set optim.lr=1e-4 (repeatable)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="seqrl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors, and libraries' warnings")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune", help="train with the recipe (cross-entropy, then its schedule)")
    _add_recipe_args(p)
    p.add_argument("--num-processes", type=int, metavar="N",
                   help="re-launch through `accelerate launch` with N processes (prints the command)")
    p.add_argument("--accelerate-config", metavar="FILE",
                   help="accelerate config for the re-launch (e.g. recipes/accelerate/ddp.yaml)")

    p = sub.add_parser("validate", help="load and check the recipe, data and model; print the resolved recipe")
    _add_recipe_args(p)

    p = sub.add_parser("evaluate", help="decode a split with a trained model and print corpus metrics")
    _add_recipe_args(p)
    p.add_argument("--model", help="model directory (default: RUN.output_dir/final)")
    p.add_argument("--split", help="split to decode (default: data.test_split)")
    p.add_argument("--num-beams", type=int, help="override eval.num_beams")
    p.add_argument("--max-examples", type=int, help="decode only the first N examples")
    p.add_argument("--output", help="predictions file (jsonl: source, reference, hypothesis)")

    p = sub.add_parser("plot", help="write PNG curves of a run's metrics (RUN_DIR/plots/*.png)")
    p.add_argument("run_dir", help="a run's output_dir")

    p = sub.add_parser("push", help="upload a run's final/ model (with its model card) to the Hugging Face hub")
    p.add_argument("run_dir", help="a finished run's output_dir")
    p.add_argument("repo_id", help="hub repository, user/name or org/name (created if needed)")
    p.add_argument("--private", action="store_true", help="create the repository private")

    p = sub.add_parser("generate", help="translate/summarize lines of text with a trained model")
    p.add_argument("model", help="model directory (e.g. RUN/final) or hub name")
    p.add_argument("--input", default="-", help="file with one source per line (default: stdin)")
    p.add_argument("--output", default="-", help="file for one output per line (default: stdout)")
    p.add_argument("--num-beams", type=int, default=1, help="1 = greedy")
    p.add_argument("--max-new-tokens", type=int,
                   help="longest output (default: the run's eval.max_new_tokens, or what the model's positions hold, "
                        "at most 128)")
    p.add_argument("--batch-size", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _quiet_libraries(args.debug)
    try:
        return COMMANDS[args.command](args)
    except SeqrlError as err:
        if args.debug:
            raise
        print(f"seqrl {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"seqrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Preempted as stop:
        if int(os.environ.get("RANK", "0")) == 0:  # one line for the whole run
            print(f"seqrl {args.command}: preempted: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED


def _quiet_libraries(debug: bool = False) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not debug:  # libraries' deprecation and user warnings (peft's Conv1D note...): nothing a user can act on
        for category in (UserWarning, DeprecationWarning, FutureWarning):
            warnings.filterwarnings("ignore", category=category)
    import datasets
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.logging.set_verbosity_error()
    # accelerate warns on every save that tied embeddings are stored once: expected, not news.
    logging.getLogger("accelerate.utils.other").setLevel(logging.ERROR)


def cmd_finetune(args: argparse.Namespace) -> int:
    from seqrl.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)  # fail here, once, before starting N processes
    if args.num_processes is not None or args.accelerate_config is not None:
        return _relaunch(args, cfg)
    from seqrl.session import finetune  # the heavy imports, after the recipe has loaded
    command = shlex.join(["seqrl", "finetune", args.recipe, *(x for item in args.overrides for x in ("--set", item))])
    final = finetune(cfg, command=command)
    if final is not None:
        print(f"done: model in {final}")
    return 0


def launch_command(args: argparse.Namespace, mixed_precision: str = "no") -> list[str]:
    """The `accelerate launch` command equivalent to this `seqrl finetune` call; it names the
    recipe's `run.mixed_precision`, which is what the processes use whatever a config file says."""
    cmd = [sys.executable, "-m", "accelerate.commands.launch"]
    if args.accelerate_config:
        if not Path(args.accelerate_config).is_file():
            raise SeqrlError(f"--accelerate-config file not found: {args.accelerate_config}")
        cmd += ["--config_file", args.accelerate_config, "--mixed_precision", mixed_precision]
    else:  # plain data parallel; on a machine without GPUs these are CPU processes over gloo
        cmd += ["--multi_gpu", "--num_machines", "1", "--mixed_precision", mixed_precision, "--dynamo_backend", "no"]
    if args.num_processes is not None:
        if args.num_processes < 1:
            raise SeqrlError(f"--num-processes must be >= 1, got {args.num_processes}")
        cmd += ["--num_processes", str(args.num_processes)]
    cmd += ["-m", "seqrl"] + (["--debug"] if args.debug else []) + ["finetune", args.recipe]
    for item in args.overrides:
        cmd += ["--set", item]
    return cmd


def _relaunch(args: argparse.Namespace, cfg: RecipeConfig) -> int:
    """Run the `accelerate launch` command, once the set-up it asks for is known to run on this
    machine (`seqrl.distributed.check_launch`); a stop signal sent to this process is passed on.
    accelerate's launcher exits 1 with a report of its own when its processes stop on a signal,
    so a run they ended with a checkpoint (its last metrics line says `preempted`) exits
    EXIT_PREEMPTED here."""
    from seqrl.distributed import check_launch

    cmd = launch_command(args, cfg.run.mixed_precision)  # (checks the arguments first)
    for note in check_launch(args.accelerate_config, cfg.run.mixed_precision, cfg.run.cpu):
        print(f"seqrl finetune: warning: {note}", file=sys.stderr)
    print("running: " + shlex.join(cmd), flush=True)
    started = time.time()
    child = subprocess.Popen(cmd)
    previous = {sig: signal.signal(sig, lambda signum, frame: child.send_signal(signum)) for sig in SIGNALS}
    try:
        code = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return EXIT_PREEMPTED if code != 0 and _ended_preempted(Path(cfg.run.output_dir), started) else code


def _ended_preempted(output_dir: Path, since: float) -> bool:
    """Whether this launch's processes stopped the run with a checkpoint (metrics.jsonl, written
    since `since`, ends with the `preempted` line)."""
    from seqrl.runlog import METRICS_FILE, read_metrics

    metrics = output_dir / METRICS_FILE
    try:
        if not metrics.is_file() or metrics.stat().st_mtime < since:
            return False
        lines = read_metrics(output_dir)
    except (SeqrlError, OSError):
        return False
    return bool(lines) and bool(lines[-1].get("preempted"))


def cmd_validate(args: argparse.Namespace) -> int:
    from seqrl.config import dump_recipe, load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    from seqrl.validate import validate
    for line in validate(cfg):
        print(line)
    print("# resolved recipe")
    print(dump_recipe(cfg), end="")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seqrl.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides)
    if args.max_examples is not None and args.max_examples < 1:
        raise SeqrlError(f"--max-examples must be >= 1, got {args.max_examples}")
    if args.num_beams is not None and args.num_beams < 1:
        raise SeqrlError(f"--num-beams must be >= 1, got {args.num_beams}")
    from accelerate import Accelerator

    from seqrl import data, modeling
    from seqrl.evaluate import evaluate_split
    from seqrl.run import check_lengths

    model_dir = Path(args.model or Path(cfg.run.output_dir) / "final")
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    if args.num_beams is not None:
        cfg.eval.num_beams = args.num_beams
    text_model = modeling.load_saved(model_dir)
    check_lengths(cfg, text_model.is_seq2seq, text_model.max_positions)
    accelerator = Accelerator(cpu=cfg.run.cpu)
    tokenized, _ = data.tokenize(data.load_raw(cfg.data, [split]), text_model, cfg.data)
    model = text_model.model.to(accelerator.device)
    scores = evaluate_split(text_model, model, tokenized[split], accelerator, cfg.data, cfg.eval,
                            max_examples=args.max_examples,
                            predictions_path=Path(args.output) if args.output else None,
                            progress=cfg.log.progress_bar)
    if accelerator.is_main_process:
        print(json.dumps({"model": str(model_dir), "split": split, "num_beams": cfg.eval.num_beams,
                          **{k: round(v, 4) for k, v in scores.items()}}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from seqrl import modeling
    from seqrl.data import truncate
    from seqrl.evaluate import decode

    if args.num_beams < 1 or args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise SeqrlError("--num-beams, --max-new-tokens and --batch-size must be >= 1")
    if args.input != "-" and not Path(args.input).is_file():
        raise SeqrlError(f"--input file not found: {args.input}")
    lines = _read_lines(args.input)
    text_model = modeling.load_saved(args.model)
    if not lines:
        return 0
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = text_model.model.to(device)
    source_ids = text_model.encode_sources(lines)
    if text_model.max_source_tokens:  # cut as in training, so positions stay within what it learned
        source_ids, _ = truncate(source_ids, text_model.max_source_tokens)
    longest = max(len(s) for s in source_ids)
    max_new_tokens = args.max_new_tokens
    if max_new_tokens is None:  # what the run decoded, else what the positions hold
        room = text_model.room_for_output(longest)
        max_new_tokens = text_model.max_new_tokens or min(128, room if room is not None else 128)
    problem = text_model.length_problem(longest, max_new_tokens)
    if problem:
        raise SeqrlError(f"--max-new-tokens {max_new_tokens}: {problem}; ask for fewer")
    outputs = decode(text_model, model, source_ids, batch_size=args.batch_size,
                     num_beams=args.num_beams, max_new_tokens=max_new_tokens)
    text = "".join(o.replace("\n", " ") + "\n" for o in outputs)
    if args.output == "-":
        sys.stdout.write(text)
    else:
        Path(args.output).write_text(text, encoding="utf-8")
    return 0


def _read_lines(name: str) -> list[str]:
    """Lines of UTF-8 text from a file or stdin ("-"); a file that is not text is a one-line error."""
    if name == "-" and not hasattr(sys.stdin, "buffer"):  # already text (a test's StringIO)
        return sys.stdin.read().splitlines()
    data = sys.stdin.buffer.read() if name == "-" else Path(name).read_bytes()
    where = "standard input" if name == "-" else name
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[:err.start].count(b"\n") + 1
        raise SeqrlError(f"--input {where} is not UTF-8 text (byte 0x{data[err.start]:02x} on line {line}); "
                         f"give one source sentence per line") from None
    if "\x00" in text:
        raise SeqrlError(f"--input {where} holds NUL bytes: a binary file, not one source sentence per line")
    return text.splitlines()


def cmd_plot(args: argparse.Namespace) -> int:
    from seqrl.plots import plot_run

    for path in plot_run(args.run_dir):
        print(path)
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    from seqrl.model_card import push

    print(f"uploaded {Path(args.run_dir) / 'final'} to {push(Path(args.run_dir), args.repo_id, args.private)}")
    return 0


COMMANDS = {"plot": cmd_plot, "finetune": cmd_finetune, "validate": cmd_validate, "evaluate": cmd_evaluate,
            "generate": cmd_generate, "push": cmd_push}
