"""One generation configuration for training rollouts and evaluation alike.

`resolve` starts from the model's own `generation_config` (what `generate` uses), adds the forced
target-language BOS where the tokenizer's targets begin with a `tgt_lang` token (mBART-50,
NLLB-200, M2M100), and applies the recipe's `model.generation` on top. Evaluation passes it to
`generate`; `Constraints` turns the same settings into the same logits processors (transformers'
own classes, built as `generate` builds them), which `seqrl.rollout` applies at every sampled
position. A sampled MIXER suffix is then drawn from the distribution evaluation decodes from.

Honoured in rollouts: decoder_start_token_id, forced_bos_token_id, forced_eos_token_id,
suppress_tokens, begin_suppress_tokens, bad_words_ids, no_repeat_ngram_size, min_length,
min_new_tokens. Each only removes tokens (sets their logits to -inf), so REINFORCE's
log-probabilities are taken under the same masks (`Constraints.masks`): the policy gradient is
that of the distribution sampled from, and a forced token (probability 1) gets none.

Where a setting meets MIXER's gold prefix, the processors see the whole sequence, gold prefix
included, as `generate` does when it continues a given prefix: an n-gram of the prefix may not
be repeated by the samples, `min_length` / `min_new_tokens` count the gold tokens, and forced
BOS and `begin_suppress_tokens` act only where position 0 itself is sampled (the stage that
samples whole targets). Gold tokens are never changed, even where a setting would forbid them.

Refused at set-up (one line naming the setting): settings that reshape the distribution rather
than mask it (`repetition_penalty`, `encoder_repetition_penalty`, `sequence_bias`,
`exponential_decay_length_penalty`, `guidance_scale`), and `encoder_no_repeat_ngram_size`.
Sampling settings (`do_sample`, `temperature`, `top_k`, `top_p`) are refused too: rollouts sample
at `reinforce.candidates.temperature` from the model's whole distribution (which REINFORCE's
gradient assumes); evaluation decodes greedily or with `eval.num_beams` beams.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import torch
from transformers import GenerationConfig
from transformers.generation.logits_process import (
    ForcedBOSTokenLogitsProcessor,
    ForcedEOSTokenLogitsProcessor,
    LogitsProcessorList,
    MinLengthLogitsProcessor,
    MinNewTokensLengthLogitsProcessor,
    NoBadWordsLogitsProcessor,
    NoRepeatNGramLogitsProcessor,
    SuppressTokensAtBeginLogitsProcessor,
    SuppressTokensLogitsProcessor,
)

from seqrl.errors import SeqrlError, first_sentence
from seqrl.losses import token_logprobs

# Settings rollouts cannot honour (they reshape scores instead of masking them, or act outside the
# per-token processors), with their neutral values.
UNSUPPORTED = {"repetition_penalty": 1.0, "encoder_repetition_penalty": 1.0, "sequence_bias": None,
               "exponential_decay_length_penalty": None, "guidance_scale": None, "encoder_no_repeat_ngram_size": 0,
               "force_words_ids": None, "constraints": None, "stop_strings": None}
# Settings the recipe sets elsewhere, so that one value serves rollouts and evaluation alike.
ELSEWHERE = {"max_new_tokens": "eval.max_new_tokens (evaluation) and data.max_target_tokens (rollouts)",
             "max_length": "eval.max_new_tokens (evaluation) and data.max_target_tokens (rollouts)",
             "num_beams": "eval.num_beams", "do_sample": "reinforce.* (rollouts sample; evaluation is greedy or beam)",
             "temperature": "reinforce.candidates.temperature"}
TRUNCATED_SAMPLING = ("top_k", "top_p")  # rollouts sample the whole distribution, which REINFORCE's gradient assumes


def resolve(model, tokenizer, overrides: dict[str, Any], target_language_token: int | None) -> GenerationConfig:
    """The model's generation config + forced target-language BOS + the recipe's overrides."""
    config = copy.deepcopy(model.generation_config)
    if config.decoder_start_token_id is None and model.config.is_encoder_decoder:
        config.decoder_start_token_id = model.config.decoder_start_token_id
    if target_language_token is not None:
        config.forced_bos_token_id = target_language_token
    known = set(GenerationConfig().to_dict())
    for key, value in overrides.items():
        if key in ELSEWHERE:
            raise SeqrlError(f"model.generation.{key}: set {ELSEWHERE[key]} instead")
        if key in TRUNCATED_SAMPLING:
            raise SeqrlError(f"model.generation.{key}: rollouts sample from the model's whole distribution, which "
                             f"REINFORCE's gradient assumes; remove it")
        if key not in known:
            guess = difflib.get_close_matches(key, sorted(known), n=1)
            tip = f"; did you mean 'model.generation.{guess[0]}'?" if guess else ""
            raise SeqrlError(f"unknown key 'model.generation.{key}' (not a GenerationConfig setting){tip}")
        check_value(key, value, vocabulary_size(model, tokenizer))
        setattr(config, key, value)
    for key, neutral in UNSUPPORTED.items():
        value = getattr(config, key, neutral)
        if value not in (neutral, None):
            raise SeqrlError(f"generation setting {key}={value!r} (the model's generation_config or "
                             f"model.generation) cannot be applied to training rollouts; set "
                             f"model.generation.{key}: {'null' if neutral is None else neutral}")
    try:
        config.validate()
    except ValueError as err:
        raise SeqrlError(f"model.generation does not make a valid generation config: {_first_line(err)}") from None
    return config


# Settings that hold token ids (an int, or lists of them), checked against the vocabulary.
TOKEN_IDS = ("forced_bos_token_id", "forced_eos_token_id", "decoder_start_token_id", "pad_token_id", "bos_token_id",
             "eos_token_id", "suppress_tokens", "begin_suppress_tokens", "bad_words_ids")
_KINDS = {bool: "true or false", int: "a whole number >= 0", float: "a number", str: "a string"}


def check_value(key: str, value: Any, vocabulary: int) -> None:
    """`model.generation.<key>`: token ids within the vocabulary; other settings of the type (and,
    for counts, the range) of transformers' default (`_get_default_generation_params`), which
    GenerationConfig itself does not check until `generate` fails on them."""
    if value is None:
        return
    if key in TOKEN_IDS:
        ids = list(_flatten(value))
        bad = next((i for i in ids if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < vocabulary), None)
        if bad is not None or not ids and not isinstance(value, list):
            raise SeqrlError(f"model.generation.{key}: {bad!r} is not a token id of this model (0 to "
                             f"{vocabulary - 1}); give ids of its vocabulary of {vocabulary}")
        return
    defaults = {"min_new_tokens": 0, **getattr(GenerationConfig, "_get_default_generation_params", dict)()}
    kind = type(defaults.get(key))
    if kind not in _KINDS or key == "early_stopping" and value == "never":  # ("never": beam search's other choice)
        return
    fits = isinstance(value, kind) and not (kind is int and isinstance(value, bool)) \
        or kind is float and isinstance(value, int) and not isinstance(value, bool)
    if not fits or kind is int and value < 0:
        raise SeqrlError(f"model.generation.{key} must be {_KINDS[kind]}, got {value!r}")


def _flatten(value: Any):
    if isinstance(value, (list, tuple)):
        for item in value:
            yield from _flatten(item)
    else:
        yield value


def vocabulary_size(model, tokenizer) -> int:
    """The number of scores the model gives each position (what a token id indexes)."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    size = getattr(head, "out_features", None) or getattr(getattr(head, "weight", None), "shape", [None])[0]
    return int(size or getattr(model.config, "vocab_size", None) or len(tokenizer))


