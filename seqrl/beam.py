"""Beam-search candidates for expected-risk training (Edunov et al. 2018 found beam candidates
better than samples for the risk loss): k beams per source, each continuing the source's gold
prefix, from our own decoder and KV cache (`seqrl.rollout.start_decode`), under the same
generation constraints as sampled rollouts.

Where this departs from `generate`'s beam search, and why:
- A beam that emits EOS stays in the beam with its final score (continued by padding at no
  cost), instead of moving to a separate list of finished hypotheses: the k rows of a source are
  then exactly its k best-scoring candidates, finished or not, which is what the risk needs.
- No length penalty: scores are summed log-probabilities of the suffix, the quantity the risk's
  q = softmax(alpha * log p) is built on.
- Rows whose prefix is still gold do not search; a row identical to its source's first row is
  not expanded (at the first searched position all k are), and where fewer than k candidates
  are allowed (a forced token) the best one fills the beam: duplicates, never banned tokens.
Deterministic: the same candidates on 1 or N processes, and in a resumed run.
"""

from __future__ import annotations

import dataclasses

import torch

from seqrl.decoders import DEFAULT_DECODING, Decoding
from seqrl.modeling import TextModel
from seqrl.rollout import Rollout, start_decode


@torch.no_grad()
def beam_rollout(text_model: TextModel, model, source_ids: list[list[int]], target_ids: list[list[int]],
                 n_rl_tokens: int, *, num_beams: int, max_len: int, decoding: Decoding = DEFAULT_DECODING) -> Rollout:
    """k = `num_beams` candidates per source, rows grouped by source, best first."""
    was_training = model.training
    model.eval()
    k = num_beams
    # (eager, dynamic cache: reordering replaces the cache's tensors, which a compiled step must not see)
    d = start_decode(text_model, model, source_ids, target_ids, n_rl_tokens, k, max_len,
                     dataclasses.replace(decoding, cache="dynamic", compile=False, source_width=None))
    seqs, prefix, logits = d.seqs, d.prefix, d.logits
    n = seqs.shape[0]
    rows = torch.arange(n, device=seqs.device)
    first_row = rows - rows % k                  # each row's source's first row
    whole_gold = d.done.clone()                  # (sources whose whole target is gold never search)
    scores = torch.zeros(n, device=seqs.device)
    for t in range(d.start, max_len):
        logp = torch.log_softmax(d.constraints(d.history[:, :d.lead.shape[1] + t], logits).float(), dim=-1)
        # an ended row continues with padding only, keeping its score
        ended = torch.full_like(logp, float("-inf"))
        ended[:, d.pad] = 0.0
        candidates = scores[:, None] + torch.where(d.done[:, None], ended, logp)         # (N, V)
        # a row identical to its source's first row would only repeat its candidates: expand the first
        duplicate = (rows != first_row) & (d.history == d.history[first_row]).all(dim=1)
        candidates = candidates.masked_fill(duplicate[:, None], float("-inf"))
        best, index = candidates.view(-1, k * logp.shape[1]).topk(k, dim=1)              # (B, k)
        # fewer than k finite candidates (a forced token): the best one fills the rest of the beam
        finite = best > float("-inf")
        best, index = torch.where(finite, best, best[:, :1]), torch.where(finite, index, index[:, :1])
        origin = (index // logp.shape[1] + torch.arange(0, n, k, device=seqs.device)[:, None]).view(-1)
        searching = (t >= prefix) & ~whole_gold                                           # (a whole source)
        origin = torch.where(searching, origin, rows)
        token = torch.where(searching, (index % logp.shape[1]).view(-1), seqs[:, t])
        scores = torch.where(searching, best.view(-1), scores)
        d.history.copy_(d.history[origin])
        d.done, d.ended_at = d.done[origin], d.ended_at[origin]
        d.step.reorder(origin)
        if d.advance(t, token, decoding.check_every):
            break
        logits = d.step.next(token)
    model.train(was_training)
    return d.result()
