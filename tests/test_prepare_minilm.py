"""scripts/prepare_minilm_bert2bert.py on a tiny BERT built here (the real weights come from a pip
package the tests do not install): the bert2bert directory it writes trains with seqrl."""

from __future__ import annotations

import importlib.util
import json
import sys
import unicodedata
from pathlib import Path

import yaml
from conftest import EN_ES, make_tiny_recipe
from transformers import BertConfig, BertModel, BertTokenizerFast

from seqrl.cli import main
from seqrl.modeling import load_saved

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("prepare_minilm_bert2bert",
                                              REPO / "scripts" / "prepare_minilm_bert2bert.py")
pm = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = pm
spec.loader.exec_module(pm)


def tiny_bert(directory: Path) -> Path:
    plain = lambda w: "".join(c for c in unicodedata.normalize("NFD", w) if not unicodedata.combining(c))  # noqa: E731
    words = sorted({form for pair in EN_ES.items() for w in pair for form in (w, plain(w))})  # (BERT strips accents)
    directory.mkdir(parents=True)
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]) + "\n")
    # (transformers 5 takes `vocab`; it ignored the `vocab_file` of 4.x, leaving the 5 special tokens
    # only, so that every word was [UNK]: seqrl's unknown-token check at set-up found it)
    tokenizer = BertTokenizerFast(vocab=str(directory / "vocab.txt"))
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def test_bert2bert_is_a_seqrl_model(tmp_path, toy_data_dir):
    out = tmp_path / "b2b"
    pm.main(["--weights", str(tiny_bert(tmp_path / "bert")), "--out", str(out), "--encoder-out", str(tmp_path / "enc")])
    assert (tmp_path / "enc" / "config.json").is_file()
    text_model = load_saved(out)
    tok = text_model.tokenizer
    assert text_model.is_seq2seq and tok.eos_token == "[SEP]"
    assert text_model.model.config.decoder_start_token_id == tok.cls_token_id
    assert text_model.encode_targets(["the cat"])[0][-1] == tok.sep_token_id  # targets end in EOS
    recipe = make_tiny_recipe(toy_data_dir, tmp_path / "run")
    recipe["model"] = {"name_or_path": str(out)}
    recipe["schedule"] = {"kind": "mixer", "xent_steps": 2, "stage_steps": 1, "delta": 4}
    recipe["reinforce"] = {"batch_size": 2, "candidates": {"num_samples": 2}}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    assert main(["finetune", str(path), "--set", "run.max_steps=4"]) == 0
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert any("reward/total" in m for m in lines)
