"""LoRA on a model whose checkpoint lacks some weights (a bert2bert warm-started from two BERTs,
as scripts/prepare_minilm_bert2bert.py makes it: the decoder's cross-attention and LM-head
transform are initialised at load): those modules train in full by default, the header says
which, `model.lora.train_new_weights: false` leaves them frozen, and a model whose checkpoint
holds every weight gets no extra module."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
import yaml
from conftest import make_tiny_recipe
from peft import PeftModel
from safetensors import safe_open
from test_prepare_minilm import pm, tiny_bert
from transformers import AutoModelForSeq2SeqLM

from seqrl.cli import main
from seqrl.config import DataConfig, LoraSettings, ModelConfig, TokenizerConfig
from seqrl.lora import apply, describe, merged_state_dict, new_modules
from seqrl.modeling import build

CROSS = "decoder.bert.encoder.layer.0.crossattention"
DATA = DataConfig(path="unused", source_field="en", target_field="es")


@pytest.fixture(scope="module")
def bert2bert(tmp_path_factory):
    directory = tmp_path_factory.mktemp("b2b")
    with contextlib.chdir(directory):  # (`--encoder-out ''` once copied the BERT into the working directory)
        pm.main(["--weights", str(tiny_bert(directory / "bert")), "--out", str(directory / "b2b"), "--encoder-out", ""])
    assert sorted(p.name for p in directory.iterdir()) == ["b2b", "bert"]
    return directory / "b2b"


def load(directory):
    torch.manual_seed(0)
    return build(ModelConfig(name_or_path=str(directory)), TokenizerConfig(), DATA)


def test_new_modules_train_in_full_and_merge_under_plain_names(bert2bert):
    text_model = load(bert2bert)
    assert f"{CROSS}.self.query.weight" in text_model.new_weights  # transformers' missing keys
    assert "decoder.cls.predictions.bias" in text_model.new_weights
    assert not any(n.startswith("encoder.") for n in text_model.new_weights)
    assert new_modules(text_model.model, text_model.new_weights) == [CROSS, "decoder.cls.predictions.transform"]
    model = apply(text_model.model, LoraSettings(rank=2), text_model.new_weights)
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert f"base_model.model.{CROSS}.modules_to_save.default.self.query.weight" in trained
    assert not any(".lora_" in n and "crossattention" in n for n in trained), "no adapter inside a module in full"
    assert not any("cls.predictions.bias" in n for n in trained)  # beside the tied embedding: frozen, and said
    text = describe(model, 2, text_model.new_weights)
    assert text == ("LoRA rank 2 on query, value; in full, new at load: decoder.bert.encoder.layer.*.crossattention, "
                    "decoder.cls.predictions.transform; new at load but frozen (model.lora.train_new_weights, or "
                    "beside loaded weights): decoder.cls.predictions.bias, decoder.cls.predictions.decoder.bias")

    tok = text_model.tokenizer
    batch = text_model.collate([{"source_ids": tok("the cat")["input_ids"], "target_ids": tok("el gato")["input_ids"]}])
    cross = model.get_base_model().get_submodule(CROSS)
    before = cross.modules_to_save["default"].self.query.weight.detach().clone()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model(**batch).loss.backward()
    optimizer.step()
    after = cross.modules_to_save["default"].self.query.weight
    assert (after - before).abs().max() > 1e-3, "the cross-attention trained"
    assert torch.equal(cross.original_module.self.query.weight, before), "its starting copy (the KL reference) kept"
    merged = merged_state_dict(model)
    assert set(merged) == set(load(bert2bert).model.state_dict())  # plain transformers names
    assert torch.equal(merged[f"{CROSS}.self.query.weight"], after.detach())


def test_switched_off_and_models_without_new_weights_get_no_extra_module(bert2bert, stand_in_dir):
    text_model = load(bert2bert)
    model = apply(text_model.model, LoraSettings(rank=2, train_new_weights=False), text_model.new_weights)
    assert not model.peft_config["default"].modules_to_save
    assert all(".lora_" in n for n, p in model.named_parameters() if p.requires_grad)
    assert "; new at load but frozen" in describe(model, 2, text_model.new_weights)

    marian = build(ModelConfig(name_or_path=str(stand_in_dir("marian"))), TokenizerConfig(), DATA)
    assert marian.new_weights == ()
    model = apply(marian.model, LoraSettings(rank=2), marian.new_weights)
    assert not model.peft_config["default"].modules_to_save
    assert describe(model, 2, marian.new_weights) == "LoRA rank 2 on q_proj, v_proj"


def test_lora_run_on_bert2bert_trains_its_cross_attention(bert2bert, toy_data_dir, tmp_path, capsys):
    """The header lists the modules trained in full; checkpoints hold them beside the adapters;
    `final/` holds every weight (nothing missing for plain transformers) and equals peft's merge of
    `final/adapter/` (which carries the modules trained in full) into the base."""
    recipe = make_tiny_recipe(toy_data_dir, tmp_path / "run")
    recipe["model"] = {"name_or_path": str(bert2bert), "lora": {"rank": 2}}
    recipe.pop("tokenizer")
    recipe["schedule"] = {"kind": "xent", "xent_steps": 2}
    recipe["run"].update(save_every=2)
    recipe["eval"].update(max_examples=4)
    recipe["data"]["test_split"] = None
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    capsys.readouterr()
    assert main(["finetune", str(tmp_path / "r.yaml")]) == 0
    header = capsys.readouterr().out
    assert "LoRA rank 2 on query, value; in full, new at load: decoder.bert.encoder.layer.*.crossattention" in header
    with safe_open(str(tmp_path / "run" / "checkpoints" / "step-00000002" / "model.safetensors"), "pt") as saved:
        keys = list(saved.keys())
    assert any(f"{CROSS}.modules_to_save.default.self.query.weight" in k for k in keys)
    final = tmp_path / "run" / "final"
    trained, info = AutoModelForSeq2SeqLM.from_pretrained(final, output_loading_info=True)
    assert not info["missing_keys"]
    peft_model = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(bert2bert), final / "adapter")
    expected = peft_model.merge_and_unload().state_dict()
    got = trained.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert json.loads((final / "adapter" / "adapter_config.json").read_text())["modules_to_save"]
