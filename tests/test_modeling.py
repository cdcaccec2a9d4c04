"""TextModel: building, batches, logits alignment, decoding, saving/loading, tokenizers."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import TINY_CONFIGS, build_tiny, make_pairs
from transformers import (
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PreTrainedTokenizerFast,
)

from seqrl import modeling
from seqrl.config import DataConfig, ModelConfig, TokenizerConfig
from seqrl.errors import SeqrlError
from seqrl.losses import IGNORE_INDEX, masked_xent
from seqrl.modeling import TextModel, build, load_saved
from seqrl.tokenizer import train_tokenizer

PAIRS = make_pairs()
SOURCES = [p["en"] for p in PAIRS[:5]]
TARGETS = [p["es"] for p in PAIRS[:5]]


def features(tm: TextModel, n: int = 5) -> list[dict]:
    src, tgt = tm.encode_sources(SOURCES[:n]), tm.encode_targets(TARGETS[:n])
    return [{"source_ids": s, "target_ids": t} for s, t in zip(src, tgt, strict=True)]


# -- building ------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture,cls_name,seq2seq", [
    ("marian", "MarianMTModel", True),
    ("bart", "BartForConditionalGeneration", True),
    ("gpt2", "GPT2LMHeadModel", False),
])
def test_build_from_config(tiny_text_model, architecture, cls_name, seq2seq):
    tm = tiny_text_model(architecture)
    assert type(tm.model).__name__ == cls_name
    assert tm.is_seq2seq is seq2seq
    assert len(tm.tokenizer) == 120
    assert tm.model.get_input_embeddings().num_embeddings == 120
    cfg = tm.model.config
    assert cfg.pad_token_id == tm.tokenizer.pad_token_id
    assert cfg.eos_token_id == tm.tokenizer.eos_token_id
    assert getattr(cfg, "d_model", getattr(cfg, "n_embd", None)) == 32
    if seq2seq:
        assert cfg.decoder_start_token_id == tm.tokenizer.bos_token_id
    assert sum(p.numel() for p in tm.model.parameters()) < 100_000


@pytest.mark.parametrize("architecture", [
    "marian",
    "bart",
])
def test_forced_eos_is_eos_or_unset(tiny_text_model, architecture):
    tm = tiny_text_model(architecture)
    forced = tm.model.generation_config.forced_eos_token_id
    assert forced in (None, tm.tokenizer.eos_token_id)


def test_unknown_architecture():
    with pytest.raises(SeqrlError, match=r"model\.architecture 'not-a-model'"):
        build(ModelConfig(architecture="not-a-model"), TokenizerConfig(vocab_size=60), DataConfig(path="x"),
              SOURCES * 4)


def test_build_needs_texts_or_tokenizer():
    with pytest.raises(SeqrlError, match=r"no tokenizer"):
        build(ModelConfig(architecture="gpt2"), TokenizerConfig(), DataConfig(path="x"))


# -- batches -------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["marian", "bart"])
def test_collate_seq2seq(tiny_text_model, architecture):
    tm = tiny_text_model(architecture)
    feats = features(tm)
    batch = tm.collate(feats)
    pad, start = tm.tokenizer.pad_token_id, tm.model.config.decoder_start_token_id
    src_w = max(len(f["source_ids"]) for f in feats)
    tgt_w = max(len(f["target_ids"]) for f in feats)
    assert set(batch) == {"input_ids", "attention_mask", "decoder_input_ids", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == (5, src_w)
    assert batch["decoder_input_ids"].shape == batch["labels"].shape == (5, tgt_w)
    assert (batch["decoder_input_ids"][:, 0] == start).all()
    for i, f in enumerate(feats):
        n, m = len(f["source_ids"]), len(f["target_ids"])
        assert batch["input_ids"][i, :n].tolist() == f["source_ids"]
        assert (batch["input_ids"][i, n:] == pad).all()
        assert batch["attention_mask"][i].tolist() == [1] * n + [0] * (src_w - n)
        assert batch["labels"][i, :m].tolist() == f["target_ids"]
        assert (batch["labels"][i, m:] == IGNORE_INDEX).all()
        # decoder inputs are the labels shifted right by one, after the start token
        assert batch["decoder_input_ids"][i, 1:m].tolist() == batch["labels"][i, :m - 1].tolist()
        assert (batch["decoder_input_ids"][i, m:] == pad).all()


def test_collate_decoder_only(tiny_text_model):
    tm = tiny_text_model("gpt2")
    feats = features(tm)
    batch = tm.collate(feats)
    pad = tm.tokenizer.pad_token_id
    width = max(len(f["source_ids"]) + len(f["target_ids"]) for f in feats)
    assert set(batch) == {"input_ids", "attention_mask", "labels"}
    assert batch["input_ids"].shape == batch["attention_mask"].shape == batch["labels"].shape == (5, width)
    for i, f in enumerate(feats):
        n, m = len(f["source_ids"]), len(f["target_ids"])
        assert batch["input_ids"][i, :n + m].tolist() == f["source_ids"] + f["target_ids"]
        assert (batch["input_ids"][i, n + m:] == pad).all()
        assert batch["attention_mask"][i].tolist() == [1] * (n + m) + [0] * (width - n - m)
        assert (batch["labels"][i, :n] == IGNORE_INDEX).all()  # no loss on the prompt
        assert batch["labels"][i, n:n + m].tolist() == f["target_ids"]
        assert (batch["labels"][i, n + m:] == IGNORE_INDEX).all()


def test_decoder_only_encoding(tiny_text_model):
    tm = tiny_text_model("gpt2")
    eos = tm.tokenizer.eos_token_id
    src, tgt = tm.encode_sources(SOURCES[:1])[0], tm.encode_targets(TARGETS[:1])[0]
    assert tgt[-1] == eos and tgt.count(eos) == 1
    assert tm.decode([tgt]) == [TARGETS[0]]
    assert tm.decode([src]) == [SOURCES[0]]


# -- logits alignment ----------------------------------------------------------------------------


def test_target_logits_causal_matches_hf_loss(tiny_text_model):
    tm = tiny_text_model("gpt2")
    batch = tm.collate(features(tm))
    logits, labels, _ = tm.target_logits(tm.model, batch)
    B, T = batch["input_ids"].shape
    assert logits.shape == (B, T - 1, 120) and labels.shape == (B, T - 1)
    ours, n_tokens = masked_xent(logits, labels)
    with torch.no_grad():
        theirs = tm.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    assert n_tokens.item() == sum(len(f["target_ids"]) for f in features(tm))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


def test_target_logits_causal_position_predicts_next_token(tiny_text_model):
    """The logits paired with a label are the ones computed from the tokens before it."""
    tm = tiny_text_model("gpt2")
    f = features(tm, 1)[0]
    batch = tm.collate([f])
    logits, labels, _ = tm.target_logits(tm.model, batch)
    n = len(f["source_ids"])
    # the first label (first target token) is predicted from the prompt alone
    assert labels[0, n - 1].item() == f["target_ids"][0]
    with torch.no_grad():
        prompt_only = tm.model(input_ids=torch.tensor([f["source_ids"]])).logits[0, -1]
    torch.testing.assert_close(logits[0, n - 1], prompt_only, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("architecture", ["marian", "bart"])
def test_target_logits_seq2seq_matches_hf_loss(tiny_text_model, architecture):
    tm = tiny_text_model(architecture)
    batch = tm.collate(features(tm))
    logits, labels, _ = tm.target_logits(tm.model, batch)
    assert logits.shape[:2] == labels.shape == batch["labels"].shape
    assert labels is batch["labels"]
    ours, n_tokens = masked_xent(logits, labels)
    with torch.no_grad():
        theirs = tm.model(**batch).loss
    assert n_tokens.item() == (batch["labels"] != IGNORE_INDEX).sum().item()
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-6)


# -- decoding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("architecture", ["marian", "bart", "gpt2"])
@pytest.mark.parametrize("num_beams", [1, 2])
def test_generate_real_model(tiny_text_model, architecture, num_beams):
    tm = tiny_text_model(architecture)
    src = tm.encode_sources(SOURCES)
    out = tm.generate(tm.model, src, num_beams=num_beams, max_new_tokens=6)
    assert isinstance(out, list) and len(out) == len(SOURCES)
    specials = {tm.tokenizer.eos_token_id, tm.tokenizer.pad_token_id}
    for row in out:
        assert isinstance(row, list) and all(isinstance(t, int) for t in row)
        assert len(row) <= 6
        assert not specials & set(row)
    texts = tm.decode(out)
    assert len(texts) == len(out) and all(isinstance(t, str) for t in texts)


@pytest.mark.parametrize("architecture", ["marian", "gpt2"])
def test_generate_batch_equals_one_by_one(tiny_text_model, architecture):
    """Padding (right for encoders, left for decoder-only prompts) does not change the outputs."""
    tm = tiny_text_model(architecture)
    src = tm.encode_sources(SOURCES)
    assert len({len(s) for s in src}) > 1
    batch = tm.generate(tm.model, src, max_new_tokens=6)
    alone = [tm.generate(tm.model, [s], max_new_tokens=6)[0] for s in src]
    assert batch == alone


class FixedGenerate(torch.nn.Module):
    """A stand-in model whose `generate` returns fixed ids (to test post-processing exactly)."""

    def __init__(self, rows):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.rows = rows
        self.kwargs = None

    def generate(self, **kwargs):
        self.kwargs = kwargs
        return torch.tensor(self.rows)


def test_generate_strips_start_eos_and_padding(tiny_text_model):
    tm = tiny_text_model("marian")
    start, eos, pad = tm.model.config.decoder_start_token_id, tm.tokenizer.eos_token_id, tm.tokenizer.pad_token_id
    fake = FixedGenerate([[start, 10, 11, eos, pad, pad],
                          [start, 12, eos, 13, 14, pad],  # anything after EOS is dropped
                          [start, 15, 16, 17, 18, 19]])   # never ended
    out = tm.generate(fake, [[5, eos], [6, 7, eos], [8, eos]], max_new_tokens=5)
    assert out == [[10, 11], [12], [15, 16, 17, 18, 19]]
    assert fake.kwargs["input_ids"].tolist() == [[5, eos, pad], [6, 7, eos], [8, eos, pad]]
    assert fake.kwargs["attention_mask"].tolist() == [[1, 1, 0], [1, 1, 1], [1, 1, 0]]
    config = fake.kwargs["generation_config"]  # the model's own, with this call's settings
    assert (config.eos_token_id, config.pad_token_id, config.max_new_tokens, config.do_sample) == (eos, pad, 5, False)
    assert config.forced_eos_token_id == tm.generation_config.forced_eos_token_id == eos
    assert tm.generation_config.max_new_tokens is None, "the model's config is not changed by a call"


def test_generate_decoder_only_drops_prompt(tiny_text_model):
    tm = tiny_text_model("gpt2")
    eos, pad = tm.tokenizer.eos_token_id, tm.tokenizer.pad_token_id
    prompts = [[5, 6, eos], [7, eos]]
    left_padded = [[5, 6, eos], [pad, 7, eos]]
    fake = FixedGenerate([left_padded[0] + [20, 21, eos, pad], left_padded[1] + [22, 23, 24, 25]])
    out = tm.generate(fake, prompts, max_new_tokens=4)
    assert out == [[20, 21], [22, 23, 24, 25]]
    assert fake.kwargs["input_ids"].tolist() == left_padded
    assert fake.kwargs["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]


# -- saving and loading --------------------------------------------------------------------------


def test_save_loads_with_plain_transformers_and_load_saved(tmp_path):
    tm = build_tiny("marian", seed=3, source_prefix="translate: ")
    tm.save(tmp_path / "final")
    adapter = json.loads((tmp_path / "final" / "seqrl.json").read_text())
    assert adapter["source_prefix"] == "translate: "

    model = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "final")
    assert tokenizer(SOURCES)["input_ids"] == tm.tokenizer(SOURCES)["input_ids"]
    assert tokenizer.eos_token == "</s>" and tokenizer.pad_token == "<pad>"

    loaded = load_saved(tmp_path / "final")
    loaded.model.eval()
    assert loaded.is_seq2seq and loaded.source_prefix == "translate: "
    for key in adapter:  # whatever else seqrl.json records comes back as it was
        assert getattr(loaded, key) == getattr(tm, key), key
    assert loaded.encode_sources(SOURCES) == tm.encode_sources(SOURCES)
    assert loaded.encode_targets(TARGETS) == tm.encode_targets(TARGETS)
    batch = tm.collate(features(tm))
    assert loaded.collate(features(loaded)).keys() == batch.keys()
    with torch.no_grad():
        ref = tm.model(**batch).logits
        torch.testing.assert_close(model(**batch).logits, ref)
        torch.testing.assert_close(loaded.model(**batch).logits, ref)
    src = tm.encode_sources(SOURCES)
    assert loaded.generate(loaded.model, src, max_new_tokens=6) == tm.generate(tm.model, src, max_new_tokens=6)


def test_save_and_load_decoder_only(tmp_path):
    tm = build_tiny("gpt2", seed=4)
    tm.save(tmp_path / "final", model=tm.model)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "final").eval()
    loaded = load_saved(tmp_path / "final")
    loaded.model.eval()
    assert not loaded.is_seq2seq and loaded.source_prefix == ""
    batch = tm.collate(features(tm))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, tm.model(**inputs).logits)
    src = tm.encode_sources(SOURCES)
    assert loaded.generate(loaded.model, src, max_new_tokens=5) == tm.generate(tm.model, src, max_new_tokens=5)


def test_build_from_saved_directory(tmp_path):
    tm = build_tiny("bart", seed=5)
    tm.save(tmp_path / "m")
    again = build(ModelConfig(name_or_path=str(tmp_path / "m")), TokenizerConfig(), DataConfig(path="x"))
    assert again.is_seq2seq and len(again.tokenizer) == 120
    src = tm.encode_sources(SOURCES)
    again.model.eval()
    assert again.generate(again.model, src, max_new_tokens=5) == tm.generate(tm.model, src, max_new_tokens=5)


@pytest.mark.parametrize("loader", ["load_saved", "build", "tokenizer"])
def test_nonexistent_local_path_is_seqrl_error(tmp_path, loader):
    missing = str(tmp_path / "does" / "not" / "exist")
    with pytest.raises(SeqrlError, match=r"could not be loaded|not found"):
        if loader == "load_saved":
            load_saved(missing)
        elif loader == "build":
            build(ModelConfig(name_or_path=missing), TokenizerConfig(), DataConfig(path="x"))
        else:
            build(ModelConfig(architecture="gpt2"), TokenizerConfig(name_or_path=missing), DataConfig(path="x"))


def test_directory_without_model_is_seqrl_error(tmp_path):
    tm = build_tiny("gpt2")
    tm.tokenizer.save_pretrained(tmp_path / "tok_only")  # a tokenizer but no model weights/config
    with pytest.raises(SeqrlError, match=r"model\.name_or_path: .*tok_only holds no config\.json: give the directory"):
        build(ModelConfig(name_or_path=str(tmp_path / "tok_only")), TokenizerConfig(), DataConfig(path="x"))


def test_tokenizer_larger_than_embedding(tmp_path):
    small = build_tiny("gpt2")
    small.save(tmp_path / "model")
    big = train_tokenizer([p["en"] + " " + p["es"] for p in PAIRS] * 2, TokenizerConfig(vocab_size=200))
    assert len(big) > 120
    big.save_pretrained(tmp_path / "big_tok")
    with pytest.raises(SeqrlError, match=r"tokenizer has \d+ tokens but the model's embedding has 120"):
        build(ModelConfig(name_or_path=str(tmp_path / "model")),
              TokenizerConfig(name_or_path=str(tmp_path / "big_tok")), DataConfig(path="x"))


def test_pretrained_tokenizer_without_pad_uses_eos(tmp_path):
    base = train_tokenizer(SOURCES * 3, TokenizerConfig(vocab_size=60))
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, eos_token="</s>", unk_token="<unk>")
    tok.save_pretrained(tmp_path / "tok")
    tm = build(ModelConfig(architecture="gpt2", config=dict(TINY_CONFIGS["gpt2"])),
               TokenizerConfig(name_or_path=str(tmp_path / "tok")), DataConfig(path="x"))
    assert tm.tokenizer.pad_token_id == tm.tokenizer.eos_token_id is not None


def test_pretrained_tokenizer_without_eos_is_rejected(tmp_path):
    base = train_tokenizer(SOURCES * 3, TokenizerConfig(vocab_size=60))
    tok = PreTrainedTokenizerFast(tokenizer_object=base.backend_tokenizer, unk_token="<unk>")
    tok.save_pretrained(tmp_path / "tok")
    with pytest.raises(SeqrlError, match=r"has no eos_token"):
        build(ModelConfig(architecture="gpt2", config=dict(TINY_CONFIGS["gpt2"])),
              TokenizerConfig(name_or_path=str(tmp_path / "tok")), DataConfig(path="x"))


# -- trained tokenizers --------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ["bpe", "unigram"])
def test_trained_tokenizer_round_trips_accents_and_appends_eos(algorithm):
    texts = [p["es"] for p in PAIRS] + [p["en"] for p in PAIRS]
    tok = train_tokenizer(texts, TokenizerConfig(algorithm=algorithm, vocab_size=150))
    assert len(tok) <= 150
    assert [tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token] == ["<pad>", "<s>", "</s>", "<unk>"]
    for text in ["el árbol pequeño", "un río muy viejo y el perro", "el niño come aquí"]:
        ids = tok(text)["input_ids"]
        assert ids[-1] == tok.eos_token_id and ids.count(tok.eos_token_id) == 1
        assert tok.decode(ids, skip_special_tokens=True) == text
        assert tok.unk_token_id not in ids
    assert tok.decode(tok("el árbol pequeño")["input_ids"]) == "el árbol pequeño</s>"
    assert tok("el árbol", add_special_tokens=False)["input_ids"][-1] != tok.eos_token_id


def test_trained_tokenizer_lowercase_and_nfkc():
    tok = train_tokenizer([p["es"] for p in PAIRS], TokenizerConfig(vocab_size=100, lowercase=True))
    assert tok("El ÁRBOL")["input_ids"] == tok("el árbol")["input_ids"]
    # NFKC: a decomposed "a + combining acute" encodes like the precomposed "á"
    assert tok("a\u0301rbol")["input_ids"] == tok("árbol")["input_ids"]


def test_trained_tokenizer_is_deterministic():
    texts = [p["es"] for p in PAIRS]
    a = train_tokenizer(texts, TokenizerConfig(vocab_size=90))
    b = train_tokenizer(texts, TokenizerConfig(vocab_size=90))
    assert a.get_vocab() == b.get_vocab()


def test_module_exports():
    assert modeling.IGNORE_INDEX == -100
    assert modeling.ADAPTER_FILE == "seqrl.json"
