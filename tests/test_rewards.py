"""Sequence-level rewards: built-ins equal the reference implementations, the registry's
weighted sum, the user-function contract, and one-line errors for bad rewards."""

from __future__ import annotations

import math
import sys
import textwrap

import pytest
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF, TER

from seqrl.config import RewardConfig
from seqrl.errors import SeqrlError
from seqrl.rewards import RewardError, build, check_values, score
from seqrl.rewards.text import BUILTINS

HYPS = ["the cat sat on the mat", "a dog runs", "completely different words here", ""]
REFS = ["the cat sat on the mat", "the dog runs fast", "nothing in common", "an empty hypothesis"]


def one(name: str, **kwargs):
    (reward,) = build([RewardConfig(name=name, kwargs=kwargs)])
    return reward


# -- built-ins against the reference implementations -----------------------------------------------

def test_bleu_equals_sacrebleu_sentence_bleu():
    metric = BLEU(effective_order=True)  # sacrebleu's default `exp` smoothing
    expected = [metric.sentence_score(h, [r]).score / 100 for h, r in zip(HYPS, REFS, strict=True)]
    assert one("bleu")(completions=HYPS, references=REFS) == pytest.approx(expected)
    assert expected[0] == pytest.approx(1.0)  # identical sentence


def test_bleu_kwargs_reach_sacrebleu():
    metric = BLEU(effective_order=True, smooth_method="add-k", smooth_value=1)  # MIXER's +1 smoothing
    expected = [metric.sentence_score(h, [r]).score / 100 for h, r in zip(HYPS, REFS, strict=True)]
    got = one("bleu", smooth_method="add-k", smooth_value=1)(completions=HYPS, references=REFS)
    assert got == pytest.approx(expected)
    assert got[1] != pytest.approx(one("bleu")(completions=HYPS, references=REFS)[1])  # it changed


def test_chrf_equals_sacrebleu():
    metric = CHRF()
    expected = [metric.sentence_score(h, [r]).score / 100 for h, r in zip(HYPS, REFS, strict=True)]
    assert one("chrf")(completions=HYPS, references=REFS) == pytest.approx(expected)


def test_ter_is_one_minus_clipped_ter():
    metric = TER()
    raw = [metric.sentence_score(h, [r]).score / 100 for h, r in zip(HYPS, REFS, strict=True)]
    expected = [1 - min(t, 1.0) for t in raw]
    assert one("ter")(completions=HYPS, references=REFS) == pytest.approx(expected)
    # "a dog runs" vs "the dog runs fast": 1 substitution + 1 insertion over 4 words = 0.5
    assert raw[1] == pytest.approx(0.5) and expected[1] == pytest.approx(0.5)


def test_ter_clipped_at_zero_for_long_garbage():
    # 6 hypothesis words against a 1-word reference: TER = 6 / 1 = 600% -> reward 1 - 1 = 0
    assert TER().sentence_score("a b c d e f", ["x"]).score == pytest.approx(600.0)
    assert one("ter")(completions=["a b c d e f"], references=["x"]) == [0.0]


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_rouge_equals_rouge_score(kind):
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=True)
    expected = [scorer.score(r, h)[kind].fmeasure for h, r in zip(HYPS, REFS, strict=True)]
    assert one(kind)(completions=HYPS, references=REFS) == pytest.approx(expected)


def test_rouge1_by_hand():
    # "a dog runs" vs "the dog runs fast": 2 unigrams in common; P = 2/3, R = 2/4 -> F = 2PR/(P+R) = 4/7
    assert one("rouge1")(completions=["a dog runs"], references=["the dog runs fast"]) == [pytest.approx(4 / 7)]


def test_builtins_ignore_extra_columns():
    assert one("chrf")(completions=HYPS[:1], references=REFS[:1], prompts=["p"], topic=["x"]) == [pytest.approx(1.0)]


# -- the registry: weights, None, per-reward values -----------------------------------------------

