"""Sentence BLEU, ROUGE-N and ROUGE-L on token ids, for a whole batch at once in torch.

Each function scores pair i (hyps[i] against refs[i]) exactly as the reference implementation
scores the ids joined by spaces: `sacrebleu.sentence_bleu(..., tokenize="none",
use_effective_order=True)` / 100, and rouge-score's F-measure with `use_stemmer=False` (its
tokenizer keeps digit tokens, so "12 5 12" tokenises back to the same ids).

Inputs are lists of int lists (ragged), or padded 2-D LongTensors with `pad_id` (padding only
at the end of a row). Internally a side of the batch is its tokens laid end to end plus the
length of each row, so no work is spent on padding.

N-gram matches. BLEU and ROUGE-N need, per pair and order n, the clipped matches
sum over distinct n-grams g of min(count of g in hyp, count of g in ref). One exact dictionary
serves the whole batch, built order by order from dense ids (ranks from a sort + unique):
    order 1: id of a token   = rank of the key (pair, token) -- equal tokens of different pairs
             get different ids, so pairs never match each other;
    order n: id of an n-gram = rank of (id of the (n-1)-gram at p, token at p + n - 1), the
             token given by its rank among its pair's distinct tokens (the (n-1)-gram id
             already fixes the pair).
Dense ids and small ranks keep keys below (distinct (n-1)-grams) x (distinct tokens per pair):
exact (no hashing) and int32 in practice. Two `bincount`s of the ids (hyp positions, ref
positions) give each n-gram's counts, min() clips them and `index_add_` sums them into their
pair. Only n-grams whose two (n-1)-grams occur in both hyp and ref can match (Apriori), so each
order sorts only those starts; n-grams overlapping padding never exist, as rows are laid end to
end and an n-gram may not cross a row's end. Totals per order are max(length - n + 1, 0) and need no counting.
(This replaces unfolding windows and `torch.unique(dim=0)` over (pair, n-gram) rows: exact too,
but a row sort that takes ~60 ms for the 60k (pair, token) rows of 1024 pairs of ~30 tokens,
longer than sacrebleu itself.)

ROUGE-L. Longest common subsequence by rows of the DP table, one loop step per position of the
shorter side, each step vectorized over batch x other side: with prev the previous row,
    temp[j] = prev[j-1] + 1 if a[i] == b[j] else prev[j],    row = cummax over j of temp.
This equals L[i][j] = L[i-1][j-1] + 1 if match else max(L[i-1][j], L[i][j-1]) because LCS rows
never decrease along j and prev[j] <= prev[j-1] + 1. Padding gets fill values that match nothing.

Counting is integer; the final formulas run in float64 over (pairs x orders) numbers, in the
reference implementations' order of operations, so scores agree to ~1e-15.
"""

from __future__ import annotations

import itertools
from typing import NamedTuple

import numpy as np
import torch

SMOOTH_DEFAULTS = {"none": None, "floor": 0.1, "add-k": 1, "exp": None}  # sacrebleu's BLEU.SMOOTH_DEFAULTS
LOG_OF_ZERO = -9999999999.0  # sacrebleu's my_log(0): a zero precision drives the score to 0


class Seqs(NamedTuple):
    """One side of a batch: all rows' tokens end to end (int64), and each row's length."""
    flat: torch.Tensor     # (sum of lengths,)
    lengths: torch.Tensor  # (pairs,)


# -- inputs ----------------------------------------------------------------------------------

def _read(fn: str, arg: str, seqs, pad_id: int | None) -> Seqs:
    if isinstance(seqs, torch.Tensor):
        if pad_id is None:
            raise ValueError(f"{fn}: {arg} is a tensor; give pad_id so padding can be told from tokens")
        if seqs.dim() != 2:
            raise ValueError(f"{fn}: {arg} must be a 2-D (pairs, length) tensor, got shape {tuple(seqs.shape)}")
        real = seqs != pad_id
        if (real[:, 1:] > real[:, :-1]).any():  # a token right after padding
            raise ValueError(f"{fn}: {arg} has a token after pad_id={pad_id}; padding must be at the end of a row")
        return Seqs(torch.masked_select(seqs, real).long(), real.sum(1))
    try:
        lengths = np.fromiter(map(len, seqs), dtype=np.int64, count=len(seqs))
        # numpy reads a list of ints ~8x faster than torch.tensor does
        flat = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lengths.sum()))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{fn}: {arg} must be a list of lists of int token ids ({err})") from None
    return Seqs(torch.from_numpy(flat), torch.from_numpy(lengths))


