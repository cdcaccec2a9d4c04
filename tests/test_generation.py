"""One generation configuration everywhere, on tiny stand-ins of each pretrained family
(`stand_ins.py`: the real model and tokenizer classes, generation configs set as on the hub).

- The greedy rollout equals `generate(do_sample=False)` token for token under each model's own
  generation config (Marian's banned pad and forced EOS, BART's forced BOS/EOS, 3-gram ban and
  minimum length, mBART-50's and NLLB's forced target language).
- Sampled rows obey forced, suppressed and banned tokens, and minimum lengths.
- REINFORCE's log-probabilities are those of the masked distribution the rows were drawn from.
- Languages: codes set on the tokenizer, the forced BOS derived from tgt_lang, one-line errors.
"""

from __future__ import annotations

import pytest
import torch
from conftest import make_pairs
from stand_ins import FAMILIES

from seqrl.config import DataConfig, ModelConfig, TokenizerConfig
from seqrl.errors import SeqrlError
from seqrl.generation import masked_token_logprobs
from seqrl.losses import IGNORE_INDEX, token_logprobs
from seqrl.modeling import build
from seqrl.rollout import Sampling, rollout, rollout_logits

LANGUAGES = {"mbart50": ("en_XX", "es_XX"), "nllb": ("eng_Latn", "spa_Latn")}


def load(stand_in_dir, family: str, **generation) -> object:
    src, tgt = LANGUAGES.get(family, (None, None))
    return build(ModelConfig(name_or_path=str(stand_in_dir(family)), generation=generation),
                 TokenizerConfig(src_lang=src, tgt_lang=tgt), DataConfig(path="unused", source_field="en",
                                                                         target_field="es"))


def sources_and_targets(tm, n: int = 6):
    pairs = make_pairs()[:n]
    return tm.encode_sources([p["en"] for p in pairs]), tm.encode_targets([p["es"] for p in pairs])


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_rollout_equals_generate_under_the_models_generation_config(stand_in_dir, family):
    tm = load(stand_in_dir, family)
    tm.model.eval()
    src, tgt = sources_and_targets(tm)
    max_len = 10
    with torch.no_grad():
        ro = rollout(tm, tm.model, src, tgt, 10**6, num_samples=1, max_len=max_len, sampling=Sampling(greedy=True))
        generated = tm.generate(tm.model, src, max_new_tokens=max_len)
    eos = tm.tokenizer.eos_token_id
    rows = [r[:-1] if r and r[-1] == eos else r for r in ro.rows()]
    skip = {tm.tokenizer.pad_token_id, eos}  # what `generate`'s output drops
    assert [[t for t in r if t not in skip] for r in rows] == generated
    assert bool(ro.constraints) == (family != "t5" and family != "gpt2")


def test_the_stand_ins_constraints_act(stand_in_dir):
    """What the test above compares is not vacuous: each constraint shapes the rollouts."""
    bart = load(stand_in_dir, "bart")
    src, tgt = sources_and_targets(bart)
    with torch.no_grad():
        rows = rollout(bart, bart.model.eval(), src, tgt, 10**6, num_samples=3, max_len=12,
                       sampling=Sampling(seed=1)).rows()
    config = bart.generation_config
    assert all(r[0] == config.forced_bos_token_id for r in rows)
    assert all(bart.tokenizer.eos_token_id not in r[:config.min_length - 1] for r in rows)
    for r in rows:  # no 3-gram twice in a row
        grams = [tuple(r[i:i + 3]) for i in range(len(r) - 2)]
        assert len(grams) == len(set(grams)), r
    marian = load(stand_in_dir, "marian")
    pad = marian.tokenizer.pad_token_id
    assert marian.generation_config.bad_words_ids == [[pad]]
    src, tgt = sources_and_targets(marian)
    with torch.no_grad():
        rows = rollout(marian, marian.model.eval(), src, tgt, 10**6, num_samples=3, max_len=12,
                       sampling=Sampling(seed=1)).rows()
    assert all(pad not in r for r in rows)
    assert all(r[-1] == marian.tokenizer.eos_token_id for r in rows), "forced EOS ends every row"


