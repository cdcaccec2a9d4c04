"""Rollouts: teacher-force each target's first k_i tokens, then sample the rest, with a KV cache.

One loop serves encoder-decoders and decoder-only models and any mix of prefix lengths: the
shortest common prefix is fed in one pass (prefill), then one token per step, where each row
takes its gold token while t < k_i and its own sample from t = k_i on. The encoder runs once
per source, not once per sample. Sampling is never differentiated: this runs under no_grad on
the unwrapped model in eval mode (no dropout), so samples come from the model's distribution,
masked by the generation config's constraints exactly as evaluation's `generate` masks it
(`seqrl.generation`: forced and suppressed tokens, banned words and n-grams, minimum lengths).

The loop itself has no host sync (no `.item()`, `.tolist()` or `bool(tensor)`) except the "all
rows ended?" check every `Decoding.check_every` tokens; a row that ended is padded until then,
so the samples do not depend on it. The KV cache, static or dynamic, and the optional compiled
step are `seqrl.decoders`'; the draw itself is `seqrl.sampling`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from accelerate.utils import extract_model_from_parallel
from transformers.modeling_outputs import BaseModelOutput

from seqrl.decoders import DEFAULT_DECODING, CausalDecoder, Decoding, Seq2SeqDecoder, accepts, base_model
from seqrl.generation import Constraints
from seqrl.losses import IGNORE_INDEX
from seqrl.modeling import TextModel, pad_rows
from seqrl.sampling import Sampling, Uniforms, sample

__all__ = ["Decoding", "Rollout", "Sampling", "prefix_lengths", "rollout", "rollout_logits"]


@dataclass
class Rollout:
    sequences: torch.Tensor
    """(N, T) target-side tokens: gold for t < prefix_len, sampled after; pad after EOS."""
    prefix_len: torch.Tensor
    """(N,) k_i, the number of gold tokens at the start of each row."""
    lengths: torch.Tensor
    """(N,) tokens up to and including EOS (T where the row never ended)."""
    source: torch.Tensor
    """(B, S) the B = N / k sources, padded (on the left for decoder-only prompts)."""
    source_mask: torch.Tensor
    """(B, S) 1 on source tokens, 0 on padding."""
    lead: torch.Tensor
    """(N, P) what precedes the target in the constraints' view: an encoder-decoder's start
    token, a decoder-only model's (left-padded) prompt."""
    constraints: Constraints
    """The masking logits processors the samples were drawn under."""

    @property
    def num_sources(self) -> int:
        return self.source.shape[0]

    def rows(self) -> list[list[int]]:
        return [row[:n] for row, n in zip(self.sequences.tolist(), self.lengths.tolist(), strict=True)]

    def target_masks(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, T) masks of the gold-prefix positions and of the sampled positions (none past EOS)."""
        position = torch.arange(self.sequences.shape[1], device=self.sequences.device)
        valid = position < self.lengths[:, None]
        gold = position < self.prefix_len[:, None]
        return valid & gold, valid & ~gold

    def join(self, other: Rollout) -> Rollout:
        """Both rollouts' rows for each source (its rows here, then its rows there), for two
        decodes of the same sources (same padding, lead and constraints)."""
        b = self.num_sources
        k, j = self.sequences.shape[0] // b, other.sequences.shape[0] // b
        order = torch.cat([torch.arange(b * k).view(b, k), b * k + torch.arange(b * j).view(b, j)], 1).view(-1)
        order = order.to(self.sequences.device)
        both = {name: torch.cat([getattr(self, name), getattr(other, name)])[order]
                for name in ("sequences", "prefix_len", "lengths", "lead")}
        return Rollout(both["sequences"], both["prefix_len"], both["lengths"], self.source, self.source_mask,
                       both["lead"], self.constraints)

    def sample_masks(self, sampled: torch.Tensor, vocab: int) -> dict[int, torch.Tensor]:
        """The constraints' additive masks at the sampled positions (`sampled` (N, T)), for
        REINFORCE's log-probabilities (`seqrl.generation.masked_token_logprobs`)."""
        return self.constraints.masks(torch.cat([self.lead, self.sequences], dim=1), sampled, vocab)


def prefix_lengths(target_lengths: torch.Tensor, n_rl_tokens: int) -> torch.Tensor:
    """k_i = max(L_i - n, 0): the last n tokens of each target are sampled, the rest gold."""
    return (target_lengths - n_rl_tokens).clamp(min=0)


