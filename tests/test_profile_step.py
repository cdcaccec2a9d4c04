"""scripts/profile_step.py on the CPU at a tiny size: every part of both steps is measured, the
parts add up to the step, and the rollout's per-token counts are finite and divide by the number of
decoding iterations the rollout really ran."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import pytest

from seqrl import candidates
from seqrl import rollout as rollout_module

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("profile_step", REPO / "scripts" / "profile_step.py")
ps = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = ps
spec.loader.exec_module(ps)

PROMPTS, SAMPLES, NEW_TOKENS = 2, 2, 8


@pytest.mark.parametrize("arch", ["bart", "gpt2"])
def test_profile_step_cpu(arch, tmp_path, monkeypatch, capsys):
    # What the rollout really did, seen from outside the script: its sampling calls (one per
    # decoding iteration) and the rollout it returned, for every rollout of the run.
    seen, draws = [], [0]
    original_rollout, original_sample = candidates.rollout, rollout_module.sample

    def counting_sample(*args, **kwargs):
        draws[0] += 1
        return original_sample(*args, **kwargs)

    def spy(*args, **kwargs):
        draws[0] = 0
        ro = original_rollout(*args, **kwargs)
        seen.append((draws[0], ro))
        return ro

    monkeypatch.setattr(rollout_module, "sample", counting_sample)
    monkeypatch.setattr(candidates, "rollout", spy)
    result = ps.main(["--device", "cpu", "--arch", arch, "--prompts", str(PROMPTS), "--samples", str(SAMPLES),
                      "--new-tokens", str(NEW_TOKENS), "--warmup", "1", "--threads", "1", "--out", str(tmp_path)])
    assert candidates.rollout is spy  # the script's probe put back what it found

    for kind, labels in (("xent", ["forward", "backward", "optimizer"]),
                         ("mixer", ["rollout (decoding)", "reward", "teacher-forced forward", "backward",
                                    "optimizer"])):
        r = result[kind]
        assert list(r["parts"]) == labels + ["other"]
        for label in labels:
            assert math.isfinite(r["parts"][label]["ms"]) and r["parts"][label]["ms"] > 0, (kind, label)
        total = sum(p["ms"] for p in r["parts"].values())
        assert total == pytest.approx(r["step_ms"], rel=0.01), kind  # the parts make the step
        assert r["unprofiled"]["steps"] == 1 and r["unprofiled"]["step_ms"] > 0

    m = result["mixer"]
    assert m["stage"]["sampled_target_tokens"] == NEW_TOKENS  # the final stage: the whole output sampled
    ro = m["rollout"]
    draws_seen, last = seen[-1]  # the profiled step is the run's last rollout
    positions = int(last.lengths.max()) - int(last.prefix_len.min())
    assert int(last.prefix_len.max()) == 0
    assert ro["iterations_from"] == "token draws in the loop" and ro["iterations"] == draws_seen
    assert ro["model_calls"] == ro["iterations"]  # (an eager step on the CPU: the hook sees every call)
    assert ro["positions"] == positions == ro["iterations"]  # (the CPU checks for the end every token)
    assert 1 <= ro["iterations"] <= NEW_TOKENS
    assert ro["rows"] == PROMPTS * SAMPLES == last.sequences.shape[0]
    assert ro["sampled_tokens"] == int(last.lengths.sum())

    per = ro["per_iteration"]
    assert set(per) == {"leaf_aten_ops", "leaf_compute_ops", "top_level_aten_ops", "sync_ops"}  # CPU analogues
    assert all(math.isfinite(v) and v >= 0 for v in per.values())
    assert per["leaf_aten_ops"] >= per["leaf_compute_ops"] > 0 and per["top_level_aten_ops"] > 0
    assert ro["kernels_per_token"] == per["leaf_aten_ops"] and ro["syncs_per_token"] == per["sync_ops"]
    for key, n in ro["totals"].items():
        assert per[key] == pytest.approx(n / ro["iterations"])
        split = ro["split_per_iteration"][key]
        assert split["in_model"] + split["outside_model"] == pytest.approx(per[key])
    assert sum(ro["sync_ops_by_name"].values()) == ro["totals"]["sync_ops"]
    assert ro["split_per_iteration"]["leaf_aten_ops"]["in_model"] > 0  # the model's ops are inside the region
    assert 0 < ro["model_ms"] <= ro["rollout_ms"]
    assert ro["rollout_ms"] == pytest.approx(m["parts"]["rollout (decoding)"]["ms"])

    top = ro["top_ops"]
    assert 0 < len(top) <= 15 and any(op["op"].startswith("aten::") for op in top)
    assert [op["self_ms"] for op in top] == sorted((op["self_ms"] for op in top), reverse=True)

    text = capsys.readouterr().out
    assert "| rollout (decoding) |" in text and "Top 15 ops by self time inside the rollout region" in text
    assert json.loads((tmp_path / "profile.json").read_text())["mixer"]["rollout"]["iterations"] == ro["iterations"]
    assert "kernel launches" in (tmp_path / "profile.md").read_text()
