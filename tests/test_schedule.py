"""Schedule.plan(step) as a table, for every kind, and the recipe checks of schedule/reinforce."""

from __future__ import annotations

import pytest

from seqrl.config import ScheduleConfig, from_dict
from seqrl.errors import ConfigError
from seqrl.schedule import Schedule, StagePlan

XENT = StagePlan(0, 0, 1.0)


def make(cfg: ScheduleConfig, xent_spe: int, rl_spe: int, max_len: int) -> Schedule:
    """Epochs count XENT batches (xent_spe per epoch) or REINFORCE batches (rl_spe per epoch)."""
    return Schedule(cfg, xent_steps_per_epoch=xent_spe, rl_steps_per_epoch=rl_spe, max_target_tokens=max_len)


# -- mixer: the paper's MT setting ----------------------------------------------------------------

def paper_mt_schedule() -> Schedule:
    # 25 epochs of XENT, then stages of 5 epochs, delta = 3, window 25, 10 steps per epoch
    cfg = ScheduleConfig(kind="mixer", xent_epochs=25, stage_epochs=5, delta=3, xent_weight=0.5)
    return make(cfg, 10, 10, 25)


# stage s samples min(3 s, 25) tokens: 3, 6, 9, 12, 15, 18, 21, 24, then 25 (ceil(25 / 3) = 9 stages)
# XENT: steps 0 .. 249 (25 epochs * 10); stage s: steps 250 + 50 (s - 1) .. 250 + 50 s - 1
MIXER_TABLE = [
    (0, XENT), (1, XENT), (249, XENT),
    (250, StagePlan(1, 3, 0.5)), (299, StagePlan(1, 3, 0.5)),
    (300, StagePlan(2, 6, 0.5)), (349, StagePlan(2, 6, 0.5)),
    (350, StagePlan(3, 9, 0.5)),
    (400, StagePlan(4, 12, 0.5)),
    (450, StagePlan(5, 15, 0.5)),
    (500, StagePlan(6, 18, 0.5)),
    (550, StagePlan(7, 21, 0.5)),
    (600, StagePlan(8, 24, 0.5)), (649, StagePlan(8, 24, 0.5)),
    (650, StagePlan(9, 25, 0.5)), (699, StagePlan(9, 25, 0.5)),  # last stage: capped at 25
    (700, StagePlan(9, 25, 0.5)), (10_000, StagePlan(9, 25, 0.5)),  # past the end: stays there
]


@pytest.mark.parametrize("step, expected", MIXER_TABLE)
def test_mixer_plan_table(step, expected):
    assert paper_mt_schedule().plan(step) == expected


def test_mixer_stage_lengths_and_total():
    s = paper_mt_schedule()
    assert s.xent_steps == 250      # 25 epochs * 10
    assert s.stage_steps == 50      # 5 epochs * 10
    assert s.n_stages == 9          # ceil(25 / 3)
    assert s.total_steps == 700     # 250 + 9 * 50


def test_mixer_boundaries():
    assert paper_mt_schedule().boundaries() == [
        (0, XENT),
        (250, StagePlan(1, 3, 0.5)), (300, StagePlan(2, 6, 0.5)), (350, StagePlan(3, 9, 0.5)),
        (400, StagePlan(4, 12, 0.5)), (450, StagePlan(5, 15, 0.5)), (500, StagePlan(6, 18, 0.5)),
        (550, StagePlan(7, 21, 0.5)), (600, StagePlan(8, 24, 0.5)), (650, StagePlan(9, 25, 0.5)),
    ]


def test_mixer_every_step_is_in_its_boundary_stage():
    s = paper_mt_schedule()
    starts = [b for b, _ in s.boundaries()] + [s.total_steps]
    for (first, plan), end in zip(s.boundaries(), starts[1:], strict=True):
        assert all(s.plan(step) == plan for step in range(first, end))


def test_mixer_delta_dividing_window_exactly():
    # window 24, delta 3: 8 stages, the last samples 24 (no cap needed)
    s = make(ScheduleConfig(kind="mixer", xent_steps=2, stage_steps=1, delta=3), 1, 1, 24)
    assert s.n_stages == 8 and s.total_steps == 10
    assert [s.plan(i).n_rl_tokens for i in range(10)] == [0, 0, 3, 6, 9, 12, 15, 18, 21, 24]