@pytest.mark.parametrize("family", ["mbart50", "nllb"])
def test_target_language_is_forced_in_sampled_rows(stand_in_dir, family):
    tm = load(stand_in_dir, family)
    src_code, tgt_code = LANGUAGES[family]
    lang = tm.tokenizer.convert_tokens_to_ids(tgt_code)
    assert tm.generation_config.forced_bos_token_id == lang
    src, tgt = sources_and_targets(tm)
    assert all(t[0] == lang for t in tgt), "targets begin with the target language"
    assert all(s[0] == tm.tokenizer.convert_tokens_to_ids(src_code) for s in src)
    with torch.no_grad():
        ro = rollout(tm, tm.model.eval(), src, tgt, 10**6, num_samples=4, max_len=8, sampling=Sampling(seed=3))
    assert ro.prefix_len.tolist() == [0] * 24 and all(r[0] == lang for r in ro.rows())


def test_suppressed_and_minimum_length_settings_reach_sampled_rows(stand_in_dir):
    tm = load(stand_in_dir, "t5")
    src, tgt = sources_and_targets(tm)
    eos = tm.tokenizer.eos_token_id
    with torch.no_grad():
        free = rollout(tm, tm.model.eval(), src, tgt, 10**6, num_samples=4, max_len=8, sampling=Sampling(seed=5)).rows()
    common = max(range(len(tm.tokenizer)), key=lambda v: sum(r.count(v) for r in free))
    assert sum(r.count(common) for r in free) > 0
    tm = load(stand_in_dir, "t5", suppress_tokens=[common], min_new_tokens=5, begin_suppress_tokens=[common + 1])
    with torch.no_grad():
        rows = rollout(tm, tm.model.eval(), src, tgt, 10**6, num_samples=4, max_len=8, sampling=Sampling(seed=5)).rows()
    assert all(common not in r for r in rows)
    assert all(eos not in r[:5] for r in rows)
    assert all(r[0] != common + 1 for r in rows)


