"""Shared fixtures: a tiny synthetic English->Spanish corpus, its files, and a tiny recipe.

Everything is offline and small enough for a 2-core CPU: tiny models are built from a config
and tokenizers are trained on the synthetic text.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# Tiny models on a shared CPU: one intra-op thread is ~100x faster than contending for cores.
os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

# A word-for-word dictionary, so every target is a deterministic function of its source.
EN_ES = {
    "the": "el", "a": "un", "small": "pequeño", "big": "grande", "old": "viejo", "new": "nuevo",
    "red": "rojo", "green": "verde", "tree": "árbol", "house": "casa", "dog": "perro",
    "cat": "gato", "man": "hombre", "book": "libro", "river": "río", "sees": "ve",
    "eats": "come", "has": "tiene", "wants": "quiere", "reads": "lee", "and": "y",
    "with": "con", "near": "cerca", "today": "hoy", "here": "aquí", "very": "muy",
}
EN_WORDS = sorted(EN_ES)
TOPICS = ("animals", "home", "nature")

# Tiny architectures (d_model/n_embd 32, one layer) that build in milliseconds on a CPU.
_SEQ2SEQ = {"d_model": 32, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
            "decoder_attention_heads": 2, "encoder_ffn_dim": 64, "decoder_ffn_dim": 64,
            "max_position_embeddings": 64}
TINY_CONFIGS = {
    "marian": dict(_SEQ2SEQ),
    "bart": dict(_SEQ2SEQ),
    "gpt2": {"n_embd": 32, "n_layer": 1, "n_head": 2, "n_positions": 128},
}


def make_pairs(n: int = 200, seed: int = 1234) -> list[dict]:
    """`n` deterministic {"en", "es", "topic"} rows, 3-8 words each."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        words = [rng.choice(EN_WORDS) for _ in range(rng.randint(3, 8))]
        rows.append({"en": " ".join(words), "es": " ".join(EN_ES[w] for w in words),
                     "topic": TOPICS[i % len(TOPICS)]})
    return rows


def write_jsonl(path, rows) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def build_tiny(architecture: str, texts: list[str] | None = None, seed: int = 0, **data_kw):
    """A tiny `TextModel` of `architecture` with a 120-token BPE tokenizer trained on `texts`."""
    from seqrl.config import DataConfig, ModelConfig, TokenizerConfig
    from seqrl.modeling import build

    if texts is None:
        pairs = make_pairs()[:160]
        texts = [p["en"] for p in pairs] + [p["es"] for p in pairs]
    torch.manual_seed(seed)
    data_cfg = DataConfig(**{"path": "unused", "source_field": "en", "target_field": "es", **data_kw})
    text_model = build(ModelConfig(architecture=architecture, config=dict(TINY_CONFIGS[architecture])),
                       TokenizerConfig(vocab_size=120), data_cfg, texts)
    text_model.model.eval()
    return text_model


@pytest.fixture(scope="session")
def tiny_text_model():
    """`tiny_text_model("marian"|"bart"|"gpt2")`: a cached tiny TextModel; do not train it in place."""
    cache = {}

    def get(architecture: str):
        if architecture not in cache:
            cache[architecture] = build_tiny(architecture)
        return cache[architecture]

    return get


@pytest.fixture
def toy_pairs() -> list[dict]:
    """~200 deterministic en->es pairs with an extra `topic` column."""
    return make_pairs()


def subprocess_work(tmp: Path, module: str, source: str) -> dict:
    """A folder for runs in fresh processes: the reward module `module` (its `source`) importable
    from it, the toy splits, and the environment (one thread, offline, no GPU)."""
    (tmp / f"{module}.py").write_text(source)
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join([str(tmp), os.environ.get("PYTHONPATH", "")]))
    return {"tmp": tmp, "data": write_toy_splits(tmp / "data"), "env": env}


def write_toy_splits(directory: Path, pairs: list[dict] | None = None) -> Path:
    """train.jsonl (160), validation.jsonl (20), test.jsonl (20) of the toy pairs in `directory`."""
    pairs = make_pairs() if pairs is None else pairs
    directory.mkdir(parents=True, exist_ok=True)
    write_jsonl(directory / "train.jsonl", pairs[:160])
    write_jsonl(directory / "validation.jsonl", pairs[160:180])
    write_jsonl(directory / "test.jsonl", pairs[180:200])
    return directory


@pytest.fixture
def toy_data_dir(tmp_path, toy_pairs):
    """A directory with train.jsonl (160), validation.jsonl (20), test.jsonl (20)."""
    return write_toy_splits(tmp_path / "data", toy_pairs)


def make_tiny_recipe(data_dir: Path, output_dir: Path) -> dict:
    """A raw recipe dict (accepted by `seqrl.config.from_dict`) for a tiny marian model."""
    return {
        "model": {
            "architecture": "marian",
            "config": dict(TINY_CONFIGS["marian"]),
        },
        "tokenizer": {"vocab_size": 120},
        "data": {"path": str(data_dir), "source_field": "en", "target_field": "es",
                 "max_source_tokens": 32, "max_target_tokens": 32},
        "xent": {"batch_size": 16},
        "schedule": {"kind": "xent", "xent_steps": 4},
        "optim": {"warmup_steps": 1},
        "eval": {"every": 0, "max_new_tokens": 8, "batch_size": 20},
        "run": {"output_dir": str(output_dir)},
        "log": {"every": 1, "progress_bar": False},
    }


@pytest.fixture
def tiny_recipe(toy_data_dir, tmp_path) -> dict:
    """`make_tiny_recipe` on the toy data, writing under tmp_path/run."""
    return make_tiny_recipe(toy_data_dir, tmp_path / "run")


@pytest.fixture
def mixer_recipe(tiny_recipe) -> dict:
    """The tiny recipe, ready for sequence-level schedules: short targets, 2 samples, BLEU reward."""
    tiny_recipe["data"]["max_target_tokens"] = 8
    tiny_recipe["reinforce"] = {"candidates": {"num_samples": 2}}
    tiny_recipe["rewards"] = [{"name": "bleu"}]
    return tiny_recipe


@pytest.fixture
def cli(capsys):
    """`cli(*args)` -> (exit code, stdout, stderr) of `seqrl.cli.main(args)`, in-process."""
    from seqrl.cli import main

    def run(*args) -> tuple[int, str, str]:
        capsys.readouterr()  # drop whatever came before
        rc = main([str(a) for a in args])
        out, err = capsys.readouterr()
        return rc, out, err

    return run


@pytest.fixture(scope="session")
def stand_in_dir(tmp_path_factory):
    """`stand_in_dir(family)`: a tiny local stand-in of a pretrained family (`stand_ins.py`),
    saved once per session."""
    from stand_ins import build_stand_in

    made = {}

    def get(family: str):
        if family not in made:
            made[family] = build_stand_in(family, tmp_path_factory.mktemp(family) / "model")
        return made[family]

    return get


@pytest.fixture(scope="module")
def stand_in_model(stand_in_dir):
    """`stand_in_model(family, n_sources=6)`: a stand-in's TextModel (eval mode, loaded once per test
    module) with the first n toy sources and targets, encoded."""
    from test_generation import load, sources_and_targets

    models, made = {}, {}

    def get(family: str, n_sources: int = 6):
        if family not in models:
            models[family] = load(stand_in_dir, family)
            models[family].model.eval()
        if (family, n_sources) not in made:
            made[family, n_sources] = (models[family], *sources_and_targets(models[family], n_sources))
        return made[family, n_sources]

    return get