def test_mixer_steps_instead_of_epochs_and_custom_weight():
    s = make(ScheduleConfig(kind="mixer", xent_steps=3, stage_steps=2, delta=2, xent_weight=0.25), 99, 99, 5)
    # ceil(5 / 2) = 3 stages of 2 steps: 2, 4, 5 tokens; steps per epoch are unused
    assert [s.plan(i) for i in range(9)] == [
        XENT, XENT, XENT,
        StagePlan(1, 2, 0.25), StagePlan(1, 2, 0.25),
        StagePlan(2, 4, 0.25), StagePlan(2, 4, 0.25),
        StagePlan(3, 5, 0.25), StagePlan(3, 5, 0.25),
    ]
    assert s.total_steps == 9


def test_mixer_final_stage_steps_lengthens_only_the_last_stage():
    # 3 XENT steps, ceil(5 / 2) = 3 stages: 2 steps sampling 2 tokens, 2 sampling 4, then 4 sampling all 5
    s = make(ScheduleConfig(kind="mixer", xent_steps=3, stage_steps=2, delta=2, final_stage_steps=4), 99, 99, 5)
    assert s.total_steps == 3 + 2 + 2 + 4
    assert [s.plan(i).n_rl_tokens for i in range(s.total_steps)] == [0, 0, 0, 2, 2, 4, 4, 5, 5, 5, 5]
    assert [b for b, _ in s.boundaries()] == [0, 3, 5, 7]


def test_mixer_final_stage_steps_past_the_budget_keeps_sampling_whole_targets():
    s = make(ScheduleConfig(kind="mixer", xent_steps=0, stage_steps=1, delta=4, final_stage_steps=10**9), 1, 1, 8)
    assert s.total_steps == 1 + 10**9
    assert [s.plan(i).n_rl_tokens for i in (0, 1, 2, 10**6)] == [4, 8, 8, 8]


def test_fractional_epochs_round_up():
    # 2.5 epochs * 4 steps = 10 steps; 0.3 epochs * 4 = 1.2 -> 2 steps
    s = make(ScheduleConfig(kind="mixer", xent_epochs=2.5, stage_epochs=0.3, delta=1), 4, 4, 3)
    assert (s.xent_steps, s.stage_steps, s.total_steps) == (10, 2, 16)


def test_xent_and_rl_epochs_use_their_own_batches_per_epoch():
    # XENT: 2 epochs * 10 batches = 20 steps; RL batches are smaller: 1 epoch * 40 = 40 steps/stage
    s = make(ScheduleConfig(kind="mixer", xent_epochs=2, stage_epochs=1, delta=5), 10, 40, 10)
    assert (s.xent_steps, s.stage_steps, s.total_steps) == (20, 40, 100)  # 20 + 2 stages * 40
    c = make(ScheduleConfig(kind="constant", xent_epochs=2, rl_epochs=0.5), 10, 40, 10)
    assert (c.xent_steps, c.rl_steps, c.total_steps) == (20, 20, 40)


def test_mixer_xent_steps_zero_starts_rl_at_step_0():
    s = make(ScheduleConfig(kind="mixer", xent_steps=0, stage_steps=4, delta=2), 10, 10, 6)
    assert s.plan(0) == StagePlan(1, 2, 0.5)
    assert s.boundaries() == [(0, StagePlan(1, 2, 0.5)), (4, StagePlan(2, 4, 0.5)), (8, StagePlan(3, 6, 0.5))]
    assert s.total_steps == 12  # 0 + 3 * 4


# -- xent, constant -------------------------------------------------------------------------------

def test_xent_only():
    s = make(ScheduleConfig(kind="xent", xent_steps=7), 10, 10, 25)
    assert s.total_steps == 7
    assert all(s.plan(i) == XENT for i in (0, 6, 7, 1000))
    assert s.plan(0).is_xent
    assert s.boundaries() == [(0, XENT)]


def test_constant_mix():
    s = make(ScheduleConfig(kind="constant", xent_steps=3, rl_steps=5, xent_weight=0.3), 10, 10, 25)
    assert s.total_steps == 8
    rl = StagePlan(1, 25, 0.3, xent_on_gold=True)  # whole sampled sequence + XENT on the gold target
    assert [s.plan(i) for i in range(8)] == [XENT] * 3 + [rl] * 5
    assert not rl.is_xent
    assert s.boundaries() == [(0, XENT), (3, rl)]


