"""LoRA through peft: per-family default targets, only adapters train, merged `final/` that plain
transformers loads (exactly peft's own merge), checkpoints holding the adapters only, the KL
reference as the same model with adapters off, and one-line errors."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from conftest import TINY_CONFIGS
from peft import PeftModel
from safetensors import safe_open
from safetensors.torch import load_file
from test_cli import assert_one_line_error
from test_generation import load
from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

from seqrl.cli import main
from seqrl.config import LoraSettings
from seqrl.errors import SeqrlError
from seqrl.lora import apply, merged_state_dict

FAMILIES = ["marian", "mbart50", "nllb", "t5", "bart", "gpt2"]


@pytest.mark.parametrize("family", FAMILIES)
def test_default_targets_per_family_and_only_adapters_train(stand_in_dir, family):
    tm = load(stand_in_dir, family)
    model = apply(tm.model, LoraSettings(rank=4))
    trained = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trained and all(".lora_A." in n or ".lora_B." in n for n in trained)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) < 0.5 * sum(
        p.numel() for p in model.parameters())


def test_merged_state_dict_is_exactly_peft_merge_and_unload(stand_in_dir):
    tm = load(stand_in_dir, "bart")
    model = apply(tm.model, LoraSettings(rank=4, target_modules=["q_proj", "v_proj", "fc1"]))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters something to merge
            p.data.normal_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merged_state_dict(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items()), "the live model is unchanged"
    reference = copy.deepcopy(model).merge_and_unload().state_dict()
    assert merged.keys() == reference.keys()
    assert all(torch.equal(merged[k], reference[k]) for k in reference)
    assert not torch.equal(merged["model.encoder.layers.0.fc1.weight"],
                           model.get_base_model().state_dict()["model.encoder.layers.0.fc1.base_layer.weight"])


def test_unknown_target_modules_are_one_line(stand_in_dir):
    tm = load(stand_in_dir, "t5")
    with pytest.raises(SeqrlError, match=r"model.lora.target_modules \['q_proj'\] match no layer of the model .*"
                                         r"it has .*\bq\b"):
        apply(tm.model, LoraSettings(target_modules=["q_proj"]))


def recipe(data_dir: Path, out: Path, model: dict, **extra) -> dict:
    base = {
        "model": model,
        "data": {"path": str(data_dir), "source_field": "en", "target_field": "es",
                 "max_source_tokens": 16, "max_target_tokens": 8, "test_split": None},
        "xent": {"batch_size": 16},
        "schedule": {"kind": "mixer", "xent_steps": 3, "stage_steps": 2, "delta": 4},
        "reinforce": {"baseline": {"kind": "loo"}, "candidates": {"num_samples": 2}, "batch_size": 8, "kl_coef": 0.1},
        "rewards": [{"name": "bleu"}],
        "optim": {"lr": 1e-2, "warmup_steps": 1},
        "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 4},
        "run": {"output_dir": str(out), "save_every": 3},
        "log": {"every": 1, "progress_bar": False},
    }
    base.update(extra)
    return base


def test_lora_run_trains_adapters_only_and_saves_merged_weights(stand_in_dir, toy_data_dir, tmp_path, capsys):
    """XENT then MIXER (with a KL penalty: the adapters-off reference) on the mBART-50 stand-in:
    `final/` is plain transformers weights equal to peft's merge of `final/adapter/` into the base;
    layers without adapters are the base's exactly; checkpoints hold the adapters only."""
    base_dir = stand_in_dir("mbart50")
    model = {"name_or_path": str(base_dir), "lora": {"rank": 4}}
    r = recipe(toy_data_dir, tmp_path / "run", model, tokenizer={"src_lang": "en_XX", "tgt_lang": "es_XX"})
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    capsys.readouterr()
    assert main(["finetune", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    assert "trained: LoRA rank 4 on q_proj, v_proj" in out
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any(m.get("kl", 0) > 0 for m in metrics), "the KL penalty ran against the adapters-off model"
    final = tmp_path / "run" / "final"
    trained = AutoModelForSeq2SeqLM.from_pretrained(final)  # plain transformers
    base = AutoModelForSeq2SeqLM.from_pretrained(base_dir)
    merged = PeftModel.from_pretrained(AutoModelForSeq2SeqLM.from_pretrained(base_dir), final / "adapter")
    expected = merged.merge_and_unload().state_dict()
    got, original = trained.state_dict(), base.state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    adapted = [k for k in got if k.endswith(("q_proj.weight", "v_proj.weight"))]
    assert adapted and all(not torch.equal(got[k], original[k]) for k in adapted)
    assert all(torch.equal(got[k], original[k]) for k in got if k not in adapted)
    spanish = AutoTokenizer.from_pretrained(final).convert_tokens_to_ids("es_XX")
    assert json.loads((final / "generation_config.json").read_text())["forced_bos_token_id"] == spanish
    checkpoint = tmp_path / "run" / "checkpoints" / "step-00000007"
    with safe_open(str(checkpoint / "model.safetensors"), framework="pt") as saved:
        keys = list(saved.keys())
    assert keys and all(".lora_" in k for k in keys)


def test_resuming_a_lora_checkpoint_into_a_full_run_is_refused(stand_in_dir, toy_data_dir, tmp_path, capsys):
    model = {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"]), "lora": {"rank": 2}}
    r = recipe(toy_data_dir, tmp_path / "run", model, tokenizer={"vocab_size": 120})
    r["schedule"] = {"kind": "xent", "xent_steps": 3}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    assert main(["finetune", str(tmp_path / "r.yaml")]) == 0
    capsys.readouterr()
    rc = main(["finetune", str(tmp_path / "r.yaml"), "--set", "run.resume=auto", "--set", "model.lora.rank=3",
               "--set", "schedule.xent_steps=4"])
    assert_one_line_error(rc, capsys.readouterr().err, "run.resume", "does not fit this recipe's model")
    rc = main(["finetune", str(tmp_path / "r.yaml"), "--set", "run.resume=auto", "--set", "run.seed=5",
               "--set", "schedule.xent_steps=4"])  # a from-config base: the seed makes the base weights
    assert_one_line_error(rc, capsys.readouterr().err, "run.resume", "trained on other base weights")
    rc = main(["finetune", str(tmp_path / "r.yaml"), "--set", "run.resume=auto", "--set", "model.lora=null",
               "--set", "schedule.xent_steps=4"])
    assert_one_line_error(rc, capsys.readouterr().err, "run.resume", "holds LoRA adapters only (a recipe with "
                          "model.lora), and this recipe trains every weight (no model.lora)")
    # the other way: a full fine-tuning checkpoint into a LoRA recipe
    assert main(["finetune", str(tmp_path / "r.yaml"), "--set", "model.lora=null",
                 "--set", f"run.output_dir={tmp_path / 'full'}"]) == 0
    capsys.readouterr()
    rc = main(["finetune", str(tmp_path / "r.yaml"), "--set", f"run.output_dir={tmp_path / 'lora'}",
               "--set", f"run.resume={tmp_path / 'full' / 'checkpoints' / 'step-00000003'}",
               "--set", "schedule.xent_steps=4"])
    err = capsys.readouterr().err
    assert_one_line_error(rc, err, "run.resume", "holds every weight of its model (a recipe without model.lora), "
                          "and this recipe trains LoRA adapters only (model.lora); use its own recipe")


@pytest.mark.parametrize("arch", ["marian", "gpt2"])
def test_gradient_checkpointing_makes_the_same_updates(toy_data_dir, tmp_path, arch):
    """Activations recomputed in the backward pass (XENT and MIXER's teacher-forced pass, where a
    decoder-only model then runs its prompt with each row instead of sharing its cache): the same
    weights as without, to float tolerance, with LoRA too. (Dropout included for Marian; GPT-2's
    changed passes draw other dropout masks, so it runs without dropout here.)"""
    finals = {}
    config = dict(TINY_CONFIGS[arch], **({"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}
                                         if arch == "gpt2" else {}))
    adapters = {"rank": 4, **({"dropout": 0.0} if arch == "gpt2" else {})}
    for name, extra in (("plain", {}), ("checkpointed", {"gradient_checkpointing": True}),
                        ("lora", {"lora": adapters}), ("lora-checkpointed", {"lora": adapters,
                                                                             "gradient_checkpointing": True})):
        model = {"architecture": arch, "config": config, **extra}
        r = recipe(toy_data_dir, tmp_path / name, model, tokenizer={"vocab_size": 120})
        r["run"]["save_every"] = 0
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(r))
        assert main(["finetune", str(tmp_path / f"{name}.yaml")]) == 0
        finals[name] = load_file(str(tmp_path / name / "final" / "model.safetensors"))
    for a, b in (("plain", "checkpointed"), ("lora", "lora-checkpointed")):
        worst = max(float((finals[a][k] - finals[b][k]).abs().max()) for k in finals[a])
        assert worst < 1e-5, f"{a} vs {b}: {worst}"
    assert max(float((finals["plain"][k] - finals["lora"][k]).abs().max()) for k in finals["plain"]) > 1e-3


def test_bf16_autocast_runs_on_the_cpu(toy_data_dir, tmp_path):
    model = {"architecture": "marian", "config": dict(TINY_CONFIGS["marian"]), "lora": {"rank": 4},
             "gradient_checkpointing": True}
    r = recipe(toy_data_dir, tmp_path / "run", model, tokenizer={"vocab_size": 120})
    r["run"].update(mixed_precision="bf16", cpu=True)
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(r))
    # its own process: accelerate's state, made once per process, is fp32 in this one
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    proc = subprocess.run([sys.executable, "-m", "seqrl", "finetune", str(tmp_path / "r.yaml")], env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["train/loss"] for m in rows if "train/loss" in m]
    assert len(losses) == 7 and all(isinstance(x, float) for x in losses)
    assert any("reward/bleu" in m for m in rows)


def _zero3_like(model: torch.nn.Module, rank: int, world: int) -> torch.nn.Module:
    """`model` as DeepSpeed ZeRO-3 leaves it on process `rank` of `world`: each weight an empty
    placeholder whose `ds_tensor` is this process's slice of the flattened weight, the last slice
    padded with zeros to equal length."""
    partitioned = copy.deepcopy(model)
    for p in partitioned.parameters():
        flat = p.detach().flatten()
        size = -(-flat.numel() // world)
        p.ds_tensor = torch.cat([flat, flat.new_zeros(size * world - flat.numel())])[rank * size:(rank + 1) * size]
        p.data = p.data.new_empty(0)
    return partitioned


def test_base_fingerprint_of_zero3_partitions_is_the_whole_models():
    from seqrl.lora import base_fingerprint

    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))  # 18 + 8 frozen values: uneven slices
    model[1].bias.requires_grad_(False)
    model[0].requires_grad_(False)
    whole = base_fingerprint(model)
    assert whole == pytest.approx(sum(float(p.double().square().sum()) for p in (*model[0].parameters(),
                                                                                  model[1].bias)), rel=1e-12)
    ranks = [_zero3_like(model, r, 3) for r in range(3)]
    parts = [base_fingerprint(m, sum_over_processes=lambda t: t) for m in ranks]  # without the collective
    assert all(p < whole for p in parts) and sum(parts) == pytest.approx(whole, rel=1e-12)
    own = [torch.tensor(p, dtype=torch.float64) for p in parts]
    for m in ranks:  # with it: every process gets the whole model's number
        assert base_fingerprint(m, sum_over_processes=lambda t: sum(own)) == pytest.approx(whole, rel=1e-12)
    other = copy.deepcopy(model)
    other[0].weight.data[0, 0] += 1.0
    assert base_fingerprint(_zero3_like(other, 0, 3), lambda t: t) != parts[0]


@pytest.mark.parametrize("same_base", [True, False, "buffer"])
def test_resume_fingerprints_the_base_before_a_whole_model_checkpoint_loads(monkeypatch, tmp_path, same_base):
    """A DeepSpeed or FSDP checkpoint holds the base weights too, and loading it puts them back: the
    comparison has to use the recipe's base as it was before the load. (Measured: a ZeRO-3 LoRA
    checkpoint resumed onto a changed base was accepted before this order.)"""
    from types import SimpleNamespace

    from seqrl import session
    from seqrl.lora import base_fingerprint, buffers_fingerprint

    model = torch.nn.Linear(3, 2)
    model.weight.requires_grad_(False)  # the frozen base; the bias stands for the adapters
    model.register_buffer("final_logits_bias", torch.zeros(1, 2))  # a base weight that is a buffer (Marian's)
    trained_on = copy.deepcopy(model)
    if same_base is False:
        trained_on.weight.data[0, 0] += 1.0
    if same_base == "buffer":  # changed in place: the parameters' fingerprint alone misses it
        trained_on.final_logits_bias[0, 1] = 0.5

    def load_whole_model(accelerator, path, lora_model):
        lora_model.weight.data.copy_(trained_on.weight.data)
        lora_model.final_logits_bias.copy_(trained_on.final_logits_bias)
        return {"step": 3, "lora_base": base_fingerprint(trained_on), "lora_buffers": buffers_fingerprint(trained_on),
                "baseline": {}}

    loaded = []
    monkeypatch.setattr(session, "load_checkpoint", load_whole_model)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    run = SimpleNamespace(cfg=SimpleNamespace(model=SimpleNamespace(lora=object())), model=model, reference=None,
                          accelerator=SimpleNamespace(print=lambda *a: None),
                          baseline=SimpleNamespace(load_state_dict=loaded.append),
                          lr_scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0))
    if same_base is True:
        assert session.resume(run, tmp_path)["step"] == 3 and loaded == [{}]
    else:
        with pytest.raises(SeqrlError, match="trained on other base weights"):
            session.resume(run, tmp_path)


def test_kl_reference_refused_where_weights_are_partitioned():
    from seqrl import distributed
    from seqrl.reference import AdaptersOff, FrozenCopy, build

    model = torch.nn.Linear(2, 2)
    assert isinstance(build(model, lora=False, partitioned=False, coef=0.1), FrozenCopy)
    reference = build(model, lora=True, partitioned=True, coef=0.1)
    assert isinstance(reference, AdaptersOff) and reference.coef == 0.1
    with pytest.raises(SeqrlError, match="reinforce.kl_coef > 0 with full fine-tuning under FSDP or DeepSpeed ZeRO-3"):
        build(model, lora=False, partitioned=True, coef=0.1)

    class Accelerator:
        def __init__(self, kind):
            self.distributed_type = kind

    assert distributed.partitioned(Accelerator("FSDP"), model)
    assert not distributed.partitioned(Accelerator("DEEPSPEED"), model)  # ZeRO-1/2: whole weights
    assert distributed.partitioned(Accelerator("DEEPSPEED"), _zero3_like(model, 0, 2))
    assert not distributed.partitioned(Accelerator("MULTI_CPU"), model)
