"""Rollouts on tiny marian (encoder-decoder) and gpt2 (decoder-only) models: gold prefixes,
sampled suffixes, grouping of the k samples per source, EOS bookkeeping, and the KV-cache
decode against HF `generate` and against a plain teacher-forced forward pass.

The tiny models' weights are redrawn with std 0.5 (on a copy; the shared fixture model is not
touched) so that outputs depend on the source, and a forward hook adds +4 to the EOS logit
(and removes <pad>/<s>) so that greedy rows end at different lengths: both hooks act on every
forward, so `generate`, `rollout` and the teacher-forced check all see the same distribution.
"""

from __future__ import annotations

import copy
import dataclasses
from contextlib import contextmanager

import pytest
import torch
from conftest import make_pairs

from seqrl.losses import IGNORE_INDEX
from seqrl.rollout import Rollout, Sampling, prefix_lengths, rollout, rollout_logits
from seqrl.sampling import Uniforms, sample

GREEDY = Sampling(greedy=True)
N_SOURCES = 6


@pytest.fixture(scope="module", params=["marian", "gpt2"])
def tm(request, tiny_text_model):
    base = tiny_text_model(request.param)
    model = copy.deepcopy(base.model)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    model.eval()
    return dataclasses.replace(base, model=model)


@pytest.fixture(scope="module")
def data(tm):
    pairs = make_pairs()[:N_SOURCES]
    src = tm.encode_sources([p["en"] for p in pairs])
    tgt = tm.encode_targets([p["es"] for p in pairs])
    assert [len(t) for t in tgt] == [11, 16, 5, 11, 5, 10]  # EOS included
    return src, tgt


@contextmanager
def logit_bias(model, bias: dict[int, float]):
    def hook(module, args, out):
        for token, value in bias.items():
            out.logits[..., token] += value
    handle = model.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def eos_friendly(tm):
    tok = tm.tokenizer
    return logit_bias(tm.model, {tok.eos_token_id: 4.0, tok.pad_token_id: -1e4, tok.bos_token_id: -1e4})


def run(tm, src, tgt, n_rl, *, k=1, max_len=12, sampling=GREEDY) -> Rollout:
    return rollout(tm, tm.model, src, tgt, n_rl, num_samples=k, max_len=max_len, sampling=sampling)


def strip_eos(rows: list[list[int]], eos: int) -> list[list[int]]:
    return [r[:-1] if r and r[-1] == eos else r for r in rows]


# -- prefix_lengths -------------------------------------------------------------------------------

def test_prefix_lengths_by_hand():
    lengths = torch.tensor([5, 3, 1, 7])
    assert prefix_lengths(lengths, 2).tolist() == [3, 1, 0, 5]     # L - 2, floored at 0
    assert prefix_lengths(lengths, 0).tolist() == [5, 3, 1, 7]     # nothing sampled
    assert prefix_lengths(lengths, 10).tolist() == [0, 0, 0, 0]    # whole targets sampled


# -- greedy decode against generate and against teacher forcing -----------------------------------

def test_greedy_full_rollout_equals_generate(tm, data):
    src, tgt = data
    eos = tm.tokenizer.eos_token_id
    with eos_friendly(tm):
        ro = run(tm, src, tgt, n_rl=100, max_len=12)  # n >= every target length: prefix 0
        # the same window: the generation config's forced EOS at the 12th token acts in both
        gen = tm.generate(tm.model, src, max_new_tokens=12)
    assert ro.prefix_len.tolist() == [0] * N_SOURCES
    lengths = ro.lengths.tolist()
    assert 12 in lengths and min(lengths) < 12  # some rows end early, some run to max_len
    assert strip_eos(ro.rows(), eos) == gen


