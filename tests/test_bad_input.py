"""A corpus of bad inputs: every one must stop with exit code 2 and one short line on stderr.

Each case breaks the tiny recipe of conftest.py (or the files next to it, or the command line)
in one way, runs `seqrl.cli.main` in-process, and checks the line `seqrl CMD: error: ...`: no
traceback, under 300 characters, naming what is wrong (the dotted field, the file). Nearly all
cases stop before the first training step; the few that need a checkpoint share one 2-step run.

Cases marked `bug=...` are known seqrl bugs (strict xfail): the test shows what a user sees.
"""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import TINY_CONFIGS, make_pairs, write_jsonl, write_toy_splits
from test_cli import assert_one_line_error

from seqrl.cli import main

ACCELERATE_CONFIGS = Path(__file__).resolve().parents[1] / "recipes" / "accelerate"

# -- helpers -------------------------------------------------------------------------------------


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


@dataclass
class Ctx:
    """What a case may touch: its tmp_path, the recipe file about to be written, monkeypatch,
    and (lazily) a copy of a real 2-step run that saved a checkpoint after each step."""

    tmp: Path
    recipe_path: Path
    out: Path  # the recipe's run.output_dir
    monkeypatch: pytest.MonkeyPatch
    checkpointed_run: Callable[[], Path]

    def copy_checkpointed_run(self) -> Path:
        """Copy the shared checkpointed run into run.output_dir; return its step-1 checkpoint."""
        shutil.copytree(self.checkpointed_run(), self.out)
        return self.out / "checkpoints" / "step-00000001"


Mutate = Callable[[dict, Ctx], "str | bytes | None"]  # may return raw recipe text (or bytes) to write instead


@dataclass(frozen=True)
class Case:
    id: str
    mutate: Mutate
    needles: tuple[str, ...]
    command: str = "finetune"
    args: Callable[[Ctx], list] | None = None  # after the command; default: the recipe file
    bug: str | None = None  # a known seqrl bug: strict xfail with this reason


def put(dotted: str, value: Any) -> Mutate:
    """Set `a.b.c` in the recipe (sections created as needed)."""

    def mutate(recipe: dict, ctx: Ctx) -> None:
        *parents, last = dotted.split(".")
        node = recipe
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value

    return mutate


def both(*mutations: Mutate) -> Mutate:
    def mutate(recipe: dict, ctx: Ctx) -> str | None:
        text = None
        for m in mutations:
            text = m(recipe, ctx) or text
        return text

    return mutate


def noop(recipe: dict, ctx: Ctx) -> None:
    return None


MIXER = both(put("schedule", {"kind": "mixer", "xent_steps": 0, "stage_steps": 1, "delta": 8}),
             put("reinforce", {"candidates": {"num_samples": 2}}))

REWARD_MODULE = "seqrl_bad_input_rewards"
REWARD_SOURCE = '''
def no_completions(texts, references):
    return [0.0] * len(texts)


def positional_only(completions, /, references):
    return [0.0] * len(completions)


def exits(completions, **kwargs):
    import sys
    sys.exit(3)


def needs_difficulty(completions, difficulty):
    return [0.0] * len(completions)
'''


def custom_reward(name: str) -> Mutate:
    """Mixer schedule with the reward `REWARD_MODULE:name`, the module importable from tmp."""

    def mutate(recipe: dict, ctx: Ctx) -> None:
        (ctx.tmp / f"{REWARD_MODULE}.py").write_text(REWARD_SOURCE, encoding="utf-8")
        ctx.monkeypatch.syspath_prepend(str(ctx.tmp))
        ctx.monkeypatch.delitem(sys.modules, REWARD_MODULE, raising=False)
        MIXER(recipe, ctx)
        recipe["rewards"] = [{"name": f"{REWARD_MODULE}:{name}"}]

    return mutate


def data_dir_with(**splits: Any) -> Mutate:
    """data.path -> a fresh copy of the toy data where `split=rows` replaces a split's file
    (`None` = no file, a str = the file's raw text, a callable = applied to each row)."""

    def mutate(recipe: dict, ctx: Ctx) -> None:
        pairs = make_pairs()
        default = {"train": pairs[:160], "validation": pairs[160:180], "test": pairs[180:200]}
        d = ctx.tmp / "data2"
        d.mkdir()
        for split, rows in default.items():
            given = splits.get(split, rows)
            if given is None:
                continue
            if isinstance(given, str):
                (d / f"{split}.jsonl").write_text(given, encoding="utf-8")
            else:
                write_jsonl(d / f"{split}.jsonl", [given(dict(r)) for r in rows] if callable(given) else given)
        recipe["data"]["path"] = str(d)

    return mutate


def with_target(value: Any) -> Callable[[dict], dict]:
    return lambda row: {**row, "es": value}


def recipe_text(edit: Callable[[str], str]) -> Mutate:
    """Raw recipe text: the tiny recipe dumped as YAML, then edited as text."""
    return lambda recipe, ctx: edit(yaml.safe_dump(recipe, sort_keys=False))


