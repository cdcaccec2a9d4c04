"""How much of the test split is decoded (issue 35, item 7): `eval.test_max_examples` caps both
test decodes, `eval.test_after_xent: false` skips the one after the XENT stage."""

from pathlib import Path

import pytest
from test_cli import MIXER_SETS, assert_one_line_error, read_jsonl, write_recipe


@pytest.mark.parametrize("after_xent", [True, False])
def test_test_max_examples_caps_both_test_decodes(mixer_recipe, tmp_path, cli, after_xent):
    path = write_recipe(tmp_path / "r.yaml", mixer_recipe)
    rc, out, err = cli("finetune", path, *MIXER_SETS, "--set", "run.max_steps=3",
                       "--set", "eval.test_max_examples=5", "--set", f"eval.test_after_xent={str(after_xent).lower()}")
    assert rc == 0, err
    run = Path(mixer_recipe["run"]["output_dir"])
    assert len(read_jsonl(run / "predictions-test.jsonl")) == 5  # of the toy data's 20
    xent = run / "predictions-test-xent.jsonl"
    assert (len(read_jsonl(xent)) == 5) if after_xent else not xent.exists()
    assert len(read_jsonl(run / "predictions-validation.jsonl")) == 20  # validation is eval.max_examples's


def test_test_max_examples_must_be_positive(mixer_recipe, tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", mixer_recipe)
    assert_one_line_error(*cli("validate", path, "--set", "eval.test_max_examples=0")[::2],
                          "eval.test_max_examples", command="validate")


def test_a_run_without_xent_stage_scores_its_start_on_test(mixer_recipe, tmp_path, cli):
    """`schedule.xent_steps: 0` (a start model trained elsewhere, as the quickstart's): the test
    split is decoded before the first step and at the end, both logged, as after an XENT stage."""
    path = write_recipe(tmp_path / "r.yaml", mixer_recipe)
    rc, out, err = cli("finetune", path, *MIXER_SETS, "--set", "schedule.xent_steps=0", "--set", "run.max_steps=2",
                       "--set", "eval.test_max_examples=5")
    assert rc == 0, err
    run = Path(mixer_recipe["run"]["output_dir"])
    assert len(read_jsonl(run / "predictions-test-xent.jsonl")) == 5
    test_rows = [r for r in read_jsonl(run / "metrics.jsonl") if "test/bleu" in r]
    assert [r["step"] for r in test_rows] == [0, 2]
    assert "step 0 test: bleu" in out and "step 2 test: bleu" in out
