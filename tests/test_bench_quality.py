"""scripts/bench_quality.py end to end on the toy data with the benchmark recipes' shapes cut down:
XENT piece, arm A continuing it, arms B/C from its best model, the honesty guards and the table, and the cache
(a second call redoes nothing). The real benchmark is hours of CPU; this proves the plumbing."""

from __future__ import annotations

import importlib.util
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import make_tiny_recipe
from safetensors.torch import load_file

from seqrl.metrics import corpus_scores

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))  # as when run: bench_quality.py imports quality_report beside it
import quality_report as qr  # noqa: E402
import selection_check  # noqa: E402
from benchkit import diagnostics  # noqa: E402

spec = importlib.util.spec_from_file_location("bench_quality", REPO / "scripts" / "bench_quality.py")
bq = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bq
spec.loader.exec_module(bq)
spec = importlib.util.spec_from_file_location("build_converged", REPO / "scripts" / "build_converged.py")
bc = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = bc
spec.loader.exec_module(bc)

SMALL = ["eval.every=2", "eval.max_examples=null", "eval.max_new_tokens=8", "schedule.delta=4",
         "reinforce.batch_size=4", "reinforce.candidates.num_samples=2", "reinforce.lr=1e-4",
         "log.progress_bar=false", "rewards=[{name: bleu}]"]