def test_score_weighted_sum_and_parts(user_module):
    rewards = build([RewardConfig(name="chrf", weight=0.5),
                     RewardConfig(name=f"{user_module}:sometimes_none", weight=2.0)])
    total, parts = score(rewards, completions=["abc", "the cat"], references=["abc", "a dog"],
                         completion_ids=[[1], [2]], prompts=["p", "q"])
    chrf = CHRF()
    c = [chrf.sentence_score("abc", ["abc"]).score / 100, chrf.sentence_score("the cat", ["a dog"]).score / 100]
    # sometimes_none: [None, 3.0] -> sample 0: 0.5 * c0 + (None counts 0); sample 1: 0.5 * c1 + 2 * 3
    assert total == pytest.approx([0.5 * c[0], 0.5 * c[1] + 6.0])
    assert parts["chrf"] == pytest.approx(c)
    assert parts[f"{user_module}:sometimes_none"] == [None, 3.0]


# -- user rewards by dotted path -------------------------------------------------------------------

USER_CODE = '''
CALLS = []

def everything(completions, **kwargs):
    CALLS.append({"completions": completions, **kwargs})
    return [float(len(c)) for c in completions]

def only_named(completions, topic):
    CALLS.append({"completions": completions, "topic": topic})
    return [1.0 if t == "animals" else 0.0 for t in topic]

def scaled(completions, scale=1.0, offset=0.0):
    return [scale * len(c) + offset for c in completions]

def sometimes_none(completions, **kwargs):
    return [None if i % 2 == 0 else 3.0 for i in range(len(completions))]

def raises(completions, **kwargs):
    raise ValueError("boom")

def wrong_length(completions, **kwargs):
    return [1.0]

def nan_at_1(completions, **kwargs):
    return [0.0, float("nan"), 0.0, float("nan")]

def inf_at_2(completions, **kwargs):
    return [0.0, 1.0, float("-inf"), 0.0]

def string_at_1(completions, **kwargs):
    return [0.0, "high", 0.0, 0.0]

def bool_at_0(completions, **kwargs):
    return [True, 1.0, 1.0, 1.0]

def not_a_list(completions, **kwargs):
    return 0.5

def tuple_ok(completions, **kwargs):
    return tuple(0.25 for _ in completions)

def array_element(completions, **kwargs):
    class Pair:  # a 2-element "array": has __float__, but float() fails on it
        def __float__(self):
            raise TypeError("only length-1 arrays can be converted to Python scalars")
    return [0.0, Pair(), 0.0, 0.0]

def positional_only(completions, /):
    return [0.0 for _ in completions]

def no_completions(references):
    return [0.0 for _ in references]

NOT_CALLABLE = 3
'''

INPUTS = dict(completions=["a", "bb", "ccc", "dddd"], references=["r1", "r2", "r3", "r4"],
              prompts=["p1", "p2", "p3", "p4"], completion_ids=[[1], [2, 2], [3, 3, 3], [4, 4, 4, 4]],
              topic=["animals", "home", "animals", "nature"])


