"""Batched token-id BLEU / ROUGE (seqrl.rewards.fast) against sacrebleu and rouge-score on the
ids joined by spaces, and the registered token_* rewards against the text rewards."""

from __future__ import annotations

import math
import random

import pytest
import sacrebleu
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU

from seqrl.config import RewardConfig
from seqrl.rewards import RewardError, build, fast, score

TOLERANCE = 1e-6
SMOOTHING = ["none", "floor", "add-k", "exp"]

# A small vocabulary so n-grams repeat (clipping) and hypotheses share n-grams with references.
ids = st.lists(st.integers(0, 12), max_size=40)
batches = st.lists(st.tuples(ids, ids), min_size=1, max_size=8)


def text(seq: list[int]) -> str:
    return " ".join(map(str, seq))


def sacre_bleu(hyps, refs, smooth="exp", smooth_value=None) -> list[float]:
    return [sacrebleu.sentence_bleu(text(h), [text(r)], tokenize="none", smooth_method=smooth,
                                    smooth_value=smooth_value).score / 100 for h, r in zip(hyps, refs, strict=True)]


def rouge(kind: str, hyps, refs) -> list[float]:
    scorer = rouge_scorer.RougeScorer([kind], use_stemmer=False)
    return [scorer.score(text(r), text(h))[kind].fmeasure for h, r in zip(hyps, refs, strict=True)]