def duplicate_key(text: str) -> str:
    assert "  warmup_steps: 1\n" in text
    return text.replace("  warmup_steps: 1\n", "  warmup_steps: 1\n  warmup_steps: 2\n")


def dup_line(recipe: dict) -> int:
    text = duplicate_key(yaml.safe_dump(recipe, sort_keys=False))
    return text.splitlines().index("  warmup_steps: 2") + 1


def tokenizer_without_eos(recipe: dict, ctx: Ctx) -> None:
    """A word-level tokenizer with <unk> and <pad> but no end-of-sequence token."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [w for p in make_pairs()[:50] for w in (p["en"], p["es"])]
    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=["<unk>", "<pad>"]))
    PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", pad_token="<pad>").save_pretrained(
        ctx.tmp / "tok-no-eos")
    recipe["tokenizer"] = {"name_or_path": str(ctx.tmp / "tok-no-eos")}


def resume_corrupt(file: str, damage: Callable[[bytes], bytes]) -> Mutate:
    def mutate(recipe: dict, ctx: Ctx) -> None:
        step = ctx.copy_checkpointed_run()
        (step / file).write_bytes(damage((step / file).read_bytes()))
        recipe.update(checkpoint_recipe_changes(recipe))
        recipe["run"]["resume"] = str(step)

    return mutate


def checkpoint_recipe_changes(recipe: dict) -> dict:
    """The tiny recipe as the checkpointed run had it (2 steps, a checkpoint after each)."""
    return {"schedule": {"kind": "xent", "xent_steps": 2},
            "run": {**recipe["run"], "save_every": 1},
            "eval": {**recipe["eval"], "max_examples": 4},
            "data": {**recipe["data"], "test_split": None}}


def rerun_after_failed_setup(recipe: dict, ctx: Ctx) -> None:
    """A run that stopped on a data error, then the same command again."""
    recipe["data"]["path"] = str(ctx.tmp / "no-such-dir")
    write_recipe(ctx.recipe_path, recipe)
    assert main(["finetune", str(ctx.recipe_path)]) == 2


def output_dir_holds_a_run(recipe: dict, ctx: Ctx) -> None:
    ctx.out.mkdir()
    (ctx.out / "metrics.jsonl").write_text('{"step": 1}\n')


def resume_from_a_plain_dir(recipe: dict, ctx: Ctx) -> None:
    ctx.tmp.joinpath("plain").mkdir()
    put("run.resume", str(ctx.tmp / "plain"))(recipe, ctx)


def recipe_arg(*extra: str) -> Callable[[Ctx], list]:
    return lambda ctx: [ctx.recipe_path, *extra]


def alias_bomb(where: str) -> Mutate:
    """'Billion laughs': nine aliases of nine aliases, eleven levels deep, put at `where`
    (a few hundred bytes of YAML, 9**11 values once expanded)."""

    def mutate(recipe: dict, ctx: Ctx) -> str:
        anchors = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
        anchors += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 12)]
        text = yaml.safe_dump(recipe, sort_keys=False)
        section, key = where.split(".")
        bomb = "{" + ", ".join(anchors) + "}"
        if section == "rewards":
            MIXER(recipe, ctx)
            recipe["rewards"] = [{"name": "bleu", "kwargs": {key: "BOMB"}}]
            text = yaml.safe_dump(recipe, sort_keys=False)
        else:
            recipe.setdefault(section, {})[key] = "BOMB"
            text = yaml.safe_dump(recipe, sort_keys=False)
        return text.replace("BOMB", bomb)

    return mutate


def deep_list(depth: int) -> Mutate:
    return lambda recipe, ctx: yaml.safe_dump(recipe, sort_keys=False) + "extra: " + "[" * depth + "]" * depth + "\n"


def not_utf8(recipe: dict, ctx: Ctx) -> bytes:
    return yaml.safe_dump(recipe, sort_keys=False).encode() + b"# caf\xe9 in latin-1\n"


def number_at_row(row: int) -> Callable[[list], list]:
    return lambda rows: [{**r, "es": 42} if i == row else r for i, r in enumerate(rows)]


def data_rows(split: str, edit: Callable[[list], list]) -> Mutate:
    """data.path -> a copy of the toy data whose `split` rows are edited as a list."""

    def mutate(recipe: dict, ctx: Ctx) -> None:
        pairs = make_pairs()
        d = write_toy_splits(ctx.tmp / "data2", pairs)
        rows = {"train": pairs[:160], "validation": pairs[160:180], "test": pairs[180:200]}[split]
        write_jsonl(d / f"{split}.jsonl", edit([dict(r) for r in rows]))
        recipe["data"]["path"] = str(d)

    return mutate


def data_bytes(split: str, line: int, bad: bytes) -> Mutate:
    """data.path -> a copy of the toy data where line `line` (1-based) of `split` is replaced by `bad`."""

    def mutate(recipe: dict, ctx: Ctx) -> None:
        d = write_toy_splits(ctx.tmp / "data2")
        lines = (d / f"{split}.jsonl").read_bytes().splitlines(keepends=True)
        lines[line - 1] = bad
        (d / f"{split}.jsonl").write_bytes(b"".join(lines))
        recipe["data"]["path"] = str(d)

    return mutate


def misspelled_local_data(recipe: dict, ctx: Ctx) -> None:
    """A relative path whose parent exists here (data2/ in the working directory): local, so no
    hub lookup (which retries for half a minute) may be tried."""
    write_toy_splits(ctx.tmp / "data2")
    ctx.monkeypatch.chdir(ctx.tmp)
    ctx.monkeypatch.setattr("seqrl.data._load_hub", lambda cfg: pytest.fail("the hub was tried"))
    recipe["data"]["path"] = "data2/tarin"


def stand_in_model(family: str, **fields: Any) -> Mutate:
    """model.name_or_path -> a tiny local stand-in of a pretrained family (tests/stand_ins.py)."""

    def mutate(recipe: dict, ctx: Ctx) -> None:
        from stand_ins import build_stand_in

        recipe["model"] = {"name_or_path": str(build_stand_in(family, ctx.tmp / family))}
        recipe.pop("tokenizer", None)
        for dotted, value in fields.items():
            put(dotted, value)(recipe, ctx)

    return mutate


def not_a_model_dir(recipe: dict, ctx: Ctx) -> None:
    """model.name_or_path -> a directory that exists but holds no model (a run directory, say)."""
    (ctx.tmp / "a-run").mkdir()
    recipe["model"] = {"name_or_path": str(ctx.tmp / "a-run")}
    recipe.pop("tokenizer", None)


def nested_data(recipe: dict, ctx: Ctx) -> None:
    """data.path -> a save_to_disk DatasetDict shaped like the hub's WMT data ({translation: {en, es}})."""
    import datasets

    pairs = make_pairs()
    parts = {s: datasets.Dataset.from_list([{"translation": {"en": p["en"], "es": p["es"]}} for p in rows])
             for s, rows in (("train", pairs[:160]), ("validation", pairs[160:180]), ("test", pairs[180:]))}
    datasets.DatasetDict(parts).save_to_disk(str(ctx.tmp / "wmt"))
    recipe["data"].update(path=str(ctx.tmp / "wmt"), source_field="translation.en", target_field="translation.es")


