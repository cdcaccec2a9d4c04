"""End to end through the CLI: `seqrl finetune | validate | evaluate | generate`.

Most tests call `seqrl.cli.main([...])` in-process (a tiny run takes about a second once torch
is imported); a few run real subprocesses to prove the entry points (`python -m seqrl`, the
`seqrl` console script) work. Everything is offline: tiny models built from a config, a
tokenizer trained on the synthetic corpus of conftest.py.
"""

from __future__ import annotations

import importlib.util
import io
import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import EN_ES, TINY_CONFIGS, TOPICS, make_pairs, make_tiny_recipe, write_toy_splits

from seqrl.cli import main
from seqrl.config import load_recipe, to_dict
from seqrl.errors import ConfigError

PYTHON = sys.executable
CONSOLE_SCRIPT = Path(sys.executable).with_name("seqrl")
if not CONSOLE_SCRIPT.exists():  # pytest run by an interpreter outside the venv
    CONSOLE_SCRIPT = Path(shutil.which("seqrl") or "seqrl")
# Short mixer runs: targets cut to 8 tokens, so Δ=4 gives two stages after 2 XENT steps (4 steps).
MIXER_SETS = ["--set", "schedule.kind=mixer", "--set", "schedule.xent_steps=2",
              "--set", "schedule.stage_steps=1", "--set", "schedule.delta=4"]


# -- helpers -------------------------------------------------------------------------------------


