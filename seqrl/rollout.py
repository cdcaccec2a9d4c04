"""Rollouts: teacher-force each target's first k_i tokens, then sample the rest, with a KV cache.

One loop serves encoder-decoders and decoder-only models and any mix of prefix lengths: the
shortest common prefix is fed in one pass (prefill), then one token per step, where each row
takes its gold token while t < k_i and its own sample from t = k_i on. The encoder runs once
per source, not once per sample. Sampling is never differentiated: this runs under no_grad on
the unwrapped model in eval mode (no dropout), so samples come from the model's distribution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers.modeling_outputs import BaseModelOutput

from seqrl.modeling import TextModel, pad_rows


@dataclass
class Rollout:
    sequences: torch.Tensor
    """(N, T) target-side tokens: gold for t < prefix_len, sampled after; pad after EOS."""
    prefix_len: torch.Tensor
    """(N,) k_i, the number of gold tokens at the start of each row."""
    lengths: torch.Tensor
    """(N,) tokens up to and including EOS (T where the row never ended)."""

    def rows(self) -> list[list[int]]:
        return [row[:n] for row, n in zip(self.sequences.tolist(), self.lengths.tolist())]


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    greedy: bool = False
    seed: int | None = None
    """With a seed, the noise of global row r at decoding step t is a function of (seed, t, r)
    only (Gumbel-max over noise drawn for all `total_rows`, sliced at `row_offset`): samples do
    not depend on the number of processes, and a resumed run redraws the same ones."""
    row_offset: int = 0
    total_rows: int | None = None


def prefix_lengths(target_lengths: torch.Tensor, n_rl_tokens: int) -> torch.Tensor:
    """k_i = max(L_i - n, 0): the last n tokens of each target are sampled, the rest gold."""
    return (target_lengths - n_rl_tokens).clamp(min=0)


@torch.no_grad()
def rollout(text_model: TextModel, model, source_ids: list[list[int]], target_ids: list[list[int]],
            n_rl_tokens: int, *, num_samples: int, max_len: int, sampling: Sampling) -> Rollout:
    """k = `num_samples` rollouts per source, rows grouped by source (row i is source i // k)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    k, pad, eos = num_samples, text_model.tokenizer.pad_token_id, text_model.tokenizer.eos_token_id
    gold = pad_rows(target_ids, pad)[:, :max_len].to(device).repeat_interleave(k, 0)  # (N, L)
    lengths = torch.tensor([len(t) for t in target_ids], device=device).repeat_interleave(k)
    prefix = prefix_lengths(lengths.clamp(max=max_len), n_rl_tokens)
    n = gold.shape[0]
    seqs = torch.full((n, max_len), pad, dtype=torch.long, device=device)
    seqs[:, :gold.shape[1]] = torch.where(torch.arange(gold.shape[1], device=device) < prefix[:, None], gold, pad)
    decoder = _Seq2SeqDecoder if text_model.is_seq2seq else _CausalDecoder
    step = decoder(text_model, model, source_ids, k, device)
    start = int(prefix.min())
    logits = step.prefill(seqs[:, :start])  # (N, V): distribution of token `start`
    # A row whose whole target is gold (n_rl_tokens = 0) ends at its gold EOS.
    whole_gold = prefix >= lengths.clamp(max=max_len)
    done = whole_gold.clone()
    ended_at = torch.where(whole_gold, lengths.clamp(max=max_len), torch.full_like(lengths, max_len))
    for t in range(start, max_len):
        sampled = _sample(logits, sampling, t)
        token = torch.where(t < prefix, seqs[:, t], sampled)
        token = torch.where(t >= ended_at, torch.full_like(token, pad), token)
        seqs[:, t] = token
        newly = ~done & (token == eos)  # a gold prefix holds no EOS unless the whole target is gold
        ended_at = torch.where(newly, torch.full_like(ended_at, t + 1), ended_at)
        done |= newly
        if t + 1 == max_len or bool(done.all()):
            break
        logits = step.next(token)
    model.train(was_training)
    return Rollout(seqs, prefix, ended_at)


def _sample(logits: torch.Tensor, s: Sampling, t: int) -> torch.Tensor:
    if s.greedy:
        return logits.argmax(dim=-1)
    logits = logits.float() / s.temperature
    if s.top_k:
        kth = torch.topk(logits, min(s.top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if s.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = probs.cumsum(dim=-1) - probs > s.top_p  # keep the smallest set whose mass reaches top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    if s.seed is None:
        return torch.multinomial(torch.softmax(logits, dim=-1), 1).squeeze(-1)
    # Gumbel-max: argmax(logits + G) with G = -log(-log(U)) is an exact draw from softmax(logits).
    g = torch.Generator(device=logits.device).manual_seed((s.seed * 1_000_003 + t) % (2**63))
    total = s.total_rows or logits.shape[0]
    u = torch.rand(total, logits.shape[-1], generator=g, device=logits.device)
    u = u[s.row_offset:s.row_offset + logits.shape[0]].clamp_(min=1e-20)
    return (logits - torch.log(-torch.log(u))).argmax(dim=-1)


class _Seq2SeqDecoder:
    """Encoder once per source (then repeated k times); decoder with a KV cache."""

    def __init__(self, text_model: TextModel, model, source_ids, k: int, device):
        pad = text_model.tokenizer.pad_token_id
        src = pad_rows(source_ids, pad).to(device)
        mask = pad_rows([[1] * len(s) for s in source_ids], 0).to(device)
        hidden = model.get_encoder()(input_ids=src, attention_mask=mask).last_hidden_state
        self.model, self.cache = model, None
        self.encoder = BaseModelOutput(last_hidden_state=hidden.repeat_interleave(k, 0))
        self.mask = mask.repeat_interleave(k, 0)
        self.start = model.config.decoder_start_token_id

    def _run(self, decoder_input_ids: torch.Tensor) -> torch.Tensor:
        out = self.model(encoder_outputs=self.encoder, attention_mask=self.mask, decoder_input_ids=decoder_input_ids,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        return out.logits[:, -1]

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        start = torch.full((prefix.shape[0], 1), self.start, dtype=torch.long, device=prefix.device)
        return self._run(torch.cat([start, prefix], dim=1))

    def next(self, token: torch.Tensor) -> torch.Tensor:
        return self._run(token[:, None])


class _CausalDecoder:
    """Prompts left-padded so every row's continuation starts at the same column."""

    def __init__(self, text_model: TextModel, model, source_ids, k: int, device):
        pad = text_model.tokenizer.pad_token_id
        self.prompt = pad_rows(source_ids, pad, left=True).to(device).repeat_interleave(k, 0)
        self.mask = pad_rows([[1] * len(s) for s in source_ids], 0, left=True).to(device).repeat_interleave(k, 0)
        self.model, self.cache = model, None
        self.next_position = None

    def _run(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        out = self.model(input_ids=input_ids, attention_mask=self.mask, position_ids=positions,
                         past_key_values=self.cache, use_cache=True)
        self.cache = out.past_key_values
        self.next_position = positions[:, -1:] + 1
        return out.logits[:, -1]

    def prefill(self, prefix: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(prefix)], dim=1)
        positions = (self.mask.cumsum(dim=1) - 1).clamp(min=0)
        return self._run(torch.cat([self.prompt, prefix], dim=1), positions)

    def next(self, token: torch.Tensor) -> torch.Tensor:
        self.mask = torch.cat([self.mask, torch.ones_like(token[:, None])], dim=1)
        return self._run(token[:, None], self.next_position)