def as_padded(seqs: list[list[int]], pad_id: int, extra: int = 0) -> torch.Tensor:
    """Right-padded LongTensor, with `extra` all-padding columns beyond the longest row."""
    out = torch.full((len(seqs), max(map(len, seqs), default=0) + extra), pad_id, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, :len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def assert_close(got: torch.Tensor, expected: list[float]) -> None:
    assert got.shape == (len(expected),)
    assert torch.allclose(got.double(), torch.tensor(expected, dtype=torch.float64), rtol=0, atol=TOLERANCE), \
        f"got {got.tolist()}, expected {expected}"


# -- property tests against the reference implementations -----------------------------------------

@pytest.mark.parametrize("smooth", SMOOTHING)
@settings(max_examples=100, deadline=None)
@given(batch=batches)
def test_bleu_equals_sacrebleu(smooth, batch):
    hyps, refs = [h for h, _ in batch], [r for _, r in batch]
    assert_close(fast.bleu(hyps, refs, smooth=smooth), sacre_bleu(hyps, refs, smooth))


@settings(max_examples=40, deadline=None)
@given(batch=batches, smoothing=st.sampled_from([("floor", 0.0), ("floor", 0.01), ("floor", 1.0),
                                                 ("add-k", 0.0), ("add-k", 0.5), ("add-k", 3.0)]))
def test_bleu_smooth_values_equal_sacrebleu(batch, smoothing):
    (smooth, value), hyps, refs = smoothing, [h for h, _ in batch], [r for _, r in batch]
    assert_close(fast.bleu(hyps, refs, smooth=smooth, smooth_value=value), sacre_bleu(hyps, refs, smooth, value))


def test_bleu_is_clipped_at_one():
    # A floor above 1 credits a missing n-gram order with more than 100% precision; sacrebleu
    # then scores above 100. The reward stays in [0, 1], as the text `bleu` reward does.
    assert sacre_bleu([[0, 1]], [[1, 0]], "floor", 2.0)[0] == pytest.approx(2 ** 0.5)
    assert fast.bleu([[0, 1]], [[1, 0]], smooth="floor", smooth_value=2.0).tolist() == [1.0]


@pytest.mark.parametrize("max_order", [1, 2, 6])
@settings(max_examples=20, deadline=None)
@given(batch=batches)
def test_bleu_other_max_orders_equal_sacrebleu(max_order, batch):
    hyps, refs = [h for h, _ in batch], [r for _, r in batch]
    metric = BLEU(tokenize="none", effective_order=True, max_ngram_order=max_order)
    expected = [metric.sentence_score(text(h), [text(r)]).score / 100 for h, r in batch]
    assert_close(fast.bleu(hyps, refs, max_order=max_order), expected)


@pytest.mark.parametrize("n", [1, 2, 3])
@settings(max_examples=100, deadline=None)
@given(batch=batches)
def test_rouge_n_equals_rouge_score(n, batch):
    hyps, refs = [h for h, _ in batch], [r for _, r in batch]
    assert_close(fast.rouge_n(hyps, refs, n=n), rouge(f"rouge{n}", hyps, refs))


@settings(max_examples=150, deadline=None)
@given(batch=batches)
def test_rouge_l_equals_rouge_score(batch):
    hyps, refs = [h for h, _ in batch], [r for _, r in batch]
    assert_close(fast.rouge_l(hyps, refs), rouge("rougeL", hyps, refs))


@settings(max_examples=100, deadline=None)
@given(batch=batches, pad_id=st.sampled_from([-100, -1, 13, 50_000]), extra=st.integers(0, 3))
def test_padded_tensors_equal_lists_and_references(batch, pad_id, extra):
    hyps, refs = [h for h, _ in batch], [r for _, r in batch]
    hyp_pad, ref_pad = as_padded(hyps, pad_id, extra), as_padded(refs, pad_id)
    for metric, expected in ((lambda h, r, **kw: fast.bleu(h, r, **kw), sacre_bleu(hyps, refs)),
                             (lambda h, r, **kw: fast.rouge_n(h, r, n=2, **kw), rouge("rouge2", hyps, refs)),
                             (lambda h, r, **kw: fast.rouge_l(h, r, **kw), rouge("rougeL", hyps, refs))):
        from_tensors = metric(hyp_pad, ref_pad, pad_id=pad_id)
        assert_close(from_tensors, expected)
        assert torch.equal(from_tensors, metric(hyps, refs))
        assert torch.equal(metric(hyp_pad, refs, pad_id=pad_id), from_tensors)  # a tensor beside a list


def test_large_batch_equals_references():
    """Enough tokens for the sort paths the small property batches never reach (radix and padded)."""
    rng = random.Random(7)
    refs = [[rng.randint(0, 40) for _ in range(rng.randint(0, 60))] for _ in range(900)]
    hyps = [[t if rng.random() < 0.6 else rng.randint(0, 40) for t in r[:rng.randint(0, len(r))]]
            + [rng.randint(0, 40) for _ in range(rng.randint(0, 5))] for r in refs]
    assert sum(map(len, hyps + refs)) > fast._RADIX_SORT_MIN
    assert_close(fast.bleu(hyps, refs), sacre_bleu(hyps, refs))
    assert_close(fast.rouge_n(hyps, refs, n=2), rouge("rouge2", hyps, refs))
    assert_close(fast.rouge_l(hyps, refs), rouge("rougeL", hyps, refs))


def test_huge_and_negative_ids_score_as_their_small_relabelling():
    hyps, refs = [[1, 2, 3, 1], [4, 2]], [[1, 2, 3], [2, 4, 2]]
    for relabel in ({1: 2**62, 2: -2**62, 3: 7, 4: 2**61}, {1: -5, 2: -1, 3: 0, 4: -3}):
        big_hyps, big_refs = ([[relabel[t] for t in s] for s in side] for side in (hyps, refs))
        for metric in (fast.bleu, fast.rouge_n, fast.rouge_l):
            assert torch.equal(metric(big_hyps, big_refs), metric(hyps, refs))


@pytest.mark.parametrize("size", [0, 1, 100, 5_000, 20_000, 40_000])
def test_unique_equals_torch_unique(size):
    keys = torch.randint(0, 3 * size + 1, (size,), generator=torch.Generator().manual_seed(size))
    for dtype in (torch.int32, torch.int64):
        distinct, ids = fast._unique(keys.to(dtype), 3 * size + 1)
        expected_distinct, expected_ids = torch.unique(keys.to(dtype), return_inverse=True)
        assert torch.equal(distinct, expected_distinct) and torch.equal(ids, expected_ids)


# -- edge cases and hand-computed values ---------------------------------------------------------

EDGE_CASES = {  # name: (hypothesis, reference)
    "empty hypothesis": ([], [1, 2, 3]),
    "empty reference": ([1, 2, 3], []),
    "both empty": ([], []),
    "hypothesis shorter than n": ([4], [4, 5, 6, 7]),
    "hypothesis of 3 against 4-grams": ([1, 2, 3], [1, 2, 3, 9, 9]),
    "identical": ([5, 6, 7, 8, 9], [5, 6, 7, 8, 9]),
    "identical single token": ([3], [3]),
    "repeated tokens are clipped": ([7, 7, 7, 7], [7, 3, 7]),
    "nothing in common": ([1, 2, 3], [4, 5, 6]),
    "longer hypothesis": ([1, 2, 3, 4, 5, 6, 7, 8], [1, 2, 3]),
}


@pytest.mark.parametrize("smooth", SMOOTHING)
def test_edge_cases_bleu(smooth):
    hyps, refs = zip(*EDGE_CASES.values(), strict=True)
    assert_close(fast.bleu(list(hyps), list(refs), smooth=smooth), sacre_bleu(hyps, refs, smooth))


@pytest.mark.parametrize("kind", ["rouge1", "rouge2", "rougeL"])
def test_edge_cases_rouge(kind):
    hyps, refs = (list(x) for x in zip(*EDGE_CASES.values(), strict=True))
    got = fast.rouge_l(hyps, refs) if kind == "rougeL" else fast.rouge_n(hyps, refs, n=int(kind[-1]))
    assert_close(got, rouge(kind, hyps, refs))


def test_empty_cases_score_zero_and_identical_scores_one():
    hyps, refs = [[], [1, 2], [], [4, 5, 6, 7, 8], [3]], [[1, 2], [], [], [4, 5, 6, 7, 8], [3]]
    for got in (fast.bleu(hyps, refs), fast.rouge_n(hyps, refs, n=1), fast.rouge_n(hyps, refs, n=2),
                fast.rouge_l(hyps, refs)):
        assert got[:3].tolist() == [0.0, 0.0, 0.0]
        assert got[3].item() == pytest.approx(1.0, abs=1e-12)
    assert fast.bleu(hyps, refs)[4].item() == pytest.approx(1.0)  # effective order 1
    assert fast.rouge_n(hyps, refs, n=2)[4].item() == 0.0  # no bigram on either side
    assert torch.all(fast.bleu(hyps, refs) <= 1.0)


def test_hand_computed_bleu():
    # 1 2 3 4 vs 1 2 3 5: precisions 3/4, 2/3, 1/2, 0/1; same length so no brevity penalty.
    exp_smoothed = (3 / 4 * 2 / 3 * 1 / 2 * 1 / 2) ** (1 / 4)  # the zero 4-gram count becomes 1/2
    assert fast.bleu([[1, 2, 3, 4]], [[1, 2, 3, 5]]).item() == pytest.approx(exp_smoothed, abs=1e-12)
    assert fast.bleu([[1, 2, 3, 4]], [[1, 2, 3, 5]], smooth="none").item() == 0.0
    floor = (3 / 4 * 2 / 3 * 1 / 2 * 0.1 / 1) ** (1 / 4)
    assert fast.bleu([[1, 2, 3, 4]], [[1, 2, 3, 5]], smooth="floor").item() == pytest.approx(floor, abs=1e-12)
    add_one = (3 / 4 * 3 / 4 * 2 / 3 * 1 / 2) ** (1 / 4)  # orders 2-4: (matches + 1) / (total + 1)
    assert fast.bleu([[1, 2, 3, 4]], [[1, 2, 3, 5]], smooth="add-k").item() == pytest.approx(add_one, abs=1e-12)
    # Hypothesis 1 2 against 1 2 3 4: effective order 2 (both precisions 1), brevity exp(1 - 4/2).
    assert fast.bleu([[1, 2]], [[1, 2, 3, 4]]).item() == pytest.approx(math.exp(-1), abs=1e-12)


def test_hand_computed_clipping_and_rouge():
    # 7 7 7 7 against 7 3: one 7 matches (clipped), so unigram P = 1/4, R = 1/2, F = 1/3.
    assert fast.rouge_n([[7, 7, 7, 7]], [[7, 3]], n=1).item() == pytest.approx(1 / 3, abs=1e-12)
    # 1 2 3 4 5 against 1 3 5 7: LCS 1 3 5, P = 3/5, R = 3/4, F = 2/3.
    assert fast.rouge_l([[1, 2, 3, 4, 5]], [[1, 3, 5, 7]]).item() == pytest.approx(2 / 3, abs=1e-12)
    assert fast.lcs_lengths(fast._read("t", "h", [[1, 2, 3, 4, 5], [8, 8]], None),
                            fast._read("t", "r", [[1, 3, 5, 7], [8]], None)).tolist() == [3, 1]


def test_pairs_do_not_share_ngrams():
    # Each hypothesis is the other pair's reference: a batch-wide dictionary without the pair
    # in its keys would find matches here.
    hyps, refs = [[1, 2, 3, 4], [5, 6, 7, 8]], [[5, 6, 7, 8], [1, 2, 3, 4]]
    assert fast.bleu(hyps, refs).tolist() == [0.0, 0.0]
    assert fast.rouge_n(hyps, refs, n=1).tolist() == [0.0, 0.0]
    assert fast.rouge_l(hyps, refs).tolist() == [0.0, 0.0]


def test_all_padding_row_scores_zero():
    hyps = torch.tensor([[1, 2, 3, 0], [0, 0, 0, 0], [4, 5, 0, 0]])
    refs = torch.tensor([[1, 2, 3, 0], [6, 7, 0, 0], [0, 0, 0, 0]])
    for got in (fast.bleu(hyps, refs, pad_id=0), fast.rouge_n(hyps, refs, pad_id=0),
                fast.rouge_l(hyps, refs, pad_id=0)):
        assert got.dtype in (torch.float32, torch.float64)
        assert got[0].item() == pytest.approx(1.0) and got[1:].tolist() == [0.0, 0.0]
    everything_padding = torch.zeros(2, 3, dtype=torch.long)
    assert fast.bleu(everything_padding, everything_padding, pad_id=0).tolist() == [0.0, 0.0]
    assert fast.rouge_l(everything_padding, everything_padding, pad_id=0).tolist() == [0.0, 0.0]


def test_empty_batch():
    for got in (fast.bleu([], []), fast.rouge_n([], []), fast.rouge_l([], [])):
        assert got.shape == (0,)


# -- input errors ----------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: fast.bleu([[1], [2]], [[1]]), r"bleu: hyps has 2 rows but refs has 1"),
    (lambda: fast.rouge_n([[1]], [[1], [2]]), r"rouge_n: hyps has 1 rows but refs has 2"),
    (lambda: fast.rouge_l(torch.tensor([[1, 2]]), [[1]]), r"rouge_l: hyps is a tensor; give pad_id"),
    (lambda: fast.bleu([[1]], torch.tensor([[1, 2]])), r"bleu: refs is a tensor; give pad_id"),
    (lambda: fast.bleu(torch.tensor([1, 2]), torch.tensor([1, 2]), pad_id=0), r"bleu: hyps must be a 2-D"),
    (lambda: fast.rouge_l(torch.tensor([[1, 0, 2]]), torch.tensor([[1, 2, 0]]), pad_id=0),
     r"rouge_l: hyps has a token after pad_id=0; padding must be at the end"),
    (lambda: fast.bleu([[1]], [[1]], smooth="add-one"), r"bleu: smooth='add-one' is not one of"),
    (lambda: fast.bleu([[1]], [[1]], max_order=0), r"bleu: max_order must be >= 1"),
    (lambda: fast.rouge_n([[1]], [[1]], n=0), r"rouge_n: n must be >= 1"),
    (lambda: fast.bleu([["a"]], [[1]]), r"bleu: hyps must be a list of lists of int token ids"),
])
def test_bad_input_is_a_clear_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


