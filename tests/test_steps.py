"""The two step functions called directly, as `seqrl.train.micro_step` calls them, on a tiny
marian model: what each computes from what it is given (no CLI, no `Run`)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from conftest import make_pairs

from seqrl import baselines
from seqrl.candidates import CandidateMaker
from seqrl.config import DataConfig, RewardConfig
from seqrl.data import TrainCollator
from seqrl.decoders import Decoding
from seqrl.losses import IGNORE_INDEX
from seqrl.objectives import Reinforce, ScoredRows
from seqrl.rewards import build as build_rewards
from seqrl.rl_config import CandidatesConfig
from seqrl.schedule import StagePlan
from seqrl.steps import mixer_step, xent_step

K, MAX_LEN = 3, 10


@pytest.fixture(scope="module")
def parts(tiny_text_model):
    tm = tiny_text_model("marian")
    model = copy.deepcopy(tm.model).eval()  # (no dropout: two passes compare exactly)
    pairs = make_pairs()[:4]
    sources, targets = tm.encode_sources([p["en"] for p in pairs]), tm.encode_targets([p["es"] for p in pairs])
    features = [{"en": p["en"], "es": p["es"], "source_ids": s, "target_ids": t}
                for p, s, t in zip(pairs, sources, targets, strict=True)]
    batch = TrainCollator(tm, DataConfig(path="unused", source_field="en", target_field="es"))(features)
    return tm, model, batch, Accelerator(cpu=True)


def length_reward(completion_ids, **kwargs):
    return [float(len(ids)) for ids in completion_ids]


class Recording:
    """An objective that keeps what it was given and returns a known loss."""

    def __init__(self):
        self.calls = []

    def __call__(self, rows: ScoredRows):
        self.calls.append(dict(logprobs=rows.logprobs, mask=rows.suffix_mask, rewards=rows.rewards,
                               advantages=rows.advantages, k=rows.k, rows=rows.step_rows))
        return Reinforce()(rows)


def run_mixer(parts, plan, baseline, objective, samples=0, settings=None):
    tm, model, batch, acc = parts
    rewards = build_rewards([RewardConfig(name="length")], {"length": length_reward})
    maker = CandidateMaker(tm, acc, rewards, settings or CandidatesConfig(num_samples=K), Decoding(), None, MAX_LEN,
                           seed=1, total_steps=10, greedy=baseline.needs_greedy)
    return mixer_step(batch, plan, 7, model=model, text_model=tm, accelerator=acc, candidates=maker,
                      objective=objective, baseline=baseline, reference=None, samples=samples)


def test_xent_step_is_the_mean_cross_entropy_of_the_gold_tokens(parts):
    tm, model, batch, acc = parts
    loss, stats = xent_step(model, tm, acc, batch["model_inputs"], label_smoothing=0.0)
    logits, labels, _ = tm.target_logits(model, batch["model_inputs"])
    expected = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert loss == pytest.approx(float(expected.detach()), rel=1e-6)
    assert stats["xent_tokens"] == float((labels != IGNORE_INDEX).sum())


def test_mixer_step_feeds_the_objective_rewards_and_leave_one_out_advantages(parts):
    objective = Recording()
    plan = StagePlan(stage=1, n_rl_tokens=3, xent_weight=0.25)
    loss, stats, shown = run_mixer(parts, plan, baselines.LeaveOneOut(), objective, samples=2)
    (call,) = objective.calls
    R = call["rewards"]
    assert call["k"] == K and call["rows"] == 4 * K == R.numel()
    # each row samples from position max(L - 3, 0) of its gold target (L capped at max_len) on
    gold = torch.tensor([min(len(t), MAX_LEN) for t in parts[2]["target_ids_list"]]).repeat_interleave(K)
    first_sampled = call["mask"].float().argmax(dim=1)
    assert torch.equal(first_sampled, (gold - 3).clamp(min=0)) and bool(call["mask"].any(1).all())
    assert float(stats["reward/total"]) == pytest.approx(float(R.mean()))
    grouped = R.view(-1, K)
    leave_one_out_mean = (grouped.sum(1, keepdim=True) - grouped) / (K - 1)
    torch.testing.assert_close(call["advantages"], (grouped - leave_one_out_mean).view(-1))
    # loss = w * XENT(prefix) + (1 - w) * objective: the objective's value is train/reinforce
    assert float(loss) == pytest.approx(0.25 * stats["train/xent"] + 0.75 * stats["train/reinforce"], rel=1e-5)
    assert len(shown) == 2 and {"sample", "reward", "advantage"} <= set(shown[0])


def test_mixer_step_with_a_self_critical_baseline_decodes_greedily(parts):
    objective = Recording()
    plan = StagePlan(stage=2, n_rl_tokens=10**6, xent_weight=0.0)  # whole outputs sampled
    _, stats, shown = run_mixer(parts, plan, baselines.SelfCritical(), objective)
    (call,) = objective.calls
    R, A = call["rewards"], call["advantages"]
    greedy = (R - A).view(-1, K)  # b = the source's greedy reward, shared by its k samples
    assert torch.equal(greedy, greedy[:, :1].expand(-1, K)) and shown is None
    assert stats["xent_tokens"] == 0.0 and stats["frac_sampled"] == 1.0


def test_mixer_step_with_the_reference_as_a_candidate(parts):
    tm, model, batch, _ = parts
    objective = Recording()
    plan = StagePlan(stage=1, n_rl_tokens=3, xent_weight=0.25)
    settings = CandidatesConfig(num_samples=K, reference=True)
    _, stats, _ = run_mixer(parts, plan, baselines.LeaveOneOut(), objective, settings=settings)
    (call,) = objective.calls
    assert call["k"] == K + 1 and call["rows"] == 4 * (K + 1)
    R, mask, logp = call["rewards"].view(4, K + 1), call["mask"].view(4, K + 1, -1), call["logprobs"].view(4, K + 1, -1)
    # each source's last row is its gold target (capped at max_len; the reward sees it without EOS)
    eos = tm.tokenizer.eos_token_id
    gold = [t[:MAX_LEN] for t in batch["target_ids_list"]]
    assert R[:, K].tolist() == [float(len(t) - (t[-1] == eos)) for t in gold]
    # its scored positions are its gold suffix, the last 3 tokens, after the same prefix as its samples
    for i, t in enumerate(gold):
        first = max(len(t) - 3, 0)
        assert mask[i, K].nonzero().flatten().tolist() == list(range(first, len(t)))
        assert int(mask[i, 0].float().argmax()) == first
    # ... with the model's teacher-forced log-probabilities of those gold tokens
    logits, labels, _ = tm.target_logits(model, batch["model_inputs"])
    gold_logp = torch.log_softmax(logits.float(), -1).gather(-1, labels.clamp(min=0)[..., None])[..., 0]
    width = min(logp.shape[-1], gold_logp.shape[1])
    torch.testing.assert_close((logp[:, K] * mask[:, K])[:, :width].sum(1),
                               (gold_logp[:, :width] * mask[:, K, :width]).sum(1), rtol=1e-5, atol=1e-5)
    # the logged rewards and advantages are the samples' only: leave-one-out over the K samples
    assert stats["reward/total"] == pytest.approx(float(R[:, :K].mean()))
    samples = R[:, :K]
    expected = samples - (samples.sum(1, keepdim=True) - samples) / (K - 1)
    A = call["advantages"].view(4, K + 1)
    torch.testing.assert_close(A[:, :K], expected)
    assert float(A[:, K].abs().max()) == 0.0
    assert stats["rl_tokens"] == float(mask[:, :K].sum())


def test_candidates_rows_masks_and_rewards(parts):
    """The first part of a step alone: k rows per source (then the reference), their prefix and
    suffix masks from the targets' lengths, and rewards that are the length reward of each row."""
    tm, model, batch, acc = parts
    rewards = build_rewards([RewardConfig(name="length")], {"length": length_reward})
    maker = CandidateMaker(tm, acc, rewards, CandidatesConfig(num_samples=2, reference=True), Decoding(), 3, MAX_LEN,
                           seed=1, total_steps=10)
    cand = maker.make(model, batch, StagePlan(stage=1, n_rl_tokens=2, xent_weight=0.5), 7)
    assert (cand.k, cand.k_decoded) == (3, 2) and [c.num_sources for c in cand.chunks] == [3, 1]  # chunks of 3
    assert cand.decoded.tolist() == [True, True, False] * 4
    eos = tm.tokenizer.eos_token_id
    rows = cand.rows()
    assert cand.rewards.tolist() == [float(len(r) - (r[-1] == eos)) for r in rows]
    prefix, suffix, drawn = cand.target_masks()
    lengths = [min(len(t), MAX_LEN) for t in batch["target_ids_list"]]
    for i, row in enumerate(rows):
        gold = max(lengths[i // 3] - 2, 0)  # each row's gold prefix: all but the target's last 2 tokens
        assert suffix[i].nonzero().flatten().tolist() == list(range(gold, len(row)))
        assert prefix[i].nonzero().flatten().tolist() == (list(range(gold)) if i % 3 < 2 else [])
        assert torch.equal(drawn[i], suffix[i] & (i % 3 < 2))
    assert rows[2::3] == [t[:MAX_LEN] for t in batch["target_ids_list"]]  # the reference rows
