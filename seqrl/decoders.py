"""The model side of a rollout: encode once, then one forward pass per decoded token.

Two KV caches:
- `dynamic`: transformers' DynamicCache, which grows by concatenation each token.
- `static`: transformers' StaticCache (EncoderDecoderCache of two for encoder-decoders), allocated
  once at its final size and written in place. Every per-token call then has the same shapes:
  the sources (or prompts) are padded to `source_width`, the attention mask is one buffer of the
  final length (a future position is masked by causality, not by the buffer), and positions
  advance in place. That is what lets `torch.compile` (CUDA graphs on a GPU) run the step.
  The attention masks are built once per rollout, with transformers' own mask functions, and
  passed in 4-D: built per token, they read the padding mask back to the host (`mask.all()`, to
  decide whether SDPA may skip it), one sync per token.

The compiled step is built once per model and kept (on the model's Python object) so that later
rollouts reuse it; the cache is reused too while shapes stay the same, because a CUDA graph
records the addresses of the cache tensors. The prefill of the gold prefix runs eagerly (its
length changes with Δ).
"""

from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import torch
import torch.nn.functional as F
from transformers import DynamicCache, EncoderDecoderCache, StaticCache
from transformers.masking_utils import create_bidirectional_mask, create_causal_mask
from transformers.modeling_outputs import BaseModelOutput

from seqrl.errors import SeqrlError


@dataclass
class CompileLog:
    """Seconds spent in calls that compiled (the first call of each new shape): reported apart
    from step time."""
    seconds: float = 0.0
    calls: int = 0


@dataclass(frozen=True)
class Decoding:
    """How a rollout runs (never what it samples: every setting draws the same tokens)."""
    cache: Literal["static", "dynamic"] = "dynamic"
    compile: bool = False
    check_every: int = 1
    """Look for "every row has ended" (a host sync) every this many tokens; ended rows are
    padded in the meantime, so the samples are the same for any value."""
    source_width: int | None = None
    """Pad sources / prompts to this many tokens for the static cache (fixed shapes)."""
    compile_log: CompileLog = field(default_factory=CompileLog, compare=False)


DEFAULT_DECODING = Decoding()  # (eager, dynamic cache: what a rollout called without a `Decoding` gets)

def resolve(kv_cache: str, compile: bool | None, check_every: int | None, model, device: torch.device,
            source_width: int) -> Decoding:
    """The recipe's `reinforce.decoding` (kv_cache, compile, check_every) for this model and device."""
    static_ok = supports_static_cache(model)
    name = type(base_model(model)).__name__
    if kv_cache == "static" and not static_ok:
        raise SeqrlError(f"reinforce.decoding.kv_cache: static: transformers does not mark {name} as compilable with a "
                         f"static cache; set reinforce.decoding.kv_cache: auto (or dynamic)")
    cache = "static" if kv_cache == "static" or (kv_cache == "auto" and static_ok) else "dynamic"
    if compile and cache != "static":
        raise SeqrlError(f"reinforce.decoding.compile: true needs the static KV cache, which {name} does not get here "
                         f"(reinforce.decoding.kv_cache: {kv_cache}); set reinforce.decoding.compile: false")
    gpu = device.type != "cpu"
    return Decoding(cache, compile if compile is not None else gpu and cache == "static",
                    check_every or (8 if gpu else 1), source_width if cache == "static" else None)


def base_model(model):
    """A peft model's underlying transformers model (the model itself otherwise)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


@cache
def accepts(model_class: type, argument: str) -> bool:
    return argument in inspect.signature(model_class.forward).parameters


def supports_static_cache(model) -> bool:
    """transformers' own flag for models whose forward runs with a static cache under compile."""
    return bool(getattr(type(base_model(model)), "_can_compile_fullgraph", False))


def compile_step(forward, cuda: bool):
    """torch.compile for fixed shapes; on a GPU, CUDA graphs ("reduce-overhead") replay the step's
    kernels in one launch."""
    return torch.compile(forward, mode="reduce-overhead" if cuda else None, dynamic=False)


class _Step:
    """The per-token forward: eager, or compiled once per model and kept on it."""

    def __init__(self, model, decoding: Decoding):
        self.model, self.compiled, self.log = model, None, decoding.compile_log
        if decoding.compile:
            self.compiled = getattr(model, "_seqrl_compiled_forward", None)
            if self.compiled is None:
                self.compiled = compile_step(model.forward, cuda=next(model.parameters()).is_cuda)
                model._seqrl_compiled_forward = self.compiled  # (a plain attribute: not a submodule)
                model._seqrl_compiled_shapes = set()

    def __call__(self, key: tuple, **inputs):
        if self.compiled is None:
            return self.model(**inputs)
        seen = self.model._seqrl_compiled_shapes
        if key in seen:
            return self.compiled(**inputs)
        start = time.perf_counter()
        out = self.compiled(**inputs)
        self.log.seconds += time.perf_counter() - start
        self.log.calls += 1
        seen.add(key)
        return out


def _static_cache(model, config, rows: int, length: int, cross_length: int | None):
    """A static cache reused across rollouts of the same shape (reset each time): a CUDA graph
    records its tensors' addresses. (Kept per shape: the self-critical baseline's greedy rollout
    has 1 row per source, the sampled one k.)"""
    kept = model.__dict__.setdefault("_seqrl_static_caches", {})
    key = (rows, length, cross_length)
    if key in kept:
        kept[key].reset()
        return kept[key]
    cache = StaticCache(config=config, max_cache_len=length)
    if cross_length is not None:
        cache = EncoderDecoderCache(cache, StaticCache(config=config, max_cache_len=cross_length))
    kept[key] = cache
    return cache


