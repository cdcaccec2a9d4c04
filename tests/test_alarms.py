"""Alarms at evaluations (issue 35, items 2 and 8): degenerate outputs, and a training reward that
rises while a watched metric falls (`eval.watch`)."""

import json

import pytest
from test_cli import assert_one_line_error, write_recipe

from seqrl.alarms import degenerate, diverging, output_shares, reward_means


def test_output_shares_by_hand():
    assert output_shares(["", "a", "a ", " "]) == (0.5, 0.5)  # two empty, and "a" twice
    assert output_shares(["x", "y", "z", "x"]) == (0.0, 0.5)
    assert output_shares([]) == (0.0, 0.0)


def test_degenerate_fires_at_the_threshold():
    metrics, messages = degenerate("eval", ["", "", "", "a"], 0.5)
    assert metrics == {"outputs/eval_empty_share": 0.75, "outputs/eval_top_share": 0.75, "alarm/degenerate_eval": 1.0}
    assert messages == ["75% of the eval outputs are empty (eval.degenerate_share 0.5)"]
    _, messages = degenerate("test", ["same", "same", "other", "same"], 0.5)
    assert messages == ["75% of the test outputs are one and the same output (eval.degenerate_share 0.5)"]
    assert degenerate("eval", ["a", "b", "c", "a"], 0.6)[1] == []
    assert degenerate("eval", [""] * 4, 1.0)[1] == []  # 1 = never


def lines(rewards_between, chrf):
    """metrics.jsonl lines: the training rewards logged between evaluations, then each evaluation."""
    out, step = [], 0
    for rewards, score in zip(rewards_between, chrf, strict=True):
        for r in rewards:
            step += 1
            out.append({"step": step, "reward/total": r})
        out.append({"step": step, "eval/chrf": score, "eval/bleu": 10.0})
    return out


def test_reward_means_between_evaluations():
    got = reward_means(lines([[], [0.1, 0.3], [0.5]], [1, 2, 3]), [0, 2, 3])
    assert got == [None, pytest.approx(0.2), 0.5]


def test_diverging_fires_when_reward_rises_and_the_watched_metric_falls():
    hacked = lines([[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]], [40.0, 38.0, 35.0])
    alarms, messages = diverging(hacked, ["chrf", "bleu"], 3)
    assert alarms == {"alarm/diverging_chrf": 1.0}  # bleu stayed at 10: not falling
    assert messages == ["eval/chrf fell 40.00 -> 35.00 over 3 evaluations while the training reward rose "
                        "0.150 -> 0.550: is the reward being gamed?"]


@pytest.mark.parametrize("rewards,chrf", [
    ([[0.1], [0.3], [0.5]], [40.0, 41.0, 42.0]),   # both rise: learning
    ([[0.1], [0.3], [0.2]], [40.0, 38.0, 35.0]),   # the reward did not rise every time
    ([[0.1], [0.3], [0.5]], [40.0, 38.0, 39.0]),   # the metric did not fall every time
    ([[], [0.3], [0.5]], [40.0, 38.0, 35.0]),      # the first interval was XENT only
    ([[0.3], [0.5]], [40.0, 38.0]),                # fewer evaluations than the window
])
def test_diverging_stays_silent(rewards, chrf):
    assert diverging(lines(rewards, chrf), ["chrf"], 3) == ({}, [])


HACKABLE = '''
def longer(completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]
'''


def test_degenerate_alarm_in_a_run_reaches_metrics_and_the_card(tiny_recipe, tmp_path, cli, monkeypatch):
    """A tiny model after 4 steps decodes (nearly) one output for every source: the alarm fires."""
    tiny_recipe["eval"]["degenerate_share"] = 0.3
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert rc == 0, err
    run = tmp_path / "run"
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    alarms = [m for m in metrics if "alarm/message" in m]
    assert alarms and any("alarm/degenerate_eval" in m for m in alarms)
    assert all(any(k.startswith("outputs/") and k.endswith("_empty_share") for k in m) for m in alarms)
    assert f"step 4 warning: {alarms[0]['alarm/message'].split('; ')[0]}" in out
    card = (run / "final" / "README.md").read_text()
    assert "## Alarms raised during training" in card and "of the eval outputs are" in card


def test_watch_needs_a_computed_metric_and_a_reward(tiny_recipe, tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    assert_one_line_error(*cli("validate", path, "--set", "eval.watch=[rouge2]")[::2],
                          "eval.watch 'rouge2' is not computed", command="validate")
    assert_one_line_error(*cli("validate", path, "--set", "eval.watch=[chrf]")[::2],
                          "eval.watch needs a sequence-level schedule", command="validate")
