"""Reward factories named by a recipe with their construction arguments (issue 35, item 4):
`init_kwargs` builds TRL-style `get_*` rewards from YAML, unchanged."""

import sys

import pytest
from test_cli import write_recipe

from seqrl.config import RewardConfig
from seqrl.rewards import RewardError, build, score

# Two factories of the shape of TRL's (trl/rewards/other_rewards.py): a function of the
# construction arguments returning a callable object whose __call__ takes completion_ids, **kwargs.
FACTORIES = '''
class _Overlong:
    def __init__(self, max_completion_len, soft_punish_cache):
        self.max_completion_len, self.soft_punish_cache = max_completion_len, soft_punish_cache

    def __call__(self, completion_ids, **kwargs):
        start = self.max_completion_len - self.soft_punish_cache
        return [0.0 if len(ids) <= start else (start - len(ids)) / self.soft_punish_cache
                if len(ids) <= self.max_completion_len else -1.0 for ids in completion_ids]


def get_soft_overlong_punishment(max_completion_len: int, soft_punish_cache: int):
    return _Overlong(max_completion_len, soft_punish_cache)


def get_repetition_penalty_reward(ngram_size: int = 3, max_penalty: float = -1.0):
    if max_penalty > 0:
        raise ValueError(f"max_penalty {max_penalty} should not be positive")

    def repetition_penalty_reward(completion_ids, **kwargs):
        out = []
        for ids in completion_ids:
            grams = list(zip(*[ids[i:] for i in range(ngram_size)]))
            out.append((1 - len(set(grams)) / len(grams)) * max_penalty if len(ids) >= ngram_size else 0.0)
        return out
    return repetition_penalty_reward


def not_a_factory(max_len):
    return 0.5
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "my_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_factories"
    sys.modules.pop("my_factories", None)


def test_factories_build_and_score_by_hand(factories):
    rewards = build([
        RewardConfig(name=f"{factories}:get_soft_overlong_punishment",
                     init_kwargs={"max_completion_len": 10, "soft_punish_cache": 4}),
        RewardConfig(name=f"{factories}:get_repetition_penalty_reward", weight=0.5,
                     init_kwargs={"ngram_size": 2, "max_penalty": -1.0})])
    ids = [[1, 2, 3], [1] * 8, [5] * 12]
    total, parts = score(rewards, completion_ids=ids)
    # overlong: 3 <= 6 -> 0; 8 in (6, 10] -> (6 - 8) / 4 = -0.5; 12 > 10 -> -1
    assert parts[f"{factories}:get_soft_overlong_punishment"] == [0.0, -0.5, -1.0]
    # bigrams: (1,2),(2,3) all distinct -> 0; 7 bigrams, 1 distinct -> (1 - 1/7) * -1; 11 bigrams, 1 distinct
    assert parts[f"{factories}:get_repetition_penalty_reward"] == pytest.approx([0.0, -6 / 7, -10 / 11])
    assert total == pytest.approx([0.0, -0.5 - 0.5 * 6 / 7, -1.0 - 0.5 * 10 / 11])


@pytest.mark.parametrize("entry,needle", [
    ({"init_kwargs": {"max_completion_len": 10}}, "init_kwargs: missing 'soft_punish_cache'"),
    ({"init_kwargs": {"max_completion_len": 10, "soft_punish_cach": 4}},
     "init_kwargs 'soft_punish_cach' is not a parameter of the function; did you mean 'soft_punish_cache'?"),
])
def test_factory_argument_errors(factories, entry, needle):
    with pytest.raises(RewardError, match=needle.replace("(", r"\(").replace("?", r"\?")):
        build([RewardConfig(name=f"{factories}:get_soft_overlong_punishment", **entry)])


def test_factory_failures_are_one_line(factories):
    with pytest.raises(RewardError, match="the factory raised ValueError: max_penalty 1.0 should not be positive"):
        build([RewardConfig(name=f"{factories}:get_repetition_penalty_reward", init_kwargs={"max_penalty": 1.0})])
    with pytest.raises(RewardError, match="it returned a float, not a reward function"):
        build([RewardConfig(name=f"{factories}:not_a_factory", init_kwargs={"max_len": 3})])
    with pytest.raises(RewardError, match="a factory that returns one takes its arguments as init_kwargs"):
        build([RewardConfig(name=f"{factories}:get_soft_overlong_punishment")])  # what the issue hit
    with pytest.raises(RewardError, match="init_kwargs is for a factory"):
        build([RewardConfig(name="bleu", init_kwargs={})])


def test_factories_run_from_yaml(factories, tiny_recipe, tmp_path, cli):
    tiny_recipe.update(schedule={"kind": "mixer", "xent_steps": 1, "stage_steps": 1, "delta": 4},
                       reinforce={"candidates": {"num_samples": 2}}, rewards=[
                           {"name": "bleu"},
                           {"name": f"{factories}:get_soft_overlong_punishment",
                            "init_kwargs": {"max_completion_len": 6, "soft_punish_cache": 2}},
                           {"name": f"{factories}:get_repetition_penalty_reward", "weight": 0.5,
                            "init_kwargs": {"ngram_size": 2}}])
    tiny_recipe["data"]["max_target_tokens"] = 8
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_recipe), "--set", "run.max_steps=2")
    assert rc == 0, err
    import json
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    step2 = next(m for m in lines if m["step"] == 2 and "reward/total" in m)
    assert f"reward/{factories}:get_soft_overlong_punishment" in step2
    assert f"reward/{factories}:get_repetition_penalty_reward" in step2


def test_trls_own_factories():
    trl_rewards = pytest.importorskip("trl.rewards")  # the bench extra
    del trl_rewards
    rewards = build([RewardConfig(name="trl.rewards:get_soft_overlong_punishment",
                                  init_kwargs={"max_completion_len": 10, "soft_punish_cache": 4}),
                     RewardConfig(name="trl.rewards:get_repetition_penalty_reward",
                                  init_kwargs={"ngram_size": 2, "max_penalty": -1.0})])
    _, parts = score(rewards, completion_ids=[[1, 2, 3], [1] * 8, [5] * 12])
    assert parts["trl.rewards:get_soft_overlong_punishment"] == [0.0, -0.5, -1.0]
    assert parts["trl.rewards:get_repetition_penalty_reward"] == pytest.approx([0.0, -6 / 7, -10 / 11])
