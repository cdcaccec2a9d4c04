"""Guards against reward hacking as rewards (issue 35, item 1): `length_ratio` and `language_id`,
on hand-written outputs: too short, too long, the wrong language."""

import pytest
from test_cli import assert_one_line_error, write_recipe

from seqrl.config import RewardConfig
from seqrl.rewards import RewardError, build, score
from seqrl.rewards.guards import language_id, length_ratio

REFS = ["w1 w2 w3 w4"] * 5


def test_length_ratio_penalises_outside_the_band():
    outputs = ["a b",            # 2/4 = 0.5: -(0.8 - 0.5) / 0.8 = -0.375 (too short)
               "a b c d e f",    # 6/4 = 1.5: -(1.5 - 1.25) / 1.25 = -0.2 (too long)
               "a b c d",        # 1.0: inside the band
               "a b c d e",      # 1.25: on the band's edge, inside
               " ".join("x" * 20)]  # 20/4 = 5: -(5 - 1.25) / 1.25 = -3, clipped to -1
    assert length_ratio(outputs, REFS) == pytest.approx([-0.375, -0.2, 0.0, 0.0, -1.0])
    assert length_ratio([""], ["a b"]) == [-1.0]  # an empty output: ratio 0


def test_length_ratio_reference_free_and_in_characters():
    sources = ["one two three four five six seven eight", "x"]
    # 4/8 = 0.5 -> -0.375; against an empty-ish one-word source 3/1 = 3 -> -(3 - 2) / 2 = -0.5
    assert length_ratio(["a b c d", "a b c"], prompts=sources, against="source", low=0.8, high=2.0) \
        == pytest.approx([-0.375, -0.5])
    assert length_ratio(["abc"], ["abcdef"], unit="chars") == pytest.approx([-0.375])  # 3/6 = 0.5


def test_language_id_scores_the_target_language_share():
    outputs = ["El rey habló a todo el pueblo y les dijo que volvieran a sus casas.",
               "The king spoke to all the people and told them to go back to their houses.",  # wrong language
               "",                                                                             # empty
               "   "]
    shares = language_id(outputs, language="es")
    assert shares[0] > 0.9 and shares[1] == 0.0 and shares[2:] == [0.0, 0.0]
    assert language_id(outputs[1:2], language="en")[0] > 0.9
    assert language_id(["bad \x00\ud800 bytes: el rey y el pueblo de la ciudad"], language="es")[0] > 0.5


def test_language_id_target_from_the_recipe_or_kwargs():
    [reward] = build([RewardConfig(name="language_id")], target_language="es")
    assert reward.kwargs == {"language": "es"}
    [reward] = build([RewardConfig(name="language_id", kwargs={"language": "de"})], target_language="es")
    assert reward.kwargs == {"language": "de"}  # the reward's own kwargs win
    with pytest.raises(RewardError, match="no target language; set tokenizer.languages"):
        build([RewardConfig(name="language_id")])
    with pytest.raises(RewardError, match="'spa' is not a CLD2 language code"):
        build([RewardConfig(name="language_id")], target_language="spa")


def test_guards_weighted_beside_bleu():
    rewards = build([RewardConfig(name="bleu"), RewardConfig(name="length_ratio", weight=0.5),
                     RewardConfig(name="language_id", weight=0.2)], target_language="es")
    total, parts = score(rewards, completions=["el rey", "el rey y el pueblo"], references=["el rey y el pueblo"] * 2,
                         prompts=["the king and the people"] * 2, completion_ids=[[1], [1]])
    assert parts["length_ratio"] == pytest.approx([-(0.8 - 0.4) / 0.8, 0.0])
    assert total == pytest.approx([b + 0.5 * r + 0.2 * lang for b, r, lang in
                                   zip(parts["bleu"], parts["length_ratio"], parts["language_id"], strict=True)])


def test_validate_runs_the_guards_with_the_recipes_languages(tiny_recipe, tmp_path, cli):
    tiny_recipe.update(schedule={"kind": "mixer", "xent_steps": 2, "stage_steps": 1},
                       rewards=[{"name": "bleu"}, {"name": "length_ratio", "kwargs": {"against": "source"}},
                                {"name": "language_id"}])
    tiny_recipe["tokenizer"]["languages"] = ["en", "es"]
    rc, out, err = cli("validate", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert rc == 0, err
    assert "rewards: bleu, length_ratio, language_id load and score two training rows" in out
    del tiny_recipe["tokenizer"]["languages"]
    assert_one_line_error(*cli("validate", write_recipe(tmp_path / "r.yaml", tiny_recipe))[::2],
                          "reward 'language_id': no target language", command="validate")