class Seq2SeqDecoder:
    """Encoder once per source (then repeated k times); decoder with a KV cache."""

    def __init__(self, model, source: torch.Tensor, source_mask: torch.Tensor, k: int, lead: torch.Tensor,
                 max_len: int, decoding: Decoding):
        hidden = model.get_encoder()(input_ids=source, attention_mask=source_mask).last_hidden_state
        self.static = decoding.cache == "static"
        if self.static and decoding.source_width and source.shape[1] < decoding.source_width:
            pad = decoding.source_width - source.shape[1]  # (padded positions are masked out)
            hidden, source_mask = F.pad(hidden, (0, 0, 0, pad)), F.pad(source_mask, (0, pad))
        self.encoder = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(k, 0))
        self.mask = source_mask.repeat_interleave(k, 0)
        self.start = lead  # (N, 1) the decoder start token
        config = base_model(model).config
        # start token + every target token but the last is fed: max_len + 1 covers an all-gold prefill
        self.cache = (_static_cache(model, config.get_text_config(decoder=True), self.mask.shape[0], max_len + 1,
                                    hidden.shape[1]) if self.static
                      else EncoderDecoderCache(DynamicCache(), DynamicCache()))
        self.model, self.step = model, _Step(model, decoding)
        # static: the cross-attention mask of one query token, the same at every step (None: no
        # padding), and the decoder's causal mask over the whole cache, row p for the query at p
        self.step_mask, self.causal, self.fed = self.mask, None, 0
        if self.static:
            states = self.encoder.last_hidden_state
            self.step_mask = create_bidirectional_mask(config, states[:, :1], self.mask, encoder_hidden_states=states)
            length = max_len + 1
            self.causal = create_causal_mask(config, states.new_empty(states.shape[0], length, 1),
                                             self.mask.new_ones(states.shape[0], length), None,
                                             allow_is_causal_skip=False)

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i continues row rows[i] (always one of the same source's rows, so the
        encoder states and masks stay as they are)."""
        self.cache.reorder_cache(rows)

    def _causal(self, first: int, last: int) -> torch.Tensor | None:
        return self.causal[:, :, first:last] if self.static else None

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        self.fed = 1 + prefix.shape[1]
        out = self.model(encoder_outputs=self.encoder, attention_mask=self.mask,
                         decoder_input_ids=torch.cat([self.start, prefix], dim=1),
                         decoder_attention_mask=self._causal(0, self.fed), cache=self.cache, use_cache=True)
        return out.logits[:, -1]

    def next(self, token: torch.Tensor) -> torch.Tensor:
        self.fed += 1
        out = self.step(("seq2seq", *self.mask.shape), encoder_outputs=self.encoder, attention_mask=self.step_mask,
                        decoder_input_ids=token[:, None], decoder_attention_mask=self._causal(self.fed - 1, self.fed),
                        cache=self.cache, use_cache=True)
        return out.logits[:, -1]


class CausalDecoder:
    """Left-padded prompts, so every row's continuation starts at the same column."""

    def __init__(self, model, source: torch.Tensor, source_mask: torch.Tensor, k: int, lead: torch.Tensor,
                 max_len: int, decoding: Decoding):
        prompt, mask = lead, source_mask.repeat_interleave(k, 0)  # lead: the prompts, repeated
        self.static = decoding.cache == "static"
        if self.static and decoding.source_width and prompt.shape[1] < decoding.source_width:
            pad = decoding.source_width - prompt.shape[1]  # more left padding: positions are unchanged
            prompt, mask = F.pad(prompt, (pad, 0), value=0), F.pad(mask, (pad, 0))
        self.prompt, self.width = prompt, prompt.shape[1]
        # One mask buffer of the final length: prompt padding 0, everything after it 1.
        self.mask = torch.cat([mask, mask.new_ones(mask.shape[0], max_len + 1)], dim=1)
        self.positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
        self.keep = {"logits_to_keep": 1} if accepts(type(base_model(model)), "logits_to_keep") else {}
        config = base_model(model).config.get_text_config(decoder=True)
        self.cache = (_static_cache(model, config, self.mask.shape[0], self.mask.shape[1], None) if self.static
                      else DynamicCache())
        self.model, self.step, self.fed = model, _Step(model, decoding), 0
        if self.static:  # (N, 1, L, L): row p is what the query at position p may see
            shape_only = torch.empty(*self.mask.shape, 1, dtype=next(model.parameters()).dtype, device=mask.device)
            self.full_mask = create_causal_mask(config, shape_only, self.mask, None, position_ids=self.positions,
                                                allow_is_causal_skip=False)

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i continues row rows[i] (one of the same prompt's rows)."""
        self.cache.reorder_cache(rows)

    def _mask(self, first: int, last: int) -> torch.Tensor:
        """For the queries at positions first..last-1: static, rows of the 4-D mask over the whole
        cache; dynamic, the 2-D mask of what was fed so far, as DynamicCache expects."""
        return self.full_mask[:, :, first:last] if self.static else self.mask[:, :last]

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        self.fed = self.width + prefix.shape[1]
        out = self.model(input_ids=torch.cat([self.prompt, prefix], dim=1), attention_mask=self._mask(0, self.fed),
                         position_ids=self.positions[:, :self.fed], cache=self.cache, use_cache=True, **self.keep)
        return out.logits[:, -1]

    def next(self, token: torch.Tensor) -> torch.Tensor:
        self.fed += 1
        out = self.step(("causal", *self.mask.shape), input_ids=token[:, None],
                        attention_mask=self._mask(self.fed - 1, self.fed),
                        position_ids=self.positions[:, self.fed - 1:self.fed], cache=self.cache, use_cache=True,
                        **self.keep)
        return out.logits[:, -1]