def _first_line(err: BaseException) -> str:
    return first_sentence(err, 160) if str(err).strip() else type(err).__name__


class Constraints:
    """The masking logits processors of a generation config, for sequences of `lead_length`
    tokens before the target (an encoder-decoder's start token; a decoder-only model's padded
    prompt) and at most `max_new` target tokens: as `generate(max_new_tokens=max_new)` builds them."""

    def __init__(self, config: GenerationConfig, eos: int, lead_length: int, max_new: int, device: torch.device):
        eos_ids = torch.tensor([eos], device=device)
        max_length = lead_length + max_new
        processors = LogitsProcessorList()
        if config.no_repeat_ngram_size:
            processors.append(NoRepeatNGramLogitsProcessor(config.no_repeat_ngram_size))
        if config.bad_words_ids is not None:
            processors.append(NoBadWordsLogitsProcessor(config.bad_words_ids, eos_ids))
        if config.min_length:
            processors.append(MinLengthLogitsProcessor(config.min_length, eos_ids, device=device))
        if config.min_new_tokens:
            processors.append(MinNewTokensLengthLogitsProcessor(lead_length, config.min_new_tokens, eos_ids,
                                                                device=device))
        if config.forced_bos_token_id is not None:
            processors.append(ForcedBOSTokenLogitsProcessor(config.forced_bos_token_id))
        if config.forced_eos_token_id is not None:
            processors.append(ForcedEOSTokenLogitsProcessor(max_length, config.forced_eos_token_id, device=device))
        if config.suppress_tokens is not None:
            processors.append(SuppressTokensLogitsProcessor(config.suppress_tokens, device=device))
        if config.begin_suppress_tokens is not None:
            begin = lead_length if lead_length > 1 or config.forced_bos_token_id is None else lead_length + 1
            processors.append(SuppressTokensAtBeginLogitsProcessor(config.begin_suppress_tokens, begin, device=device))
        self.processors, self.lead_length = processors, lead_length

    def __bool__(self) -> bool:
        return bool(self.processors)

    def __call__(self, history: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        """`scores` (N, V) for the token after `history` (N, lead + t), with the banned ones at -inf."""
        return self.processors(history, scores) if self.processors else scores

    def masks(self, history: torch.Tensor, sampled: torch.Tensor, vocab: int) -> dict[int, torch.Tensor]:
        """Additive masks (N, V) (0 or -inf) at the target positions t where some row samples
        (`sampled` (N, T)) and some token is banned; rows not sampled at t get no mask."""
        out = {}
        if not self.processors:
            return out
        zeros = torch.zeros(history.shape[0], vocab, device=history.device)
        for t in sampled.any(dim=0).nonzero().flatten().tolist():  # one sync
            mask = self.processors(history[:, :self.lead_length + t], zeros)
            if mask is not zeros:  # transformers' processors return their input where they do nothing
                out[t] = torch.where(sampled[:, t:t + 1], mask, 0.0)
        # (they never write into it: checked, with which masks ban anything, in one sync)
        checks = torch.stack([zeros.any(), *(torch.isinf(m).any() for m in out.values())]).tolist()
        if checks[0]:
            raise RuntimeError("a logits processor changed its input in place")
        return {t: m for (t, m), keep in zip(out.items(), checks[1:], strict=True) if keep}


def masked_token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, masks: dict[int, torch.Tensor]) -> torch.Tensor:
    """log p(tokens) (N, T) under the model's logits plus, at the positions in `masks`, their
    additive mask: the log-probabilities of the distribution the rollout sampled from.

    The masks are added to `logits` in place (an addition's gradient is the identity, so autograd
    allows it): no second (N, T, V) tensor, which for a 250k vocabulary would not fit."""
    if masks:  # one in-place op on the whole tensor (in-place ops on views of it copy it in backward)
        index = torch.tensor(list(masks), device=logits.device)
        logits.index_add_(1, index, torch.stack(list(masks.values()), dim=1).to(logits.dtype))
    return token_logprobs(logits, tokens)
