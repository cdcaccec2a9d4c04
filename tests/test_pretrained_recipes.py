"""Every recipe in recipes/pretrained/ runs, field for field, against a tiny local model of the
same class and tokenizer kind (`stand_ins.py`) and a local dataset of the same shape as its hub
data. Only where the model and data are, the run's length and the token limits of the tiny
models (64 positions) are overridden: the fields that name columns, languages, prefixes,
adapters, rewards and generation settings are the recipe's own, so each is known to be right."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import pytest
import yaml
from accelerate.state import AcceleratorState
from conftest import make_pairs, write_jsonl
from stand_ins import build_stand_in
from test_prepare_minilm import pm, tiny_bert

from seqrl.cli import main

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "recipes" / "pretrained").glob("*.yaml"))
SMOKE = ["run.max_steps=4", "schedule.xent_steps=2", "schedule.stage_steps=1", "eval.every=0",
         "eval.max_examples=4", "xent.batch_size=8", "reinforce.batch_size=2", "data.max_source_tokens=32",
         "data.max_target_tokens=16", "eval.max_new_tokens=12", "eval.batch_size=8", "log.progress_bar=false"]


def translation_dict(directory: Path, splits: dict[str, int]) -> Path:
    """opus-100 / news_commentary shape: DatasetDict of {translation: {en, es}} rows."""
    pairs, start, parts = make_pairs(sum(splits.values())), 0, {}
    for split, n in splits.items():
        parts[split] = datasets.Dataset.from_list([{"translation": {"en": p["en"], "es": p["es"]}}
                                                   for p in pairs[start:start + n]])
        start += n
    datasets.DatasetDict(parts).save_to_disk(str(directory))
    return directory


def xsum_like(directory: Path) -> Path:
    """XSum's shape: document, summary, id."""
    pairs = make_pairs(200)
    rows = [{"document": f"{p['en']} . {p['es']} .", "summary": p["en"].split()[0], "id": str(i)}
            for i, p in enumerate(pairs)]
    parts = {"train": rows[:160], "validation": rows[160:180], "test": rows[180:]}
    datasets.DatasetDict({s: datasets.Dataset.from_list(r) for s, r in parts.items()}).save_to_disk(str(directory))
    return directory


def debian_like(directory: Path) -> Path:
    """prepare_debian_synopsis.py's output: {split}.jsonl with source, target, family."""
    pairs = make_pairs(200)
    directory.mkdir(parents=True)
    for split, rows in (("train", pairs[:160]), ("validation", pairs[160:180]), ("test", pairs[180:])):
        write_jsonl(directory / f"{split}.jsonl", [{"source": p["en"], "target": p["es"], "family": p["topic"]}
                                                   for p in rows])
    return directory


def bert2bert(directory: Path) -> Path:
    pm.main(["--weights", str(tiny_bert(directory / "bert")), "--out", str(directory / "b2b"),
             "--encoder-out", str(directory / "encoder")])
    return directory / "b2b"


def local_reward_models(rewards: list[dict], model: Path) -> list[dict]:
    """The recipe's rewards, with a model-based one's `model` pointed at the stand-in's encoder
    (the script's --encoder-out beside it): names, weights and other options stay the recipe's."""
    return [{**r, "kwargs": {**r["kwargs"], "model": str(model.parent / "encoder")}} if "model" in r.get("kwargs", {})
            else r for r in rewards]


# recipe -> (stand-in model, local data of its data's shape)
CASES = {
    "marian_opus_mt_en_es": (lambda d: build_stand_in("marian", d),
                             lambda d: translation_dict(d, {"train": 160, "validation": 20, "test": 20})),
    "mbart50_en_es": (lambda d: build_stand_in("mbart50", d),
                      lambda d: translation_dict(d, {"train": 160, "validation": 20, "test": 20})),
    "nllb_en_es_lora": (lambda d: build_stand_in("nllb", d), lambda d: translation_dict(d, {"train": 1200})),
    "t5_small_xsum": (lambda d: build_stand_in("t5", d), xsum_like),
    "minilm_bert2bert_debian": (bert2bert, debian_like),
}


def test_every_pretrained_recipe_has_a_case():
    assert sorted(p.stem for p in RECIPES) == sorted(CASES)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_pretrained_recipe_runs_against_its_stand_in(recipe, tmp_path):
    make_model, make_data = CASES[recipe.stem]
    raw = yaml.safe_load(recipe.read_text())
    model, data = make_model(tmp_path / "model"), make_data(tmp_path / "data")
    out = tmp_path / "run"
    overrides = [f"model.name_or_path={model}", f"data.path={data}", f"run.output_dir={out}", *SMOKE]
    if raw["data"].get("hub_config"):
        overrides.append("data.hub_config=null")  # (a hub dataset's configuration; the stand-in data is local)
    if any("model" in r.get("kwargs", {}) for r in raw["rewards"]):
        overrides.append(f"rewards={json.dumps(local_reward_models(raw['rewards'], model))}")
    AcceleratorState._reset_state(reset_partial_state=True)  # the recipe's own mixed precision, in this process
    args = ["finetune", str(recipe)]
    for item in overrides:
        args += ["--set", item]
    assert main(args) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("reward/total" in m for m in lines), "the run did not reach a MIXER step"
    assert (out / "final" / "config.json").is_file()
    if raw["model"].get("lora"):
        assert (out / "final" / "adapter" / "adapter_config.json").is_file()
    languages = raw.get("tokenizer", {})
    if languages.get("tgt_lang"):
        config = json.loads((out / "final" / "generation_config.json").read_text())
        vocab = json.loads((out / "final" / "tokenizer.json").read_text())["added_tokens"]
        assert config["forced_bos_token_id"] == next(t["id"] for t in vocab if t["content"] == languages["tgt_lang"])
    AcceleratorState._reset_state(reset_partial_state=True)


def test_pretrained_recipe_headers_show_their_command():
    for recipe in RECIPES:
        head = recipe.read_text().split("\n\n")[0]
        assert f"seqrl finetune recipes/pretrained/{recipe.name}" in head, f"{recipe.name}: header lacks its command"