@dataclass
class Decode:
    """The state a decoding loop starts from (`start_decode`), shared by sampling (`rollout`) and
    beam search (`seqrl.beam`): rows grouped by source, gold prefixes written, encoder run."""
    pad: int
    eos: int
    prefix: torch.Tensor
    """(N,) gold tokens at the start of each row."""
    source: torch.Tensor
    source_mask: torch.Tensor
    lead: torch.Tensor
    constraints: Constraints
    history: torch.Tensor
    """(N, P + max_len): lead + target so far (what the constraints read)."""
    seqs: torch.Tensor
    """(N, max_len): the target part of `history`, a view."""
    step: Seq2SeqDecoder | CausalDecoder
    start: int
    """The shortest gold prefix: decoding starts at this position."""
    logits: torch.Tensor
    """(N, V): the distribution of token `start`."""
    done: torch.Tensor
    ended_at: torch.Tensor

    def advance(self, t: int, token: torch.Tensor, check_every: int) -> bool:
        """Write position t's tokens (N,), mark the rows they end; True when decoding can stop:
        at the last position, or when every row has ended (looked at every `check_every` tokens:
        the look is a host sync)."""
        self.seqs[:, t] = token
        newly = ~self.done & (token == self.eos)  # a gold prefix holds no EOS unless the whole target is gold
        self.ended_at = torch.where(newly, t + 1, self.ended_at)
        self.done |= newly
        return t + 1 == self.seqs.shape[1] or ((t + 1 - self.start) % check_every == 0 and bool(self.done.all()))

    def result(self) -> Rollout:
        return Rollout(self.seqs, self.prefix, self.ended_at, self.source, self.source_mask, self.lead,
                       self.constraints)


def start_decode(text_model: TextModel, model, source_ids: list[list[int]], target_ids: list[list[int]],
                 n_rl_tokens: int, k: int, max_len: int, decoding: Decoding) -> Decode:
    device = next(model.parameters()).device
    pad, eos = text_model.tokenizer.pad_token_id, text_model.tokenizer.eos_token_id
    gold = pad_rows(target_ids, pad)[:, :max_len].to(device).repeat_interleave(k, 0)  # (N, L)
    lengths = torch.tensor([len(t) for t in target_ids], device=device).repeat_interleave(k)
    prefix = prefix_lengths(lengths.clamp(max=max_len), n_rl_tokens)
    n = gold.shape[0]
    left = not text_model.is_seq2seq  # prompts left-padded: every continuation starts at one column
    source = pad_rows(source_ids, pad, left=left).to(device)
    source_mask = pad_rows([[1] * len(s) for s in source_ids], 0, left=left).to(device)
    lead = (source.repeat_interleave(k, 0) if left else
            torch.full((n, 1), text_model.decoder_start, dtype=torch.long, device=device))
    constraints = Constraints(text_model.generation_config, eos, lead.shape[1], max_len, device)
    # One buffer: the constraints read lead + target so far, the loop writes the target part.
    history = torch.cat([lead, torch.full((n, max_len), pad, dtype=torch.long, device=device)], dim=1)
    seqs = history[:, lead.shape[1]:]  # (N, max_len), a view
    seqs[:, :gold.shape[1]] = torch.where(torch.arange(gold.shape[1], device=device) < prefix[:, None], gold, pad)
    step = (Seq2SeqDecoder if text_model.is_seq2seq else CausalDecoder)(model, source, source_mask, k, lead,
                                                                       max_len, decoding)
    start = int(prefix.min())  # (one sync per rollout)
    logits = step.prefill(seqs[:, :start])  # (N, V): distribution of token `start`
    # A row whose whole target is gold (n_rl_tokens = 0) ends at its gold EOS; a row without a
    # target (`data.reference_free`) is decoded whole.
    whole_gold = (prefix >= lengths.clamp(max=max_len)) & (lengths > 0)
    ended_at = torch.where(whole_gold, lengths.clamp(max=max_len), torch.full_like(lengths, max_len))
    return Decode(pad, eos, prefix, source, source_mask, lead, constraints, history, seqs, step, start, logits,
                  whole_gold.clone(), ended_at)