# -- the registered rewards -------------------------------------------------------------------------

BATCH_IDS = [([5, 6, 7, 8, 9], [5, 6, 7, 8, 9]), ([1, 2, 3, 4], [1, 2, 3, 5]), ([7, 7, 7, 7], [7, 3, 7]),
             ([], [1, 2]), ([12, 4, 4, 12, 3], [4, 12, 3, 3]), ([1, 2], [3, 4, 1, 2])]


def reward_inputs() -> dict:
    completion_ids, reference_ids = ([list(x) for x in side] for side in zip(*BATCH_IDS, strict=True))
    return dict(completions=[text(h) for h in completion_ids], references=[text(r) for r in reference_ids],
                completion_ids=completion_ids, reference_ids=reference_ids, prompts=["p"] * len(BATCH_IDS))


@pytest.mark.parametrize("token_reward, text_reward", [
    (RewardConfig(name="token_bleu"), RewardConfig(name="bleu", kwargs={"tokenize": "none"})),
    (RewardConfig(name="token_bleu", kwargs={"smooth_method": "add-k", "smooth_value": 1}),
     RewardConfig(name="bleu", kwargs={"tokenize": "none", "smooth_method": "add-k", "smooth_value": 1})),
    (RewardConfig(name="token_bleu", kwargs={"smooth_method": "none"}),
     RewardConfig(name="bleu", kwargs={"tokenize": "none", "smooth_method": "none"})),
    (RewardConfig(name="token_rouge_n"), RewardConfig(name="rouge2", kwargs={"use_stemmer": False})),
    (RewardConfig(name="token_rouge_n", kwargs={"n": 1}), RewardConfig(name="rouge1", kwargs={"use_stemmer": False})),
    (RewardConfig(name="token_rouge_l"), RewardConfig(name="rougeL", kwargs={"use_stemmer": False})),
])
def test_registered_rewards_equal_text_rewards_on_joined_ids(token_reward, text_reward):
    inputs = reward_inputs()
    total, parts = score(build([token_reward]), **inputs)
    _, expected = score(build([text_reward]), **inputs)
    assert total == pytest.approx(expected[text_reward.name], abs=TOLERANCE)
    assert parts[token_reward.name] == total and all(isinstance(v, float) for v in total)