def test_constant_xent_steps_zero():
    s = make(ScheduleConfig(kind="constant", xent_steps=0, rl_epochs=2, xent_weight=0.3), 10, 10, 25)
    assert s.total_steps == 20
    assert s.plan(0) == StagePlan(1, 25, 0.3, xent_on_gold=True)
    assert s.boundaries() == [(0, StagePlan(1, 25, 0.3, xent_on_gold=True))]


# -- alternate ------------------------------------------------------------------------------------

ALT_RL = StagePlan(1, 25, 0.0)   # a whole REINFORCE batch
ALT_XENT = StagePlan(1, 0, 1.0)  # a XENT batch inside the RL phase


def alternate(xent_steps: int, anneal_steps: int, rl_steps: int) -> Schedule:
    cfg = ScheduleConfig(kind="alternate", xent_steps=xent_steps, rl_steps=rl_steps, anneal_steps=anneal_steps)
    return make(cfg, 10, 10, 25)


def test_alternate_small_by_hand():
    # anneal 4: shares 1/4, 2/4, 3/4, 1, 1, ...; running sums 0.25, 0.75, 1.5, 2.5, 3.5, 4.5
    # an RL batch whenever the running sum crosses an integer: RL steps 2, 3, 4, 5 (RL-phase index)
    s = alternate(xent_steps=2, anneal_steps=4, rl_steps=6)
    assert [s.plan(i) for i in range(8)] == [XENT, XENT, ALT_XENT, ALT_XENT] + [ALT_RL] * 4
    assert ALT_XENT.is_xent and not ALT_RL.is_xent
    assert s.total_steps == 8
    assert s.boundaries() == [(0, XENT), (2, ALT_XENT)]


def test_alternate_rl_share_rises_linearly():
    # anneal 100: running sum S(n) = n (n + 1) / 200; RL batches among the first n = floor(S(n))
    # S(20) = 2.1, S(40) = 8.2, S(60) = 18.3, S(80) = 32.4, S(100) = 50.5, then 1 per step
    # -> per 20-step window: 2, 8-2 = 6, 18-8 = 10, 32-18 = 14, 50-32 = 18, then 20 and 20
    # (expected share of window w is (20 w + 10.5) / 100: 2.1, 6.1, 10.1, 14.1, 18.1 batches)
    s = alternate(xent_steps=10, anneal_steps=100, rl_steps=140)
    counts = [sum(not s.plan(10 + i).is_xent for i in range(w, w + 20)) for w in range(0, 140, 20)]
    assert counts == [2, 6, 10, 14, 18, 20, 20]
    assert all(abs(s.rl_share(i) - (i + 1) / 100) < 1e-12 for i in range(100))
    assert s.rl_share(100) == s.rl_share(500) == 1.0


def test_alternate_is_deterministic_and_order_free():
    # a pure function of the step: a resumed run (or another process) makes the same choice
    a, b = alternate(5, 37, 60), alternate(5, 37, 60)
    forward = [a.plan(i) for i in range(70)]
    backward = [b.plan(i) for i in reversed(range(70))][::-1]
    assert forward == backward
    assert forward == [a.plan(i) for i in range(70)]


def test_alternate_xent_steps_zero():
    s = alternate(xent_steps=0, anneal_steps=1, rl_steps=3)
    # anneal 1: share 1 from the first step -> every step is REINFORCE
    assert [s.plan(i) for i in range(3)] == [ALT_RL] * 3
    assert s.boundaries() == [(0, ALT_RL)]


# -- recipe checks through from_dict --------------------------------------------------------------

def recipe(schedule: dict, reinforce: dict | None = None) -> dict:
    raw = {"model": {"architecture": "marian"}, "data": {"path": "data"}, "schedule": schedule}
    if reinforce is not None:
        raw["reinforce"] = reinforce
    return raw


