"""The recipe schema: strict loading, error messages naming the field, overrides, round trips."""

from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
from pathlib import Path

import pytest
import yaml

import seqrl.config as config_module
import seqrl.model_config as model_config
import seqrl.rl_config as rl_config
from seqrl.config import (
    RecipeConfig,
    apply_override,
    dump_recipe,
    from_dict,
    load_recipe,
    to_dict,
)
from seqrl.errors import ConfigError, SeqrlError

REPO = Path(__file__).resolve().parents[1]


def base() -> dict:
    """The smallest valid recipe."""
    return {"model": {"architecture": "marian"}, "data": {"path": "data"},
            "schedule": {"kind": "xent", "xent_steps": 3}}


def with_(section: str, **values) -> dict:
    raw = base()
    raw.setdefault(section, {}).update(values)
    return raw


def write(tmp_path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_minimal_recipe_and_defaults():
    cfg = from_dict(base())
    assert isinstance(cfg, RecipeConfig)
    assert cfg.model.architecture == "marian"
    assert cfg.optim.lr == 5e-4 and cfg.optim.betas == (0.9, 0.98)
    assert cfg.eval.metrics == ["bleu", "chrf", "rougeL"]


def test_tiny_recipe_fixture_is_valid(tiny_recipe):
    cfg = from_dict(tiny_recipe)
    assert cfg.model.architecture == "marian"
    assert cfg.tokenizer.vocab_size == 120
    assert cfg.schedule.xent_steps == 4
    assert cfg.eval.every == 0 and cfg.eval.max_new_tokens == 8
    assert cfg.log.progress_bar is False
    assert Path(cfg.data.path).is_dir()


def test_errors_are_seqrl_errors():
    assert issubclass(ConfigError, SeqrlError)


# -- unknown keys --------------------------------------------------------------------------------


def test_unknown_top_level_key_suggests():
    raw = base()
    raw["optimm"] = {"lr": 1e-3}
    with pytest.raises(ConfigError, match=r"unknown key 'optimm'; did you mean 'optim'\?"):
        from_dict(raw)


def test_unknown_section_key_suggests_dotted_name():
    with pytest.raises(ConfigError, match=r"unknown key 'optim\.lrr'; did you mean 'optim\.lr'\?"):
        from_dict(with_("optim", lrr=1e-3))


def test_unknown_key_without_close_match_lists_known_keys():
    with pytest.raises(ConfigError, match=r"unknown key 'xent\.zzzzzz'; known keys: batch_size, label_smoothing"):
        from_dict(with_("xent", zzzzzz=1))


def test_section_must_be_a_mapping():
    raw = base()
    raw["optim"] = "fast"
    with pytest.raises(ConfigError, match=r"optim must be a mapping"):
        from_dict(raw)


def test_empty_section_means_defaults():
    raw = base()
    raw["optim"] = None
    assert from_dict(raw).optim.lr == 5e-4


# -- types ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("section,key,value,expected", [
    ("xent", "batch_size", "32", r"xent\.batch_size must be an integer, got '32' \(str\)"),
    ("xent", "batch_size", True, r"xent\.batch_size must be an integer, got True \(bool\)"),
    ("xent", "batch_size", 2.5, r"xent\.batch_size must be an integer, got 2\.5 \(float\)"),
    ("data", "source_field", ["a", "b"], r"data\.source_field must be a string, got \['a', 'b'\] \(list\)"),
    ("optim", "lr", "fast", r"optim\.lr must be a number"),
    ("optim", "lr", True, r"optim\.lr must be a number"),
    ("log", "progress_bar", 1, r"log\.progress_bar must be true or false"),
    ("optim", "betas", [0.9], r"optim\.betas must be a list of 2 values"),
    ("optim", "betas", [0.9, "x"], r"optim\.betas\[1\] must be a number"),
    ("data", "max_train_examples", "all", r"data\.max_train_examples must be an integer"),
    ("data", "files", ["train.jsonl"], r"data\.files must be a mapping"),
    ("log", "trackers", "wandb", r"log\.trackers must be a list"),
])
def test_wrong_type_names_the_field(section, key, value, expected):
    raw = with_(section, **{key: value})
    if section == "data" and key == "files":
        raw["data"].pop("path")
    with pytest.raises(ConfigError, match=expected):
        from_dict(raw)


