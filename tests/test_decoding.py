"""How rollouts decode never changes what they sample: the static KV cache, the compiled step
and sparse end-of-rows checks give the dynamic, eager, check-every-token rollout token for
token, on a stand-in of every pretrained family; and the loop makes no host sync per token."""

from __future__ import annotations

import pytest
import torch
from stand_ins import FAMILIES
from torch.utils._python_dispatch import TorchDispatchMode

from seqrl import decoders
from seqrl.candidates import CandidateMaker
from seqrl.decoders import Decoding, resolve
from seqrl.errors import SeqrlError
from seqrl.rl_config import CandidatesConfig
from seqrl.rollout import Sampling, rollout

STATIC = Decoding(cache="static", source_width=40)
DEFAULT = Decoding()


def rows(tm, src, tgt, n_rl, decoding=DEFAULT, k=3, max_len=12, seed=3):
    ro = rollout(tm, tm.model, src, tgt, n_rl, num_samples=k, max_len=max_len, sampling=Sampling(seed=seed),
                 decoding=decoding)
    return ro.rows(), ro.lengths.tolist()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("n_rl", [10**6, 3])  # whole outputs sampled; a gold prefix, then 3 sampled
def test_static_cache_and_sparse_checks_sample_what_the_dynamic_cache_samples(stand_in_model, family, n_rl):
    tm, src, tgt = stand_in_model(family)
    expected = rows(tm, src, tgt, n_rl)
    assert rows(tm, src, tgt, n_rl, STATIC) == expected
    assert rows(tm, src, tgt, n_rl, Decoding(check_every=5)) == expected
    assert rows(tm, src, tgt, n_rl, Decoding(cache="static", check_every=64, source_width=40)) == expected
    # the static cache is kept and reset between rollouts of the same shape: other rows, still right
    assert rows(tm, src[::-1], tgt[::-1], n_rl, STATIC, seed=9) == rows(tm, src[::-1], tgt[::-1], n_rl, seed=9)


class _CountScalarReads(TorchDispatchMode):
    """Counts the ops that copy a device value to the host (`.item()`, `bool(t)`, `.tolist()`)."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.is_nonzero.default):
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("family, per_token", [("t5", 0), ("gpt2", 0), ("marian", 0), ("mbart50", 0), ("nllb", 1)])
def test_the_decode_loop_reads_nothing_back_per_token(stand_in_model, family, per_token):
    """With checks every 64 tokens, decoding 16 tokens reads back as many scalars as decoding 6:
    the reads are set-up (the shortest prefix, the masks built once). Not ours to remove:
    transformers' M2M100/NLLB positions compare their table's size with the cache length each
    token, in eager mode; and BART's no_repeat_ngram_size processor reads the rows back."""
    tm, src, tgt = stand_in_model(family)
    counts = []
    for max_len in (6, 16):
        with _CountScalarReads() as mode:
            rollout(tm, tm.model, src, tgt, 10**6, num_samples=2, max_len=max_len, sampling=Sampling(seed=1),
                    decoding=Decoding(cache="static", check_every=64, source_width=40))
        counts.append(mode.count)
    assert counts[1] - counts[0] == per_token * (16 - 6) and counts[0] <= 6 + per_token * 6, counts


def _eager_backend(forward, cuda):
    return torch.compile(forward, backend="eager", dynamic=False)


@pytest.mark.parametrize("family", ["marian", "gpt2"])
def test_compiled_step_samples_what_eager_samples(stand_in_model, family, monkeypatch):
    """Dynamo's tracing of the step with its static cache (graph, guards, reuse across rollouts),
    with the eager backend to keep this fast; `test_inductor_...` below compiles for real."""
    monkeypatch.setattr(decoders, "compile_step", _eager_backend)
    tm, src, tgt = stand_in_model(family)
    compiled = Decoding(cache="static", compile=True, source_width=40)
    for n_rl, seed in ((10**6, 3), (3, 4), (10**6, 5)):
        assert rows(tm, src, tgt, n_rl, compiled, seed=seed) == rows(tm, src, tgt, n_rl, seed=seed)
    assert compiled.compile_log.calls == 1  # one shape: compiled once, reused by the later rollouts
    del tm.model._seqrl_compiled_forward  # (the next test compiles with inductor)


@pytest.mark.slow
def test_inductor_compiled_step_samples_what_eager_samples(stand_in_model):
    tm, src, tgt = stand_in_model("gpt2")
    compiled = Decoding(cache="static", compile=True, source_width=40)
    assert rows(tm, src, tgt, 10**6, compiled) == rows(tm, src, tgt, 10**6)
    assert compiled.compile_log.seconds > 0


class _Unmarked(torch.nn.Linear):
    _can_compile_fullgraph = False


def test_resolve_picks_per_model_and_device_and_refuses_what_cannot_run():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    marked, unmarked = torch.nn.Linear(2, 2), _Unmarked(2, 2)
    marked._can_compile_fullgraph = True  # (instance attribute: resolve reads the class's)
    assert resolve("auto", None, None, unmarked, cpu, 64) == Decoding("dynamic", False, 1, None)
    assert resolve("auto", None, None, unmarked, gpu, 64) == Decoding("dynamic", False, 8, None)
    with pytest.raises(SeqrlError, match=r"^reinforce.decoding.kv_cache: static: .*_Unmarked.*"
                                         r"set reinforce.decoding.kv_cache: auto"):
        resolve("static", None, None, unmarked, cpu, 64)
    with pytest.raises(SeqrlError, match=r"^reinforce.decoding.compile: true needs the static KV cache"):
        resolve("dynamic", True, None, unmarked, cpu, 64)
    assert resolve("dynamic", False, 3, unmarked, gpu, 64) == Decoding("dynamic", False, 3, None)


def test_resolve_on_a_compilable_model(stand_in_model):
    tm, _, _ = stand_in_model("gpt2")
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert resolve("auto", None, None, tm.model, cpu, 64) == Decoding("static", False, 1, 64)
    assert resolve("auto", None, None, tm.model, gpu, 64) == Decoding("static", True, 8, 64)
    assert resolve("dynamic", False, None, tm.model, gpu, 64) == Decoding("dynamic", False, 8, None)


@pytest.mark.parametrize("family", ["marian", "gpt2", "nllb"])
def test_decoding_in_chunks_of_sources_draws_the_same_rows(stand_in_model, family):
    """`reinforce.chunk_sources` also cuts the decode: chunk i keeps its rows' global draws."""
    tm, src, tgt = stand_in_model(family)
    kw = dict(num_samples=3, max_len=12, sampling=Sampling(seed=6, row_offset=30), decoding=STATIC)
    whole = rollout(tm, tm.model, src, tgt, 10**6, **kw)
    maker = CandidateMaker(tm, None, [], CandidatesConfig(num_samples=3), STATIC, 4, 12, seed=0, total_steps=1)
    chunks = maker.decode(tm.model, src, tgt, 10**6, kw["sampling"])  # 6 sources: 4 + 2
    assert [row for chunk in chunks for row in chunk.rows()] == whole.rows()
    assert [chunk.num_sources for chunk in chunks] == [4, 2]
    assert chunks[1].rows() == whole.rows()[12:]
