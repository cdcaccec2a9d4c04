"""Alarms at evaluations (issue 35, items 2 and 8): degenerate outputs, and a training reward that
rises while a watched metric falls (`eval.watch`)."""

import json

import pytest
from conftest import make_tiny_recipe
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

START_MODEL = {"architecture": "mbart", "config": {
    "d_model": 64, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 4, "decoder_attention_heads": 4,
    "encoder_ffn_dim": 128, "decoder_ffn_dim": 128, "max_position_embeddings": 64, "dropout": 0.0}}


@pytest.fixture(scope="module")
def translating_model(tmp_path_factory):
    """A tiny mBART after 200 XENT steps on the toy pairs (validation chrF ~25): the XENT stage the
    two runs below share, so that each is its sequence-level stage only."""
    from conftest import make_tiny_recipe, write_toy_splits

    from seqrl.cli import main

    tmp = tmp_path_factory.mktemp("start")
    recipe = make_tiny_recipe(write_toy_splits(tmp / "data"), tmp / "run")
    recipe["model"] = START_MODEL
    recipe["data"].update(max_target_tokens=40, test_split=None)
    recipe["schedule"] = {"kind": "xent", "xent_steps": 200}
    recipe["optim"] = {"lr": 3e-3, "warmup_steps": 10}
    recipe["eval"].update(max_new_tokens=40)
    recipe["log"]["every"] = 50
    assert main(["finetune", str(write_recipe(tmp / "r.yaml", recipe))]) == 0
    return tmp / "run" / "final", tmp / "data"


@pytest.mark.slow  # the shared XENT stage is 200 steps (~1 min on a free core); the small versions: above
@pytest.mark.parametrize("reward", ["hackable_length:longer", "bleu"])
def test_divergence_alarm_fires_on_a_hacked_reward_and_not_on_bleu(translating_model, tmp_path, cli, monkeypatch,
                                                                    reward):
    """The same short sequence-level stage (9 steps, half XENT as in the quickstart's MIXER,
    validation every 3 steps, chrF watched over the default 3 evaluations) from the same model:
    paid for output length, the samples grow (reward 10.8 -> 22.8 -> 34.9 tokens between the
    evaluations) and validation chrF falls at each one (28.9 -> 24.0 -> 22.2): the alarm fires at
    step 9. Paid in sentence BLEU, as the quickstart is, the reward and chrF move within noise
    (chrF 23.7 -> 24.6 -> 25.0): no alarm. (Measured: at a rate of 2e-3, or with a cap of 16
    output tokens, the sampled length reaches the cap within two evaluations and stops rising, so
    the alarm's three rises in a row do not happen; slower hacking, as here, is what it catches.)"""
    (tmp_path / "hackable_length.py").write_text(HACKABLE)
    monkeypatch.syspath_prepend(str(tmp_path))
    start, data_dir = translating_model
    recipe = make_tiny_recipe(data_dir, tmp_path / "run")
    recipe.pop("tokenizer")
    recipe["model"] = {"name_or_path": str(start)}
    recipe["data"].update(max_target_tokens=40, test_split=None)
    recipe["schedule"] = {"kind": "constant", "xent_steps": 0, "rl_steps": 9, "xent_weight": 0.5}
    recipe["reinforce"] = {"candidates": {"num_samples": 4}, "batch_size": 8, "baseline": {"kind": "loo"}}
    recipe["rewards"] = [{"name": reward}]
    recipe["optim"] = {"lr": 1.5e-3, "warmup_steps": 1}
    recipe["eval"].update(every=3, metrics=["bleu", "chrf"], watch=["chrf"], max_examples=20, max_new_tokens=40)
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", recipe))
    assert rc == 0, err
    metrics = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    alarms = [m for m in metrics if "alarm/diverging_chrf" in m]
    chrf = [m["eval/chrf"] for m in metrics if "eval/chrf" in m]
    if reward == "bleu":
        assert not alarms and "is the reward being gamed" not in out
        return
    assert len(chrf) == 3 and chrf[0] > chrf[1] > chrf[2], chrf
    assert [m["step"] for m in alarms] == [9]
    assert f"step 9 warning: {alarms[0]['alarm/message']}" in out
    assert alarms[0]["alarm/message"].startswith(f"eval/chrf fell {chrf[0]:.2f} -> {chrf[2]:.2f} over 3 evaluations")
    assert "## Alarms raised during training" in (tmp_path / "run" / "final" / "README.md").read_text()


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