def test_int_widens_to_float_and_list_to_tuple():
    cfg = from_dict(with_("optim", lr=1, betas=[0, 0.5], max_grad_norm=2))
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.betas == (0.0, 0.5) and isinstance(cfg.optim.betas, tuple)
    assert isinstance(cfg.optim.max_grad_norm, float)


def test_optional_fields_accept_null():
    cfg = from_dict(with_("optim", max_grad_norm=None))
    assert cfg.optim.max_grad_norm is None
    cfg = from_dict(with_("data", test_split=None))
    assert cfg.data.test_split is None


# -- Literal values ------------------------------------------------------------------------------


@pytest.mark.parametrize("section,key,value,suggestion", [
    ("optim", "decay", "cosin", "cosine"),
    ("model", "dtype", "bfloat61", "bfloat16"),
    ("tokenizer", "algorithm", "unigrm", "unigram"),
    ("data", "empty_targets", "skp", "skip"),
])
def test_literal_value_with_suggestion(section, key, value, suggestion):
    with pytest.raises(ConfigError, match=rf"{section}\.{key} must be one of .*got '{value}'; "
                                          rf"did you mean '{suggestion}'\?"):
        from_dict(with_(section, **{key: value}))


def test_literal_in_list_names_the_item():
    with pytest.raises(ConfigError, match=r"eval\.metrics\[1\] must be one of 'bleu', 'chrf'.*got 'meteor'"):
        from_dict(with_("eval", metrics=["bleu", "meteor"]))


def test_literal_accepted():
    cfg = from_dict(with_("eval", metrics=["rouge1", "rouge2"]))
    assert cfg.eval.metrics == ["rouge1", "rouge2"]


def test_mixed_precision_no_in_yaml(tmp_path):
    path = write(tmp_path, "model: {architecture: marian}\ndata: {path: d}\nschedule: {kind: xent, xent_steps: 1}\n"
                           "run:\n  mixed_precision: no\n")
    assert load_recipe(path).run.mixed_precision == "no"


# -- ranges --------------------------------------------------------------------------------------


@pytest.mark.parametrize("section,key,value,expected", [
    ("xent", "batch_size", 0, r"xent\.batch_size must be > 0, got 0"),
    ("xent", "batch_size", -4, r"xent\.batch_size must be > 0, got -4"),
    ("eval", "batch_size", 0, r"eval\.batch_size must be > 0"),
    ("optim", "lr", 0.0, r"optim\.lr must be > 0"),
    ("optim", "lr", -1e-3, r"optim\.lr must be > 0"),
    ("optim", "warmup_steps", -1, r"optim\.warmup_steps must be >= 0"),
    ("optim", "weight_decay", -0.1, r"optim\.weight_decay must be >= 0"),
    ("optim", "max_grad_norm", 0, r"optim\.max_grad_norm must be > 0 \(or empty\)"),
    ("xent", "label_smoothing", 1.0, r"xent\.label_smoothing must be in \[0, 1\)"),
    ("xent", "label_smoothing", -0.1, r"xent\.label_smoothing must be in \[0, 1\)"),
    ("optim", "betas", [0.9, 1.0], r"optim\.betas must both be in \[0, 1\)"),
    ("optim", "betas", [-0.1, 0.9], r"optim\.betas must both be in \[0, 1\)"),
    ("tokenizer", "vocab_size", 0, r"tokenizer\.vocab_size must be > 0"),
    ("data", "max_train_examples", 0, r"data\.max_train_examples must be > 0 \(or empty\)"),
    ("eval", "every", -1, r"eval\.every must be >= 0"),
])
def test_range_checks_name_the_field(section, key, value, expected):
    with pytest.raises(ConfigError, match=expected):
        from_dict(with_(section, **{key: value}))


def test_negative_schedule_steps_rejected():
    raw = base()
    raw["schedule"]["xent_steps"] = -1
    with pytest.raises(ConfigError, match=r"schedule\.xent_steps must be"):
        from_dict(raw)


# -- exclusive fields ----------------------------------------------------------------------------


def test_model_name_and_architecture_both_set():
    with pytest.raises(ConfigError, match=r"model\.name_or_path.*model\.architecture"):
        from_dict(with_("model", name_or_path="some/model"))


