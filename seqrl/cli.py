"""`seqrl finetune | validate | evaluate | generate | plot | push | rewards | recipe`.

User errors (bad recipe, missing file, unloadable model) print one line and exit with code 2;
`--debug` (anywhere on the command line) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import sys
import warnings
from pathlib import Path

from seqrl.errors import EXIT_USER_ERROR, SeqrlError, note_user_error, peer_stopped_on_user_error
from seqrl.launch import add_launch_args, relaunch, wants_launch
from seqrl.preemption import EXIT_PREEMPTED, Preempted, stop_before_start


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe field; VALUE is YAML (1e-4, true, [a, b], {rank: 8}, null = empty), "
                        "e.g. --set optim.lr=1e-4 (repeatable)")
    p.add_argument("--unset", dest="unsets", action="append", default=[], metavar="KEY",
                   help="remove a key the recipe sets, so its default applies (e.g. --unset schedule.stage_steps; "
                        "a whole section: --unset schedule); applied before every --set (repeatable)")


RESUME_HELP = ("To continue a stopped run (a kill, SIGTERM, run.max_minutes) from its newest checkpoint, run the "
               "same command with --set run.resume=auto.")


def _recipe_arguments(args: argparse.Namespace) -> list[str]:
    """The --unset and --set arguments as given, to repeat them (a re-launch, the model card)."""
    return [*(x for key in args.unsets for x in ("--unset", key)),
            *(x for item in args.overrides for x in ("--set", item))]


def build_parser() -> argparse.ArgumentParser:
    from seqrl import __version__

    parser = argparse.ArgumentParser(prog="seqrl", description=__doc__.splitlines()[0])
    parser.add_argument("--debug", action="store_true", help="show tracebacks for user errors, and libraries' warnings")
    parser.add_argument("--version", action="version", version=f"seqrl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("finetune", help="train with the recipe (cross-entropy, then its schedule)",
                       description="Train with the recipe (cross-entropy, then its schedule). " + RESUME_HELP)
    _add_recipe_args(p)
    add_launch_args(p)

    p = sub.add_parser("validate", help="load and check the recipe, data and model; print the resolved recipe")
    _add_recipe_args(p)

    p = sub.add_parser("evaluate", help="decode a split with a trained model and print corpus metrics")
    _add_recipe_args(p)
    p.add_argument("--model", help="model directory (default: RUN.output_dir/final)")
    p.add_argument("--split", help="split to decode (default: data.test_split)")
    p.add_argument("--num-beams", type=int, help="override eval.num_beams")
    p.add_argument("--decode", choices=["search", "mbr"],
                   help="override eval.decode: search (greedy/beam) or mbr (the recipe's mbr section)")
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
    p.add_argument("--mbr", type=int, default=0, metavar="N",
                   help="minimum Bayes risk: choose among N samples (temperature 1, seed 0) the one with the "
                        "highest mean --utility against the others (0 = off)")
    p.add_argument("--utility", default="token_bleu", help="MBR's utility: a reward name (default token_bleu)")
    p.add_argument("--max-new-tokens", type=int,
                   help="longest output (default: the run's eval.max_new_tokens, or what the model's positions hold, "
                        "at most 128)")
    p.add_argument("--batch-size", type=int, default=32)

    from seqrl.compare import add_parser as add_compare_parser  # (light: numpy; the metrics load when run)
    add_compare_parser(sub)
    sub.add_parser("rewards", help="list the built-in rewards with their options (a recipe's rewards[].kwargs)")
    p = sub.add_parser("recipe", help="describe the recipe schema")
    p.add_argument("--defaults", action="store_true", required=True,
                   help="print every setting with its default and meaning (from the schema)")
    p.add_argument("section", nargs="?", help="only this section (e.g. eval, or schedule.kind)")
    _debug_anywhere(sub)
    return parser


def _debug_anywhere(sub) -> None:
    """`--debug` after the subcommand too (`seqrl finetune r.yaml --debug`). SUPPRESS keeps a
    subcommand's absent flag from overwriting one given before it."""
    for p in sub.choices.values():
        p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show tracebacks for user errors")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.debug = getattr(args, "debug", False)
    if args.command != "finetune":  # (finetune quiets them itself, once its stop handler is in place)
        _quiet_libraries(args.debug)
    try:
        return COMMANDS[args.command](args)
    except SeqrlError as err:
        if args.debug:
            raise
        print(f"seqrl {args.command}: error: {err}", file=sys.stderr)
        note_user_error()
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print(f"seqrl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Preempted as stop:
        if int(os.environ.get("RANK", "0")) == 0:  # one line for the whole run
            print(f"seqrl {args.command}: preempted: {stop}", file=sys.stderr)
        return EXIT_PREEMPTED
    except Exception:  # (a collective broken by a process that stopped on a user error: its line is the news)
        if args.debug or not peer_stopped_on_user_error():
            raise
        return EXIT_USER_ERROR


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
    with stop_before_start():  # seconds of imports, nothing written: a stop signal ends it with 75 at once
        if not wants_launch(args):  # (a launcher needs neither library)
            _quiet_libraries(args.debug)
        from seqrl.config import load_recipe

        cfg = load_recipe(args.recipe, args.overrides, args.unsets)  # fail here, once, before starting N processes
        if not wants_launch(args):
            from seqrl.session import finetune  # the heavy imports, after the recipe has loaded
    if wants_launch(args):  # (the launcher forwards stop signals to its processes itself)
        return relaunch(args, cfg)
    command = shlex.join(["seqrl", "finetune", args.recipe, *_recipe_arguments(args)])
    final = finetune(cfg, command=command)
    if final is not None:
        print(f"done: model in {final}")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from seqrl.config import dump_recipe, load_recipe

    cfg = load_recipe(args.recipe, args.overrides, args.unsets)
    from seqrl.validate import validate
    for line in validate(cfg):
        print(line)
    print("# resolved recipe")
    print(dump_recipe(cfg), end="")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from seqrl.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides, args.unsets)
    if args.max_examples is not None and args.max_examples < 1:
        raise SeqrlError(f"--max-examples must be >= 1, got {args.max_examples}")
    if args.num_beams is not None and args.num_beams < 1:
        raise SeqrlError(f"--num-beams must be >= 1, got {args.num_beams}")
    from accelerate import Accelerator

    from seqrl import data, modeling
    from seqrl.config_checks import check_recipe
    from seqrl.evaluate import evaluate_split
    from seqrl.mbr import build_decoder
    from seqrl.run import check_lengths

    model_dir = Path(args.model or Path(cfg.run.output_dir) / "final")
    split = args.split or cfg.data.test_split or cfg.data.eval_split
    if args.num_beams is not None:
        cfg.eval.num_beams = args.num_beams
    if args.decode is not None:
        cfg.eval.decode = args.decode
        check_recipe(cfg)  # (mbr's own settings, now that they are in use)
    text_model = modeling.load_saved(model_dir)
    mbr = (build_decoder(text_model, cfg.mbr, cfg.eval.max_new_tokens, cfg.run.seed)
           if cfg.eval.decode == "mbr" else None)
    check_lengths(cfg, text_model.is_seq2seq, text_model.max_positions)
    accelerator = Accelerator(cpu=cfg.run.cpu)
    tokenized, _ = data.tokenize(data.load_raw(cfg.data, [split]), text_model, cfg.data, accelerator)
    model = text_model.model.to(accelerator.device)
    scores = evaluate_split(text_model, model, tokenized[split], accelerator, cfg.data, cfg.eval,
                            max_examples=args.max_examples,
                            predictions_path=Path(args.output) if args.output else None,
                            progress=cfg.log.progress_bar, mbr=mbr)
    if accelerator.is_main_process:
        print(json.dumps({"model": str(model_dir), "split": split, "decode": cfg.eval.decode,
                          "num_beams": cfg.eval.num_beams,
                          **{k: round(v, 4) for k, v in scores.items()}}))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import torch

    from seqrl import modeling
    from seqrl.config import MbrConfig
    from seqrl.data import truncate
    from seqrl.evaluate import decode, decode_mbr
    from seqrl.mbr import build_decoder

    if args.num_beams < 1 or args.batch_size < 1 or (args.max_new_tokens is not None and args.max_new_tokens < 1):
        raise SeqrlError("--num-beams, --max-new-tokens and --batch-size must be >= 1")
    if args.mbr == 1 or args.mbr < 0:
        raise SeqrlError(f"--mbr {args.mbr}: MBR needs at least 2 candidates per source (0 = off)")
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
    if args.mbr:
        settings = MbrConfig(num_candidates=args.mbr, utility=args.utility)
        mbr = build_decoder(text_model, settings, max_new_tokens, seed=0)
        outputs = decode_mbr(mbr, model, source_ids, 0, args.batch_size)[0]
    else:
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


def cmd_rewards(args: argparse.Namespace) -> int:
    from seqrl.rewards.catalog import describe_builtins

    print("\n".join(describe_builtins()))
    print("your own: rewards: [{name: package.module:function, kwargs: {...}}] (TRL's reward contract)")
    return 0


def cmd_recipe(args: argparse.Namespace) -> int:
    from seqrl.settings import describe_settings

    lines = describe_settings(args.section)
    if not lines:
        raise SeqrlError(f"recipe --defaults: no setting or section '{args.section}' (try eval, or optim.lr)")
    print("\n".join(lines))
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from seqrl.compare import run

    return run(args)


COMMANDS = {"rewards": cmd_rewards, "recipe": cmd_recipe, "compare": cmd_compare,
            "plot": cmd_plot, "finetune": cmd_finetune, "validate": cmd_validate, "evaluate": cmd_evaluate,
            "generate": cmd_generate, "push": cmd_push}
