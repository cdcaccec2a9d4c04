"""Fitting the ecosystem: TRL's reward contract exactly (reward functions written to TRL's
documented signature run unchanged), rewards that fail at set-up rather than after the XENT stage,
sampled rows in samples.jsonl and TensorBoard, the Python API, the model card and `seqrl push`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import yaml
from conftest import TINY_CONFIGS, make_pairs, write_jsonl
from test_cli import assert_one_line_error

from seqrl.cli import main

# Reward functions as TRL's docs write them: dataset columns by name, **kwargs, any sequence back.
TRL_REWARDS = '''
import numpy as np
import torch

seen = {}


def accuracy(completions, solution, **kwargs):
    """TRL's docs: the reference column named as the dataset names it."""
    seen["accuracy"] = sorted(kwargs)
    return np.array([float(c.strip() == s.strip()) for c, s in zip(completions, solution)])


def length_shaped(completions, trainer_state, **kwargs):
    """Dynamic shaping on training progress, a tensor back, a logged metric and an extra column."""
    seen.setdefault("steps", []).append((trainer_state.global_step, trainer_state.stage, trainer_state.delta))
    kwargs["log_metric"]("mean_chars", sum(len(c) for c in completions) / len(completions))
    kwargs["log_extra"]("chars", [len(c) for c in completions])
    return torch.tensor([min(len(c), 20) / 20 for c in completions])


def by_topic(prompts, completions, topic, **kwargs):
    return tuple(0.5 if t == "animals" else 0.0 for t in topic)


async def async_reward(completions, **kwargs):
    return [0.1] * len(completions)


def needs_a_column(completions, difficulty):
    return [0.0] * len(completions)


def two_d(completions, **kwargs):
    return np.zeros((len(completions), 2))


def broken(completions, **kwargs):
    return [1.0] * (len(completions) - 1)