def test_model_name_and_architecture_neither_set():
    raw = base()
    raw["model"] = {}
    with pytest.raises(ConfigError, match=r"exactly one of model\.name_or_path"):
        from_dict(raw)


def test_model_config_needs_architecture():
    raw = base()
    raw["model"] = {"name_or_path": "some/model", "config": {"d_model": 8}}
    with pytest.raises(ConfigError, match=r"model\.config only applies with model\.architecture"):
        from_dict(raw)


def test_data_path_and_files_both_set():
    with pytest.raises(ConfigError, match=r"exactly one of data\.path or data\.files"):
        from_dict(with_("data", files={"train": "t.jsonl"}))


def test_data_path_and_files_neither_set():
    raw = base()
    raw["data"] = {}
    with pytest.raises(ConfigError, match=r"exactly one of data\.path or data\.files"):
        from_dict(raw)


def test_data_files_alone_is_fine():
    raw = base()
    raw["data"] = {"files": {"train": "t.jsonl", "validation": "v.csv"}}
    assert from_dict(raw).data.files == {"train": "t.jsonl", "validation": "v.csv"}


def test_xent_steps_and_epochs_both_set():
    with pytest.raises(ConfigError, match=r"exactly one of schedule\.xent_steps or schedule\.xent_epochs"):
        from_dict(with_("schedule", xent_epochs=1.5))


def test_xent_steps_and_epochs_neither_set():
    raw = base()
    raw["schedule"] = {"kind": "xent"}
    with pytest.raises(ConfigError, match=r"exactly one of schedule\.xent_steps or schedule\.xent_epochs"):
        from_dict(raw)


def test_xent_epochs_alone_int_widens():
    raw = base()
    raw["schedule"] = {"kind": "xent", "xent_epochs": 2}
    cfg = from_dict(raw)
    assert cfg.schedule.xent_epochs == 2.0 and cfg.schedule.xent_steps is None


def test_same_source_and_target_field():
    with pytest.raises(ConfigError, match=r"data\.source_field and data\.target_field are both 'x'"):
        from_dict(with_("data", source_field="x", target_field="x"))


# -- overrides -----------------------------------------------------------------------------------


def test_override_nested_keys_and_yaml_values():
    raw = base()
    apply_override(raw, "optim.lr=1e-4")
    apply_override(raw, "model.config.d_model=64")
    apply_override(raw, "eval.metrics=[bleu, chrf]")
    apply_override(raw, "optim.max_grad_norm=null")
    apply_override(raw, "data.test_split=")
    apply_override(raw, "run.overwrite=true")
    apply_override(raw, "data.source_prefix='translate: '")  # quoted: a bare `a: ` is a YAML mapping
    assert raw["optim"]["lr"] == 1e-4 and isinstance(raw["optim"]["lr"], float)
    assert raw["model"] == {"architecture": "marian", "config": {"d_model": 64}}
    assert raw["eval"]["metrics"] == ["bleu", "chrf"]
    assert raw["optim"]["max_grad_norm"] is None
    assert raw["data"]["test_split"] is None
    assert raw["run"]["overwrite"] is True
    assert raw["data"]["source_prefix"] == "translate: "
    cfg = from_dict(raw)
    assert cfg.optim.lr == 1e-4
    assert cfg.model.config == {"d_model": 64}
    assert cfg.eval.metrics == ["bleu", "chrf"]
    assert cfg.optim.max_grad_norm is None and cfg.data.test_split is None


def test_override_value_may_contain_equals():
    raw = base()
    apply_override(raw, "data.source_prefix=a=b")
    assert raw["data"]["source_prefix"] == "a=b"


def test_override_unparsable_yaml_kept_as_string():
    raw = base()
    apply_override(raw, "data.source_prefix=[unclosed")
    assert raw["data"]["source_prefix"] == "[unclosed"


@pytest.mark.parametrize("item", ["optim.lr", "=3", "  =3", ""])
def test_malformed_override(item):
    with pytest.raises(ConfigError, match=r"--set expects key=value"):
        apply_override(base(), item)


def test_override_through_a_non_section():
    raw = base()
    with pytest.raises(ConfigError, match=r"'architecture' is not a section"):
        apply_override(raw, "model.architecture.x=1")


