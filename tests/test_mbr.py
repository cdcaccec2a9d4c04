"""MBR decoding and MBR distillation (`seqrl.mbr`, `seqrl.objectives.MbrDistill`): the choice a
hand-computed utility matrix gives, ties to the likelier candidate; the same choice however the
sources are split over processes; the distillation loss by hand; one-line errors."""

from __future__ import annotations

import json

import pytest
import torch
from accelerate import Accelerator

from seqrl.config import EvalConfig, MbrConfig, from_dict
from seqrl.errors import ConfigError
from seqrl.evaluate import decode_mbr, evaluate_split, mbr_candidates_path
from seqrl.mbr import build_decoder, build_utility, mbr_choice, utility_matrix
from seqrl.objectives import MbrDistill, ScoredRows
from seqrl.rewards import fast


def test_mbr_picks_the_highest_mean_utility_against_the_others_ties_to_the_likelier():
    # u[i, j]: candidate i scored against candidate j. The diagonal (100) must not count.
    tied = torch.tensor([[100, .2, .6],     # mean of the others (.2 + .6) / 2 = .4
                         [.4, 100, .4],     # .4: tied with 0, and likelier (-2 > -3)
                         [.5, .1, 100]])    # .3
    clear = torch.tensor([[100, .9, .8],    # .85: wins although the least likely
                          [.1, 100, .2],    # .15
                          [.3, .3, 100]])   # .3
    scores = torch.tensor([[-3.0, -2.0, -1.0], [-9.0, -1.0, -2.0]])
    assert mbr_choice(torch.stack([tied, clear]), scores).tolist() == [1, 0]
    # equal model scores too: the first of the tied
    assert mbr_choice(tied[None], torch.zeros(1, 3)).tolist() == [0]
    with pytest.raises(ValueError, match="at least 2 candidates"):
        mbr_choice(torch.zeros(1, 1, 1), torch.zeros(1, 1))


def test_utility_matrix_scores_every_pair_with_the_reward_in_batches():
    utility = build_utility(MbrConfig(utility="token_bleu"))
    candidates = [[[1, 2, 3, 4, 5], [1, 2, 3, 4, 6], [7, 8]], [[4, 4, 4], [4, 4, 4], [4, 4, 5]]]
    matrix = utility_matrix(utility, candidates, None, pair_batch=5)  # (12 pairs: 3 calls)
    for b, group in enumerate(candidates):
        for i in range(3):
            for j in range(3):
                want = 0.0 if i == j else float(fast.bleu([group[i]], [group[j]])[0])
                assert float(matrix[b, i, j]) == pytest.approx(want)
    assert float(matrix[1, 0, 1]) == pytest.approx(1.0)  # identical candidates


def overlap(completion_ids, reference_ids):
    """A utility by hand: the share of the reference's tokens the completion has."""
    return [len(set(c) & set(r)) / len(set(r)) for c, r in zip(completion_ids, reference_ids, strict=True)]


def test_mbr_distillation_loss_by_hand():
    utility = build_utility(MbrConfig(utility="overlap"), {"overlap": overlap})
    eos = 9
    # two sources, k = 3 rows each; suffix tokens (eos stripped before the utility sees them)
    tokens = torch.tensor([[1, 2, 9], [1, 3, 9], [5, 6, 9],
                           [4, 4, 9], [4, 7, 9], [4, 7, 9]])
    mask = torch.ones(6, 3, dtype=torch.bool)
    mask[0, 0] = False  # a gold prefix on row 0: its suffix is [2, 9]
    logp = torch.tensor([[-0.1, -0.5, -0.5], [-0.2, -0.2, -0.2], [-1.0, -1.0, -1.0],
                         [-0.1, -0.1, -0.1], [-0.3, -0.3, -0.4], [-0.2, -0.2, -0.2]], requires_grad=True)
    objective = MbrDistill(utility, eos, detokenize=lambda ids: [" ".join(map(str, r)) for r in ids])
    rows = ScoredRows(logp, mask, torch.zeros(6), torch.zeros(6), k=3, step_rows=6, tokens=tokens)
    # source 0: row 0's suffix [2] against [1, 3] and [5, 6]: 0; row 1 [1, 3]: vs [2] 0, vs [5, 6] 0;
    #   row 2: 0 -> all tie at 0; log p of suffixes: -1.0, -0.6, -3.0 -> row 1.
    # source 1: row 0 [4, 4] vs [4, 7]: 1/2 twice -> 1/2; rows 1, 2: vs [4, 4] 1, vs each other 1 -> 1;
    #   tie between rows 1 (-1.0) and 2 (-0.6) -> row 2.
    assert objective.choose(rows).tolist() == [1, 2]
    loss = objective(rows)
    assert float(loss.detach()) == pytest.approx(-(-0.6 + -0.6) / 2)
    loss.backward()
    expected = torch.zeros(6, 3)
    expected[1], expected[5] = -0.5, -0.5  # d/dlogp of -(1/B) sum of the chosen rows' suffixes
    assert torch.equal(logp.grad, expected)


