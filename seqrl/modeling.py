"""Build the model and tokenizer, and hide encoder-decoder vs decoder-only behind `TextModel`.

Two ways in: `from_pretrained` (a hub name or a local directory, e.g. a previous run's
`final/`), or a transformers architecture built from a config dict with a tokenizer trained on
the training texts. `TextModel` knows the one thing that differs between the two model
families: how a source is fed (encoder input vs prompt) and where the target's logits come from.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from huggingface_hub.errors import StrictDataclassError
from transformers import (
    CONFIG_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from seqrl import generation
from seqrl.config import DataConfig, ModelConfig, TokenizerConfig
from seqrl.errors import SeqrlError
from seqrl.losses import IGNORE_INDEX
from seqrl.tokenizer import load_or_train, set_languages

ADAPTER_FILE = "seqrl.json"  # written next to a saved model: how sources are fed to it


@dataclass
class TextModel:
    """A model, its tokenizer, and how sources and targets become model inputs."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    is_seq2seq: bool
    source_prefix: str = ""
    max_source_tokens: int | None = None
    max_new_tokens: int | None = None
    """Longest output the run decoded (its `eval.max_new_tokens`): `seqrl generate`'s default."""
    new_weights: tuple[str, ...] = ()
    """Parameters the checkpoint did not hold, initialised at load (transformers' missing keys: a
    warm-started bert2bert's cross-attention); LoRA trains their modules in full (`seqrl.lora`)."""

    # -- encoding -------------------------------------------------------------------------------
    def encode_sources(self, texts: list[str]) -> list[list[int]]:
        """Source ids (prefix added), uncut: `data.truncate` cuts and counts."""
        return self.tokenizer([self.source_prefix + t for t in texts])["input_ids"]

    def encode_targets(self, texts: list[str]) -> list[list[int]]:
        """Target ids ending in EOS, in the model's own convention."""
        if self.is_seq2seq:
            ids = self.tokenizer(text_target=texts)["input_ids"]
            eos = self.tokenizer.eos_token_id
            return [x if x and x[-1] == eos else x + [eos] for x in ids]
        ids = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return [x + [self.tokenizer.eos_token_id] for x in ids]

    @property
    def generation_config(self):
        """The one generation config of rollouts and evaluation (`seqrl.generation.resolve`),
        carried by the model so that `final/` saves it and `generate` uses it by default."""
        return self.model.generation_config

    @property
    def decoder_start(self) -> int:
        return self.generation_config.decoder_start_token_id

    # -- batches --------------------------------------------------------------------------------
    def collate(self, features: list[dict]) -> dict[str, torch.Tensor]:
        """Teacher-forcing batch: model inputs plus `labels` aligned with the returned logits."""
        pad = self.tokenizer.pad_token_id
        if self.is_seq2seq:
            src = [f["source_ids"] for f in features]
            tgt = [f["target_ids"] for f in features]
            start = self.decoder_start
            return {
                "input_ids": pad_rows(src, pad),
                "attention_mask": pad_rows([[1] * len(s) for s in src], 0),
                "decoder_input_ids": pad_rows([[start] + t[:-1] for t in tgt], pad),
                "labels": pad_rows(tgt, IGNORE_INDEX),
            }
        seqs = [f["source_ids"] + f["target_ids"] for f in features]
        labels = [[IGNORE_INDEX] * len(f["source_ids"]) + f["target_ids"] for f in features]
        return {
            "input_ids": pad_rows(seqs, pad),
            "attention_mask": pad_rows([[1] * len(s) for s in seqs], 0),
            "labels": pad_rows(labels, IGNORE_INDEX),
        }

    def target_logits(self, model: torch.nn.Module, batch: dict, hidden: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Logits (B, T, V), the labels (B, T) they predict (IGNORE_INDEX where none), and with
        `hidden` the last decoder layer's states (B, T, D) at the same positions."""
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        out = model(**inputs, output_hidden_states=hidden)
        if self.is_seq2seq:
            states = out.decoder_hidden_states[-1] if hidden else None
            return out.logits, batch["labels"], states
        states = out.hidden_states[-1][:, :-1] if hidden else None
        return out.logits[:, :-1], batch["labels"][:, 1:], states  # position t predicts token t+1

    # -- decoding -------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, model: PreTrainedModel, source_ids: list[list[int]], *, num_beams: int = 1,
                 max_new_tokens: int = 128) -> list[list[int]]:
        """Greedy or beam decoding; returns output ids without prompt, EOS or padding."""
        pad, eos = self.tokenizer.pad_token_id, self.tokenizer.eos_token_id
        device = next(model.parameters()).device
        # Decoder-only prompts are left-padded so every continuation starts at the same column.
        input_ids = pad_rows(source_ids, pad, left=not self.is_seq2seq).to(device)
        mask = pad_rows([[1] * len(s) for s in source_ids], 0, left=not self.is_seq2seq).to(device)
        config = copy.deepcopy(self.generation_config)  # the one config, with this call's length and beams
        config.update(num_beams=num_beams, do_sample=False, max_new_tokens=max_new_tokens, pad_token_id=pad,
                      eos_token_id=eos)
        out = model.generate(input_ids=input_ids, attention_mask=mask, generation_config=config)
        # Drop what precedes the output: the prompt, or the decoder's start token (which is EOS
        # itself for mBART, NLLB and BART, so it must go before looking for the output's EOS).
        out = out[:, input_ids.shape[1]:] if not self.is_seq2seq else out[:, 1:]
        skip = {pad, eos}
        result = []
        for row in out.tolist():
            if eos in row:
                row = row[: row.index(eos)]
            result.append([t for t in row if t not in skip])
        return result

    @property
    def max_positions(self) -> int | None:
        """Longest sequence the model's position embeddings cover (None = no limit known)."""
        return getattr(self.model.config, "max_position_embeddings", None)

    def length_problem(self, source_tokens: int, new_tokens: int) -> str | None:
        return length_problem(self.is_seq2seq, self.max_positions, source_tokens, new_tokens)

    def room_for_output(self, source_tokens: int) -> int | None:
        """The most output tokens the position embeddings allow after `source_tokens` (None = no limit)."""
        if self.max_positions is None:
            return None
        return self.max_positions - 1 if self.is_seq2seq else self.max_positions - source_tokens

    def decode(self, ids: list[list[int]]) -> list[str]:
        return [t.strip() for t in self.tokenizer.batch_decode(ids, skip_special_tokens=True)]

    def save(self, directory: str | Path, model: PreTrainedModel | None = None,
             state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """A directory that plain transformers `from_pretrained` loads (plus seqrl.json); a LoRA
        model is saved merged, with its adapter in `adapter/`. `state_dict`: the model's whole
        weights where its own parameters are sharded (ZeRO-3 and FSDP hold placeholders or
        shards; `seqrl.saving.gathered_weights`), saved instead of theirs."""
        from seqrl import lora  # (peft is imported only where it is used)

        directory, model = Path(directory), model or self.model
        if lora.is_lora(model):
            lora.save_merged(model, directory, state_dict)
        elif state_dict is not None:
            model.save_pretrained(directory, state_dict=state_dict)
        else:
            model.save_pretrained(directory)
        self.tokenizer.save_pretrained(directory)
        (directory / ADAPTER_FILE).write_text(json.dumps(
            {"source_prefix": self.source_prefix, "max_source_tokens": self.max_source_tokens,
             "max_new_tokens": self.max_new_tokens}))


def tied_names(model: torch.nn.Module) -> list[list[str]]:
    """The names of each parameter, grouped: one group per parameter, more than one name where the
    model ties it (BART's shared embeddings and LM head)."""
    names: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)
    return list(names.values())