def _read_pairs(fn: str, hyps, refs, pad_id: int | None) -> tuple[Seqs, Seqs]:
    hyp, ref = _read(fn, "hyps", hyps, pad_id), _read(fn, "refs", refs, pad_id)
    if len(hyp.lengths) != len(ref.lengths):
        raise ValueError(f"{fn}: hyps has {len(hyp.lengths)} rows but refs has {len(ref.lengths)}")
    device = hyps.device if isinstance(hyps, torch.Tensor) else refs.device if isinstance(refs, torch.Tensor) else None
    if device is not None:  # a list beside a tensor follows the tensor
        hyp, ref = (Seqs(s.flat.to(device), s.lengths.to(device)) for s in (hyp, ref))
    return hyp, ref


def padded(seqs: Seqs, fill: int) -> torch.Tensor:
    """(pairs, longest) with `fill` after each row's end."""
    width = int(seqs.lengths.max()) if len(seqs.lengths) else 0
    out = torch.full((len(seqs.lengths), width), fill, dtype=torch.long, device=seqs.flat.device)
    return out.masked_scatter_(torch.arange(width, device=out.device) < seqs.lengths[:, None], seqs.flat)


# -- clipped n-gram matches ---------------------------------------------------------------------

class _Dictionary(NamedTuple):
    """The distinct n-grams of one order over the batch."""
    keys: torch.Tensor    # (distinct,) sorted
    ids: torch.Tensor     # (occurrences,) index into keys
    common: torch.Tensor  # (distinct,) min(count in hyp, count in ref): the clipped matches


# torch's CPU sort radix-sorts integer keys only from 32768 elements (at::internal::GRAIN_SIZE);
# from a few thousand up to that its fallback is several times slower than radix-sorting the
# keys padded to 32768 (measured: 21k keys 0.9 ms, padded 0.2 ms).
_RADIX_SORT_MIN = 32768


def _unique(keys: torch.Tensor, bound: int) -> tuple[torch.Tensor, torch.Tensor]:
    """torch.unique(keys, return_inverse=True) for keys in [0, bound), faster on CPU."""
    n = len(keys)
    if keys.device.type == "cpu" and _RADIX_SORT_MIN // 8 < n < _RADIX_SORT_MIN:
        keys = torch.cat([keys, keys.new_full((_RADIX_SORT_MIN - n,), bound)])  # sorts after every key
    ordered, order = torch.sort(keys)
    distinct, ids_in_order = torch.unique_consecutive(ordered[:n], return_inverse=True)
    return distinct, torch.empty_like(ids_in_order).scatter_(0, order[:n], ids_in_order)


def _dictionary(keys: torch.Tensor, bound: int, n_hyp: int) -> _Dictionary:
    """Group equal keys (each in [0, bound)); keys[:n_hyp] come from hypotheses, the rest from references."""
    distinct, ids = _unique(keys.to(torch.int32 if bound < 2**31 - 1 else torch.int64), bound)
    in_hyp = torch.bincount(ids[:n_hyp], minlength=len(distinct))
    in_ref = torch.bincount(ids[n_hyp:], minlength=len(distinct))
    return _Dictionary(distinct, ids, torch.minimum(in_hyp, in_ref))