@pytest.fixture(scope="module")
def tiny_marian():
    from conftest import build_tiny
    return build_tiny("marian")


def sources(tm, n=6):
    from conftest import make_pairs
    return tm.encode_sources([p["en"] for p in make_pairs()[:n]])


@pytest.mark.parametrize("kind", ["sample", "both"])
def test_the_same_choices_however_the_sources_are_split_over_processes(tiny_marian, kind):
    tm = tiny_marian
    decoder = build_decoder(tm, MbrConfig(num_candidates=4, candidates=kind, utility="token_bleu"), 8, seed=5)
    src = sources(tm)
    whole = decoder.decode(tm.model, src, 0)
    assert all(len(c) == decoder.per_source for c in whole.candidates)
    # two processes get consecutive halves (evaluate_split's MBR shards); batches of 2 within them
    halves = [decode_mbr(decoder, tm.model, src[:3], 0, 2), decode_mbr(decoder, tm.model, src[3:], 3, 2)]
    assert halves[0][0] + halves[1][0] == whole.chosen_texts()
    assert [r["choice"] for h in halves for r in h[1]] == whole.choice
    assert len({tuple(c) for c in whole.candidates[0]}) > 1  # the candidates differ: a real choice
    # the choice is mbr_choice of the matrix and log p it reports
    again = mbr_choice(whole.utility, torch.tensor(whole.logprobs)).tolist()
    assert again == whole.choice


def test_evaluate_split_decodes_by_mbr_and_writes_candidates(tiny_marian, tmp_path):
    from conftest import make_pairs
    from datasets import Dataset

    from seqrl.config import DataConfig

    tm, pairs = tiny_marian, make_pairs()[:5]
    dataset = Dataset.from_dict({"en": [p["en"] for p in pairs], "es": [p["es"] for p in pairs],
                                 "source_ids": sources(tm, 5)})
    settings = MbrConfig(num_candidates=3, utility="chrf", write_candidates=True)
    decoder = build_decoder(tm, settings, 8, seed=0)
    predictions = tmp_path / "predictions.jsonl"
    data_cfg = DataConfig(source_field="en", target_field="es")
    scores = evaluate_split(tm, tm.model, dataset, Accelerator(cpu=True), data_cfg,
                            EvalConfig(batch_size=2, max_new_tokens=8, metrics=["chrf"]), max_examples=None,
                            predictions_path=predictions, progress=False, mbr=decoder)
    assert scores["mbr_seconds_per_source"] > 0 and "chrf" in scores
    hyps = [json.loads(line)["hypothesis"] for line in predictions.read_text().splitlines()]
    records = [json.loads(line) for line in mbr_candidates_path(predictions).read_text().splitlines()]
    assert len(records) == 5 and all(len(r["utility"]) == 3 and len(r["candidates"]) == 3 for r in records)
    assert hyps == [r["candidates"][r["choice"]] for r in records]