def test_registered_rewards_weighted_sum():
    inputs = reward_inputs()
    total, parts = score(build([RewardConfig(name="token_bleu", weight=0.5),
                                RewardConfig(name="token_rouge_l", weight=2.0)]), **inputs)
    assert total == pytest.approx([0.5 * b + 2.0 * r
                                   for b, r in zip(parts["token_bleu"], parts["token_rouge_l"], strict=True)])
    assert parts["token_bleu"][0] == pytest.approx(1.0) and parts["token_rouge_l"][0] == pytest.approx(1.0)


def test_registered_reward_without_reference_ids_is_one_clear_line():
    (reward,) = build([RewardConfig(name="token_rouge_n")])
    with pytest.raises(RewardError, match=r"reward 'token_rouge_n' raised ValueError: .*reference_ids"):
        reward(completions=["1 2"], completion_ids=[[1, 2]], references=["1 2"])


def test_registered_reward_rejects_misspelled_option():
    with pytest.raises(RewardError, match=r"kwargs 'smooth_metod' is not a parameter.*did you mean 'smooth_method'"):
        build([RewardConfig(name="token_bleu", kwargs={"smooth_metod": "add-k"})])


def test_unknown_reward_lists_token_builtins():
    with pytest.raises(RewardError, match=r"did you mean 'token_bleu'\?.*token_bleu, token_rouge_n, token_rouge_l"):
        build([RewardConfig(name="token_bleuu")])


def test_token_rewards_need_no_text():
    # a step whose rewards all read ids skips decoding: they must not ask for `completions`,
    # and the registry must score a batch given ids only
    token, text = build([RewardConfig(name="token_bleu"), RewardConfig(name="bleu")])
    assert not token.reads_text and text.reads_text
    total, parts = score([token], completion_ids=[[1, 2, 3], [4]], reference_ids=[[1, 2, 3], [5]])
    assert total == parts["token_bleu"] and total[0] == pytest.approx(1.0) and total[1] == 0.0