@pytest.fixture
def tiny_bench_recipe(toy_data_dir, tmp_path) -> Path:
    recipe = make_tiny_recipe(toy_data_dir, tmp_path / "unused")
    recipe["schedule"] = {"kind": "mixer", "xent_steps": 4, "stage_steps": 2, "delta": 4}
    path = tmp_path / "bench.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def test_pieces_table_and_cache(tiny_bench_recipe, tmp_path, capsys):
    out = tmp_path / "quality"
    args = ["--task", "translation", "--recipe", str(tiny_bench_recipe), "--seeds", "0", "--out", str(out),
            "--xent-minutes", "0.05", "--patience", "2", "--budget-minutes", "0.03", "--arm-eval-every", "2",
            "--keep-evaluated"]
    for item in SMALL:
        args += ["--set", item]
    bq.main(args)
    seed_dir = out / "translation" / "seed0"
    for piece in ("xent", "A", "B", "C"):
        assert (seed_dir / piece / "best" / "best.json").is_file(), piece
    metrics = [json.loads(line) for line in (seed_dir / "B" / "metrics.jsonl").open()]
    assert any("reward/bleu" in m for m in metrics), "arm B ran no REINFORCE step"
    assert not any("reward/bleu" in m for m in (json.loads(line) for line in (seed_dir / "A" / "metrics.jsonl").open()))
    recipe_b = yaml.safe_load((seed_dir / "B" / "recipe.yaml").read_text())
    assert recipe_b["model"]["name_or_path"] == str(seed_dir / "xent" / "best")  # arms start from XENT's best
    assert [m["step"] for m in metrics if "eval/bleu" in m][0] == 0  # ... which is a candidate for their best/

    # A is XENT's own run resumed: its history up to the branch, then more steps of the same run
    branch = json.loads((seed_dir / "A" / "branch.json").read_text())
    xent_last = max((seed_dir / "xent" / "checkpoints").glob("step-*"), key=lambda p: int(p.name[5:]))
    xent_state = json.loads((xent_last / "trainer_state.json").read_text())  # A continues from XENT's last
    assert branch == {"step": xent_state["step"], "seconds": xent_state["seconds"]}
    steps_a = [json.loads(line)["step"] for line in (seed_dir / "A" / "metrics.jsonl").open()]
    assert min(steps_a) < branch["step"] < max(steps_a)
    assert yaml.safe_load((seed_dir / "A" / "recipe.yaml").read_text())["run"]["resume"] == "auto"
    quality_a = json.loads((seed_dir / "A" / "quality.json").read_text())  # A's own steps and time only
    assert quality_a["steps"] == max(steps_a) - branch["step"] and 0 < quality_a["minutes"] < 1
    best_a = json.loads((seed_dir / "A" / "best" / "best.json").read_text())["bleu"]
    assert best_a >= json.loads((seed_dir / "xent" / "best" / "best.json").read_text())["bleu"]
    quality = json.loads((seed_dir / "B" / "quality.json").read_text())
    assert 0 < quality["distinct"] <= 1 and quality["length_ratio"] > 0
    assert quality["gap"] == pytest.approx(quality["xent_shuffled"] - quality["xent_true"])
    # the final model (end of the budget) is scored too; for A and C here, as for every run
    assert set(quality["test_final"]) == set(quality["test"])
    final_hyps, final_refs = qr.test_predictions(seed_dir / "B", "final")
    assert final_refs == qr.test_predictions(seed_dir / "B")[1]
    assert quality["test_final"]["bleu"] == pytest.approx(corpus_scores(final_hyps, final_refs, ["bleu"])["bleu"])
    table = (out / "translation" / "results.md").read_text()
    for row in ("| xent |", "| A |", "| B |", "| C |", "| copy the source |", "best constant output"):
        assert row in table
    assert "| seed | B - A | B - A-restart | B - C |" in table
    assert "| xent | " in table and " | — | " in table.split("| xent | ")[1].splitlines()[0]  # no sd from one seed
    b_row = next(line for line in table.splitlines() if line.startswith("| B |"))
    metrics_b = quality["test"]  # the metrics besides the reward's (bleu), as means over the one seed
    # then BLEU's n-gram part / brevity penalty, which multiply back to the row's BLEU
    ngram_part, brevity = diagnostics.bleu_brevity_split(*qr.test_predictions(seed_dir / "B"))
    assert ngram_part * brevity == pytest.approx(quality["test"]["bleu"])
    assert b_row.endswith(f"| chrf {metrics_b['chrf']:.2f}, rougeL {metrics_b['rougeL']:.2f} "
                          f"| {ngram_part:.2f} / {brevity:.3f} |"), b_row
    assert table.count("[") >= 4  # B - A and B - C (A-restart was not run: "—"), between best and final models
    assert "| seed | B - A, final models | B - C, final models |" in table
    assert f"| {quality['test']['bleu']:.2f} | — | {quality['test_final']['bleu']:.2f} |" in b_row  # one seed: no sd
    # a cache written before final/ was scored gets its final score added, and nothing else redone
    cached = json.loads((seed_dir / "C" / "quality.json").read_text())
    del cached["test_final"]
    (seed_dir / "C" / "quality.json").write_text(json.dumps(cached))
    (seed_dir / "C" / "predictions-test-final.jsonl").unlink()
    again = qr.assess(str(tiny_bench_recipe), seed_dir / "C", "bleu", SMALL)
    assert again["test"] == cached["test"] and "test_final" in again
    assert (seed_dir / "C" / "predictions-test-final.jsonl").is_file()
    capsys.readouterr()
    bq.main(args)  # everything cached: no run starts again
    assert "running:" not in capsys.readouterr().out

    # --keep-evaluated: every evaluated model is a checkpoint, and scripts/selection_check.py scores
    # them offline exactly as the run scored them online (the same greedy decodes of validation)
    selection_check.main(["--task", "translation", "--recipe", str(tiny_bench_recipe), "--seed-dirs", str(seed_dir),
                          *[x for item in SMALL for x in ("--set", item)]])
    for arm in ("xent", "A", "B", "C"):  # XENT's candidates are its own evaluations, no shared start
        scores = json.loads((seed_dir / arm / "selection.json").read_text())
        logged = {m["step"]: m["eval/bleu"] for m in map(json.loads, (seed_dir / arm / "metrics.jsonl").open())
                  if "eval/bleu" in m}
        branch = json.loads((seed_dir / arm / "branch.json").read_text())["step"] if arm == "A" else 0
        start = [] if arm == "xent" else ["start"]
        assert [s["name"] for s in scores] == start + [f"step {n}" for n in sorted(logged) if n > branch], arm
        assert len(scores) >= 2, arm
        for s in scores[len(start):]:
            assert s["validation"] == pytest.approx(logged[int(s["name"][5:])], abs=1e-6), (arm, s)
        if start:
            xent_best = json.loads((seed_dir / "xent" / "best" / "best.json").read_text())["bleu"]
            assert scores[0]["validation"] == pytest.approx(xent_best, abs=1e-6)
    assert "| translation/seed0/B |" not in (out / "translation" / "selection.md").read_text()
    assert "| seed0/B |" in (out / "translation" / "selection.md").read_text()