@pytest.mark.parametrize("schedule, reinforce, message", [
    ({"kind": "mixer", "xent_steps": 5},
     None, r"exactly one of schedule\.stage_steps or schedule\.stage_epochs \(schedule\.kind: mixer\)"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2, "stage_epochs": 1},
     None, r"exactly one of schedule\.stage_steps or schedule\.stage_epochs"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2, "rl_steps": 3},
     None, r"schedule\.rl_steps does not apply to schedule\.kind: mixer"),
    ({"kind": "xent", "xent_steps": 5, "stage_epochs": 1},
     None, r"schedule\.stage_epochs does not apply to schedule\.kind: xent"),
    ({"kind": "alternate", "xent_steps": 5, "rl_steps": 3, "stage_steps": 2},
     None, r"schedule\.stage_steps does not apply to schedule\.kind: alternate"),
    ({"kind": "constant", "xent_steps": 5},
     None, r"exactly one of schedule\.rl_steps or schedule\.rl_epochs \(schedule\.kind: constant\)"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2, "anneal_steps": 3},
     None, r"schedule\.anneal_steps only applies to schedule\.kind: alternate"),
    ({"kind": "alternate", "xent_steps": 5, "rl_epochs": 2},
     None, r"schedule\.anneal_steps is required with schedule\.rl_epochs"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2, "xent_weight": 1.0},
     None, r"schedule\.xent_weight"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 0},
     None, r"schedule\.stage_steps must be > 0"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2, "delta": 0},
     None, r"schedule\.delta must be > 0"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2, "final_stage_steps": 0},
     None, r"schedule\.final_stage_steps must be > 0"),
    ({"kind": "constant", "xent_steps": 5, "rl_steps": 3, "final_stage_steps": 2},
     None, r"schedule\.final_stage_steps only applies to schedule\.kind: mixer"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2},
     {"baseline": {"kind": "loo"}, "candidates": {"num_samples": 1}},
     r"reinforce\.baseline\.kind: loo needs reinforce\.candidates\.num_samples >= 2"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2},
     {"top_p": 0.9}, r"reinforce\.top_p was removed: REINFORCE's gradient assumes"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2},
     {"candidates": {"temperature": 0}}, r"reinforce\.candidates\.temperature must be > 0"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2},
     {"baseline": {"ema_decay": 1.0}}, r"reinforce\.baseline\.ema_decay must be in \[0, 1\)"),
    ({"kind": "mixer", "xent_steps": 5, "stage_steps": 2},
     {"baseline": {"kind": "critic"}}, r"reinforce\.baseline\.kind must be one of"),
])
def test_invalid_schedule_and_reinforce_name_the_field(schedule, reinforce, message):
    with pytest.raises(ConfigError, match=message):
        from_dict(recipe(schedule, reinforce))


def test_alternate_anneal_defaults_to_rl_steps():
    cfg = from_dict(recipe({"kind": "alternate", "xent_steps": 5, "rl_steps": 30}))
    assert cfg.schedule.anneal_steps == 30


def test_loo_with_two_samples_and_greedy_with_one_are_fine():
    mixer = {"kind": "mixer", "xent_steps": 5, "stage_steps": 2}
    from_dict(recipe(mixer, {"baseline": {"kind": "loo"}, "candidates": {"num_samples": 2}}))
    from_dict(recipe(mixer, {"baseline": {"kind": "greedy"}, "candidates": {"num_samples": 1}}))


def test_recipe_to_schedule_end_to_end():
    cfg = from_dict(recipe({"kind": "mixer", "xent_epochs": 25, "stage_epochs": 5, "delta": 3}))
    s = make(cfg.schedule, 10, 10, 25)
    assert s.total_steps == 700 and s.plan(650) == StagePlan(9, 25, 0.5)


# --- learning-rate factor ---------------------------------------------------------------------

def test_lr_factor_linear_matches_hand_values():
    from seqrl.schedule import lr_factor
    # warm-up 2 steps (0, 1/2), then linear from 1 to 0 over steps 2..6: (6 - s) / (6 - 2)
    got = [lr_factor(s, warmup=2, decay="linear", decay_steps=6) for s in range(8)]
    assert got == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.0, 0.0]


def test_lr_factor_rl_stage_is_constant_after_xent_decay():
    from seqrl.schedule import lr_factor
    # the decay ends with the XENT stage (step 6), then reinforce.lr / optim.lr = 0.1 flat
    got = [lr_factor(s, warmup=2, decay="linear", decay_steps=6, rl_start=6, rl_factor=0.1) for s in range(9)]
    assert got == [0.0, 0.5, 1.0, 0.75, 0.5, 0.25, 0.1, 0.1, 0.1]


def test_lr_factor_cosine_and_constant():
    import math

    from seqrl.schedule import lr_factor
    # cosine without warm-up over 4 steps: 0.5 * (1 + cos(pi * s / 4))
    got = [lr_factor(s, warmup=0, decay="cosine", decay_steps=4) for s in range(5)]
    assert got == pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5,
                                 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0])
    assert [lr_factor(s, warmup=2, decay="constant", decay_steps=4) for s in range(4)] == [0.0, 0.5, 1.0, 1.0]
