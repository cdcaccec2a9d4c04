"""scripts/build_converged.py: the plateau rule by hand, and a tiny finished run shipped as a
converged start (card, curve, sha256s) that loads with from_pretrained and trains as a start."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_recipe
from safetensors.torch import load_file

from seqrl.cli import main as seqrl_main

REPO = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_converged", REPO / "scripts" / "build_converged.py")
bc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bc
spec.loader.exec_module(bc)


def test_the_plateau_rule_by_hand():
    flat = [(s, 10.0 + (0.1 if s > 60 else 0.0)) for s in range(10, 91, 10)]  # 90 steps, every 10
    assert not bc.plateau(flat, 90).met  # the last third (61..90) holds 3 evaluations, not 8
    found = bc.plateau(flat, 90, min_evals=3)
    assert found.met and found.best_before == 10.0 and found.best_last_third == pytest.approx(10.1)
    rising = [(s, s / 10) for s in range(10, 91, 10)]  # 6.0 by step 60, 9.0 at the end: +3.0
    assert "still improving" in bc.plateau(rising, 90, min_evals=3).reason
    assert "by 3.00 (> 0.3)" in bc.plateau(rising, 90, min_evals=3).reason
    assert not bc.plateau(flat[:-1], 90, min_evals=3).met  # the schedule did not reach its end
    assert bc.plateau(flat[:-1], 90, min_evals=3).reason == "not finished: last evaluation at step 80 of 90"
    edge = [(s, 5.0) for s in range(10, 61, 10)] + [(70, 5.3), (80, 5.0), (90, 5.0)]
    assert bc.plateau(edge, 90, min_evals=3).met  # +0.3 is allowed ("by more than 0.3" is not)


def test_a_finished_run_ships_as_a_converged_start(toy_data_dir, tmp_path, monkeypatch, capsys):
    recipe = make_tiny_recipe(toy_data_dir, tmp_path / "run")
    recipe["schedule"] = {"kind": "xent", "xent_steps": 6}
    recipe["optim"] = {"lr": 1e-3, "warmup_steps": 1, "decay": "cosine"}
    recipe["eval"].update({"every": 1, "best_metric": "bleu", "max_examples": 8})
    recipe["data"]["test_split"] = "test"
    recipe["run"]["save_every"] = 3  # (a checkpoint at steps 3 and 6: the last one ships under run/)
    path = tmp_path / "converged.yaml"
    path.write_text(yaml.safe_dump(recipe))
    monkeypatch.setattr(bc, "MIN_EVALS", 2)
    monkeypatch.setattr(bc, "TOLERANCE", 1000.0)  # (a tiny model's BLEU moves a lot: the rule is tested above)
    assert bc.main(["--recipe", str(path), "--name", "tiny-xent", "--out", str(tmp_path / "starts")]) == 1  # unfinished
    assert seqrl_main(["finetune", str(path)]) == 0
    capsys.readouterr()
    assert bc.main(["--recipe", str(path), "--name", "tiny-xent", "--out", str(tmp_path / "starts"),
                    "--machine", "a test", "--with-checkpoint"]) == 0
    shipped = tmp_path / "starts" / "tiny-xent"
    assert "shipped: " in capsys.readouterr().out
    card = (shipped / "README.md").read_text()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "curve.png", "run/checkpoint/optimizer.bin",
                 "run/metrics.jsonl", "run/best.json", "run/tokenizer/tokenizer.json"):
        digest = hashlib.sha256((shipped / name).read_bytes()).hexdigest()
        assert f"| {name} | `{digest}` |" in card
    best = tmp_path / "run" / "best"
    assert (shipped / "model.safetensors").read_bytes() == (best / "model.safetensors").read_bytes()
    scores = json.loads(seqrl_evaluate(path, shipped, capsys).splitlines()[-1])
    assert f"| test/bleu | {scores['bleu']:.2f} |" in card
    assert "6 optimizer steps" in card and "on a test" in card and "seqrl finetune" in card
    assert "![validation curve](curve.png)" in card and not (shipped / "best.json").exists()
    assert json.loads((shipped / "run" / "checkpoint" / "trainer_state.json").read_text())["step"] == 6
    assert "arm A of `scripts/bench_quality.py --start` continues it" in card
    # In bf16 only if the test scores hold: the card gives both; the weights are half the size.
    base = ["--recipe", str(path), "--out", str(tmp_path / "starts"), "--machine", "a test", "--bf16"]
    assert bc.main([*base, "--name", "strict", "--bf16-tolerance", "-1"]) == 1
    assert not (tmp_path / "starts" / "strict").exists()
    assert bc.main([*base, "--name", "half", "--bf16-tolerance", "1000"]) == 0
    half = tmp_path / "starts" / "half"
    assert {t.dtype for t in load_file(half / "model.safetensors").values()} == {torch.bfloat16}
    assert "| metric | shipped (bf16 weights) | fp32 before rounding |" in (half / "README.md").read_text()
    assert (half / "model.safetensors").stat().st_size < 0.6 * (shipped / "model.safetensors").stat().st_size

    # A finished run that misses the rule ships only when asked, and its card says so first.
    monkeypatch.setattr(bc, "TOLERANCE", -1000.0)
    unmet = ["--recipe", str(path), "--name", "unmet", "--out", str(tmp_path / "starts"), "--machine", "a test"]
    assert bc.main(unmet) == 1 and not (tmp_path / "starts" / "unmet").exists()
    assert bc.main([*unmet, "--ship-unmet"]) == 0
    unmet_card = (tmp_path / "starts" / "unmet" / "README.md").read_text()
    assert "**The plateau rule is not met** (still improving" in unmet_card
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer
    model, tokenizer = AutoModelForSeq2SeqLM.from_pretrained(shipped), AutoTokenizer.from_pretrained(shipped)
    out = model.generate(**tokenizer(["the cat"], return_tensors="pt"), max_new_tokens=4)
    assert out.shape[0] == 1


def seqrl_evaluate(recipe: Path, model: Path, capsys) -> str:
    assert seqrl_main(["evaluate", str(recipe), "--model", str(model)]) == 0
    return capsys.readouterr().out.strip()
