"""The command line's smaller features (issue 35, item 9): --version, `seqrl rewards`,
`seqrl recipe --defaults`, --debug anywhere, --unset, progress bars only on a terminal, help."""

import dataclasses
import typing

import pytest
from test_cli import assert_one_line_error, write_recipe

from seqrl import __version__
from seqrl.cli import build_parser, main
from seqrl.config import RecipeConfig, load_recipe
from seqrl.errors import ConfigError
from seqrl.settings import first_sentence


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out == f"seqrl {__version__}\n"


def test_rewards_lists_every_builtin_with_its_options(cli):
    from seqrl.rewards import BUILTINS
    from seqrl.rewards.model_based import MODEL_REWARDS

    rc, out, err = cli("rewards")
    lines = out.splitlines()
    assert rc == 0 and [line.split(" ")[0] for line in lines[:-1]] == [*BUILTINS, *MODEL_REWARDS]
    assert ("bleu (text): sacrebleu sentence BLEU / 100. options: smooth_method: exp, smooth_value: null, "
            "tokenize: 13a") in lines
    assert ("token_rouge_n (token ids): rouge-score ROUGE-N F-measure of the ids (n = 2: ROUGE-2). "
            "options: n: 2") in lines
    assert any(line.startswith("bertscore (a model, built once): ") and "model: (required)" in line for line in lines)


def _leaf_fields(cls, prefix=""):
    """Every dotted setting of the schema, walked independently of seqrl.settings."""
    names = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        inner = [a for a in (hint, *typing.get_args(hint)) if dataclasses.is_dataclass(a)]
        if inner:
            names += _leaf_fields(inner[0], f"{prefix}{f.name}{'[]' if typing.get_origin(hint) is list else ''}.")
        else:
            names.append(prefix + f.name)
    return names


def test_recipe_defaults_lists_every_setting(cli):
    rc, out, err = cli("recipe", "--defaults")
    names = [line.split(": ", 1)[0] for line in out.splitlines()]
    assert rc == 0 and set(_leaf_fields(RecipeConfig)) <= set(names)
    lines = out.splitlines()
    assert "optim.lr: 0.0005  # Peak learning rate of AdamW." in lines
    assert "eval.metrics: [bleu, chrf, rougeL]  # Corpus metrics reported as `eval/<name>` (sacrebleu BLEU " \
           "and chrF, rouge-score ROUGE F)." in lines
    assert ("rewards: [{init_kwargs: null, kwargs: {}, name: bleu, weight: 1.0}]  # Sequence-level rewards, "
            "summed with their weights.") in lines
    assert "model.lora.rank: 16  # Rank r of each adapter (B A, with A r x in and B out x r)." in lines
    rc, out, _ = cli("recipe", "--defaults", "run.resume")
    assert rc == 0 and out.startswith("run.resume: null  # Continue from a checkpoint directory, or `auto`")
    assert_one_line_error(*cli("recipe", "--defaults", "evl")[::2], "no setting or section 'evl'", command="recipe")


def test_first_sentence_keeps_abbreviations():
    assert first_sentence("Text put (e.g. T5's `x`) before. Then more.") == "Text put (e.g. T5's `x`) before."
    assert first_sentence("One line\n    wrapped") == "One line wrapped."


def test_debug_accepted_after_the_subcommand(tiny_recipe, tmp_path, cli):
    tiny_recipe["optim"]["lrr"] = 1e-3
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    assert_one_line_error(*cli("validate", path)[::2], "did you mean 'optim.lr'", command="validate")
    for argv in (["--debug", "validate", str(path)], ["validate", str(path), "--debug"],
                 ["validate", "--debug", str(path)]):
        with pytest.raises(ConfigError, match="did you mean 'optim.lr'"):
            main(argv)


def test_unset_removes_a_key_so_the_default_applies(tiny_recipe, tmp_path, cli):
    tiny_recipe["schedule"] = {"kind": "mixer", "xent_steps": 2, "stage_steps": 3}
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    with pytest.raises(ConfigError, match="stage_steps"):  # the leftover of the mixer block
        load_recipe(path, ["schedule.kind=xent"])
    cfg = load_recipe(path, ["schedule.kind=xent"], ["schedule.stage_steps"])
    assert cfg.schedule.kind == "xent" and cfg.schedule.stage_steps is None and cfg.schedule.xent_steps == 2
    cfg = load_recipe(path, ["schedule.xent_steps=4", "schedule.kind=xent"], ["schedule"])  # a whole section
    assert cfg.schedule.stage_steps is None and cfg.schedule.delta == 2
    assert_one_line_error(*cli("validate", path, "--unset", "schedule.stage_step")[::2],
                          "--unset schedule.stage_step: the recipe has no 'schedule.stage_step' to remove",
                          command="validate")


def test_unset_is_repeated_by_a_relaunch(tiny_recipe, tmp_path):
    from seqrl.launch import launch_command

    args = build_parser().parse_args(["finetune", "r.yaml", "--unset", "a.b", "--set", "c=1", "--num-processes", "2"])
    assert launch_command(args)[-6:] == ["finetune", "r.yaml", "--unset", "a.b", "--set", "c=1"]


def test_progress_bars_stay_out_of_a_redirected_log(tiny_recipe, tmp_path, cli):
    tiny_recipe["log"]["progress_bar"] = True  # asked for, but stderr here is not a terminal
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert rc == 0, err
    assert "\r" not in err and "train:" not in err and "decode:" not in err


def test_help_says_values_are_yaml_and_how_to_resume(capsys):
    with pytest.raises(SystemExit):
        main(["finetune", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "VALUE is YAML" in text and "--set run.resume=auto" in text and "--unset KEY" in text
