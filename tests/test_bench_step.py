"""scripts/bench_step.py at a tiny size on the CPU: every arm runs and the table reports it (the
GPU script, scripts/gpu_checks.sh, runs it with --device cuda)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # as when run: the script imports scripts/benchkit/
spec = importlib.util.spec_from_file_location("bench_step", REPO / "scripts" / "bench_step.py")
bench_step = importlib.util.module_from_spec(spec)
sys.modules.setdefault(spec.name, bench_step)
spec.loader.exec_module(bench_step)


def test_every_arm_runs_and_is_reported(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--arch", "bart", "--prompts", "2", "--samples", "2",
                                      "--new-tokens", "4", "--steps", "2", "--warmup", "1", "--threads", "1",
                                      "--vocab", "300", "--seqrl-set", "reinforce.decoding.check_every=2", "--guards"])
    bench_step.main()
    out = capsys.readouterr().out
    rows = dict(re.findall(r"^\| (seqrl[^|]*|minimal loop) \| ([0-9.]+) \|", out, re.M))
    guarded = {f"seqrl rewards={g}" for g in bench_step.GUARDED_REWARDS}
    assert set(rows) == {"seqrl", "seqrl reinforce.decoding.check_every=2", "seqrl XENT step", "minimal loop",
                         *guarded}, out
    assert all(float(v) > 0 for v in rows.values())
    ratio = re.search(r"/ its XENT step \(4 rows\): ([0-9.]+)x", out)
    # (the table's times are rounded to the millisecond: the ratio agrees with them to that)
    assert ratio and float(ratio.group(1)) == pytest.approx(float(rows["seqrl"]) / float(rows["seqrl XENT step"]),
                                                             rel=0.1)


def test_a_size_for_the_other_architecture_is_refused(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["bench_step.py", "--arch", "bart", "--size", "gpt2-small", "--skip-trl"])
    with pytest.raises(SystemExit, match="--size gpt2-small is for --arch gpt2"):
        bench_step.main()
