"""`eval.best_metric` keeps `best/`, `eval.patience` stops on a plateau, `run.max_minutes` stops on
time, `eval.at_start` makes the starting model a candidate, and a stopped run leaves a checkpoint
to continue from: the pieces a benchmark needs to train "until the validation metric plateaus"
and to give arms equal wall-clock budgets."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from transformers import AutoModelForSeq2SeqLM

from seqrl.cli import main
from seqrl.config import from_dict
from seqrl.errors import ConfigError


def _run(recipe: dict, tmp_path: Path) -> list[dict]:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["finetune", str(path)]) == 0
    return [json.loads(line) for line in (Path(recipe["run"]["output_dir"]) / "metrics.jsonl").open()]


def test_best_model_follows_the_best_validation_score(tiny_recipe, tmp_path):
    tiny_recipe["schedule"]["xent_steps"] = 6
    tiny_recipe["eval"].update(every=2, best_metric="chrf", max_examples=20)
    tiny_recipe["optim"]["lr"] = 3e-3
    lines = _run(tiny_recipe, tmp_path)
    scores = [(line["step"], line["eval/chrf"]) for line in lines if "eval/chrf" in line]
    assert [s for s, _ in scores] == [2, 4, 6]  # two periodic evaluations and the final one
    best_step, best_value = max(scores, key=lambda item: (item[1], -item[0]))  # first of equal bests
    best = Path(tiny_recipe["run"]["output_dir"]) / "best"
    info = json.loads((best / "best.json").read_text())
    assert info == {"step": best_step, "chrf": pytest.approx(best_value)}
    AutoModelForSeq2SeqLM.from_pretrained(best)  # a plain transformers directory, like final/
    assert not list(best.parent.glob(".tmp-*")) and not list(best.parent.glob(".old-*"))


def test_patience_stops_when_the_metric_stops_improving(tiny_recipe, tmp_path):
    # lr 0: the model never changes, so no evaluation after the first is better
    tiny_recipe["schedule"]["xent_steps"] = 100
    tiny_recipe["optim"]["lr"] = 1e-12
    tiny_recipe["eval"].update(every=2, best_metric="chrf", patience=2, max_examples=10)
    lines = _run(tiny_recipe, tmp_path)
    stop = [line for line in lines if "early_stop" in line]
    assert len(stop) == 1 and stop[0]["step"] == 6  # best at 2, then 4 and 6 are no better
    assert [line["step"] for line in lines if "eval/chrf" in line] == [2, 4, 6]  # step 6 is not scored twice
    assert (Path(tiny_recipe["run"]["output_dir"]) / "predictions-validation.jsonl").is_file()
    assert max(line["step"] for line in lines) == 6
    assert (Path(tiny_recipe["run"]["output_dir"]) / "final").is_dir()


def test_max_minutes_stops_training_and_still_finishes(tiny_recipe, tmp_path):
    tiny_recipe["schedule"]["xent_steps"] = 10_000
    tiny_recipe["run"]["max_minutes"] = 0.0001  # 6 ms: the first step is over it
    lines = _run(tiny_recipe, tmp_path)
    assert [line["step"] for line in lines if "early_stop" in line] == [1]
    assert any("eval/bleu" in line and line["step"] == 1 for line in lines)  # final evaluation ran
    assert (Path(tiny_recipe["run"]["output_dir"]) / "final").is_dir()


def test_at_start_makes_the_starting_model_the_best_unless_beaten(tiny_recipe, tmp_path):
    tiny_recipe["schedule"]["xent_steps"] = 4
    tiny_recipe["optim"]["lr"] = 1e-12  # nothing later can beat the start
    tiny_recipe["eval"].update(every=2, best_metric="chrf", max_examples=10, at_start=True)
    lines = _run(tiny_recipe, tmp_path)
    assert [line["step"] for line in lines if "eval/chrf" in line] == [0, 2, 4]
    info = json.loads((Path(tiny_recipe["run"]["output_dir"]) / "best" / "best.json").read_text())
    assert info["step"] == 0


def test_a_stopped_run_leaves_a_checkpoint_that_continues_it(tiny_recipe, tmp_path):
    tiny_recipe["schedule"]["xent_steps"] = 10_000
    tiny_recipe["run"].update(max_minutes=0.0001, save_every=1_000_000)  # stops after step 1
    _run(tiny_recipe, tmp_path)
    out = Path(tiny_recipe["run"]["output_dir"])
    [checkpoint] = (out / "checkpoints").iterdir()
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["step"] == 1 and state["seconds"] > 0
    tiny_recipe["run"].update(max_minutes=None, max_steps=3, resume="auto")  # a bigger budget continues it
    lines = _run(tiny_recipe, tmp_path)
    assert [line["step"] for line in lines if "train/loss" in line] == [1, 2, 3]  # step 1 is not redone
    steps = sorted(json.loads((c / "trainer_state.json").read_text())["step"] for c in (out / "checkpoints").iterdir())
    assert steps == [1, 3]  # the continued run's last step leaves one too


def test_a_run_that_reaches_its_last_step_leaves_a_checkpoint(tiny_recipe, tmp_path):
    tiny_recipe["schedule"]["xent_steps"] = 10_000
    tiny_recipe["run"].update(max_steps=2, save_every=1_000_000)
    _run(tiny_recipe, tmp_path)
    [checkpoint] = (Path(tiny_recipe["run"]["output_dir"]) / "checkpoints").iterdir()
    assert json.loads((checkpoint / "trainer_state.json").read_text())["step"] == 2


@pytest.mark.parametrize("window, chosen", [(1, [(1, 10.0), (2, 30.0)]),
                                           (3, [(1, 10.0), (2, 20.0), (4, 62 / 3), (6, 21.0)])])
def test_select_window_chooses_on_the_mean_of_the_last_evaluations(window, chosen, tmp_path, monkeypatch):
    from types import SimpleNamespace

    from tqdm import tqdm

    from seqrl import train
    saved = []
    monkeypatch.setattr(train, "gathered_weights", lambda accelerator, model: None)
    monkeypatch.setattr(train, "save_model_atomically",
                        lambda text_model, model, path, info, state_dict: saved.append(info))
    acc = SimpleNamespace(num_processes=1, is_main_process=True, wait_for_everyone=lambda: None,
                          unwrap_model=lambda model: model)
    cfg = SimpleNamespace(eval=SimpleNamespace(best_metric="bleu", patience=0, select_window=window))
    run = SimpleNamespace(cfg=cfg, accelerator=acc, out=tmp_path, model=None, text_model=None)
    loop = train._Loop(tqdm(disable=True))
    for step, value in enumerate([10.0, 30.0, 12.0, 20.0, 21.0, 22.0], start=1):
        loop.step = step
        train.track_best(run, loop, {"eval/bleu": value})
    # window 3: means 10, 20, 17.3, 20.7, 17.7, 21: the newest model of each better window is kept
    assert [(info["step"], info.get(f"bleu_mean_of_{min(window, info['step'])}", info["bleu"])) for info in saved] \
        == [(s, pytest.approx(v)) for s, v in chosen]
    assert loop.evals_since_best == (0 if window == 3 else 4)
    assert loop.state()["recent"] == [12.0, 20.0, 21.0, 22.0][-window:]  # (a checkpoint carries them on)


@pytest.mark.parametrize("change, message", [
    ({"eval": {"best_metric": "rouge2"}}, "eval.best_metric 'rouge2' is not computed; add it to eval.metrics"),
    ({"eval": {"patience": 3}}, "eval.patience needs eval.best_metric and eval.every > 0"),
    ({"eval": {"patience": 3, "best_metric": "bleu", "every": 0}}, "eval.patience needs eval.best_metric"),
    ({"run": {"max_minutes": 0}}, "run.max_minutes"),
    ({"eval": {"select_window": 3}}, "eval.select_window needs eval.best_metric"),
    ({"eval": {"select_window": 0, "best_metric": "bleu"}}, "eval.select_window"),
])
def test_bad_early_stop_settings_are_errors(tiny_recipe, change, message):
    for section, values in change.items():
        tiny_recipe[section].update(values)
    with pytest.raises(ConfigError, match=message):
        from_dict(tiny_recipe)