def test_override_then_validation_names_field():
    raw = base()
    apply_override(raw, "optim.lrr=1e-4")
    with pytest.raises(ConfigError, match=r"did you mean 'optim\.lr'"):
        from_dict(raw)


def test_override_into_empty_section():
    raw = base()
    raw["optim"] = None
    apply_override(raw, "optim.lr=1e-3")
    assert from_dict(raw).optim.lr == 1e-3


# -- YAML files ----------------------------------------------------------------------------------


def test_yaml_exponent_is_float(tmp_path):
    path = write(tmp_path, "model: {architecture: marian}\ndata: {path: d}\nschedule: {kind: xent, xent_steps: 1}\n"
                           "optim:\n  lr: 1e-4\n  eps: 1E-8\n  weight_decay: 0.01\n")
    cfg = load_recipe(path)
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.optim.eps == 1e-8


def test_yaml_integers_stay_integers(tmp_path):
    path = write(tmp_path, "model: {architecture: marian}\ndata: {path: d}\nschedule: {kind: xent, xent_steps: 10}\n")
    cfg = load_recipe(path)
    assert cfg.schedule.xent_steps == 10 and type(cfg.schedule.xent_steps) is int


def test_load_recipe_with_overrides(tmp_path):
    path = write(tmp_path, "model: {architecture: marian}\ndata: {path: d}\nschedule: {kind: xent, xent_steps: 1}\n")
    cfg = load_recipe(path, ["optim.lr=3e-4", "schedule.xent_steps=7"])
    assert cfg.optim.lr == 3e-4 and cfg.schedule.xent_steps == 7


def test_non_mapping_yaml(tmp_path):
    path = write(tmp_path, "- model\n- data\n")
    with pytest.raises(ConfigError, match=r"must be a mapping of sections, got list"):
        load_recipe(path)


def test_invalid_yaml(tmp_path):
    path = write(tmp_path, "model: {architecture: marian\n")
    with pytest.raises(ConfigError, match=r"is not valid YAML"):
        load_recipe(path)


def test_missing_recipe_file(tmp_path):
    with pytest.raises(ConfigError, match=r"recipe file not found: .*nope\.yaml"):
        load_recipe(tmp_path / "nope.yaml")


def test_empty_yaml_file_reports_missing_choices(tmp_path):
    path = write(tmp_path, "")
    with pytest.raises(ConfigError, match=r"model"):
        load_recipe(path)


def test_every_recipe_in_repo_loads():
    """Every seqrl recipe under recipes/ (not accelerate's configs) loads, with its header command."""
    recipes = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "accelerate" not in p.parts)
    assert len(recipes) >= 10
    for path in recipes:
        header = path.read_text().split("\n\n")[0]
        assert "seqrl finetune" in header and path.name in header, f"{path}: its header shows no command running it"
        cfg = load_recipe(path)
        assert isinstance(cfg, RecipeConfig), path


# -- round trip ----------------------------------------------------------------------------------


def test_dump_then_load_round_trip(tmp_path, tiny_recipe):
    raw = copy.deepcopy(tiny_recipe)
    raw["optim"].update(lr=1e-4, eps=1e-8, betas=[0.8, 0.95], max_grad_norm=None)
    raw["eval"]["metrics"] = ["bleu", "rouge2"]
    raw["data"]["source_prefix"] = "translate: "
    raw["data"]["test_split"] = None
    raw["run"]["mixed_precision"] = "no"
    raw["log"]["project"] = "yes"  # a string YAML 1.1 would read as a bool unless quoted
    cfg = from_dict(raw)
    text = dump_recipe(cfg)
    path = write(tmp_path, text)
    again = load_recipe(path)
    assert again == cfg
    assert to_dict(again) == to_dict(cfg)


def test_dump_of_defaults_round_trips(tmp_path):
    cfg = from_dict(base())
    assert load_recipe(write(tmp_path, dump_recipe(cfg))) == cfg


def test_dump_round_trip_exponent_like_string(tmp_path):
    cfg = from_dict(with_("log", project="1e5"))
    assert load_recipe(write(tmp_path, dump_recipe(cfg))) == cfg


# -- documentation -------------------------------------------------------------------------------