@torch.no_grad()
def rollout(text_model: TextModel, model, source_ids: list[list[int]], target_ids: list[list[int]],
            n_rl_tokens: int, *, num_samples: int, max_len: int, sampling: Sampling,
            decoding: Decoding = DEFAULT_DECODING) -> Rollout:
    """k = `num_samples` rollouts per source, rows grouped by source (row i is source i // k)."""
    was_training = model.training
    model.eval()
    d = start_decode(text_model, model, source_ids, target_ids, n_rl_tokens, num_samples, max_len, decoding)
    logits, uniforms = d.logits, Uniforms(sampling, d.seqs.shape[0], max_len, d.seqs.device)
    pads = torch.full_like(d.ended_at, d.pad)
    for t in range(d.start, max_len):
        sampled = sample(d.constraints(d.history[:, :d.lead.shape[1] + t], logits), sampling, uniforms.at(t))
        token = torch.where(t < d.prefix, d.seqs[:, t], sampled)
        token = torch.where(t >= d.ended_at, pads, token)
        if d.advance(t, token, decoding.check_every):
            break
        logits = d.step.next(token)
    model.train(was_training)
    return d.result()


def rollout_logits(model, ro: Rollout, *, is_seq2seq: bool, hidden: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The teacher-forced pass over the rollout rows (with gradients, on the possibly wrapped
    model): logits (N, T, V), the labels they predict (N, T; IGNORE_INDEX after each row's end)
    and with `hidden` the last decoder states (N, T, D) at the same positions.

    Built from the rollout's tensors, with no re-tokenizing: an encoder-decoder encodes each
    source once for its k rows (k - 1 fewer encoder passes, forward and backward); a decoder-only
    model runs each prompt once for its k rows too, and computes no logits over the prompt.
    Call it under the accelerator's autocast: the encoder / prompt pass runs outside the wrapper."""
    n, width = ro.sequences.shape
    k = n // ro.source.shape[0]
    valid = torch.arange(width, device=ro.sequences.device) < ro.lengths[:, None]
    labels = ro.sequences.masked_fill(~valid, IGNORE_INDEX)
    source_mask = ro.source_mask.repeat_interleave(k, 0)
    inner = extract_model_from_parallel(model)
    if is_seq2seq:
        # The encoder runs outside the wrapper's forward; DDP still averages its gradients (they
        # reach its parameters through the states passed in, where DDP's hooks fire).
        states = inner.get_encoder()(input_ids=ro.source, attention_mask=ro.source_mask).last_hidden_state
        out = model(encoder_outputs=BaseModelOutput(last_hidden_state=states.repeat_interleave(k, 0)),
                    attention_mask=source_mask, decoder_input_ids=torch.cat([ro.lead, ro.sequences[:, :-1]], 1),
                    output_hidden_states=hidden)
        return out.logits, labels, out.decoder_hidden_states[-1] if hidden else None
    # Decoder-only: the prompt once per source (with gradients, outside the wrapper like the
    # encoder above), its KV cache repeated for the k rows; then the rows' tokens but the last.
    if inner.training and _checkpointing(base_model(inner)):
        # gradient checkpointing keeps no KV cache in training: one pass over prompt + tokens
        mask = torch.cat([source_mask, valid[:, :-1].long()], 1)
        out = model(input_ids=torch.cat([ro.lead, ro.sequences[:, :-1]], 1), attention_mask=mask,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0), output_hidden_states=hidden)
        prompt = ro.lead.shape[1] - 1  # the last prompt position predicts token 0
        return out.logits[:, prompt:], labels, out.hidden_states[-1][:, prompt:] if hidden else None
    keep = {"logits_to_keep": 1} if accepts(type(base_model(inner)), "logits_to_keep") else {}
    first = inner(input_ids=ro.source, attention_mask=ro.source_mask, use_cache=True,
                  position_ids=(ro.source_mask.cumsum(1) - 1).clamp(min=0), output_hidden_states=hidden, **keep)
    logits = [first.logits[:, -1:].repeat_interleave(k, 0)]  # the last prompt position predicts token 0
    states = [first.hidden_states[-1][:, -1:].repeat_interleave(k, 0)] if hidden else []
    if width > 1:
        cache = first.cache
        cache.batch_repeat_interleave(k)
        mask = torch.cat([source_mask, valid[:, :-1].long()], 1)
        out = model(input_ids=ro.sequences[:, :-1], attention_mask=mask, cache=cache, use_cache=True,
                    position_ids=(mask.cumsum(1) - 1).clamp(min=0)[:, -(width - 1):], output_hidden_states=hidden)
        logits.append(out.logits)
        states += [out.hidden_states[-1]] if hidden else []
    return torch.cat(logits, 1), labels, torch.cat(states, 1) if hidden else None


def _checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on (transformers 5 renamed the attribute)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))
