"""The Python API refuses a reward callable that the recipe never calls (issue 35, item 5)."""

import pytest

import seqrl
from seqrl.errors import ConfigError


def _recipe(tmp_path):
    return {"model": {"architecture": "bart", "config": {"d_model": 16}}, "data": {"path": str(tmp_path)},
            "schedule": {"kind": "xent", "xent_steps": 2}, "run": {"output_dir": str(tmp_path / "run")}}


def test_reward_function_the_recipe_does_not_name_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        seqrl.finetune(_recipe(tmp_path), reward_functions={"my_reward": lambda completions, **kw: [0.0]})
    message = str(err.value)
    assert "\n" not in message
    assert "reward_functions['my_reward'] is not named by the recipe's rewards (bleu)" in message
    assert "{'name': 'bleu'}, {'name': 'my_reward', 'weight': 0.5}" in message
    assert not (tmp_path / "run").exists()  # refused before anything ran


def test_reward_function_named_through_overrides_passes_the_check(tmp_path):
    from seqrl.api import _recipe as resolve
    from seqrl.api import check_reward_functions

    cfg = resolve(_recipe(tmp_path), {"rewards": [{"name": "bleu"}, {"name": "my_reward", "weight": 0.5}]})
    check_reward_functions(cfg, {"my_reward": lambda completions, **kw: [0.0]})  # no error
    assert [(r.name, r.weight) for r in cfg.rewards] == [("bleu", 1.0), ("my_reward", 0.5)]