@pytest.mark.parametrize("config_module", [config_module, model_config, rl_config])
def test_every_config_field_has_a_docstring(config_module):
    """Each field of each @dataclass in the schema's modules is followed by an attribute docstring."""
    tree = ast.parse(inspect.getsource(config_module))
    missing, seen = [], {}
    for node in tree.body:
        if not isinstance(node, ast.ClassDef):
            continue
        decorators = [d.func if isinstance(d, ast.Call) else d for d in node.decorator_list]
        if not any(getattr(d, "id", getattr(d, "attr", None)) == "dataclass" for d in decorators):
            continue
        seen[node.name] = set()
        for i, stmt in enumerate(node.body):
            if not isinstance(stmt, ast.AnnAssign):
                continue
            seen[node.name].add(stmt.target.id)
            nxt = node.body[i + 1] if i + 1 < len(node.body) else None
            if not (isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                    and isinstance(nxt.value.value, str) and nxt.value.value.strip()):
                missing.append(f"{node.name}.{stmt.target.id}")
    assert not missing, f"fields without a docstring: {missing}"
    # The walk saw every dataclass of the module and every one of its fields.
    runtime = {name: {f.name for f in dataclasses.fields(obj)} for name, obj in vars(config_module).items()
               if isinstance(obj, type) and dataclasses.is_dataclass(obj)
               and obj.__module__ == config_module.__name__}
    assert seen == runtime
    assert set(runtime) >= {"RecipeConfig": {"RecipeConfig", "OptimConfig", "EvalConfig"},
                            "ModelConfig": {"ModelConfig", "DataConfig"},
                            "ReinforceConfig": {"ReinforceConfig", "CandidatesConfig"}}[
        next(n for n in ("RecipeConfig", "ModelConfig", "ReinforceConfig") if n in runtime)]


# -- recipes that would exhaust memory or recursion -------------------------------------------

def _alias_bomb(levels: int = 12) -> str:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


HOSTILE = {
    "alias-bomb": (_alias_bomb(), "more than 100,000 values once YAML aliases"),
    "alias-bomb-as-kwargs": ("rewards:\n  - name: bleu\n    kwargs:\n" + "".join(
        "      " + line + "\n" for line in _alias_bomb().splitlines()), "more than 100,000 values"),
    "merge-key-bomb": ("a: &a {k0: 1, k1: 1, k2: 1, k3: 1, k4: 1, k5: 1, k6: 1, k7: 1, k8: 1, k9: 1}\n" + "".join(
        f"b{i}: &b{i} [{', '.join(['*a' if i == 0 else f'*b{i - 1}'] * 10)}]\n" for i in range(6)), "100,000 values"),
    # (libyaml's scanner, reading ahead, may stop first at its own limit of 1,000 levels)
    "nested-list-3000": ("x: " + "[" * 3000 + "]" * 3000 + "\n", "nested more than 32 levels|maximum nesting depth"),
    "nested-mapping-600": ("".join("  " * i + f"k{i}:\n" for i in range(600)), "nested more than 32 levels"),
    "120k-scalars": ("x: [" + ", ".join(["1"] * 120_000) + "]\n", "line 1: more than 100,000 values; a recipe"),
    "integer-of-9000-digits": ("run: {seed: " + "7" * 9000 + "}\n", "9,000 digits"),
    "long-string": ("run: {output_dir: '" + "x" * (2 << 20) + "'}\n", "over 1,048,576 bytes"),
}