'''


@pytest.fixture
def trl_rewards(tmp_path, monkeypatch):
    (tmp_path / "trl_rewards.py").write_text(TRL_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "trl_rewards", raising=False)
    import trl_rewards

    return trl_rewards


def solution_data(directory: Path) -> Path:
    """The toy pairs with the target column named `solution`, as in TRL's examples."""
    pairs = make_pairs()
    rows = [{"prompt": p["en"], "solution": p["es"], "topic": p["topic"]} for p in pairs]
    directory.mkdir(parents=True)
    for split, part in (("train", rows[:160]), ("validation", rows[160:180]), ("test", rows[180:])):
        write_jsonl(directory / f"{split}.jsonl", part)
    return directory


def mixer_recipe(data: Path, out: Path, rewards: list[dict], **extra) -> dict:
    recipe = {
        "model": {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"])},
        "tokenizer": {"vocab_size": 120},
        "data": {"path": str(data), "source_field": "prompt", "target_field": "solution",
                 "max_source_tokens": 16, "max_target_tokens": 8},
        "schedule": {"kind": "mixer", "xent_steps": 2, "stage_steps": 2, "delta": 4},
        "reinforce": {"candidates": {"num_samples": 2}, "batch_size": 4},
        "xent": {"batch_size": 8},
        "rewards": rewards,
        "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 4},
        "run": {"output_dir": str(out)},
        "log": {"every": 1, "progress_bar": False, "samples_every": 1, "samples": 3},
    }
    recipe.update(extra)
    return recipe


def run(recipe: dict, tmp_path: Path, *args: str) -> int:
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return main(["finetune", str(path), *args])


def test_trl_style_rewards_run_unchanged(trl_rewards, tmp_path):
    recipe = mixer_recipe(solution_data(tmp_path / "data"), tmp_path / "run",
                          [{"name": "trl_rewards:accuracy"}, {"name": "trl_rewards:length_shaped", "weight": 0.5},
                           {"name": "trl_rewards:by_topic", "weight": 0.2}, {"name": "trl_rewards:async_reward"}])
    assert run(recipe, tmp_path) == 0
    # every dataset column by its own name (`solution` was a named parameter), and TRL's extras
    assert {"prompt", "topic", "prompts", "references", "completion_ids", "trainer_state", "log_metric",
            "log_extra"} <= set(trl_rewards.seen["accuracy"])
    steps = trl_rewards.seen["steps"]
    assert steps[0] == (0, 1, 0), "the set-up call (before training)"
    assert steps[1:] == [(2, 1, 4), (3, 1, 4), (4, 2, 8), (5, 2, 8)]
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("reward_metric/mean_chars" in m for m in metrics)
    assert any("reward/trl_rewards:async_reward" in m for m in metrics)
    samples = [json.loads(line) for line in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [s["step"] for s in samples] == [3, 3, 3, 4, 4, 4, 5, 5, 5, 6, 6, 6]  # after each MIXER step, 3 rows
    first = samples[0]
    assert set(first) >= {"step", "stage", "delta", "source", "reference", "sample", "reward", "advantage",
                          "reward/trl_rewards:accuracy", "chars"}
    assert first["chars"] == len(first["sample"])


@pytest.mark.parametrize("name,needle", [
    ("needs_a_column", "needs an argument 'difficulty', which is neither a dataset column (prompt, solution, topic)"),
    ("two_d", "returned a 2-D ndarray of shape (2, 2)"),
    ("broken", "returned 1 values for 2 completions"),
])
def test_a_broken_reward_fails_at_set_up_not_after_the_xent_stage(trl_rewards, tmp_path, capsys, name, needle):
    recipe = mixer_recipe(solution_data(tmp_path / "data"), tmp_path / "run", [{"name": f"trl_rewards:{name}"}])
    recipe["schedule"]["xent_steps"] = 10_000  # would take long before the first sequence-level step
    capsys.readouterr()
    rc = run(recipe, tmp_path)
    assert_one_line_error(rc, capsys.readouterr().err, f"trl_rewards:{name}", needle)
    assert not (tmp_path / "run" / "metrics.jsonl").exists(), "stopped before training"


def test_validate_calls_the_rewards_too(trl_rewards, tmp_path, capsys):
    recipe = mixer_recipe(solution_data(tmp_path / "data"), tmp_path / "run", [{"name": "trl_rewards:broken"}])
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert_one_line_error(main(["validate", str(path)]), capsys.readouterr().err, "trl_rewards:broken",
                          command="validate")


def test_samples_reach_tensorboard(toy_data_dir, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = mixer_recipe(toy_data_dir, tmp_path / "run", [{"name": "bleu"}])
    recipe["data"].update(source_field="en", target_field="es")
    recipe["log"].update(trackers=["tensorboard"], project="tb")
    assert run(recipe, tmp_path) == 0
    assert f"tracker tensorboard: {tmp_path / 'run' / 'tb'}/" in capsys.readouterr().out  # the header says where
    events = list((tmp_path / "run" / "tb").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent), size_guidance={"tensors": 0}).Reload()
    assert "samples/text_summary" in acc.Tags()["tensors"]
    texts = [e.tensor_proto.string_val[0].decode() for e in acc.Tensors("samples/text_summary")]
    assert len(texts) == 4 and "| step | stage | delta | source | reference | sample |" in texts[0]
    assert "train/loss" in acc.Tags()["scalars"]


def test_python_api(toy_data_dir, tmp_path):
    """As a user calls it: a recipe dict, dotted overrides, a Python callable for a reward."""
    import seqrl

    calls = []

    def my_reward(completions, references, **kwargs):
        calls.append(len(completions))
        return [float(len(set(c.split()) & set(r.split()))) / 5 for c, r in zip(completions, references, strict=True)]

    recipe = mixer_recipe(toy_data_dir, tmp_path / "unused", [{"name": "my_reward"}])
    recipe["data"].update(source_field="en", target_field="es")
    result = seqrl.finetune(recipe, overrides={"run.output_dir": str(tmp_path / "api"), "eval.best_metric": "bleu"},
                            reward_functions={"my_reward": my_reward})
    assert isinstance(result, seqrl.FinetuneResult)
    assert result.output_dir == tmp_path / "api" and result.final == tmp_path / "api" / "final"
    assert result.best == tmp_path / "api" / "best"
    assert {"eval/bleu", "test/bleu", "test/chrf"} <= set(result.metrics)
    assert calls[0] == 2 and sum(calls[1:]) == 4 * 4 * 2  # set-up probe, then 4 steps x 4 sources x 2 samples
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    assert seqrl.load_recipe(tmp_path / "recipe.yaml", ["optim.lr=0.002"]).optim.lr == 0.002


def test_model_card(toy_data_dir, tmp_path):
    recipe = mixer_recipe(toy_data_dir, tmp_path / "run", [{"name": "bleu"}])
    recipe["data"].update(source_field="en", target_field="es")
    assert run(recipe, tmp_path, "--set", "optim.lr=0.001") == 0
    card = (tmp_path / "run" / "final" / "README.md").read_text()
    head, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    metadata = yaml.safe_load(head)
    assert metadata["library_name"] == "transformers" and metadata["pipeline_tag"] == "text2text-generation"
    assert {"seqrl", "mixer"} <= set(metadata["tags"]) and "base_model" not in metadata  # built from a config
    assert "| test/bleu |" in body and "bleu (weight 1)" in body
    assert f"seqrl finetune {tmp_path / 'recipe.yaml'} --set optim.lr=0.001" in body
    saved = yaml.safe_load((tmp_path / "run" / "final" / "training_recipe.yaml").read_text())
    assert saved["optim"]["lr"] == 0.001


def test_push_errors_are_one_line(toy_data_dir, tmp_path, capsys, monkeypatch):
    capsys.readouterr()
    assert_one_line_error(main(["push", str(tmp_path), "me/model"]), capsys.readouterr().err, "holds no model",
                          command="push")
    run_dir = tmp_path / "run"
    (run_dir / "final").mkdir(parents=True)
    (run_dir / "final" / "config.json").write_text("{}")
    assert_one_line_error(main(["push", str(run_dir), "not a repo!"]), capsys.readouterr().err,
                          "is not a hub repository id", command="push")
    assert_one_line_error(main(["push", str(run_dir), "model"]), capsys.readouterr().err, "name the owner too",
                          command="push")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert_one_line_error(main(["push", str(run_dir), "me/model"]), capsys.readouterr().err, "HF_HUB_OFFLINE=1",
                          command="push")


def test_push_uploads_final_through_huggingface_hub(tmp_path, monkeypatch, capsys):
    """The upload's calls, on a stand-in for HfApi (the hub itself is not reachable here)."""
    import huggingface_hub

    calls = []

    class FakeApi:
        def create_repo(self, repo_id, exist_ok, private):
            calls.append(("create", repo_id, exist_ok, private))
            return f"https://huggingface.co/{repo_id}"

        def upload_folder(self, folder_path, repo_id, commit_message):
            calls.append(("upload", folder_path, repo_id))

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    (tmp_path / "run" / "final").mkdir(parents=True)
    (tmp_path / "run" / "final" / "config.json").write_text("{}")
    assert main(["push", str(tmp_path / "run"), "me/model", "--private"]) == 0
    assert calls == [("create", "me/model", True, True), ("upload", str(tmp_path / "run" / "final"), "me/model")]
    assert "https://huggingface.co/me/model" in capsys.readouterr().out