def write_recipe(path: Path, recipe: dict) -> Path:
    path.write_text(yaml.safe_dump(recipe, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


def read_metrics(run_dir: Path) -> list[dict]:
    text = (Path(run_dir) / "metrics.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]


def rl_lines(metrics: list[dict]) -> list[dict]:
    """Training lines of sequence-level (REINFORCE) steps."""
    return [m for m in metrics if "reward/total" in m]


def assert_one_line_error(rc: int, err: str, *needles: str, command: str = "finetune") -> str:
    """Exit 2 and exactly one short `seqrl CMD: error: ...` line on stderr, naming every needle."""
    assert rc == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(f"seqrl {command}: error: "), line
    assert "Traceback" not in err
    assert len(line) < 300, line
    for needle in needles:
        assert needle in line, line
    return line


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> dict:
    """One finished tiny marian run (4 XENT steps), shared by the read-only tests below.

    The recipe is conftest's `make_tiny_recipe` (a function-scoped fixture cannot feed a
    module-scoped one).
    """
    tmp = tmp_path_factory.mktemp("trained")
    data_dir = write_toy_splits(tmp / "data")
    recipe = make_tiny_recipe(data_dir, tmp / "run")
    path = write_recipe(tmp / "recipe.yaml", recipe)
    rc = main(["finetune", str(path)])
    assert rc == 0
    return {"dir": tmp / "run", "recipe": path, "raw": recipe, "data": data_dir, "tmp": tmp}


# -- 1, 2: finetune end to end -------------------------------------------------------------------


def test_finetune_writes_metrics_recipe_predictions_and_final(trained_run):
    run = trained_run["dir"]
    metrics = read_metrics(run)
    assert all("step" in m and isinstance(m["step"], int) for m in metrics)
    keys = {k for m in metrics for k in m}
    assert {"train/loss", "eval/bleu", "eval/chrf", "eval/rougeL", "test/bleu"} <= keys
    train_steps = [m["step"] for m in metrics if "train/loss" in m]
    assert train_steps == [1, 2, 3, 4]  # log.every 1, schedule.xent_steps 4
    assert all(math.isfinite(m["train/loss"]) for m in metrics if "train/loss" in m)

    # recipe.yaml is the resolved recipe and loads back unchanged
    saved = load_recipe(run / "recipe.yaml")
    assert to_dict(saved) == to_dict(load_recipe(trained_run["recipe"]))

    for split in ("validation", "test"):
        rows = read_jsonl(run / f"predictions-{split}.jsonl")
        assert len(rows) == 20
        assert all(set(r) >= {"source", "reference", "hypothesis"} for r in rows)
        assert all(isinstance(r["hypothesis"], str) for r in rows)
    test_rows = read_jsonl(run / "predictions-test.jsonl")
    expected = make_pairs()[180:200]
    assert [r["source"] for r in test_rows] == [p["en"] for p in expected]
    assert [r["reference"] for r in test_rows] == [p["es"] for p in expected]


def test_final_loads_with_plain_transformers(trained_run):
    import torch
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    final = trained_run["dir"] / "final"
    model = AutoModelForSeq2SeqLM.from_pretrained(final).eval()
    tokenizer = AutoTokenizer.from_pretrained(final)
    assert type(model).__name__ == "MarianMTModel"
    enc = tokenizer(["the dog sees a cat", "a red house"], return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=6, do_sample=False)
    assert out.shape[0] == 2 and out.shape[1] <= 6 + 1
    texts = tokenizer.batch_decode(out, skip_special_tokens=True)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)


def test_finetune_decoder_only_gpt2(tiny_recipe, tmp_path, cli):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tiny_recipe["model"] = {"architecture": "gpt2", "config": dict(TINY_CONFIGS["gpt2"])}
    tiny_recipe["schedule"]["xent_steps"] = 2
    rc, out, err = cli("finetune", write_recipe(tmp_path / "gpt2.yaml", tiny_recipe))
    assert rc == 0, err
    run = Path(tiny_recipe["run"]["output_dir"])
    assert "GPT2LMHeadModel" in out
    keys = {k for m in read_metrics(run) for k in m}
    assert {"train/loss", "eval/bleu", "test/bleu"} <= keys
    model = AutoModelForCausalLM.from_pretrained(run / "final").eval()
    tokenizer = AutoTokenizer.from_pretrained(run / "final")
    assert type(model).__name__ == "GPT2LMHeadModel"
    enc = tokenizer("the dog sees a cat", return_tensors="pt")
    out_ids = model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out_ids.shape[1] <= enc["input_ids"].shape[1] + 4
    assert isinstance(tokenizer.decode(out_ids[0]), str)


# -- 3, 4: recipe errors and --set ----------------------------------------------------------------


def test_misspelled_key_is_one_line_exit_2(tiny_recipe, tmp_path, cli):
    tiny_recipe["optim"] = {"lrr": 1e-3}
    path = write_recipe(tmp_path / "bad.yaml", tiny_recipe)
    rc, out, err = cli("finetune", path)
    assert_one_line_error(rc, err, "did you mean 'optim.lr'")
    assert not Path(tiny_recipe["run"]["output_dir"]).exists()  # nothing written for a bad recipe


def test_misspelled_key_with_debug_raises(tiny_recipe, tmp_path):
    tiny_recipe["optim"] = {"lrr": 1e-3}
    path = write_recipe(tmp_path / "bad.yaml", tiny_recipe)
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.lr'"):
        main(["--debug", "finetune", str(path)])


def test_misspelled_key_in_a_real_subprocess(tiny_recipe, tmp_path):
    tiny_recipe["optim"] = {"lrr": 1e-3}
    path = write_recipe(tmp_path / "bad.yaml", tiny_recipe)
    proc = subprocess.run([PYTHON, "-m", "seqrl", "finetune", str(path)], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode != 0
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert len(proc.stderr) < 500, proc.stderr  # short (a library warning on import would be tolerated)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("seqrl finetune: error:")]
    assert len(errors) == 1, proc.stderr
    assert "did you mean 'optim.lr'" in errors[0]


def test_set_overrides_apply_and_max_steps_stops(tiny_recipe, tmp_path, cli):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    rc, out, err = cli("finetune", path, "--set", "run.max_steps=2", "--set", "optim.lr=1e-3")
    assert rc == 0, err
    run = Path(tiny_recipe["run"]["output_dir"])
    metrics = read_metrics(run)
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2]
    assert metrics[-1]["step"] == 2
    assert max(m["step"] for m in metrics) == 2
    saved = load_recipe(run / "recipe.yaml")
    assert saved.run.max_steps == 2 and saved.optim.lr == pytest.approx(1e-3)


@pytest.mark.parametrize("item,needle", [
    ("optim.lr=fast", "optim.lr must be a number"),
    ("optim.lrr=1e-3", "did you mean 'optim.lr'"),
    ("run.max_steps", "--set expects key=value"),
    ("schedule.kind=mixr", "did you mean 'mixer'"),
    ("run.max_steps=-1", "run.max_steps must be > 0"),
])
def test_bad_set_value_is_one_line_error(tiny_recipe, tmp_path, cli, item, needle):
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    rc, out, err = cli("finetune", path, "--set", item)
    assert_one_line_error(rc, err, needle)


# -- 5: every baseline and every schedule kind ----------------------------------------------------


@pytest.mark.parametrize("baseline", ["none", "mean", "ema", "loo", "greedy", "learned"])
def test_every_baseline_runs_mixer_end_to_end(mixer_recipe, tmp_path, cli, baseline):
    path = write_recipe(tmp_path / "r.yaml", mixer_recipe)
    rc, out, err = cli("finetune", path, *MIXER_SETS, "--set", f"reinforce.baseline.kind={baseline}")
    assert rc == 0, err
    metrics = read_metrics(Path(mixer_recipe["run"]["output_dir"]))
    rl = rl_lines(metrics)
    assert [m["step"] for m in rl] == [3, 4]  # steps 1-2 XENT, then stages Δ=4 and Δ=8
    for m in rl:
        for key in ("reward/bleu", "reward/total", "stage", "delta", "frac_sampled"):
            assert key in m and m[key] is not None, (key, m)
        assert 0.0 <= m["reward/bleu"] <= 1.0 + 1e-6
        assert 0.0 < m["frac_sampled"] <= 1.0
    assert [m["delta"] for m in rl] == [4, 8]
    assert [m["stage"] for m in rl] == [1, 2]
    assert rl[-1]["frac_sampled"] == pytest.approx(1.0)  # last stage samples whole targets
    assert not any("reward/total" in m for m in metrics if m["step"] <= 2 and "train/loss" in m)
    if baseline == "learned":
        assert any(m.get("baseline/mse") is not None for m in rl)
    else:
        assert not any("baseline/mse" in m for m in metrics)
    assert (Path(mixer_recipe["run"]["output_dir"]) / "final").is_dir()


@pytest.mark.parametrize("kind,sets,reward_steps", [
    ("xent", ["--set", "schedule.xent_steps=2"], []),
    ("mixer", MIXER_SETS[2:], [3, 4]),
    # anneal over 3 RL steps: shares 1/3, 2/3, 1 -> XENT, RL, RL
    ("alternate", ["--set", "schedule.xent_steps=2", "--set", "schedule.rl_steps=3"], [4, 5]),
    ("constant", ["--set", "schedule.xent_steps=2", "--set", "schedule.rl_steps=2"], [3, 4]),
], ids=["xent", "mixer", "alternate", "constant"])
def test_every_schedule_kind_runs_end_to_end(mixer_recipe, tmp_path, cli, kind, sets, reward_steps):
    path = write_recipe(tmp_path / "r.yaml", mixer_recipe)
    rc, out, err = cli("finetune", path, "--set", f"schedule.kind={kind}", *sets,
                       "--set", "run.max_steps=6")
    assert rc == 0, err
    metrics = read_metrics(Path(mixer_recipe["run"]["output_dir"]))
    rl = rl_lines(metrics)
    assert [m["step"] for m in rl] == reward_steps
    for m in rl:
        for key in ("reward/bleu", "reward/total", "stage", "delta", "frac_sampled"):
            assert m.get(key) is not None, (key, m)
    if kind in ("alternate", "constant"):
        assert all(m["delta"] == 8 and m["frac_sampled"] == pytest.approx(1.0) for m in rl)
    assert {"eval/bleu", "test/bleu"} <= {k for m in metrics for k in m}


# -- 6: a custom reward module --------------------------------------------------------------------

PROBE_MODULE = '''
import json


def probe(completions, log_path, scale, **kwargs):
    """Records what it was given; returns `scale` for every completion."""
    record = {"keys": sorted(["completions", "log_path", "scale", *kwargs]), "n": len(completions),
              "completions": completions, "scale": scale,
              **{k: kwargs[k] for k in ("references", "prompts", "completion_ids", "topic") if k in kwargs}}
    with open(log_path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\\n")
    return [scale] * len(completions)


def named(completions, topic, bonus):
    """No **kwargs: receives only what it names."""
    return [bonus if t in ("animals", "home", "nature") else -100.0 for t in topic]
'''


def custom_reward_recipe(recipe: dict, tmp_path: Path, module: str) -> tuple[dict, Path]:
    log_path = tmp_path / "probe-calls.jsonl"
    recipe["schedule"] = {"kind": "mixer", "xent_steps": 0, "stage_steps": 1, "delta": 8}
    recipe["rewards"] = [
        {"name": f"{module}:probe", "weight": 2.0, "kwargs": {"log_path": str(log_path), "scale": 0.25}},
        {"name": f"{module}:named", "weight": 1.0, "kwargs": {"bonus": 1.0}},
    ]
    return recipe, log_path


def check_probe_calls(log_path: Path, run_dir: Path, module: str) -> None:
    from transformers import AutoTokenizer

    calls = read_jsonl(log_path)
    assert len(calls) == 2  # the set-up call, then one RL step (no greedy decode: loo baseline)
    setup_call, call = calls
    assert setup_call["n"] == 2 and setup_call["completions"] == setup_call["references"]  # references as completions
    assert set(setup_call["keys"]) == set(call["keys"]), "the set-up call passes what training passes"
    assert {"completions", "references", "prompts", "completion_ids", "topic",
            "log_path", "scale"} <= set(call["keys"])
    assert call["scale"] == 0.25
    n, k = call["n"], 2  # reinforce.candidates.num_samples
    assert n > 0 and n % k == 0
    for name in ("completions", "references", "prompts", "completion_ids", "topic"):
        assert len(call[name]) == n, name
    assert all(isinstance(c, str) for c in call["completions"])
    assert all(isinstance(row, list) and all(isinstance(t, int) for t in row) for row in call["completion_ids"])
    assert set(call["topic"]) <= set(TOPICS)
    # each source's columns are repeated for its k samples, and stay aligned with each other
    for i in range(0, n, k):
        for name in ("prompts", "references", "topic"):
            assert len(set(call[name][i:i + k])) == 1, name
    for prompt, reference in zip(call["prompts"], call["references"], strict=True):
        assert reference == " ".join(EN_ES[w] for w in prompt.split())
    # completion_ids are the sampled tokens without the end-of-sequence token
    eos = AutoTokenizer.from_pretrained(run_dir / "final").eos_token_id
    assert not any(row and row[-1] == eos for row in call["completion_ids"])

    rl = rl_lines(read_metrics(run_dir))
    assert len(rl) == 1
    assert rl[0][f"reward/{module}:probe"] == pytest.approx(0.25)
    assert rl[0][f"reward/{module}:named"] == pytest.approx(1.0)
    assert rl[0]["reward/total"] == pytest.approx(2.0 * 0.25 + 1.0)


def test_custom_reward_gets_the_contract_and_recipe_kwargs(mixer_recipe, tmp_path, cli, monkeypatch):
    (tmp_path / "probe_rewards_a.py").write_text(PROBE_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "probe_rewards_a", raising=False)
    recipe, log_path = custom_reward_recipe(mixer_recipe, tmp_path, "probe_rewards_a")
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", recipe))
    assert rc == 0, err
    check_probe_calls(log_path, Path(recipe["run"]["output_dir"]), "probe_rewards_a")


def test_custom_reward_via_pythonpath_in_console_script(mixer_recipe, tmp_path):
    (tmp_path / "probe_rewards_b.py").write_text(PROBE_MODULE, encoding="utf-8")
    recipe, log_path = custom_reward_recipe(mixer_recipe, tmp_path, "probe_rewards_b")
    path = write_recipe(tmp_path / "r.yaml", recipe)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([str(CONSOLE_SCRIPT), "finetune", str(path)], capture_output=True, text=True,
                          timeout=180, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: model in" in proc.stdout
    check_probe_calls(log_path, Path(recipe["run"]["output_dir"]), "probe_rewards_b")


# -- 7: bad rewards -------------------------------------------------------------------------------

BAD_MODULE = '''
def raises(completions, **kwargs):
    raise ValueError("probe exploded")


def wrong_length(completions, **kwargs):
    return [0.0] * (len(completions) - 1)


def nan_at_3(completions, **kwargs):
    return ([0.0, 0.5, 1.0] + [float("nan")] * len(completions))[:len(completions)]  # (fine on 2 rows: set-up)


def returns_string(completions, **kwargs):
    return "0.5"


def string_at_2(completions, **kwargs):
    return [0.0, 1.0] + ["high"] * (len(completions) - 2)


not_a_function = 3
'''


@pytest.fixture
def bad_rewards(tmp_path, monkeypatch):
    (tmp_path / "bad_rewards_mod.py").write_text(BAD_MODULE, encoding="utf-8")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "bad_rewards_mod", raising=False)
    return "bad_rewards_mod"


@pytest.mark.parametrize("fn,needles", [
    ("raises", ["'bad_rewards_mod:raises'", "ValueError", "probe exploded"]),
    ("wrong_length", ["'bad_rewards_mod:wrong_length'", "values for", "completions"]),
    ("nan_at_3", ["'bad_rewards_mod:nan_at_3'", "nan", "index 3"]),
    ("returns_string", ["'bad_rewards_mod:returns_string'", "str"]),
    ("string_at_2", ["'bad_rewards_mod:string_at_2'", "'high'", "index 2"]),
])
def test_bad_reward_stops_with_one_line(mixer_recipe, tmp_path, cli, bad_rewards, fn, needles):
    mixer_recipe["schedule"] = {"kind": "mixer", "xent_steps": 0, "stage_steps": 1, "delta": 8}
    mixer_recipe["rewards"] = [{"name": f"{bad_rewards}:{fn}"}]
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", mixer_recipe))
    line = assert_one_line_error(rc, err, *needles)
    if fn == "wrong_length":
        assert re.search(r"returned (\d+) values for (\d+) completions", line)
    assert not (Path(mixer_recipe["run"]["output_dir"]) / "final").exists()


@pytest.mark.parametrize("name,needles", [
    ("no_such_module_xyz:score", ["no_such_module_xyz", "cannot import", "PYTHONPATH"]),
    ("bad_rewards_mod:missing", ["bad_rewards_mod:missing", "no function 'missing'"]),
    ("bad_rewards_mod:not_a_function", ["no function 'not_a_function'"]),
    ("blue", ["unknown reward 'blue'", "bleu"]),
])
def test_reward_that_does_not_load_is_one_line(mixer_recipe, tmp_path, cli, bad_rewards, name, needles):
    mixer_recipe["schedule"] = {"kind": "mixer", "xent_steps": 0, "stage_steps": 1, "delta": 8}
    mixer_recipe["rewards"] = [{"name": name}]
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", mixer_recipe))
    assert_one_line_error(rc, err, *needles)
    assert not Path(mixer_recipe["run"]["output_dir"]).exists()  # failed before any output


# -- 8: validate, evaluate, generate ----------------------------------------------------------------


def test_validate_prints_checks_and_resolved_recipe(trained_run, tmp_path, cli):
    rc, out, err = cli("validate", trained_run["recipe"], "--set", "optim.lr=2e-4")
    assert rc == 0, err
    head, sep, resolved = out.partition("# resolved recipe\n")
    assert sep
    assert "recipe: ok" in head
    for split in ("train", "validation", "test"):
        assert re.search(rf"data\[{split}\]: \d+ examples", head), head
    assert "data[train]: 160 examples" in head
    assert "topic" in head  # the extra column is listed
    assert "model: marian" in head
    resolved_path = tmp_path / "resolved.yaml"
    resolved_path.write_text(resolved, encoding="utf-8")
    cfg = load_recipe(resolved_path)
    assert cfg.optim.lr == pytest.approx(2e-4)
    assert cfg.data.path == str(trained_run["data"])


def test_validate_fails_on_missing_data_dir(tiny_recipe, tmp_path, cli):
    tiny_recipe["data"]["path"] = str(tmp_path / "no-such-dir")
    rc, out, err = cli("validate", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert_one_line_error(rc, err, "no-such-dir", command="validate")


def test_validate_checks_rewards(mixer_recipe, tmp_path, cli):
    """Found as a bug: a reward that does not import passed `validate`, then stopped `finetune`."""
    mixer_recipe["schedule"] = {"kind": "mixer", "xent_steps": 0, "stage_steps": 1, "delta": 8}
    mixer_recipe["rewards"] = [{"name": "no_such_module_xyz:score"}]
    rc, out, err = cli("validate", write_recipe(tmp_path / "r.yaml", mixer_recipe))
    assert_one_line_error(rc, err, "no_such_module_xyz", command="validate")


def test_evaluate_prints_scores_and_writes_predictions(trained_run, tmp_path, cli):
    run = trained_run["dir"]
    preds = tmp_path / "preds.jsonl"
    rc, out, err = cli("evaluate", trained_run["recipe"], "--model", run / "final", "--split", "test",
                       "--output", preds)
    assert rc == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert {"bleu", "chrf", "rougeL"} <= set(result)
    assert result["split"] == "test"
    rows = read_jsonl(preds)
    assert len(rows) == 20 and all(set(r) >= {"source", "reference", "hypothesis"} for r in rows)
    # the saved model decodes exactly as the in-memory one did at the end of training
    test_bleu = next(m["test/bleu"] for m in read_metrics(run) if "test/bleu" in m)
    assert result["bleu"] == pytest.approx(test_bleu, abs=1e-3)
    assert [r["hypothesis"] for r in rows] == [r["hypothesis"] for r in read_jsonl(run / "predictions-test.jsonl")]


def test_generate_from_file_one_line_per_input(trained_run, tmp_path, cli):
    run = trained_run["dir"]
    sources = [r["source"] for r in read_jsonl(run / "predictions-test.jsonl")]
    inp = tmp_path / "in.txt"
    inp.write_text("".join(s + "\n" for s in sources), encoding="utf-8")
    rc, out, err = cli("generate", run / "final", "--input", inp, "--max-new-tokens", 8, "--batch-size", 20)
    assert rc == 0, err
    lines = out.split("\n")
    assert lines[-1] == "" and len(lines) - 1 == len(sources)
    # same decoding as the final test evaluation of the run
    assert lines[:-1] == [r["hypothesis"].replace("\n", " ") for r in read_jsonl(run / "predictions-test.jsonl")]
    # --output writes the same lines to a file
    target = tmp_path / "out.txt"
    rc, out2, err = cli("generate", run / "final", "--input", inp, "--output", target, "--max-new-tokens", 8,
                        "--batch-size", 20)
    assert rc == 0 and out2 == ""
    assert target.read_text(encoding="utf-8") == out


def test_generate_missing_input_is_one_line(trained_run, tmp_path, cli):
    rc, out, err = cli("generate", trained_run["dir"] / "final", "--input", tmp_path / "nope.txt")
    assert_one_line_error(rc, err, "nope.txt", command="generate")
    rc, out, err = cli("generate", tmp_path / "no-model", "--input", trained_run["recipe"])
    assert_one_line_error(rc, err, "no-model", command="generate")


def test_generate_from_stdin_subprocess(trained_run):
    final = trained_run["dir"] / "final"
    proc = subprocess.run([PYTHON, "-m", "seqrl", "generate", str(final), "--max-new-tokens", "6"],
                          input="the dog sees a cat\na big red house\n", capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert len(proc.stdout.splitlines()) == 2
    assert proc.stdout.endswith("\n")


def test_generate_empty_input_writes_nothing(trained_run, cli, monkeypatch):
    """Found as a bug: empty input crashed with IndexError in the tokenizer."""
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    rc, out, err = cli("generate", trained_run["dir"] / "final", "--max-new-tokens", 4)
    assert rc == 0 and out == ""


def test_generate_more_tokens_than_positions_is_one_line(trained_run, tmp_path, cli):
    """Found as a bug: this crashed with IndexError in the position embeddings."""
    inp = tmp_path / "in.txt"
    inp.write_text("the dog\n", encoding="utf-8")
    # the tiny marian has 64 positions; its decoder also holds the start token
    rc, out, err = cli("generate", trained_run["dir"] / "final", "--input", inp, "--max-new-tokens", 100)
    assert_one_line_error(rc, err, "--max-new-tokens", "64 positions", command="generate")
    rc, out, err = cli("generate", trained_run["dir"] / "final", "--input", inp, "--max-new-tokens", 63)
    assert rc == 0, err
    assert len(out.splitlines()) == 1


def test_generate_defaults_to_the_runs_output_length(trained_run, tmp_path, cli, monkeypatch):
    """README's `echo ... | seqrl generate RUN/final` on a model with 64 positions: without
    --max-new-tokens it decodes as the run's evaluation did (eval.max_new_tokens, 8 here); a
    model directory without seqrl.json gets what its positions hold (63), not 128."""
    final = trained_run["dir"] / "final"
    assert json.loads((final / "seqrl.json").read_text())["max_new_tokens"] == 8
    monkeypatch.setattr(sys, "stdin", io.StringIO("the dog sees a cat\n"))
    rc, out, err = cli("generate", final)
    assert rc == 0, err
    monkeypatch.setattr(sys, "stdin", io.StringIO("the dog sees a cat\n"))
    assert cli("generate", final, "--max-new-tokens", 8)[1] == out
    plain = tmp_path / "plain"
    shutil.copytree(final, plain)
    (plain / "seqrl.json").unlink()
    from seqrl import evaluate

    seen, real_decode = [], evaluate.decode
    monkeypatch.setattr(evaluate, "decode", lambda *a, **kw: seen.append(kw["max_new_tokens"]) or real_decode(*a, **kw))
    monkeypatch.setattr(sys, "stdin", io.StringIO("the dog sees a cat\n"))
    rc, out, err = cli("generate", plain)
    assert rc == 0 and len(out.splitlines()) == 1, err
    assert seen == [63]


@pytest.mark.parametrize("section,key,value", [
    ("eval", "max_new_tokens", 128),
    ("data", "max_target_tokens", 100),
    ("data", "max_source_tokens", 100),
])
def test_lengths_beyond_positions_stop_before_training(tiny_recipe, tmp_path, cli, section, key, value):
    """Found as a bug: eval.max_new_tokens 128 (the default) > 64 positions trained, then crashed
    with IndexError at the final evaluation."""
    tiny_recipe[section][key] = value
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert_one_line_error(rc, err, f"{section}.{key}", "64 positions")
    run = Path(tiny_recipe["run"]["output_dir"])
    assert not (run / "final").exists()
    assert not (run / "metrics.jsonl").exists() or not any("train/loss" in m for m in read_metrics(run))


# -- 9: output_dir already holding a run ----------------------------------------------------------


def test_existing_run_needs_overwrite(tiny_recipe, tmp_path, cli):
    run = Path(tiny_recipe["run"]["output_dir"])
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"step": 99, "stale": 1.0}\n', encoding="utf-8")
    (run / "predictions-test.jsonl").write_text("stale\n", encoding="utf-8")
    path = write_recipe(tmp_path / "r.yaml", tiny_recipe)
    rc, out, err = cli("finetune", path)
    assert_one_line_error(rc, err, "already holds a run", "run.overwrite")
    assert (run / "metrics.jsonl").read_text(encoding="utf-8").startswith('{"step": 99')  # untouched

    rc, out, err = cli("finetune", path, "--set", "run.overwrite=true", "--set", "run.max_steps=1")
    assert rc == 0, err
    metrics = read_metrics(run)
    assert not any("stale" in m for m in metrics)
    assert max(m["step"] for m in metrics) == 1
    assert "source" in read_jsonl(run / "predictions-test.jsonl")[0]


# -- 10: trackers ---------------------------------------------------------------------------------


def test_tensorboard_tracker_not_installed(tiny_recipe, tmp_path, cli):
    if importlib.util.find_spec("tensorboard") or importlib.util.find_spec("tensorboardX"):
        pytest.skip("tensorboard is installed here")
    tiny_recipe["log"]["trackers"] = ["tensorboard"]
    rc, out, err = cli("finetune", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert_one_line_error(rc, err, "tensorboard", "pip install")
    assert not Path(tiny_recipe["run"]["output_dir"]).exists()


def test_unknown_tracker_suggests_a_name(tiny_recipe, tmp_path, cli):
    tiny_recipe["log"]["trackers"] = ["tensorbaord"]
    rc, out, err = cli("validate", write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert_one_line_error(rc, err, "did you mean 'tensorboard'", command="validate")


# -- 11: entry points -----------------------------------------------------------------------------


@pytest.mark.parametrize("argv", [[str(CONSOLE_SCRIPT)], [PYTHON, "-m", "seqrl"]], ids=["script", "module"])
def test_help_exits_0(argv):
    proc = subprocess.run([*argv, "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for command in ("finetune", "validate", "evaluate", "generate"):
        assert command in proc.stdout


@pytest.mark.parametrize("tracker", ["wandb", "trackio"])
@pytest.mark.parametrize("command", ["validate", "finetune"])
def test_tracker_not_installed_names_the_package(tiny_recipe, tmp_path, cli, tracker, command):
    """Not accelerate's "You must initialize the accelerate state" traceback: one line, at set-up."""
    if importlib.util.find_spec(tracker):
        pytest.skip(f"{tracker} is installed here")
    tiny_recipe["log"]["trackers"] = [tracker]
    rc, out, err = cli(command, write_recipe(tmp_path / "r.yaml", tiny_recipe))
    assert_one_line_error(rc, err, f"log.trackers: '{tracker}' is not installed; `pip install {tracker}`",
                          command=command)
    assert not Path(tiny_recipe["run"]["output_dir"]).exists()


def test_tracker_destinations_for_the_header(tmp_path):
    from seqrl.runlog import tracker_destinations

    lines = tracker_destinations(["tensorboard", "wandb", "trackio"], tmp_path / "run", "proj")
    assert lines[0] == f"tracker tensorboard: {tmp_path / 'run' / 'proj'}/ (tensorboard --logdir {tmp_path / 'run'})"
    assert lines[1].startswith("tracker wandb: W&B project 'proj'")
    assert lines[2].startswith("tracker trackio: trackio project 'proj'")