@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_recipes_are_refused_in_bounded_memory(tmp_path, name):
    """No recipe makes loading take more than a few MB: its shape is checked on PyYAML's event
    stream (not recursive) before any value is built, and errors never format a whole value."""
    import tracemalloc

    text, needle = HOSTILE[name]
    path = tmp_path / "recipe.yaml"
    path.write_text(text, encoding="utf-8")
    tracemalloc.start()
    try:
        with pytest.raises(ConfigError, match=needle):
            load_recipe(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 2**20, f"{peak / 2**20:.0f} MB"


def test_aliases_within_bounds_still_load(tmp_path):
    """Anchors are a YAML feature users rely on (one model config for two recipes' sections)."""
    path = tmp_path / "recipe.yaml"
    path.write_text("common: &opt {lr: 0.001, warmup_steps: 3}\n"
                    "model: {architecture: marian}\ndata: {path: data}\nschedule: {kind: xent, xent_steps: 3}\n"
                    "optim: *opt\n".replace("common: &opt", "log: {project: p}\n_x: &opt"))
    with pytest.raises(ConfigError, match="unknown key '_x'"):  # aliases expand; unknown keys stay errors
        load_recipe(path)
    path.write_text("model: {architecture: marian}\ndata: {path: data}\nschedule: {kind: xent, xent_steps: 3}\n"
                    "optim: &opt {lr: 0.001, warmup_steps: 3}\n"
                    "rewards: [{name: bleu, kwargs: {a: *opt, b: *opt}}]\n")
    cfg = load_recipe(path)
    assert cfg.optim.lr == 0.001 and cfg.rewards[0].kwargs == {"a": {"lr": 0.001, "warmup_steps": 3},
                                                                 "b": {"lr": 0.001, "warmup_steps": 3}}


def test_a_huge_wrong_value_is_described_briefly():
    raw = base()
    raw["xent"] = {"batch_size": list(range(90_000))}
    with pytest.raises(ConfigError) as err:
        from_dict(raw)
    assert str(err.value).startswith("xent.batch_size must be an integer, got [0, 1, 2, 3, ...] (list)")
    assert len(str(err.value)) < 100


@pytest.mark.parametrize("value,needle", [
    (10**20, "xent.batch_size must be between -2**63 and 2**63"),
    (2**63, "must be between -2**63 and 2**63"),
])
def test_integers_must_fit_64_bits(value, needle):
    raw = base()
    raw["xent"] = {"batch_size": value}
    with pytest.raises(ConfigError, match=needle.replace("*", r"\*")):
        from_dict(raw)
    raw["xent"] = {"batch_size": 2**63 - 1}
    from_dict(raw)  # the largest that fits is not refused here


def test_non_finite_numbers_anywhere_are_refused():
    raw = base()
    raw["model"]["config"] = {"d_model": 32, "extra": {"nested": [1.0, float("nan")]}}
    with pytest.raises(ConfigError, match=r"model.config.extra.nested\[1\] must be a finite number, got nan"):
        from_dict(raw)


@pytest.mark.parametrize("seed,ok", [(0, True), (2**32 - 1, True), (-1, False), (2**32, False)])
def test_seed_range(seed, ok):
    raw = base()
    raw["run"] = {"seed": seed}
    if ok:
        assert from_dict(raw).run.seed == seed
    else:
        with pytest.raises(ConfigError, match=r"run.seed must be in \[0, 2\*\*32 - 1\]"):
            from_dict(raw)


def test_recipe_not_utf8_names_the_line(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(b"model: {architecture: marian}\n# caf\xe9\n")
    with pytest.raises(ConfigError, match=r"recipe.yaml is not UTF-8 text \(byte 0xe9 on line 2\)"):
        load_recipe(path)


def test_a_recipe_saved_before_the_regrouping_reads_as_today(tmp_path):
    """A checkpoint's recipe in the flat `reinforce` layout (with the removed top_k, and without a
    field added since) diffs empty against the same settings written today; a real change shows."""
    from seqrl.checkpoint import RECIPE_FILE, changed_settings
    from seqrl.config import dump_recipe, recipe_as_today
    today = from_dict(with_("reinforce", candidates={"num_samples": 4}, baseline={"kind": "loo"}))
    old = yaml.safe_load(dump_recipe(today))
    flat = {"num_samples": 4, "baseline": "loo", "top_k": 0, "temperature": 1.0, "check_every": None}
    old["reinforce"] = {k: v for k, v in old["reinforce"].items() if k in ("batch_size", "lr")} | flat
    del old["eval"]["watch"]  # written before the field existed: its default applies
    (tmp_path / RECIPE_FILE).write_text(yaml.safe_dump(old))
    assert changed_settings(tmp_path, dump_recipe(today), recipe_as_today) == ""
    assert "reinforce.top_k" in changed_settings(tmp_path, dump_recipe(today))  # read as saved
    changed = from_dict(with_("reinforce", candidates={"num_samples": 8}, baseline={"kind": "loo"}))
    diff = changed_settings(tmp_path, dump_recipe(changed), recipe_as_today)
    assert diff == "reinforce.candidates.num_samples 4 -> 8"
