"""Beam-search candidates (`seqrl.beam`) on the stand-ins of every family: one beam is the greedy
rollout; k beams are distinct, best first by their suffix's log-probability under the masked
distribution, keep the gold prefix and obey the generation constraints; and `both` puts each
source's samples and beams side by side."""

from __future__ import annotations

import pytest
import torch
from stand_ins import FAMILIES

from seqrl.beam import beam_rollout
from seqrl.candidates import CandidateMaker
from seqrl.decoders import Decoding
from seqrl.generation import masked_token_logprobs
from seqrl.rl_config import CandidatesConfig
from seqrl.rollout import Sampling, rollout, rollout_logits

MAX_LEN = 9


def suffix_logprobs(tm, ro) -> torch.Tensor:
    with torch.no_grad():
        logits, labels, _ = rollout_logits(tm.model, ro, is_seq2seq=tm.is_seq2seq)
        sampled = ro.target_masks()[1]
        logp = masked_token_logprobs(logits, labels, ro.sample_masks(sampled, logits.shape[-1]))
    return (logp * sampled).sum(1)


@pytest.mark.parametrize("family", FAMILIES)
def test_one_beam_is_the_greedy_rollout(stand_in_model, family):
    tm, src, tgt = stand_in_model(family, 4)
    for n_rl in (10**6, 3):
        greedy = rollout(tm, tm.model, src, tgt, n_rl, num_samples=1, max_len=MAX_LEN, sampling=Sampling(greedy=True))
        assert beam_rollout(tm, tm.model, src, tgt, n_rl, num_beams=1, max_len=MAX_LEN).rows() == greedy.rows()


@pytest.mark.parametrize("family", ["marian", "gpt2", "mbart50", "bart"])
@pytest.mark.parametrize("n_rl", [10**6, 3])
def test_beams_are_distinct_best_first_and_keep_the_gold_prefix(stand_in_model, family, n_rl):
    tm, src, tgt = stand_in_model(family, 4)
    k = 3
    ro = beam_rollout(tm, tm.model, src, tgt, n_rl, num_beams=k, max_len=MAX_LEN)
    rows, scores = ro.rows(), suffix_logprobs(tm, ro).view(-1, k)
    assert bool((scores[:, :-1] >= scores[:, 1:] - 1e-4).all()), scores  # best first
    for s in range(len(src)):
        group = rows[s * k:(s + 1) * k]
        assert len({tuple(r) for r in group}) == k  # distinct candidates
        prefix = int(ro.prefix_len[s * k])
        assert all(r[:prefix] == tgt[s][:prefix] for r in group)  # the gold prefix, kept
    if family == "mbart50" and n_rl == 10**6:  # the forced target-language token opens every beam
        forced = tm.generation_config.forced_bos_token_id
        assert all(r[0] == forced for r in rows)
    # deterministic, and a source's beams do not depend on the others in the batch
    assert beam_rollout(tm, tm.model, src[2:], tgt[2:], n_rl, num_beams=k, max_len=MAX_LEN).rows() == rows[2 * k:]


def test_both_puts_each_sources_samples_then_beams_together(stand_in_model):
    tm, src, tgt = stand_in_model("marian", 4)
    kw = dict(num_samples=2, max_len=MAX_LEN, sampling=Sampling(seed=4))

    def decode(kind, chunk_sources):
        maker = CandidateMaker(tm, None, [], CandidatesConfig(kind=kind, num_samples=2), Decoding(), chunk_sources,
                               MAX_LEN, seed=0, total_steps=1)
        return maker.decode(tm.model, src, tgt, 3, kw["sampling"])

    both = decode("both", 3)
    sampled = rollout(tm, tm.model, src, tgt, 3, **kw).rows()
    beams = beam_rollout(tm, tm.model, src, tgt, 3, num_beams=2, max_len=MAX_LEN).rows()
    rows = [row for chunk in both for row in chunk.rows()]
    assert len(rows) == 4 * len(src)
    for s in range(len(src)):
        assert rows[4 * s:4 * s + 4] == sampled[2 * s:2 * s + 2] + beams[2 * s:2 * s + 2]
    assert [chunk.num_sources for chunk in both] == [3, 1]
    (beam_only,) = decode("beam", None)
    assert beam_only.rows() == beams