def test_mbr_with_one_candidate_is_one_line(tiny_recipe):
    tiny_recipe["eval"].update(decode="mbr")
    tiny_recipe["mbr"] = {"num_candidates": 1}
    with pytest.raises(ConfigError, match=r"^mbr\.num_candidates: MBR decoding needs at least 2 candidates"):
        from_dict(tiny_recipe)
    tiny_recipe["schedule"] = {"kind": "constant", "xent_steps": 0, "rl_steps": 2}
    tiny_recipe["eval"]["decode"] = "search"
    tiny_recipe["reinforce"] = {"estimator": {"kind": "mbr"}, "candidates": {"num_samples": 1},
                                "baseline": {"kind": "none"}}
    with pytest.raises(ConfigError, match=r"^reinforce\.estimator\.kind: mbr needs reinforce\.candidates\.num_sa"):
        from_dict(tiny_recipe)


def test_an_unknown_utility_is_one_line():
    with pytest.raises(ConfigError, match=r"^mbr\.utility: unknown reward 'token_bleux'; did you mean 'token_bleu'"):
        build_utility(MbrConfig(utility="token_bleux"))
    with pytest.raises(ConfigError, match=r"^mbr\.utility: .*'smooth'"):
        build_utility(MbrConfig(utility="token_bleu", utility_kwargs={"smooth": "exp"}))


def reference_free_recipe(tmp_path, tiny_recipe) -> dict:
    """The tiny recipe on a training split of sources only, trained by MBR distillation, evaluated by MBR."""
    from conftest import make_pairs, write_jsonl

    data = tmp_path / "sources_only"
    data.mkdir()
    pairs = make_pairs()
    write_jsonl(data / "train.jsonl", [{"en": p["en"]} for p in pairs[:160]])  # no target column at all
    write_jsonl(data / "validation.jsonl", pairs[160:168])
    write_jsonl(data / "test.jsonl", pairs[180:186])
    tiny_recipe["data"].update(path=str(data), reference_free=True, max_target_tokens=8)
    tiny_recipe["xent"]["batch_size"] = 4
    tiny_recipe["schedule"] = {"kind": "constant", "xent_steps": 0, "xent_weight": 0.0, "rl_steps": 2}
    tiny_recipe["reinforce"] = {"estimator": {"kind": "mbr"}, "candidates": {"num_samples": 3},
                                "baseline": {"kind": "none"}}
    tiny_recipe["rewards"] = [{"name": "language_id", "kwargs": {"language": "es"}}]
    tiny_recipe["mbr"] = {"num_candidates": 2, "utility": "token_bleu"}
    tiny_recipe["eval"].update(every=2, decode="mbr", max_examples=8)
    return tiny_recipe


def test_a_run_on_sources_without_targets(tmp_path, tiny_recipe, cli):
    import yaml

    recipe = reference_free_recipe(tmp_path, tiny_recipe)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    rc, out, err = cli("finetune", path)
    assert rc == 0, err
    run = tmp_path / "run"
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if "train/reinforce" in r]
    assert len(trained) == 2 and all(r["train/reinforce"] > 0 for r in trained)  # -log p of the MBR choices
    assert all(r["frac_sampled"] == 1.0 for r in trained)  # whole outputs sampled: no gold prefix to follow
    assert any("eval/mbr_seconds_per_source" in r for r in rows)  # evaluation decoded by MBR
    assert (run / "final").is_dir()


def test_sources_without_targets_refuse_a_reference_based_reward_in_one_line(tmp_path, tiny_recipe, cli):
    import yaml

    recipe = reference_free_recipe(tmp_path, tiny_recipe)
    recipe["rewards"] = [{"name": "token_bleu"}]
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    rc, out, err = cli("finetune", path)
    assert rc == 2 and err.count("\n") == 1
    assert "rewards 'token_bleu' scores against references, which the training rows of data.reference_free lack" in err
    rc, out, err = cli("validate", path)  # (the same check, without training)
    assert rc == 2 and "rewards 'token_bleu' scores against references" in err
    recipe["schedule"] = {"kind": "mixer", "xent_steps": 2, "stage_steps": 2}
    with pytest.raises(ConfigError, match=r"^data\.reference_free: rows without targets leave cross-entropy"):
        from_dict(recipe)