def test_every_ablation_trains_with_reinforce():
    """An ablation that hardly samples measures nothing: the alternate schedule once annealed its
    REINFORCE share over 1,000,000 steps and made 3 REINFORCE steps in its whole budget."""
    from seqrl.config import load_recipe
    from seqrl.schedule import Schedule
    recipe = REPO / "recipes" / "bench" / "translation.yaml"
    base = load_recipe(recipe)
    mixer_steps = base.schedule.stage_steps * -(-base.data.max_target_tokens // base.schedule.delta)
    for name, extra in {"B": [], **bq.ABLATIONS}.items():
        cfg = load_recipe(recipe, bq.arm_overrides(base, bq.ARMS["B"] + extra))
        schedule = Schedule(cfg.schedule, 100, 100, cfg.data.max_target_tokens)
        rl_steps = sum(not schedule.plan(step).is_xent for step in range(mixer_steps))
        assert rl_steps >= mixer_steps // 3, (name, rl_steps)


def test_table_precision_recall_reads_each_seeds_test_predictions(tmp_path):
    # seed 0: P 3/4, R 5/6 (tests/test_diagnostics.py); seed 1: one exact match, P = R = 1. Means over seeds.
    pairs = {0: [("the cat", "the cat sat"), ("a dog barked loudly", "a dog")], 1: [("a b", "a b")]}
    for seed, rows in pairs.items():
        run = tmp_path / f"seed{seed}" / "B"
        run.mkdir(parents=True)
        (run / "predictions-test-best.jsonl").write_text(
            "".join(json.dumps({"hypothesis": h, "reference": r}) + "\n" for h, r in rows))
    runs = {0: {"B": {}}, 1: {"B": {}}}
    assert qr.score_split(tmp_path, runs, "B", "rougeL") == f"{(75 + 100) / 2:.2f} / {(500 / 6 + 100) / 2:.2f}"
    assert qr.score_split(tmp_path, runs, "B", "chrf") == ""


def test_table_bleu_split_is_the_mean_over_seeds(tmp_path):
    # seed 0: all 4-grams match, 4 of 6 reference words: 100 / exp(-0.5); seed 1: exact, 100 / 1
    pairs = {0: ("a b c d", "a b c d e f"), 1: ("a b c d", "a b c d")}
    for seed, (hypothesis, reference) in pairs.items():
        run = tmp_path / f"seed{seed}" / "B"
        run.mkdir(parents=True)
        prediction = {"hypothesis": hypothesis, "reference": reference}
        (run / "predictions-test-best.jsonl").write_text(json.dumps(prediction) + "\n")
    runs = {0: {"B": {}}, 1: {"B": {}}}
    assert qr.score_split(tmp_path, runs, "B", "bleu") == f"100.00 / {(math.exp(-0.5) + 1) / 2:.3f}"


def test_table_bootstraps_whole_families_where_the_data_has_them(toy_data_dir, tmp_path):
    # The test split gets a `family` column (as prepare_debian_synopsis.py writes); test_groups reads
    # it in the order of the test predictions, and refuses predictions that are not those rows.
    rows = [json.loads(line) for line in (toy_data_dir / "test.jsonl").open()]
    families = [f"f{i // 3}" for i in range(len(rows))]
    (toy_data_dir / "test.jsonl").write_text(
        "".join(json.dumps({**r, "family": f}) + "\n" for r, f in zip(rows, families, strict=True)))
    recipe = tmp_path / "bench.yaml"
    recipe.write_text(yaml.safe_dump(make_tiny_recipe(toy_data_dir, tmp_path / "unused")))
    run = tmp_path / "seed0" / "B"
    run.mkdir(parents=True)
    predictions = [{"hypothesis": r["es"], "reference": r["es"]} for r in rows]
    (run / "predictions-test-best.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    assert qr.test_groups(str(recipe), [], tmp_path, {0: {"B": {}}}) == families
    (run / "predictions-test-best.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions[::-1]))
    with pytest.raises(SystemExit, match="do not match the rows of test split"):
        qr.test_groups(str(recipe), [], tmp_path, {0: {"B": {}}})
    # without the column every example is its own group
    (toy_data_dir / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert qr.test_groups(str(recipe), [], tmp_path, {0: {"B": {}}}) is None


def test_arms_from_a_converged_start(tiny_bench_recipe, tmp_path, capsys):
    """--start: a finished XENT run (cosine to 0, as the converged starts) is every seed's start;
    A resumes its last checkpoint at the constant --a-lr, B and C start from its best/."""
    from seqrl.cli import main as seqrl_main
    start = tmp_path / "converged"
    assert seqrl_main(["finetune", str(tiny_bench_recipe), "--set", f"run.output_dir={start}",
                       "--set", "schedule.kind=xent", "--set", "schedule.stage_steps=null",
                       "--set", "optim.decay=cosine", "--set", "eval.best_metric=bleu",
                       "--set", "run.save_every=4", "--set", "data.test_split=null",
                       *[x for item in SMALL for x in ("--set", item)]]) == 0
    out = tmp_path / "quality"
    args = ["--task", "translation", "--recipe", str(tiny_bench_recipe), "--seeds", "0", "--out", str(out),
            "--budget-minutes", "0.03", "--arm-eval-every", "2", "--start", str(start), "--a-lr", "2e-4",
            "--pieces", "A", "C", "B", *[x for item in SMALL for x in ("--set", item)]]
    bq.main(args)
    seed_dir = out / "translation" / "seed0"
    recipe_b = yaml.safe_load((seed_dir / "B" / "recipe.yaml").read_text())
    assert recipe_b["model"]["name_or_path"] == str(seed_dir / "xent" / "best")
    assert (seed_dir / "xent" / "best" / "model.safetensors").read_bytes() == \
        (start / "best" / "model.safetensors").read_bytes()
    branch = json.loads((seed_dir / "A" / "branch.json").read_text())
    assert branch["step"] == 4
    rates = [m["lr"] for m in map(json.loads, (seed_dir / "A" / "metrics.jsonl").open())
             if "lr" in m and m["step"] > branch["step"]]
    rates_before = [m["lr"] for m in map(json.loads, (start / "metrics.jsonl").open()) if "lr" in m]
    assert rates and rates == [pytest.approx(2e-4, rel=1e-12)] * len(rates)  # (the start's ended at 0)
    with pytest.raises(SystemExit, match="--start replaces the xent piece"):
        bq.main([*args[:-len(SMALL) * 2 - 4], "--pieces", "xent", "A"])
    with pytest.raises(SystemExit, match="is neither a finished run with best/, final/ and a checkpoint"):
        bq.main(["--task", "translation", "--recipe", str(tiny_bench_recipe), "--seeds", "1", "--out", str(out),
                 "--start", str(tmp_path), "--pieces", "C"])

    # A shipped start (build_converged.py --with-checkpoint: best/'s files, and run/) continues as the run did.
    shipped = tmp_path / "starts" / "tiny"
    shutil.copytree(start / "best", shipped, ignore=shutil.ignore_patterns("best.json"))
    (shipped / "README.md").write_text("card")
    bc.ship_last_checkpoint(start, shipped / "run")
    bq.main([*args[:args.index("--start")], "--start", str(shipped), "--a-lr", "2e-4", "--seeds", "1", "--pieces", "A",
             *[x for item in SMALL for x in ("--set", item)]])
    seed1 = out / "translation" / "seed1"
    for folder in ("best", "final"):  # the run's own models, rebuilt from the shipped files
        assert load_file(seed1 / "xent" / folder / "model.safetensors").keys() == \
            load_file(start / folder / "model.safetensors").keys()
        assert all(torch.equal(a, load_file(start / folder / "model.safetensors")[k])
                   for k, a in load_file(seed1 / "xent" / folder / "model.safetensors").items())
    assert json.loads((seed1 / "xent" / "best" / "best.json").read_text()) == \
        json.loads((start / "best" / "best.json").read_text())  # (the shipped folder leaves it out)
    assert json.loads((seed1 / "A" / "branch.json").read_text())["step"] == 4
    rows = [m for m in map(json.loads, (seed1 / "A" / "metrics.jsonl").open()) if "lr" in m]
    assert [m["lr"] for m in rows if m["step"] <= 4] == rates_before  # the shipped curve, carried on
    continued = [m["lr"] for m in rows if m["step"] > 4]
    assert continued and continued == [pytest.approx(2e-4, rel=1e-12)] * len(continued)


def test_b_minus_is_seqrl_compare_with_whole_families_resampled(tmp_path):
    """The table's B - A cells come from `seqrl compare` (`compare_systems`) on the runs' test
    predictions. Two families of three verses; B is every reference, A misses family f0 wholly.
    Resampling families, a resample is {f0, f0} (B - A = 100), {f1, f1} (0) or one of each, each
    pair of equal ones drawn a quarter of the time: the 95% interval is exactly [0, 100]. Resampling
    verses, all six from one family happens 2 in 64 times, under 2.5% at each end: the interval is
    strictly inside."""
    refs = ["the old man reads a book today", "a small red house near the river", "the dog eats with the cat",
            "a big green tree is here", "the new book is very old", "the man has a dog and a cat"]
    wrong = ["zz yy xx ww vv uu"] * 3
    for run, hyps in (("A", wrong + refs[3:]), ("B", refs)):
        (tmp_path / run).mkdir()
        (tmp_path / run / "predictions-test-best.jsonl").write_text(
            "".join(json.dumps({"hypothesis": h, "reference": r}) + "\n" for h, r in zip(hyps, refs, strict=True)))
    delta = 100.0 - corpus_scores(wrong + refs[3:], refs, ["bleu"])["bleu"]
    families = ["f0"] * 3 + ["f1"] * 3
    assert qr.b_minus(tmp_path, "A", "bleu", groups=families).startswith(f"{delta:+.2f} [+0.00, +100.00] p ")
    low, high = map(float, qr.b_minus(tmp_path, "A", "bleu").split("[")[1].split("]")[0].split(", "))
    assert low > 0.0 and high < 100.0
    assert qr.b_minus(tmp_path, "C", "bleu") == "—"  # no predictions: no cell