def share_tied(state_dict: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """`state_dict` (the model's weights gathered from shards, each name its own copy) with the
    names of each parameter the model ties (one parameter under several names: BART's shared
    embeddings and LM head) holding one tensor again, as in the model's own state dict, so that
    `save_pretrained` writes each once, as it does from the model's own weights."""
    out = dict(state_dict)
    for tied in tied_names(model):
        present = [name for name in tied if name in out]
        for name in present[1:]:
            out[name] = out[present[0]]
    return out


def frozen_copy(model: torch.nn.Module) -> torch.nn.Module:
    """An eval-mode copy with no gradients (the KL penalty's reference policy)."""
    reference = copy.deepcopy(model).eval()
    reference.requires_grad_(False)
    return reference


def length_problem(is_seq2seq: bool, limit: int | None, source_tokens: int, new_tokens: int) -> str | None:
    """Why `source_tokens` in and `new_tokens` out would not fit `limit` positions, if so."""
    if limit is None:
        return None
    if is_seq2seq:
        if source_tokens > limit:
            return f"{source_tokens} source tokens exceed the model's {limit} positions"
        if new_tokens + 1 > limit:  # the decoder also holds its start token
            return f"{new_tokens} output tokens (+1 start token) exceed the model's {limit} positions"
    elif source_tokens + new_tokens > limit:
        return f"{source_tokens} prompt + {new_tokens} output tokens exceed the model's {limit} positions"
    return None


def pad_rows(rows: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
    width = max((len(r) for r in rows), default=0)
    if left:
        return torch.tensor([[value] * (width - len(r)) + r for r in rows], dtype=torch.long)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


# ---------------------------------------------------------------------------------------------
# Building


def build(model_cfg: ModelConfig, tok_cfg: TokenizerConfig, data_cfg: DataConfig,
          training_texts: Iterable[str] | None = None) -> TextModel:
    """Load or build the tokenizer and model named by the recipe."""
    check_local("model.name_or_path", model_cfg.name_or_path)
    check_local("tokenizer.name_or_path", tok_cfg.name_or_path, None)  # (tokenizers: no one file they all have)
    tokenizer = load_or_train(model_cfg, tok_cfg, training_texts)
    target_language = set_languages(tokenizer, tok_cfg.src_lang, tok_cfg.tgt_lang)
    model, new_weights = (_load_pretrained(model_cfg) if model_cfg.name_or_path is not None
                          else (_from_config(model_cfg, tokenizer), ()))
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        raise SeqrlError(f"tokenizer has {len(tokenizer)} tokens but the model's embedding has "
                         f"{model.get_input_embeddings().num_embeddings}; use the model's own tokenizer")
    model.generation_config = generation.resolve(model, tokenizer, model_cfg.generation, target_language)
    return TextModel(model, tokenizer, bool(model.config.is_encoder_decoder), data_cfg.source_prefix,
                     data_cfg.max_source_tokens, new_weights=new_weights)


def load_saved(directory: str | Path) -> TextModel:
    """Load a directory written by `TextModel.save` (or any transformers model directory)."""
    check_local("model", str(directory))
    directory = Path(directory)
    cfg = ModelConfig(name_or_path=str(directory))
    tokenizer = load_or_train(cfg, TokenizerConfig(), None)
    extra = json.loads((directory / ADAPTER_FILE).read_text()) if (directory / ADAPTER_FILE).is_file() else {}
    model, _ = _load_pretrained(cfg)
    return TextModel(model, tokenizer, bool(model.config.is_encoder_decoder), extra.get("source_prefix", ""),
                     extra.get("max_source_tokens"), extra.get("max_new_tokens"))


def _load_pretrained(cfg: ModelConfig) -> tuple[PreTrainedModel, tuple[str, ...]]:
    """The model, and the names of its parameters the checkpoint did not hold (initialised here)."""
    name = cfg.name_or_path
    try:
        config = AutoConfig.from_pretrained(name)
        auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
        model, info = auto.from_pretrained(name, dtype=getattr(torch, cfg.dtype), output_loading_info=True)
    except (OSError, ValueError) as err:
        raise SeqrlError(f"model.name_or_path '{name}' could not be loaded (not a model directory, "
                         f"or a hub name while offline): {str(err).splitlines()[0]}") from None
    parameters = {n for n, _ in model.named_parameters(remove_duplicate=False)}  # (missing buffers are not trained)
    return model, tuple(sorted(k for k in info["missing_keys"] if k in parameters))


def architecture_config(cfg: ModelConfig, **ids) -> PretrainedConfig:
    """The transformers config of `model.architecture` with `model.config`, checked key by key
    (transformers would keep a misspelled key as a stray attribute and build the default)."""
    if cfg.architecture not in CONFIG_MAPPING:
        guess = difflib.get_close_matches(cfg.architecture, list(CONFIG_MAPPING), n=1)
        tip = f"did you mean '{guess[0]}'?" if guess else "see transformers' model types (bart, marian, t5, gpt2, ...)"
        raise SeqrlError(f"model.architecture '{cfg.architecture}' is not a transformers model type; {tip}")
    config_class = CONFIG_MAPPING[cfg.architecture]
    if dataclasses.is_dataclass(config_class):
        known = {f.name for f in dataclasses.fields(config_class)} | set(getattr(config_class, "attribute_map", {}))
        for key in cfg.config:
            if key not in known:
                guess = difflib.get_close_matches(key, sorted(known), n=1)
                tip = f"; did you mean 'model.config.{guess[0]}'?" if guess else ""
                raise SeqrlError(f"unknown key 'model.config.{key}' for {cfg.architecture}{tip}")
    try:
        return AutoConfig.for_model(cfg.architecture, **{**ids, **cfg.config})
    except (ValueError, TypeError, StrictDataclassError) as err:
        raise SeqrlError(f"model.config does not fit '{cfg.architecture}': {_first_line(err)}") from None


def _from_config(cfg: ModelConfig, tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    ids = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
           "eos_token_id": tokenizer.eos_token_id,
           "bos_token_id": tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id}
    ids["decoder_start_token_id"] = ids["bos_token_id"]  # read by encoder-decoders only
    ids["forced_eos_token_id"] = ids["eos_token_id"]  # Marian's default (0) would be our <pad>
    config = architecture_config(cfg, **ids)
    auto = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    try:
        return auto.from_config(config, dtype=getattr(torch, cfg.dtype))
    except (ValueError, RuntimeError, TypeError) as err:  # e.g. d_model not divisible by the heads
        raise SeqrlError(f"model.config does not fit '{cfg.architecture}': {_first_line(err)}") from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return (text.splitlines()[0] if text else type(err).__name__)[:200]


def check_local(field_name: str, name: str | None, holds: str | None = "config.json") -> None:
    """A name that can only be a local path must exist (else the hub's error is misleading), and
    a local directory must hold what it is named for (else the loaders' errors are long and name
    other files): `holds` is the file every such directory has."""
    if name is None:
        return
    path = Path(name).expanduser()
    if path.is_dir():
        if holds and not (path / holds).is_file():
            raise SeqrlError(f"{field_name}: {name} holds no {holds}: give the directory a model was saved to "
                             f"(a run's final/ or best/, or save_pretrained's), or a hub name")
        return
    if looks_local(name):
        raise SeqrlError(f"{field_name}: directory not found: {name}")


def looks_local(name: str) -> bool:
    """A path, not a hub name (`org/name`): it starts like one, has more than one separator, or
    its parent directory exists here (`data/bible_en_ez` where `data/` is a local directory)."""
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name:
        return True
    parent = Path(name).parent
    return parent != Path(".") and parent.is_dir()