def test_the_bench_script_makes_the_decoding_table(tiny_marian, tmp_path, toy_data_dir, cli):
    import importlib.util
    from pathlib import Path

    import yaml
    from conftest import make_tiny_recipe

    script = Path(__file__).resolve().parents[1] / "scripts" / "bench_mbr.py"
    spec = importlib.util.spec_from_file_location("bench_mbr", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tiny_marian.save(tmp_path / "model")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(make_tiny_recipe(toy_data_dir, tmp_path / "run")))
    out = tmp_path / "table.json"
    assert bench.main([str(recipe), "--model", str(tmp_path / "model"), "--max-examples", "3",
                       "--candidates", "2", "3", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [r["decoding"] for r in rows] == ["greedy", "beam 4", "MBR N=2 (sample, token_bleu)",
                                             "MBR N=3 (sample, token_bleu)"]
    assert all({"bleu", "chrf", "seconds_per_source"} <= set(r) and r["examples"] == 3 for r in rows)
    # the same model through `seqrl evaluate --decode mbr`
    rc, printed, err = cli("evaluate", recipe, "--model", tmp_path / "model", "--decode", "mbr",
                           "--max-examples", "3", "--set", "mbr.num_candidates=3")
    assert rc == 0, err
    assert json.loads(printed)["chrf"] == pytest.approx(rows[3]["chrf"], abs=1e-4)


def test_generate_by_mbr(tiny_marian, tmp_path, cli):
    tiny_marian.save(tmp_path / "model")
    (tmp_path / "in.txt").write_text("the red dog\na big house\n", encoding="utf-8")
    rc, out, err = cli("generate", tmp_path / "model", "--input", tmp_path / "in.txt", "--mbr", "3",
                       "--max-new-tokens", "6")
    assert rc == 0, err
    decoder = build_decoder(tiny_marian, MbrConfig(num_candidates=3), 6, seed=0)
    sources = tiny_marian.encode_sources(["the red dog", "a big house"])
    assert out.splitlines() == decoder.decode(tiny_marian.model, sources, 0).chosen_texts()
    rc, out, err = cli("generate", tmp_path / "model", "--input", tmp_path / "in.txt", "--mbr", "1")
    assert rc == 2 and err.count("\n") == 1 and "--mbr 1: MBR needs at least 2 candidates" in err


@pytest.mark.slow  # (a 2-process launch: ~1-2 min on a shared core; the default suite has the split test above)
def test_two_processes_choose_what_one_process_chooses(tiny_marian, tmp_path, toy_data_dir, cli):
    """`seqrl evaluate --decode mbr` launched on 2 processes (5 sources: shards of 3 and 2) writes the
    candidates, matrices and choices of 1 process."""
    import os
    import subprocess
    import sys

    import yaml
    from conftest import make_tiny_recipe

    tiny_marian.save(tmp_path / "model")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(make_tiny_recipe(toy_data_dir, tmp_path / "run")))
    common = ["evaluate", str(recipe), "--model", str(tmp_path / "model"), "--decode", "mbr", "--max-examples", "5",
              "--set", "mbr.num_candidates=3", "--set", "mbr.write_candidates=true", "--set", "eval.batch_size=2"]
    rc, _, err = cli(*common, "--output", tmp_path / "one.jsonl")
    assert rc == 0, err
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="",
               TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_machines", "1",
           "--num_processes", "2", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0",
           "-m", "seqrl", *common, "--output", str(tmp_path / "two.jsonl")]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name in ("one", "two"):
        assert (tmp_path / f"{name}.mbr.jsonl").is_file()
    assert (tmp_path / "two.jsonl").read_text() == (tmp_path / "one.jsonl").read_text()
    one, two = ([json.loads(line) for line in (tmp_path / f"{n}.mbr.jsonl").read_text().splitlines()]
                for n in ("one", "two"))
    assert [r["candidates"] for r in two] == [r["candidates"] for r in one]
    assert [r["choice"] for r in two] == [r["choice"] for r in one]
    assert [r["utility"] for r in two] == [r["utility"] for r in one]