def teacher_forced_argmax(tm, src, ro: Rollout, k):
    """argmax of a plain (no cache) forward over each row's own tokens, at each target position,
    under the generation constraints the rollout sampled with (forced EOS at the last position)."""
    rows = ro.rows()
    feats = [{"source_ids": src[i // k], "target_ids": row} for i, row in enumerate(rows)]
    logits, labels, _ = tm.target_logits(tm.model, tm.collate(feats))
    position = torch.arange(ro.sequences.shape[1])
    sampled = (position < ro.lengths[:, None]) & (position >= ro.prefix_len[:, None])
    for t, mask in ro.sample_masks(sampled, logits.shape[-1]).items():
        if t < logits.shape[1]:
            logits[:, t] += mask
    return [logits[i][labels[i] != IGNORE_INDEX].argmax(-1).tolist() for i in range(len(rows))]


@pytest.mark.parametrize("n_rl", [100, 3])
def test_greedy_suffix_matches_uncached_forward(tm, data, n_rl):
    # mixed prefix lengths (n_rl = 3: k_i = L_i - 3 = 8, 13, 2, 8, 2, 7) exercise the prefill of the
    # shortest prefix, then gold tokens fed one by one for longer prefixes, through the KV cache
    src, tgt = data
    with eos_friendly(tm), torch.no_grad():
        ro = run(tm, src, tgt, n_rl, max_len=18)
        argmax = teacher_forced_argmax(tm, src, ro, k=1)
    for row, best, k_i in zip(ro.rows(), argmax, ro.prefix_len.tolist(), strict=True):
        assert row[k_i:] == best[k_i:]


def test_batched_equals_one_source_at_a_time(tm, data):
    src, tgt = data
    with eos_friendly(tm):
        batched = run(tm, src, tgt, n_rl=3, max_len=18).rows()
        alone = [run(tm, [s], [t], n_rl=3, max_len=18).rows()[0] for s, t in zip(src, tgt, strict=True)]
    assert batched == alone  # padding (left for gpt2 prompts) changes nothing


# -- gold prefix, grouping, lengths ---------------------------------------------------------------

def test_suffix_rollout_keeps_gold_prefix(tm, data):
    src, tgt = data
    torch.manual_seed(0)
    ro = run(tm, src, tgt, n_rl=2, k=3, max_len=20, sampling=Sampling())
    # k_i = L_i - 2 = [9, 14, 3, 9, 3, 8], each repeated for the source's 3 samples
    assert ro.prefix_len.tolist() == [9] * 3 + [14] * 3 + [3] * 3 + [9] * 3 + [3] * 3 + [8] * 3
    for i, row in enumerate(ro.sequences.tolist()):
        k_i = ro.prefix_len[i].item()
        assert row[:k_i] == tgt[i // 3][:k_i]
    assert torch.all(ro.lengths > ro.prefix_len)  # at least one sampled token per row


def test_k_samples_grouped_by_source(tm, data):
    src, tgt = data
    with eos_friendly(tm):
        single = run(tm, src, tgt, n_rl=4, k=1, max_len=18).rows()
        grouped = run(tm, src, tgt, n_rl=4, k=3, max_len=18).rows()
    # rows i*k .. i*k+k-1 belong to source i: greedy makes them identical to its k = 1 row
    assert grouped == [row for row in single for _ in range(3)]
    assert len({tuple(r) for r in single}) == N_SOURCES  # and the sources really differ


def test_sampled_rows_share_only_their_sources_prefix(tm, data):
    src, tgt = data
    torch.manual_seed(1)
    ro = run(tm, src, tgt, n_rl=3, k=4, max_len=18, sampling=Sampling())
    seqs = ro.sequences.view(N_SOURCES, 4, -1)
    for i in range(N_SOURCES):
        k_i = len(tgt[i]) - 3
        assert torch.all(seqs[i, :, :k_i] == torch.tensor(tgt[i][:k_i]))
    assert len({tuple(r) for r in ro.rows()}) > N_SOURCES  # samples of a source differ


def test_lengths_point_just_past_eos(tm, data):
    src, tgt = data
    eos, pad = tm.tokenizer.eos_token_id, tm.tokenizer.pad_token_id
    with logit_bias(tm.model, {eos: 1e4}):  # EOS is the first sampled token of every row
        ro = run(tm, src, tgt, n_rl=2, k=2, max_len=20, sampling=Sampling())
    # k_i = [9, 14, 3, 9, 3, 8]; EOS at index k_i; length k_i + 1
    assert ro.lengths.tolist() == [10, 10, 15, 15, 4, 4, 10, 10, 4, 4, 9, 9]
    for row, n in zip(ro.sequences.tolist(), ro.lengths.tolist(), strict=True):
        assert row[n - 1] == eos
        assert all(t == pad for t in row[n:])  # pad after EOS
        assert eos not in row[: n - 1]
    assert [len(r) for r in ro.rows()] == ro.lengths.tolist()


def test_rows_without_eos_end_at_max_len(tm, data, monkeypatch):
    src, tgt = data
    eos, pad = tm.tokenizer.eos_token_id, tm.tokenizer.pad_token_id
    monkeypatch.setattr(tm.generation_config, "forced_eos_token_id", None)  # else EOS is forced at position 8
    with logit_bias(tm.model, {eos: -1e4, pad: -1e4}):
        ro = run(tm, src, tgt, n_rl=3, k=2, max_len=9, sampling=Sampling())
    assert ro.sequences.shape == (2 * N_SOURCES, 9)
    assert ro.lengths.tolist() == [9] * (2 * N_SOURCES)
    assert all(len(r) == 9 and eos not in r for r in ro.rows())


def test_forced_eos_ends_rows_at_max_len(tm, data, monkeypatch):
    """The generation config's forced EOS (as `generate` applies it) ends every row by max_len
    (set for the test: from-scratch encoder-decoders have it, as Marian and BART do; GPT-2 not)."""
    src, tgt = data
    eos, pad = tm.tokenizer.eos_token_id, tm.tokenizer.pad_token_id
    monkeypatch.setattr(tm.generation_config, "forced_eos_token_id", eos)
    with logit_bias(tm.model, {eos: -1e4, pad: -1e4}):
        ro = run(tm, src, tgt, n_rl=3, k=2, max_len=9, sampling=Sampling())
    assert ro.lengths.tolist() == [9] * (2 * N_SOURCES)
    assert all(r[-1] == eos and eos not in r[:-1] for r in ro.rows())


def test_targets_longer_than_max_len_are_cut_before_the_prefix(tm, data):
    src, tgt = data  # target 1 has 16 tokens
    ro = run(tm, src[1:2], tgt[1:2], n_rl=2, max_len=12, sampling=GREEDY)
    # k = min(16, 12) - 2 = 10 gold tokens, then at most 2 sampled
    assert ro.prefix_len.tolist() == [10]
    assert ro.sequences[0, :10].tolist() == tgt[1][:10]
    assert ro.sequences.shape == (1, 12)


# -- sampling -------------------------------------------------------------------------------------

def test_sampling_reproducible_with_seed(tm, data):
    src, tgt = data
    sampling = Sampling(temperature=0.8, top_p=0.9)
    torch.manual_seed(123)
    a = run(tm, src, tgt, n_rl=4, k=2, max_len=16, sampling=sampling)
    torch.manual_seed(123)
    b = run(tm, src, tgt, n_rl=4, k=2, max_len=16, sampling=sampling)
    torch.manual_seed(124)
    c = run(tm, src, tgt, n_rl=4, k=2, max_len=16, sampling=sampling)
    assert torch.equal(a.sequences, b.sequences) and torch.equal(a.lengths, b.lengths)
    assert not torch.equal(a.sequences, c.sequences)


def test_top_k_1_equals_greedy(tm, data):
    src, tgt = data
    with eos_friendly(tm):
        greedy = run(tm, src, tgt, n_rl=5, k=2, max_len=16, sampling=GREEDY)
        torch.manual_seed(0)
        top1 = run(tm, src, tgt, n_rl=5, k=2, max_len=16, sampling=Sampling(top_k=1))
    assert torch.equal(greedy.sequences, top1.sequences)
    assert torch.equal(greedy.lengths, top1.lengths)


# -- modes ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("training", [True, False])
def test_samples_in_eval_mode_and_restores_mode(tm, data, training):
    src, tgt = data
    seen = []
    handle = tm.model.register_forward_pre_hook(lambda module, args: seen.append(module.training))
    tm.model.train(training)
    try:
        run(tm, src[:2], tgt[:2], n_rl=2, k=2, max_len=8, sampling=Sampling())
        assert seen and not any(seen)  # no dropout while sampling
        assert tm.model.training is training
        assert all(m.training is training for m in tm.model.modules())
    finally:
        handle.remove()
        tm.model.eval()


def test_no_gradient_graph(tm, data):
    src, tgt = data
    ro = run(tm, src[:2], tgt[:2], n_rl=2, max_len=8)
    assert not ro.sequences.requires_grad and ro.sequences.dtype == torch.long


def test_all_gold_rollout_stops_at_gold_eos(tm, data):
    src, tgt = data
    ro = run(tm, src[2:3], tgt[2:3], n_rl=0, max_len=12)
    assert ro.rows() == [tgt[2]]  # 5 gold tokens, EOS included; length 5


# -- the teacher-forced pass over the rollout -----------------------------------------------------

@pytest.mark.parametrize("n_rl", [100, 3])
def test_rollout_logits_equal_a_plain_teacher_forced_pass(tm, data, n_rl):
    # rollout_logits encodes each source (decoder-only: each prompt, through a repeated KV cache)
    # once for its k rows; it must give the logits, labels, hidden states and gradients of the
    # plain collated forward pass over every row
    src, tgt = data
    k = 3
    torch.manual_seed(0)
    with eos_friendly(tm):
        ro = run(tm, src, tgt, n_rl, k=k, max_len=14, sampling=Sampling())
    feats = [{"source_ids": src[i // k], "target_ids": row} for i, row in enumerate(ro.rows())]
    grads = []
    for fast in (True, False):
        tm.model.zero_grad()
        if fast:
            logits, labels, hidden = rollout_logits(tm.model, ro, is_seq2seq=tm.is_seq2seq, hidden=True)
        else:
            logits, labels, hidden = tm.target_logits(tm.model, tm.collate(feats), hidden=True)
        keep = labels != IGNORE_INDEX
        picked = (logits[keep], labels[keep], hidden[keep])
        if fast:
            expected = picked
            assert labels.shape == ro.sequences.shape and int(keep.sum()) == int(ro.lengths.sum())
        else:
            torch.testing.assert_close(picked[0], expected[0], atol=1e-4, rtol=1e-4)
            assert torch.equal(picked[1], expected[1])
            torch.testing.assert_close(picked[2], expected[2], atol=1e-4, rtol=1e-4)
        loss = torch.log_softmax(logits[keep], -1).gather(-1, labels[keep][:, None]).sum() + hidden[keep].sum()
        loss.backward()
        grads.append([p.grad.clone() for p in tm.model.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for fast_grad, plain_grad in zip(*grads, strict=True):
        torch.testing.assert_close(fast_grad, plain_grad, atol=1e-4, rtol=1e-3)
    tm.model.zero_grad(set_to_none=True)


def _sample(logits, sampling, t):
    return sample(logits, sampling, Uniforms(sampling, logits.shape[0], t + 1, logits.device).at(t))


def test_inverse_cdf_sampling_follows_the_distribution():
    # 20,000 seeded draws from fixed logits: frequencies within 5 standard errors of softmax, and
    # top-k / top-p never draw a token they exclude
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0, -30.0, 0.5]]).repeat(20_000, 1)
    probs = torch.softmax(logits[0], -1)
    tokens = _sample(logits, Sampling(seed=7), t=0)
    freq = torch.bincount(tokens, minlength=6).float() / len(tokens)
    stderr = (probs * (1 - probs) / len(tokens)).sqrt()
    assert torch.all((freq - probs).abs() <= 5 * stderr + 1e-6), (freq, probs)
    assert set(_sample(logits, Sampling(seed=7, top_k=2), t=0).tolist()) == {0, 1}
    assert set(_sample(logits, Sampling(seed=7, top_p=0.7), t=0).tolist()) <= {0, 1}


def test_seeded_rows_do_not_depend_on_how_the_batch_is_split():
    # global row r's draw at step t is a function of (seed, t, r): two halves drawn apart (as two
    # processes do) equal the whole batch drawn at once
    logits = torch.randn(8, 50, generator=torch.Generator().manual_seed(0))
    whole = _sample(logits, Sampling(seed=3), t=5)
    halves = [_sample(logits[i:i + 4], Sampling(seed=3, row_offset=i), t=5) for i in (0, 4)]
    assert torch.equal(whole, torch.cat(halves))
    assert not torch.equal(whole, _sample(logits, Sampling(seed=3), t=6))