@pytest.fixture
def user_module(tmp_path, monkeypatch) -> str:
    """A module of reward functions importable as `seqrl_test_user_rewards` (fresh each test)."""
    name = "seqrl_test_user_rewards"
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(USER_CODE))
    (tmp_path / "seqrl_test_broken_rewards.py").write_text("import not_a_module_anywhere_xyz\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, name, raising=False)
    return name


def test_kwargs_function_receives_everything(user_module):
    reward = one(f"{user_module}:everything")
    assert reward(**INPUTS) == [1.0, 2.0, 3.0, 4.0]
    calls = sys.modules[user_module].CALLS
    assert len(calls) == 1
    assert calls[0] == INPUTS  # completions, references, prompts, completion_ids and extra columns


def test_named_function_receives_only_its_names(user_module):
    reward = one(f"{user_module}:only_named")
    assert reward(**INPUTS) == [1.0, 0.0, 1.0, 0.0]
    calls = sys.modules[user_module].CALLS
    assert calls == [{"completions": INPUTS["completions"], "topic": INPUTS["topic"]}]


def test_config_kwargs_are_passed(user_module):
    # scale * len + offset: 10 * [1, 2, 3, 4] - 1
    assert one(f"{user_module}:scaled", scale=10.0, offset=-1.0)(**INPUTS) == [9.0, 19.0, 29.0, 39.0]


def test_unknown_kwargs_rejected(user_module):
    with pytest.raises(RewardError, match=r"kwargs 'scael' is not a parameter of the function; did you mean 'scale'?"):
        one(f"{user_module}:scaled", scael=10.0)


def test_tuple_return_accepted(user_module):
    assert one(f"{user_module}:tuple_ok")(**INPUTS) == [0.25] * 4


@pytest.mark.parametrize("fn, message", [
    ("raises", r"reward '.*:raises' raised ValueError: boom"),
    ("wrong_length", r"reward '.*:wrong_length' returned 1 values for 4 completions"),
    ("nan_at_1", r"reward '.*:nan_at_1' returned nan at index 1;"),       # the first of two NaNs
    ("inf_at_2", r"reward '.*:inf_at_2' returned -inf at index 2; rewards must be finite"),
    ("string_at_1", r"reward '.*:string_at_1' returned 'high' \(str\) at index 1; expected a float"),
    ("bool_at_0", r"reward '.*:bool_at_0' returned True \(bool\) at index 0"),
    ("not_a_list", r"reward '.*:not_a_list' returned float, expected a list of 4 floats"),
])
def test_bad_rewards_raise_one_line(user_module, fn, message):
    reward = one(f"{user_module}:{fn}")
    with pytest.raises(RewardError, match=message) as info:
        reward(**INPUTS)
    assert "\n" not in str(info.value)
    assert isinstance(info.value, SeqrlError)


def test_unconvertible_value_is_a_reward_error(user_module):
    with pytest.raises(RewardError, match=r"array_element.*index 1"):
        one(f"{user_module}:array_element")(**INPUTS)


def test_multi_element_tensor_value_is_a_reward_error():
    import torch

    with pytest.raises(RewardError, match=r"index 0"):
        check_values("r", [torch.tensor([1.0, 2.0])], 1)


def test_check_values_accepts_numbers_and_none():
    import torch

    # ints widen to float, 0-d tensors convert, None stays None
    assert check_values("r", [1, 2.5, None, torch.tensor(0.5)], 4) == [1.0, 2.5, None, 0.5]


@pytest.mark.parametrize("name, message", [
    ("seqrl_test_no_such_module_xyz:f", r"reward 'seqrl_test_no_such_module_xyz:f': cannot import "
                                        r"'seqrl_test_no_such_module_xyz' \(ModuleNotFoundError"),
    ("seqrl_test_broken_rewards:f", r"cannot import 'seqrl_test_broken_rewards' \(ModuleNotFoundError: "
                                    r".*not_a_module_anywhere_xyz"),
    ("{mod}:missing", r"reward '{mod}:missing': module '{mod}' has no function 'missing'"),
    ("{mod}:NOT_CALLABLE", r"module '{mod}' has no function 'NOT_CALLABLE'"),
    ("{mod}:positional_only", r"takes positional-only arguments"),
    ("{mod}:no_completions", r"must accept a `completions` \(or `completion_ids`\) keyword argument"),
    ("bleuu", r"unknown reward 'bleuu';.*built-ins are bleu, chrf, ter, rouge1, rouge2, rougeL, "
              r"or give a dotted path like my_rewards:length_penalty"),
    (":f", r"unknown reward ':f'"),
    ("{mod}:", r"unknown reward '{mod}:'"),
])
def test_import_errors(user_module, name, message):
    name, message = name.format(mod=user_module), message.format(mod=user_module)
    with pytest.raises(RewardError, match=message) as info:
        build([RewardConfig(name=name)])
    assert "\n" not in str(info.value)


def test_misspelled_builtin_suggests_the_close_one():
    with pytest.raises(RewardError, match=r"did you mean 'bleu'\?"):
        build([RewardConfig(name="bleuu")])


def test_misspelled_builtin_kwarg_rejected():
    with pytest.raises(RewardError, match=r"smooth_metod"):
        one("bleu", smooth_metod="add-k")


def test_builtins_registry_names():
    assert list(BUILTINS) == ["bleu", "chrf", "ter", "rouge1", "rouge2", "rougeL"]
    for values in (one(n)(completions=["x y"], references=["x y"]) for n in BUILTINS):
        assert len(values) == 1 and math.isfinite(values[0]) and 0.0 <= values[0] <= 1.0 + 1e-9  # BLEU: 1 + 4e-16
