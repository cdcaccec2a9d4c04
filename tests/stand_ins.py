"""Tiny local stand-ins for the pretrained models users start from: the same model class, the
same tokenizer class (trained here on the toy corpus, with the real family's special tokens and
language codes) and a generation config set as the real checkpoint's is. Nothing comes from
the hub. `build_stand_in(family, directory)` saves one and returns its directory, which loads
with `from_pretrained` like the real one.

| family | stands in for | tokenizer kind | generation config as on the hub |
|---|---|---|---|
| marian | Helsinki-NLP/opus-mt-en-es | MarianTokenizer (SentencePiece source/target models) | bad_words_ids [[pad]], forced_eos, num_beams 4 |
| mbart50 | facebook/mbart-large-50-many-to-many-mmt | MBart50Tokenizer (Unigram, 52 language codes) | decoder_start = eos; forced BOS from tgt_lang |
| nllb | facebook/nllb-200-distilled-600M | NllbTokenizer (BPE, 202 language codes) | decoder_start = eos; forced BOS from tgt_lang |
| t5 | t5-small / google/flan-t5-small | T5Tokenizer (Unigram, extra ids) | decoder_start = pad |
| bart | facebook/bart-large-cnn | BartTokenizer (byte-level BPE) | forced_bos 0, forced_eos 2, no_repeat_ngram 3, min_length |
| gpt2 | gpt2 | GPT2Tokenizer (byte-level BPE) | eos = bos = <|endoftext|> |
"""  # noqa: E501  (a markdown table's rows cannot be wrapped)

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from conftest import make_pairs
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

FAMILIES = ("marian", "mbart50", "nllb", "t5", "bart", "gpt2")
TINY = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
        "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64}


def corpus() -> list[str]:
    pairs = make_pairs()
    return [p["en"] for p in pairs] + [p["es"] for p in pairs]


def build_stand_in(family: str, directory: Path, seed: int = 0) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    tokenizer, model = BUILDERS[family](directory)
    tokenizer.save_pretrained(directory)
    model.save_pretrained(directory)
    return directory


def _unigram_vocab(specials: list[str], size: int = 150) -> list[tuple[str, float]]:
    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.train_from_iterator(corpus(), trainers.UnigramTrainer(vocab_size=size, special_tokens=specials,
                                                              unk_token=specials[0], show_progress=False))
    return [tuple(x) for x in json.loads(tok.to_str())["model"]["vocab"]]


def _bpe(specials: list[str], byte_level: bool, size: int = 400) -> tuple[dict, list[tuple[str, str]]]:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False) if byte_level else pre_tokenizers.Metaspace()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_level else []
    tok.train_from_iterator(corpus(), trainers.BpeTrainer(vocab_size=size, special_tokens=specials, show_progress=False,
                                                          initial_alphabet=alphabet))
    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return model["vocab"], merges


def marian(directory: Path):
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        text = Path(tmp) / "text.txt"
        text.write_text("\n".join(corpus()) + "\n")
        spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(directory / "spm"), vocab_size=120,
                                       model_type="unigram", bos_id=-1, eos_id=1, unk_id=2, pad_id=-1,
                                       hard_vocab_limit=False, minloglevel=2)
    for name in ("source.spm", "target.spm"):
        (directory / "spm.model").rename(directory / name) if name == "source.spm" else \
            (directory / name).write_bytes((directory / "source.spm").read_bytes())
    (directory / "spm.vocab").unlink()
    pieces = spm.SentencePieceProcessor(model_file=str(directory / "source.spm"))
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(pieces.get_piece_size()):
        vocab.setdefault(pieces.id_to_piece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    (directory / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(str(directory / "source.spm"), str(directory / "target.spm"),
                                str(directory / "vocab.json"))
    pad = vocab["<pad>"]
    config = MarianConfig(vocab_size=len(vocab), **TINY, pad_token_id=pad, eos_token_id=0, bos_token_id=0,
                          decoder_start_token_id=pad, forced_eos_token_id=0)
    model = MarianMTModel(config)
    gen = model.generation_config
    gen.bad_words_ids, gen.num_beams, gen.max_length = [[pad]], 4, 512
    gen.decoder_start_token_id, gen.pad_token_id, gen.eos_token_id, gen.forced_eos_token_id = pad, pad, 0, 0
    return tokenizer, model


def mbart50(directory: Path):
    from transformers import MBart50Tokenizer, MBartConfig, MBartForConditionalGeneration

    tokenizer = MBart50Tokenizer(vocab=_unigram_vocab(["<unk>", "<s>", "</s>"]), src_lang="en_XX", tgt_lang="es_XX")
    config = MBartConfig(vocab_size=len(tokenizer), **TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                         decoder_start_token_id=2, scale_embedding=True)
    model = MBartForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = 2
    return tokenizer, model


def nllb(directory: Path):
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    vocab, merges = _bpe(["<s>", "<pad>", "</s>", "<unk>"], byte_level=False)
    tokenizer = NllbTokenizer(vocab=vocab, merges=merges, src_lang="eng_Latn", tgt_lang="spa_Latn")
    config = M2M100Config(vocab_size=len(tokenizer), **TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                          decoder_start_token_id=2, scale_embedding=True)
    model = M2M100ForConditionalGeneration(config)
    model.generation_config.decoder_start_token_id = 2
    return tokenizer, model


def t5(directory: Path):
    from transformers import T5Config, T5ForConditionalGeneration, T5Tokenizer

    tokenizer = T5Tokenizer(vocab=_unigram_vocab(["<pad>", "</s>", "<unk>"]), extra_ids=8)
    config = T5Config(vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1,
                      num_heads=2, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return tokenizer, T5ForConditionalGeneration(config)


def bart(directory: Path):
    from transformers import BartConfig, BartForConditionalGeneration, BartTokenizer

    vocab, merges = _bpe(["<s>", "<pad>", "</s>", "<unk>", "<mask>"], byte_level=True)
    tokenizer = BartTokenizer(vocab=vocab, merges=merges)
    config = BartConfig(vocab_size=len(tokenizer), **TINY, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                        decoder_start_token_id=2, forced_bos_token_id=0, forced_eos_token_id=2)
    model = BartForConditionalGeneration(config)
    gen = model.generation_config
    gen.forced_bos_token_id, gen.forced_eos_token_id, gen.no_repeat_ngram_size, gen.min_length = 0, 2, 3, 4
    gen.decoder_start_token_id, gen.num_beams, gen.length_penalty = 2, 4, 2.0
    return tokenizer, model


def gpt2(directory: Path):
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2Tokenizer

    vocab, merges = _bpe(["<|endoftext|>"], byte_level=True)
    tokenizer = GPT2Tokenizer(vocab=vocab, merges=merges)
    config = GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=1, n_head=2, n_positions=128,
                        bos_token_id=0, eos_token_id=0)
    return tokenizer, GPT2LMHeadModel(config)


BUILDERS = {"marian": marian, "mbart50": mbart50, "nllb": nllb, "t5": t5, "bart": bart, "gpt2": gpt2}