def ngram_matches(hyp: Seqs, ref: Seqs, max_order: int) -> torch.Tensor:
    """(pairs, max_order) int64: clipped matches of the hypothesis n-grams, n = 1..max_order."""
    pairs, device = len(hyp.lengths), hyp.flat.device
    matches = torch.zeros(pairs, max_order, dtype=torch.long, device=device)
    if len(hyp.flat) == 0 or len(ref.flat) == 0:
        return matches
    tokens = torch.cat([hyp.flat, ref.flat])  # hyp rows, then ref rows
    lengths = torch.cat([hyp.lengths, ref.lengths])
    n_tokens, first_ref = len(tokens), len(hyp.flat)
    pair = torch.repeat_interleave(torch.arange(pairs, device=device).repeat(2), lengths, output_size=n_tokens)
    ends_row = torch.zeros(n_tokens, dtype=torch.bool, device=device)
    ends_row[(lengths.cumsum(0) - 1)[lengths > 0]] = True

    # Order 1: a token's key is (pair, token), so equal tokens of different pairs differ.
    low, high = (int(v) for v in torch.aminmax(tokens))
    if (high - low) * 2 * pairs >= 2**62:  # ids too far apart for (pair, token) in int64: renumber
        tokens, low, high = torch.unique(tokens, return_inverse=True)[1], 0, n_tokens
    bits = (high - low).bit_length()  # a power-of-two span: the pair comes back with a shift
    grams = _dictionary((tokens - low).add_(pair << bits), pairs << bits, first_ref)
    owner = (grams.keys >> bits).long()  # the pair each distinct n-gram belongs to
    matches[:, 0].index_add_(0, owner, grams.common)
    # A token's rank among its pair's distinct tokens: small, so n-gram keys stay int32.
    per_pair = torch.bincount(owner, minlength=pairs)
    rank_in_pair = grams.ids - (per_pair.cumsum(0) - per_pair).index_select(0, pair)
    alphabet = int(per_pair.max())

    starts = torch.arange(n_tokens, device=device)  # of the (n-1)-grams in `grams`, ascending
    for n in range(2, max_order + 1):
        # An n-gram at p can match only if the (n-1)-grams at p and p + 1 occur in both hyp and
        # ref (Apriori) and are in one row. For n > 2 that follows from p + 1 being a start too:
        # if p's (n-1)-gram fits in its row, p is not the row's last token.
        alive = (grams.common > 0).index_select(0, grams.ids)
        joins = alive[:-1] & alive[1:]
        joins &= ~ends_row[:-1] if n == 2 else starts[1:] == starts[:-1] + 1
        take = joins.nonzero().squeeze(1)
        if len(take) == 0:
            break
        # n-gram at p = ((n-1)-gram at p, token at p + n - 1); the (n-1)-gram's id already fixes
        # the pair, so the token's rank within the pair completes an exact key.
        starts = starts.index_select(0, take)
        keys = grams.ids.index_select(0, take) * alphabet + rank_in_pair.index_select(0, starts + (n - 1))
        grams = _dictionary(keys, len(grams.keys) * alphabet, int(torch.searchsorted(starts, first_ref)))
        owner = owner.index_select(0, (grams.keys // alphabet).long())
        matches[:, n - 1].index_add_(0, owner, grams.common)
    return matches


def _ngram_totals(lengths: torch.Tensor, max_order: int) -> torch.Tensor:
    """(pairs, max_order): number of n-grams in a row of each length, n = 1..max_order."""
    orders = torch.arange(1, max_order + 1, device=lengths.device)
    return (lengths[:, None] - orders + 1).clamp(min=0)


# -- BLEU --------------------------------------------------------------------------------------

def bleu(hyps, refs, *, max_order: int = 4, smooth: str = "exp", smooth_value: float | None = None,
         pad_id: int | None = None) -> torch.Tensor:
    """Per-pair sentence BLEU / 100 (float64, in [0, 1]) as sacrebleu computes it with effective order."""
    if smooth not in SMOOTH_DEFAULTS:
        raise ValueError(f"bleu: smooth={smooth!r} is not one of {list(SMOOTH_DEFAULTS)}")
    if max_order < 1:
        raise ValueError(f"bleu: max_order must be >= 1, got {max_order}")
    hyp, ref = _read_pairs("bleu", hyps, refs, pad_id)
    correct = ngram_matches(hyp, ref, max_order).double()
    total = _ngram_totals(hyp.lengths, max_order).double()
    k = SMOOTH_DEFAULTS[smooth] if smooth_value is None else smooth_value
    any_match = correct.sum(1) > 0  # sacrebleu returns 0 before smoothing when nothing matches
    if smooth == "add-k":  # on orders 2 and up, before the zero-total check
        correct[:, 1:] += k
        total[:, 1:] += k
    used = (total != 0).cumprod(1).bool()  # sacrebleu's loop breaks at the first empty order
    eff_order = used.sum(1)
    zero = correct == 0
    precision = 100.0 * correct / total
    if smooth == "exp":  # each zero order halves the smoothed count again: 1/2, 1/4, ...
        halvings = (zero & used).cumsum(1).double()
        precision = torch.where(zero, 100.0 / (torch.pow(2.0, halvings) * total), precision)
    elif smooth == "floor":
        precision = torch.where(zero, 100.0 * k / total, precision)
    log_precision = torch.where(precision > 0, precision.log(), LOG_OF_ZERO)
    mean_log = torch.where(used, log_precision, 0.0).sum(1) / eff_order.clamp(min=1)
    sys_len, ref_len = hyp.lengths.double(), ref.lengths.double()
    brevity = torch.where(sys_len < ref_len, torch.exp(1 - ref_len / sys_len), 1.0)
    score = torch.where(any_match, brevity * torch.exp(mean_log), 0.0)  # in [0, 100]
    return (score / 100).clamp(max=1.0)  # 100.00000000000004 / 100 is rounding, not a better score


# -- ROUGE -------------------------------------------------------------------------------------

def _f_measure(overlap: torch.Tensor, hyp_count: torch.Tensor, ref_count: torch.Tensor) -> torch.Tensor:
    """rouge-score's F1: P = overlap / max(hyp count, 1), R likewise; 0 when P + R = 0."""
    overlap = overlap.double()
    precision = overlap / hyp_count.clamp(min=1).double()
    recall = overlap / ref_count.clamp(min=1).double()
    total = precision + recall
    return torch.where(total > 0, 2 * precision * recall / total, 0.0)


def rouge_n(hyps, refs, *, n: int = 2, pad_id: int | None = None) -> torch.Tensor:
    """Per-pair ROUGE-N F-measure (float64) as rouge-score computes it without stemming."""
    if n < 1:
        raise ValueError(f"rouge_n: n must be >= 1, got {n}")
    hyp, ref = _read_pairs("rouge_n", hyps, refs, pad_id)
    overlap = ngram_matches(hyp, ref, n)[:, n - 1]
    return _f_measure(overlap, _ngram_totals(hyp.lengths, n)[:, n - 1], _ngram_totals(ref.lengths, n)[:, n - 1])


def lcs_lengths(hyp: Seqs, ref: Seqs) -> torch.Tensor:
    """(pairs,) int64: length of the longest common subsequence of each pair."""
    pairs = len(hyp.lengths)
    if len(hyp.flat) == 0 or len(ref.flat) == 0:
        return torch.zeros(pairs, dtype=torch.long, device=hyp.flat.device)
    low = int(torch.cat([hyp.flat, ref.flat]).min())
    a, b = padded(hyp, fill=low - 1), padded(ref, fill=low - 2)  # padding matches nothing
    if a.shape[1] > b.shape[1]:
        a, b = b, a  # LCS is symmetric: loop over the shorter side
    row = torch.zeros(pairs, b.shape[1] + 1, dtype=torch.int32, device=a.device)  # row[:, j]: LCS with b[:, :j]
    previous, current = row[:, :-1], row[:, 1:]  # views: the loop updates `row` in place
    argmax = torch.empty(current.shape, dtype=torch.long, device=a.device)  # cummax's unused indices
    for i in range(a.shape[1]):
        step = torch.where(a[:, i, None] == b, previous + 1, current)
        torch.cummax(step, 1, out=(current, argmax))
    return row[:, -1].long()


def rouge_l(hyps, refs, *, pad_id: int | None = None) -> torch.Tensor:
    """Per-pair ROUGE-L F-measure (float64) as rouge-score computes it (rougeL, not rougeLsum)."""
    hyp, ref = _read_pairs("rouge_l", hyps, refs, pad_id)
    return _f_measure(lcs_lengths(hyp, ref), hyp.lengths, ref.lengths)