def output_dir_at(make: Callable[[Ctx], Path]) -> Mutate:
    def mutate(recipe: dict, ctx: Ctx) -> None:
        recipe["run"]["output_dir"] = str(make(ctx))

    return mutate


def a_file(ctx: Ctx) -> Path:
    (ctx.tmp / "a-file").write_text("not a directory\n")
    return ctx.tmp / "a-file"


def binary_file(ctx: Ctx) -> Path:
    (ctx.tmp / "image.bin").write_bytes(bytes(range(256)) * 4)
    return ctx.tmp / "image.bin"


# -- the corpus ----------------------------------------------------------------------------------

CASES = [
    # recipe file and structure
    Case("unknown-top-level-key", put("optimizer", {"lr": 1e-3}), ("unknown key 'optimizer'", "did you mean 'optim'")),
    Case("unknown-section-key", put("schedule.xent_step", 4),
         ("'schedule.xent_step'", "did you mean 'schedule.xent_steps'")),
    Case("unknown-reward-entry-key", both(MIXER, put("rewards", [{"name": "bleu", "weigth": 2.0}])),
         ("'rewards[0].weigth'", "did you mean 'rewards[0].weight'")),
    Case("key-given-twice", recipe_text(duplicate_key), ("'warmup_steps' appears twice", "line ")),
    Case("yaml-does-not-parse", lambda r, ctx: "model:\n\tarchitecture: marian\n",
         ("recipe.yaml", "not valid YAML", "line 2"),),
    Case("recipe-is-a-list", lambda r, ctx: "- model\n- data\n", ("recipe.yaml", "must be a mapping", "list")),
    Case("recipe-file-missing", noop, ("recipe file not found", "missing.yaml"),
         args=lambda ctx: [ctx.tmp / "missing.yaml"]),
    Case("section-is-a-scalar", put("optim", 1e-3), ("optim must be a mapping", "0.001")),
    # wrong types
    Case("string-for-int", put("xent.batch_size", "sixteen"), ("xent.batch_size must be an integer", "'sixteen'")),
    Case("bool-for-int", put("run.max_steps", True), ("run.max_steps must be an integer", "True")),
    Case("float-for-int", put("xent.batch_size", 16.5), ("xent.batch_size must be an integer", "16.5")),
    Case("list-for-str", put("data.source_field", ["en"]), ("data.source_field must be a string", "['en']")),
    Case("mapping-for-list", put("eval.metrics", {"bleu": 1}), ("eval.metrics must be a list",)),
    Case("string-for-list", put("log.trackers", "tensorboard"), ("log.trackers must be a list",)),
    # bad enum values
    Case("schedule-kind-typo", put("schedule.kind", "mixr"), ("schedule.kind", "did you mean 'mixer'")),
    Case("baseline-typo", put("reinforce.baseline.kind", "looo"), ("reinforce.baseline.kind", "did you mean 'loo'")),
    Case("eval-metric-typo", put("eval.metrics", ["bleu", "rougel"]), ("eval.metrics[1]", "did you mean 'rougeL'")),
    # out of range
    Case("batch-size-0", put("xent.batch_size", 0), ("xent.batch_size must be > 0",)),
    Case("negative-lr", put("optim.lr", -1e-3), ("optim.lr must be > 0",)),
    Case("nan-lr", put("optim.lr", float("nan")), ("optim.lr",), command="validate",),
    Case("label-smoothing-1", put("xent.label_smoothing", 1.0), ("xent.label_smoothing must be in [0, 1)",)),
    Case("top-p-removed", put("reinforce.top_p", 0.9), ("reinforce.top_p was removed",)),
    Case("old-flat-reinforce-key", put("reinforce.num_samples", 2),
         ("reinforce.num_samples moved to reinforce.candidates.num_samples",)),
    Case("temperature-0", put("reinforce.candidates.temperature", 0),
         ("reinforce.candidates.temperature must be > 0",)),
    Case("beta-1", put("optim.betas", [0.9, 1.0]), ("optim.betas", "[0, 1)")),
    Case("one-beta", put("optim.betas", [0.9]), ("optim.betas must be a list of 2 values",)),
    Case("ema-decay-1", put("reinforce.baseline.ema_decay", 1.0), ("reinforce.baseline.ema_decay must be in [0, 1)",)),
    Case("max-source-tokens-0", put("data.max_source_tokens", 0), ("data.max_source_tokens must be > 0",)),
    Case("num-samples-0", put("reinforce.candidates.num_samples", 0),
         ("reinforce.candidates.num_samples must be > 0",)),
    Case("delta-0", put("schedule.delta", 0), ("schedule.delta must be > 0",)),
    # schedule and estimator combinations
    Case("mixer-without-stage-steps", put("schedule", {"kind": "mixer", "xent_steps": 4}),
         ("schedule.stage_steps", "schedule.stage_epochs", "mixer")),
    Case("stage-steps-with-xent", put("schedule.stage_steps", 2), ("schedule.stage_steps does not apply", "xent")),
    Case("loo-with-one-sample", put("reinforce.candidates.num_samples", 1),
         ("reinforce.baseline.kind: loo", "num_samples >= 2")),
    Case("risk-with-one-candidate", put("reinforce", {"estimator": {"kind": "risk"}, "candidates": {"num_samples": 1}}),
         ("reinforce.estimator.kind: risk", "num_samples >= 2")),
    Case("risk-with-greedy-baseline", put("reinforce", {"estimator": {"kind": "risk"}, "baseline": {"kind": "greedy"}}),
         ("reinforce.baseline.kind: greedy does nothing under reinforce.estimator.kind: risk",)),
    Case("reference-for-reinforce", put("reinforce.candidates.reference", True),
         ("reinforce.candidates.reference needs reinforce.estimator.kind: risk",)),
    Case("beams-for-reinforce", put("reinforce.candidates.kind", "beam"),
         ("reinforce.candidates.kind: beam needs reinforce.estimator.kind: risk",)),
    Case("risk-length-normalize-without-risk", put("reinforce", {"estimator": {"risk_length_normalize": True}}),
         ("reinforce.estimator.risk_length_normalize needs reinforce.estimator.kind: risk",)),
    Case("risk-alpha-0", put("reinforce", {"estimator": {"kind": "risk", "risk_alpha": 0}}),
         ("reinforce.estimator.risk_alpha must be > 0",)),
    Case("xent-steps-and-epochs", put("schedule.xent_epochs", 1.0), ("schedule.xent_steps", "schedule.xent_epochs")),
    # lengths beyond the model's 64 positions
    Case("target-tokens-beyond-positions", put("data.max_target_tokens", 64),
         ("data.max_target_tokens", "64 positions")),
    Case("max-new-tokens-beyond-positions", put("eval.max_new_tokens", 100), ("eval.max_new_tokens", "64 positions")),
    Case("validate-max-new-tokens-beyond-positions", put("eval.max_new_tokens", 100),
         ("eval.max_new_tokens", "64 positions"),
         command="validate"),
    # data
    Case("data-dir-missing", lambda r, ctx: put("data.path", str(ctx.tmp / "no-such-dir"))(r, ctx),
         ("data.path", "no-such-dir")),
    Case("split-file-missing", data_dir_with(validation=None), ("data.path", "split 'validation'")),
    Case("source-field-wrong", put("data.source_field", "english"), ("data.source_field 'english'", "'en'")),
    Case("target-field-wrong", put("data.target_field", "spanish"), ("data.target_field 'spanish'", "'es'"),
         command="validate"),
    Case("split-file-empty", data_dir_with(test=""), ("split 'test' is empty", "test.jsonl")),
    Case("reserved-column", data_dir_with(train=lambda row: {**row, "completions": "x"}),
         ("'completions'", "split 'train'", "rename")),
    Case("blank-targets-with-error", both(data_dir_with(train=with_target("  ")), put("data.empty_targets", "error")),
         ("160 empty or missing targets", "'es'", "data.empty_targets")),
    Case("null-targets-with-error", both(data_dir_with(train=with_target(None)), put("data.empty_targets", "error")),
         ("160 empty or missing targets", "'es'"),),
    Case("malformed-jsonl", data_dir_with(train="{not json\n"), ("train.jsonl", "could not read", "as json"),),
    Case("data-path-is-a-file", lambda r, ctx: put("data.path", str(Path(r["data"]["path"]) / "train.jsonl"))(r, ctx),
         ("data.path", "train.jsonl", "is a file", "data.files")),
    Case("data-files-missing-file",
         lambda r, ctx: put("data", {**r["data"], "path": None,
                                     "files": {"train": str(ctx.tmp / "nope.jsonl")}})(r, ctx),
         ("data.files", "nope.jsonl")),
    # model and tokenizer
    Case("model-path-and-architecture", put("model.name_or_path", "some/model"),
         ("set exactly one of model.name_or_path or model.architecture",)),
    Case("model-neither", put("model", {"config": dict(TINY_CONFIGS["marian"])}),
         ("set exactly one of model.name_or_path or model.architecture",)),
    Case("architecture-typo", put("model.architecture", "marain"),
         ("model.architecture", "marain", "did you mean 'marian'"),),
    Case("model-config-unknown-key", put("model.config.d_modle", 32), ("model.config.d_modle", "did you mean"),
         command="validate",),
    Case("model-config-wrong-type", put("model.config.d_model", "32"), ("model.config", "d_model"),
         command="validate",),
    Case("model-config-rejected-by-model", put("model.config.d_model", 33),
         ("model.config does not fit", "divisible"),),
    Case("model-dir-missing",
         lambda r, ctx: put("model", {"name_or_path": str(ctx.tmp / "no-such-model")})(r, ctx),
         ("model.name_or_path", "no-such-model", "not found"),),
    Case("tokenizer-without-eos", tokenizer_without_eos, ("tok-no-eos", "no eos_token")),
    Case("validate-tokenizer-without-eos", tokenizer_without_eos, ("tok-no-eos", "no eos_token"), command="validate",),
    # rewards
    Case("reward-unknown-builtin", both(MIXER, put("rewards", [{"name": "blue"}])),
         ("unknown reward 'blue'", "did you mean 'bleu'")),
    Case("reward-module-does-not-import", both(MIXER, put("rewards", [{"name": "no_such_module_xyz.sub:score"}])),
         ("no_such_module_xyz", "cannot import", "PYTHONPATH")),
    Case("reward-attribute-missing", custom_reward("missing"), (f"{REWARD_MODULE}:missing", "no function 'missing'")),
    Case("reward-without-completions", custom_reward("no_completions"), ("no_completions", "`completions`")),
    Case("reward-positional-only", custom_reward("positional_only"), ("positional_only", "positional-only")),
    Case("reward-kwarg-typo", both(MIXER, put("rewards", [{"name": "bleu", "kwargs": {"smooth_metod": "add-k"}}])),
         ("smooth_metod", "did you mean 'smooth_method'"),),
    Case("rewards-a-mapping", both(MIXER, put("rewards", {"name": "bleu"})), ("rewards must be a list",)),
    # output directory, resume
    Case("output-dir-holds-a-run", output_dir_holds_a_run, ("already holds a run", "run.overwrite")),
    Case("rerun-after-failed-setup", rerun_after_failed_setup, ("no-such-dir",),),
    Case("resume-dir-missing", lambda r, ctx: put("run.resume", str(ctx.tmp / "no-ckpt"))(r, ctx),
         ("run.resume", "not found", "no-ckpt")),
    Case("resume-not-a-checkpoint", resume_from_a_plain_dir, ("run.resume", "trainer_state.json")),
    Case("resume-truncated-weights", resume_corrupt("model.safetensors", lambda b: b[:1000]),
         ("run.resume", "cannot load checkpoint", "step-00000001")),
    Case("resume-garbage-trainer-state", resume_corrupt("trainer_state.json", lambda b: b"{not json"),
         ("run.resume", "cannot load checkpoint", "JSONDecodeError")),
    Case("resume-garbage-optimizer", resume_corrupt("optimizer.bin", lambda b: b"garbage"),
         ("run.resume", "cannot load checkpoint", "damaged"),),
    # recipes that would exhaust memory or recursion
    Case("alias-bomb-in-typed-value", alias_bomb("xent.batch_size"),
         ("recipe.yaml", "more than 100,000 values", "aliases")),
    Case("alias-bomb-in-reward-kwargs", alias_bomb("rewards.kwargs"), ("recipe.yaml", "more than 100,000 values")),
    Case("alias-bomb-in-set", noop, ("--set model.config", "100,000 values"),
         args=recipe_arg("--set", "model.config={a: &a [x, x, x, x, x, x, x, x, x, x], "
                         + ", ".join(f"b{i}: &b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 10)}]"
                                     for i in range(6)) + "}")),
    Case("nested-3000-deep", deep_list(3000), ("recipe.yaml", "nest")),  # our limit, or libyaml's own
    Case("nested-40-deep", deep_list(40), ("recipe.yaml", "nested more than 32 levels")),
    Case("recipe-over-a-mebibyte", lambda r, ctx: yaml.safe_dump(r) + "#" + "x" * (1 << 20) + "\n",
         ("recipe.yaml", "over 1,048,576 bytes")),
    Case("recipe-not-utf8", not_utf8, ("recipe.yaml", "not UTF-8", "0xe9")),
    Case("integer-of-5000-digits",
         lambda r, ctx: yaml.safe_dump(r).replace("warmup_steps: 1", "warmup_steps: " + "9" * 5000),
         ("recipe.yaml", "5,000 digits")),
    # numbers out of what torch and numpy hold
    Case("seed-negative", put("run.seed", -1), ("run.seed must be in [0, 2**32 - 1]", "-1")),
    Case("seed-over-32-bits", put("run.seed", 2**32), ("run.seed must be in [0, 2**32 - 1]", "4294967296")),
    Case("integer-too-large-for-a-float", put("optim.lr", 10**400), ("optim.lr must be between -2**63 and 2**63",)),
    Case("batch-size-10-to-the-20", put("xent.batch_size", 10**20), ("xent.batch_size must be between", "2**63")),
    Case("nan-in-model-config", put("model.config.dropout", float("nan")),
         ("model.config.dropout must be a finite number",)),
    Case("inf-in-reward-kwargs",
         both(MIXER, put("rewards", [{"name": "bleu", "kwargs": {"smooth_value": float("inf")}}])),
         ("rewards[0].kwargs.smooth_value must be a finite number",)),
    # data columns that are not text
    Case("integer-source-column", data_dir_with(train=lambda row: {**row, "en": 7}),
         ("data.source_field 'en'", "train.jsonl", "must hold text", "row 0 holds int 7")),
    Case("number-in-a-target", data_rows("train", number_at_row(3)),
         ("data.target_field 'es'", "train.jsonl", "row 3 holds int 42")),
    Case("number-in-a-target-validate", data_rows("validation", number_at_row(5)),
         ("data.target_field 'es'", "validation.jsonl", "row 5 holds int 42"), command="validate"),
    Case("all-null-target-column", data_dir_with(test=with_target(None)), ("split 'test'", "no example with a source")),
    Case("row-not-utf8", data_bytes("train", 8, b'{"en": "the caf\xe9", "es": "el", "topic": "x"}\n'),
         ("line 8 of", "train.jsonl", "not UTF-8")),
    Case("row-not-utf8-validate", data_bytes("train", 8, b'{"en": "the caf\xe9", "es": "el", "topic": "x"}\n'),
         ("line 8 of", "train.jsonl", "not UTF-8"), command="validate"),
    Case("bad-json-on-line-5", data_bytes("train", 5, b'{"en": "the dog", "es": \n'), ("train.jsonl", "line 5")),
    Case("misspelled-local-data-path", misspelled_local_data, ("data.path 'data2/tarin': directory not found",)),
    # the output directory
    Case("output-dir-is-a-file", output_dir_at(a_file), ("run.output_dir", "a-file", "is a file")),
    Case("output-parent-is-a-file", output_dir_at(lambda ctx: a_file(ctx) / "run"), ("run.output_dir", "a-file")),
    Case("output-dir-cannot-be-created", output_dir_at(lambda ctx: Path("/sys/seqrl-test-run")),
         ("run.output_dir", "cannot be created", "writable")),
    Case("output-dir-not-writable", output_dir_at(lambda ctx: Path("/sys")),
         ("run.output_dir '/sys' is not writable",)),
    # pretrained models: languages, generation settings, LoRA, hub dataset shapes
    Case("unknown-target-language", stand_in_model("mbart50", **{"tokenizer.tgt_lang": "es_ES"}),
         ("tokenizer.tgt_lang", "no language code 'es_ES'", "did you mean 'es_XX'")),
    Case("start-model-not-a-model-directory", not_a_model_dir,
         ("model.name_or_path", "holds no config.json", "a run's final/ or best/")),
    Case("start-model-tokenizer-cannot-encode-the-data",
         both(stand_in_model("marian"), data_dir_with(train=lambda row: {**row, "en": "Ἐν ἀρχῇ ἦν ὁ λόγος"})),
         ("data.source_field 'en' in split 'train'", "the tokenizer's unknown token", "another language or script")),
    Case("language-for-a-tokenizer-without-languages", put("tokenizer.src_lang", "en_XX"),
         ("tokenizer.src_lang", "has no language codes")),
    Case("generation-setting-typo", put("model.generation", {"no_repeat_ngram": 3}),
         ("model.generation.no_repeat_ngram", "did you mean 'model.generation.no_repeat_ngram_size'")),
    Case("generation-setting-rollouts-cannot-honour", put("model.generation", {"repetition_penalty": 1.2}),
         ("repetition_penalty=1.2", "cannot be applied to training rollouts",
          "model.generation.repetition_penalty: 1.0")),
    Case("lora-target-modules-missing", put("model.lora", {"target_modules": ["query_proj"]}),
         ("model.lora.target_modules ['query_proj'] match no layer", "q_proj")),
    Case("lora-rank-0", put("model.lora", {"rank": 0}), ("model.lora.rank and model.lora.alpha must be > 0",)),
    Case("lora-unknown-key", put("model.lora", {"rnak": 8}), ("model.lora.rnak", "did you mean 'model.lora.rank'")),
    Case("nested-field-missing", both(nested_data, put("data.target_field", "translation.fr")),
         ("data.target_field 'translation.fr'", "'translation' has en, es")),
    Case("hub-config-with-local-data", put("data.hub_config", "en-es"), ("data.hub_config 'en-es'", "local")),
    Case("validation-carved-over-an-existing-one", put("data.validation_from_train", 0.1),
         ("data.validation_from_train is set", "'validation' split already")),
    Case("validation-carve-not-whole", put("data.validation_from_train", 2.5),
         ("data.validation_from_train", "whole number")),
    # rewards that cannot run: found at set-up, before any training
    Case("reward-model-path-missing",
         both(MIXER, put("rewards", [{"name": "bertscore", "kwargs": {"model": "/no/such/encoder"}}])),
         ("reward 'bertscore'", "/no/such/encoder", "could not be loaded")),
    Case("reward-model-kwarg-missing", both(MIXER, put("rewards", [{"name": "classifier"}])),
         ("rewards 'classifier'", "missing 'model'")),
    Case("reward-needs-a-missing-column", custom_reward("needs_difficulty"),
         ("needs an argument 'difficulty'", "dataset column (en, es, topic)")),
    # a reward that ends the process
    Case("reward-calls-sys-exit", custom_reward("exits"), (f"{REWARD_MODULE}:exits", "sys.exit(3)")),
    # trackers
    Case("tracker-typo", put("log.trackers", ["tensorbord"]), ("log.trackers", "did you mean 'tensorboard'")),
    # command line
    Case("set-without-equals", noop, ("--set expects key=value", "optim.lr:1e-3"),
         args=recipe_arg("--set", "optim.lr:1e-3")),
    Case("set-unknown-key", noop, ("'xent.batchsize'", "did you mean 'xent.batch_size'"),
         args=recipe_arg("--set", "xent.batchsize=8")),
    Case("set-into-a-value", noop, ("--set xent.batch_size.max", "'batch_size' is not a section"),
         args=recipe_arg("--set", "xent.batch_size.max=1")),
    Case("generate-input-missing", noop, ("--input file not found", "nope.txt"), command="generate",
         args=lambda ctx: [ctx.tmp / "no-model", "--input", ctx.tmp / "nope.txt"]),
    Case("generate-model-missing", noop, ("directory not found", "no-model"), command="generate",
         args=lambda ctx: [ctx.tmp / "no-model", "--input", ctx.recipe_path]),
    Case("evaluate-model-missing", noop, ("directory not found", "no-model"), command="evaluate",
         args=recipe_arg("--model", "/nonexistent/no-model")),
    Case("evaluate-split-missing", noop, ("split 'dev'", "data.path"), command="evaluate",
         args=lambda ctx: [ctx.recipe_path, "--model", ctx.checkpointed_run() / "final", "--split", "dev"]),
    Case("generate-binary-input", noop, ("--input", "image.bin", "not UTF-8"), command="generate",
         args=lambda ctx: [ctx.checkpointed_run() / "final", "--input", binary_file(ctx)]),
    Case("evaluate-negative-max-examples", noop, ("--max-examples must be >= 1", "-3"), command="evaluate",
         args=lambda ctx: [ctx.recipe_path, "--model", ctx.checkpointed_run() / "final", "--max-examples", "-3"]),
    Case("plot-without-metrics", noop, ("metrics.jsonl",), command="plot", args=lambda ctx: [ctx.tmp]),
    Case("num-processes-0", noop, ("--num-processes must be >= 1",), args=recipe_arg("--num-processes", "0")),
    Case("accelerate-config-missing", noop, ("--accelerate-config", "missing.yaml"),
         args=recipe_arg("--accelerate-config", "missing.yaml")),
    # set-ups this hardware cannot give (accelerate would quietly run DDP or fp32 instead)
    Case("fsdp-on-the-cpu", put("run.cpu", True), ("fsdp.yaml asks for FSDP", "runs only on GPUs", "ddp.yaml"),
         args=recipe_arg("--num-processes", "2", "--accelerate-config", str(ACCELERATE_CONFIGS / "fsdp.yaml"))),
    Case("deepspeed-on-the-cpu", put("run.cpu", True), ("asks for DeepSpeed", "runs only on GPUs"),
         args=recipe_arg("--accelerate-config", str(ACCELERATE_CONFIGS / "deepspeed_zero2.yaml"))),
    Case("fp16-on-the-cpu", both(put("run.cpu", True), put("run.mixed_precision", "fp16")),
         ("run.mixed_precision: fp16", "not applied on the CPU")),
]


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory) -> Callable[[], Path]:
    """Lazily: a finished 2-step tiny marian run with a checkpoint after each step (and final/)."""
    made: list[Path] = []

    def get() -> Path:
        if not made:
            tmp = tmp_path_factory.mktemp("checkpointed")
            data = write_toy_splits(tmp / "data")
            recipe = {
                "model": {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"])},
                "tokenizer": {"vocab_size": 120},
                "data": {"path": str(data), "source_field": "en", "target_field": "es",
                         "max_source_tokens": 32, "max_target_tokens": 32},
                "xent": {"batch_size": 16},
                "optim": {"warmup_steps": 1},
                "eval": {"every": 0, "max_new_tokens": 8, "batch_size": 20},
                "run": {"output_dir": str(tmp / "run")},
                "log": {"every": 1, "progress_bar": False},
            }
            recipe.update(checkpoint_recipe_changes(recipe))
            assert main(["finetune", str(write_recipe(tmp / "recipe.yaml", recipe))]) == 0
            assert (tmp / "run" / "checkpoints" / "step-00000001" / "trainer_state.json").is_file()
            made.append(tmp / "run")
        return made[0]

    return get


def _param(case: Case):
    marks = [pytest.mark.xfail(reason=case.bug, strict=True)] if case.bug else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_is_one_line_exit_2(case: Case, tiny_recipe, tmp_path, monkeypatch, capsys, checkpointed_run):
    ctx = Ctx(tmp_path, tmp_path / "recipe.yaml", Path(tiny_recipe["run"]["output_dir"]), monkeypatch,
              checkpointed_run)
    text = case.mutate(tiny_recipe, ctx)
    if isinstance(text, str):
        ctx.recipe_path.write_text(text, encoding="utf-8")
    elif isinstance(text, bytes):
        ctx.recipe_path.write_bytes(text)
    else:
        write_recipe(ctx.recipe_path, tiny_recipe)
    args = case.args(ctx) if case.args else [ctx.recipe_path]
    capsys.readouterr()  # drop what set-up printed
    rc = main([case.command, *(str(a) for a in args)])
    out, err = capsys.readouterr()
    needles = case.needles
    if case.id == "key-given-twice":
        needles = (*needles, f"line {dup_line(tiny_recipe)}")
    assert_one_line_error(rc, err, *needles, command=case.command)
    assert not (ctx.out / "final").exists() or case.id.startswith("resume-")  # nothing was trained


def test_corpus_is_big_enough():
    assert len(CASES) >= 30
    assert len({c.id for c in CASES}) == len(CASES)


# -- counted, not silent ---------------------------------------------------------------------------


def test_cut_sources_and_blank_targets_are_counted(tiny_recipe, toy_data_dir, tmp_path, capsys):
    """Over-long sources are cut and counted; whitespace-only targets are skipped and counted
    (the default `data.empty_targets: skip`); the run itself succeeds."""
    from transformers import AutoTokenizer

    rows = make_pairs()[:160]
    blanks = ["", " ", "\t", "  \n ", "\u3000"]
    for i in range(0, 160, 8):  # 20 blank targets
        rows[i] = {**rows[i], "es": blanks[i % len(blanks)]}
    write_jsonl(toy_data_dir / "train.jsonl", rows)
    tiny_recipe["data"].update(max_source_tokens=4, test_split=None)
    tiny_recipe["schedule"]["xent_steps"] = 1
    tiny_recipe["eval"]["max_examples"] = 4
    path = write_recipe(tmp_path / "recipe.yaml", tiny_recipe)
    capsys.readouterr()
    rc = main(["finetune", str(path)])
    out, err = capsys.readouterr()
    assert rc == 0, err
    line = next((x for x in out.splitlines() if x.startswith("data[train]:")), None)
    assert line is not None, out
    m = re.fullmatch(r"data\[train\]: (\d+) examples used of (\d+); (\d+) empty targets and 0 missing sources skipped; "
                     r"(\d+) sources and (\d+) targets cut to the length limit", line)
    assert m, line
    used, loaded, skipped, cut_sources, cut_targets = map(int, m.groups())
    assert (used, loaded, skipped) == (140, 160, 20)
    # exactly the kept sources longer than 4 tokens, counted with the run's own tokenizer
    tokenizer = AutoTokenizer.from_pretrained(Path(tiny_recipe["run"]["output_dir"]) / "tokenizer")
    kept = [r["en"] for r in rows if r["es"].strip()]
    expected = sum(len(ids) > 4 for ids in tokenizer(kept)["input_ids"])
    assert cut_sources == expected > 0
    assert cut_targets == 0  # max_target_tokens 32 holds every target
    assert re.search(r"data\[validation\]: 20 examples used of 20; 0 empty targets and 0 missing", out), out
