"""Tokenizers: a pretrained one loaded (it must be able to end outputs), one trained on the
training texts, and a multilingual one's source and target languages."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator

import numpy as np
from datasets import Dataset
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from seqrl.config import ModelConfig, TokenizerConfig
from seqrl.errors import SeqrlError

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}


def load_or_train(model_cfg: ModelConfig, tok_cfg: TokenizerConfig,
                             training_texts: Iterable[str] | None) -> PreTrainedTokenizerBase:
    name = tok_cfg.name_or_path or model_cfg.name_or_path
    if name is None:
        if training_texts is None:
            raise SeqrlError("no tokenizer: set tokenizer.name_or_path, or give training texts to train one")
        return train_tokenizer(training_texts, tok_cfg)
    return load_tokenizer(name)


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """A pretrained tokenizer that can end outputs (has EOS); pad defaults to EOS if missing."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise SeqrlError(f"tokenizer '{name}' could not be loaded: {str(err).splitlines()[0]}") from None
    if tokenizer.eos_token_id is None:
        raise SeqrlError(f"tokenizer '{name}' has no eos_token; outputs could never end: "
                         f"use a tokenizer with an end-of-sequence token")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # GPT-2 style tokenizers: pad positions are masked anyway
    return tokenizer


def train_tokenizer(texts: Iterable[str], cfg: TokenizerConfig) -> PreTrainedTokenizerFast:
    """Train a BPE or Unigram tokenizer that appends </s> to every encoded text."""
    specials = list(SPECIAL_TOKENS.values())
    if cfg.algorithm == "bpe":
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                      special_tokens=specials, show_progress=False)
    else:
        tok = Tokenizer(models.Unigram())
        trainer = trainers.UnigramTrainer(vocab_size=cfg.vocab_size, special_tokens=specials,
                                          unk_token="<unk>", show_progress=False)
    norms = [normalizers.NFKC()] + ([normalizers.Lowercase()] if cfg.lowercase else [])
    tok.normalizer = normalizers.Sequence(norms)
    # Punctuation is split off ("earth." -> "earth", ".") so words are not learnt once per mark.
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Metaspace(), pre_tokenizers.Punctuation()])
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainer=trainer)
    eos = tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>",
                                                       special_tokens=[("</s>", eos)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, **SPECIAL_TOKENS)


def training_texts(train: Dataset, source_field: str, target_field: str, source_prefix: str,
                   max_examples: int | None, seed: int) -> tuple[Iterator[list[str]], int]:
    """Batches of what a tokenizer trains on, read from the Arrow table a batch at a time: the
    sources (prefixed), then the targets, of at most `max_examples` training examples drawn at
    random with `seed` (in their order); also how many examples that is."""
    rows = train
    if max_examples is not None and max_examples < len(train):
        drawn = np.sort(np.random.default_rng(seed).choice(len(train), max_examples, replace=False))
        rows = train.select(drawn, keep_in_memory=True)  # (the indices in memory, no cache file written)

    def batches() -> Iterator[list[str]]:
        for name, prefix in ((source_field, source_prefix), (target_field, "")):
            for batch in rows.select_columns([name]).iter(batch_size=1000):
                yield [prefix + text for text in batch[name] if isinstance(text, str)]

    return batches(), len(rows)


def set_languages(tokenizer: PreTrainedTokenizerBase, src_lang: str | None, tgt_lang: str | None) -> int | None:
    """Set a multilingual tokenizer's source and target language; return the target language's
    token id when the tokenizer starts targets with it (generation must then be forced to it)."""
    for field_name, code in (("src_lang", src_lang), ("tgt_lang", tgt_lang)):
        if code is None:
            continue
        if not hasattr(tokenizer, field_name):
            raise SeqrlError(f"tokenizer.{field_name}: {type(tokenizer).__name__} has no language codes; "
                             f"remove tokenizer.{field_name}")
        language_token(tokenizer, code, f"tokenizer.{field_name}")
        setattr(tokenizer, field_name, code)
    if tgt_lang is None:
        return None
    token = language_token(tokenizer, tgt_lang, "tokenizer.tgt_lang")
    first = tokenizer(text_target=["a"])["input_ids"][0][:1]
    return token if first == [token] else None


def language_token(tokenizer: PreTrainedTokenizerBase, code: str, field_name: str) -> int:
    """The id of language `code`'s special token (`de_DE`, `deu_Latn`, or M2M100's `__de__`)."""
    specials = set(tokenizer.all_special_tokens)
    for token in (code, f"__{code}__"):
        if token in specials:
            return tokenizer.convert_tokens_to_ids(token)
    codes = sorted(t.strip("_") for t in specials if t.strip("_") and t not in (
        tokenizer.eos_token, tokenizer.bos_token, tokenizer.pad_token, tokenizer.unk_token, tokenizer.mask_token))
    same_language = [c for c in codes if c.split("_")[0].lower() == code.split("_")[0].lower()]
    guess = same_language or difflib.get_close_matches(code, codes, n=1)
    known = f"it knows {', '.join(codes[:6])}{', ...' if len(codes) > 6 else ''}"
    tip = f"did you mean '{guess[0]}'?" if guess else known
    raise SeqrlError(f"{field_name}: the tokenizer has no language code '{code}'; {tip}")
