"""The model card's metadata in the Hub's schema (issue 35, item 10), read back offline with
huggingface_hub's own `ModelCard` / `EvalResult`; written without training (`write_model_card`)."""

import pytest
from huggingface_hub import EvalResult, ModelCard

from seqrl.config import from_dict
from seqrl.errors import ConfigError
from seqrl.model_card import write_model_card

SCORES = {"test/bleu": 12.345, "test/chrf": 40.0, "test/rougeL": 30.0, "eval/bleu": 11.0, "test/decode_seconds": 3.0}


def recipe(tmp_path, **sections):
    raw = {"model": {"architecture": "mbart"}, "data": {"path": str(tmp_path / "bible_en_es")},
           "schedule": {"kind": "xent", "xent_steps": 1}, "run": {"output_dir": str(tmp_path / "quick")}}
    for name, values in sections.items():
        raw.setdefault(name, {}).update(values)
    return from_dict(raw)


def card(tmp_path, cfg, is_seq2seq=True, scores=SCORES):
    out = tmp_path / "final"
    out.mkdir(exist_ok=True)
    write_model_card(out, cfg, is_seq2seq, 10, scores, "seqrl finetune r.yaml")
    return ModelCard.load(out / "README.md")


def test_translation_card_has_languages_and_a_model_index(tmp_path):
    loaded = card(tmp_path, recipe(tmp_path, tokenizer={"languages": ["en", "es"]}))
    data = loaded.data
    assert data.pipeline_tag == "translation" and data.language == ["en", "es"] and data.license is None
    assert data.model_name == "quick"
    results = data.eval_results
    assert all(isinstance(r, EvalResult) for r in results)
    assert [(r.task_type, r.dataset_type, r.dataset_name, r.dataset_split, r.metric_type, r.metric_value, r.metric_name)
            for r in results] == [
        ("translation", "bible_en_es", "bible_en_es (en-es)", "test", "bleu", 12.35, "Test BLEU"),
        ("translation", "bible_en_es", "bible_en_es (en-es)", "test", "chrf", 40.0, "Test chrF"),
        ("translation", "bible_en_es", "bible_en_es (en-es)", "test", "rouge", 30.0, "Test ROUGE-L")]
    assert results[2].metric_config == "rougeL"
    assert "None stated: the model was built from a config" in loaded.text
    assert "| test/bleu | 12.35 |" in loaded.text


def test_tokenizer_codes_give_the_languages(tmp_path):
    data = card(tmp_path, recipe(tmp_path, tokenizer={"src_lang": "en_XX", "tgt_lang": "es_XX"})).data
    assert data.language == ["en", "es"] and data.pipeline_tag == "translation"


@pytest.mark.parametrize("sections,is_seq2seq,task", [
    ({"tokenizer": {"languages": ["en"]}}, True, "summarization"),
    ({"data": {"source_prefix": "summarize: "}}, True, "summarization"),
    ({}, True, "text2text-generation"),
    ({"tokenizer": {"languages": ["en", "es"]}}, False, "text-generation"),
])
def test_pipeline_tag_per_task(tmp_path, sections, is_seq2seq, task):
    data = card(tmp_path, recipe(tmp_path, **sections), is_seq2seq).data
    assert data.pipeline_tag == task and data.eval_results[0].task_type == task


def test_base_model_license_from_its_card(tmp_path):
    base = tmp_path / "base"
    base.mkdir()
    (base / "README.md").write_text("---\nlicense: apache-2.0\n---\n# base\n")
    cfg = from_dict({"model": {"name_or_path": str(base)}, "data": {"path": str(tmp_path)},
                     "schedule": {"kind": "xent", "xent_steps": 1}})
    loaded = card(tmp_path, cfg)
    assert loaded.data.license == "apache-2.0" and "`apache-2.0` (from its model card)" in loaded.text
    (base / "README.md").unlink()
    loaded = card(tmp_path, cfg)
    assert loaded.data.license is None and "could not be read" in loaded.text


def test_no_test_scores_no_model_index_and_a_partial_split_says_so(tmp_path):
    assert card(tmp_path, recipe(tmp_path), scores={"eval/bleu": 3.0}).data.eval_results is None
    cfg = recipe(tmp_path, eval={"test_max_examples": 100})
    assert card(tmp_path, cfg).data.eval_results[0].metric_name == "Test BLEU (first 100 examples)"


@pytest.mark.parametrize("languages,needle", [(["en", "es", "fr"], "at most two"), (["EN"], "not an ISO 639 code"),
                                              (["en_XX"], "not an ISO 639 code")])
def test_bad_languages_are_one_line_errors(tmp_path, languages, needle):
    with pytest.raises(ConfigError, match=needle):
        recipe(tmp_path, tokenizer={"languages": languages})
    with pytest.raises(ConfigError, match="not both"):
        recipe(tmp_path, tokenizer={"languages": ["en"], "tgt_lang": "es_XX"})