def test_gold_prefix_is_kept_and_ngram_bans_see_it(stand_in_dir):
    """MIXER's prefix: gold tokens stay even where a setting bans them; the samples after them
    are constrained by the whole sequence, gold prefix included (as `generate` continuing it)."""
    tm = load(stand_in_dir, "bart", no_repeat_ngram_size=1)  # no token twice
    src, tgt = sources_and_targets(tm)
    repeated = [t[:3] + t[1:3] + t[3:] for t in tgt]  # a gold prefix that repeats two tokens
    with torch.no_grad():
        ro = rollout(tm, tm.model.eval(), src, repeated, 3, num_samples=2, max_len=20, sampling=Sampling(seed=2))
    for i, (row, k) in enumerate(zip(ro.rows(), ro.prefix_len.tolist(), strict=True)):
        gold = repeated[i // 2]
        assert k == len(gold) - 3 and row[:k] == gold[:k], "the gold prefix, repeats included"
        suffix = row[k:]
        assert len(set(suffix)) == len(suffix) and not set(suffix) & set(gold[:k]), (row, k)


def test_reinforce_logprobs_are_of_the_masked_distribution(stand_in_dir):
    """At a sampled position the log-probability is log softmax(logits + mask); a forced token
    has log-probability 0 (no gradient), positions without constraints are unchanged."""
    tm = load(stand_in_dir, "mbart50")
    src, tgt = sources_and_targets(tm, 3)
    with torch.no_grad():
        ro = rollout(tm, tm.model.eval(), src, tgt, 10**6, num_samples=2, max_len=6, sampling=Sampling(seed=4))
    logits, labels, _ = rollout_logits(tm.model, ro, is_seq2seq=True)
    sampled = labels != IGNORE_INDEX
    masks = ro.sample_masks(sampled, logits.shape[-1])
    assert 0 in masks and 5 in masks  # forced language at 0, forced EOS at the last position
    plain = token_logprobs(logits, labels)
    logp = masked_token_logprobs(logits, labels, masks)  # (adds the masks to logits in place)
    assert torch.equal(logp[:, 0], torch.zeros(6)) and (plain[:, 0] < 0).all()
    free = [t for t in range(1, 5) if t not in masks]
    assert free and torch.equal(logp[:, free], plain[:, free])
    logp[:, 0].sum().backward()
    assert all(p.grad is None or not p.grad.any() for p in tm.model.parameters()), "a forced token: no gradient"


def test_unknown_language_codes_and_tokenizers_without_languages(stand_in_dir):
    with pytest.raises(SeqrlError, match=r"tokenizer.tgt_lang: the tokenizer has no language code 'es_ES'; "
                                         r"did you mean 'es_XX'\?"):
        build(ModelConfig(name_or_path=str(stand_in_dir("mbart50"))), TokenizerConfig(tgt_lang="es_ES"),
              DataConfig(path="unused"))
    with pytest.raises(SeqrlError, match=r"tokenizer.src_lang: the tokenizer has no language code 'english'"):
        build(ModelConfig(name_or_path=str(stand_in_dir("nllb"))), TokenizerConfig(src_lang="english"),
              DataConfig(path="unused"))
    with pytest.raises(SeqrlError, match=r"tokenizer.tgt_lang: T5Tokenizer has no language codes"):
        build(ModelConfig(name_or_path=str(stand_in_dir("t5"))), TokenizerConfig(tgt_lang="de"),
              DataConfig(path="unused"))


@pytest.mark.parametrize("generation,needle", [
    ({"no_repeat_ngrams_size": 3}, "unknown key 'model.generation.no_repeat_ngrams_size' .*; did you mean "
                                   "'model.generation.no_repeat_ngram_size'"),
    ({"repetition_penalty": 1.3}, "repetition_penalty=1.3 .* cannot be applied to training rollouts; set "
                                  "model.generation.repetition_penalty: 1.0"),
    ({"num_beams": 4}, "model.generation.num_beams: set eval.num_beams instead"),
    ({"temperature": 0.7}, "model.generation.temperature: set reinforce.candidates.temperature instead"),
    ({"no_repeat_ngram_size": "banana"}, r"model.generation.no_repeat_ngram_size must be a whole number >= 0, "
                                         r"got 'banana'"),
    ({"min_new_tokens": -2}, r"model.generation.min_new_tokens must be a whole number >= 0, got -2"),
    ({"length_penalty": "long"}, r"model.generation.length_penalty must be a number, got 'long'"),
    ({"forced_bos_token_id": 99999}, r"model.generation.forced_bos_token_id: 99999 is not a token id of this model "
                                     r"\(0 to \d+\)"),
    ({"suppress_tokens": [3, -1]}, r"model.generation.suppress_tokens: -1 is not a token id"),
    ({"bad_words_ids": [[3, "x"]]}, r"model.generation.bad_words_ids: 'x' is not a token id"),
])
def test_generation_overrides_are_checked(stand_in_dir, generation, needle):
    with pytest.raises(SeqrlError, match=needle):
        load(stand_in_dir, "t5", **generation)


RECORDING_REWARD = '''
seen = []


def record(completion_ids, **kwargs):
    seen.extend(completion_ids)
    return [0.1 * (i % 3) for i in range(len(completion_ids))]
'''


def test_a_recipe_override_reaches_training_samples_and_evaluation(stand_in_dir, toy_data_dir, tmp_path, monkeypatch):
    """`model.generation.forced_bos_token_id: X` on a model whose own config has none: every
    sampled training row and every evaluation output starts with X, and final/ keeps it."""
    import importlib
    import json

    import yaml

    from seqrl.cli import main
    from seqrl.modeling import TextModel

    (tmp_path / "recording_reward.py").write_text(RECORDING_REWARD)
    monkeypatch.syspath_prepend(str(tmp_path))
    recorder = importlib.import_module("recording_reward")
    model_dir = stand_in_dir("t5")
    forced = 7
    recipe = {"model": {"name_or_path": str(model_dir), "generation": {"forced_bos_token_id": forced}},
              "data": {"path": str(toy_data_dir), "source_field": "en", "target_field": "es",
                       "max_source_tokens": 16, "max_target_tokens": 8},
              "schedule": {"kind": "mixer", "xent_steps": 0, "stage_steps": 2, "delta": 8},
              "reinforce": {"batch_size": 4, "candidates": {"num_samples": 2}},
              "rewards": [{"name": "recording_reward:record"}],
              "eval": {"every": 0, "max_new_tokens": 6, "max_examples": 8},
              "run": {"output_dir": str(tmp_path / "run")}, "log": {"progress_bar": False}}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    outputs, real_generate = [], TextModel.generate

    def recording_generate(self, model, source_ids, **kwargs):
        out = real_generate(self, model, source_ids, **kwargs)
        outputs.extend(out)
        return out

    monkeypatch.setattr(TextModel, "generate", recording_generate)
    assert main(["finetune", str(tmp_path / "recipe.yaml")]) == 0
    sampled = recorder.seen[2:]  # (the first 2: the set-up call, on gold targets)
    assert len(sampled) == 2 * 4 * 2 and all(row[0] == forced for row in sampled)
    # the set-up's trial decode of 2 rows, test before the first step (no XENT stage), validation, test
    assert len(outputs) == 2 + 20 + 8 + 20 and all(out[0] == forced for out in outputs)
    saved = json.loads((tmp_path / "run" / "final" / "generation_config.json").read_text())
    assert saved["forced_bos_token_id"] == forced
