"""`reinforce.chunk_sources`: the decode and the teacher-forced pass run over a few sources
(with their k samples) at a time, each chunk's graph freed by its own backward pass, makes the same update as
one pass over the whole batch (to float summation order): the losses' normalizers are the whole
batch's, and the sequence-level baselines see every reward before any chunk."""

from __future__ import annotations

import pytest
import yaml
from conftest import TINY_CONFIGS
from safetensors.torch import load_file

from seqrl.cli import main

NO_DROPOUT = {"marian": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
              "gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0}}
CASES = {  # arch, schedule, reinforce
    "marian-loo-kl": ("marian", {"kind": "mixer", "xent_steps": 2, "stage_steps": 2, "delta": 3},
                      {"baseline": {"kind": "loo", "normalize_advantages": True}, "kl_coef": 0.1}),
    "gpt2-learned": ("gpt2", {"kind": "mixer", "xent_steps": 2, "stage_steps": 2, "delta": 3},
                     {"baseline": {"kind": "learned"}}),
    "gpt2-risk": ("gpt2", {"kind": "mixer", "xent_steps": 2, "stage_steps": 2, "delta": 3},
                  {"estimator": {"kind": "risk", "risk_alpha": 0.5}}),
    "marian-risk-beams-samples-reference": ("marian", {"kind": "mixer", "xent_steps": 2, "stage_steps": 2, "delta": 3},
                                            {"estimator": {"kind": "risk"},
                                             "candidates": {"kind": "both", "reference": True}}),
    "marian-greedy-constant": ("marian", {"kind": "constant", "xent_steps": 2, "rl_steps": 4, "xent_weight": 0.3},
                               {"baseline": {"kind": "greedy"}}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_chunked_teacher_forced_pass_makes_the_same_update(case, toy_data_dir, tmp_path, monkeypatch):
    from seqrl import steps

    arch, schedule, reinforce = CASES[case]
    finals, chunk_sizes, seen, real_chunk_loss = {}, {}, [], steps.chunk_loss
    monkeypatch.setattr(steps, "chunk_loss", lambda model, chunk, *a, **kw: seen.append(chunk.num_sources)
                        or real_chunk_loss(model, chunk, *a, **kw))
    for chunk in (None, 1, 3):
        recipe = {
            "model": {"architecture": arch, "config": dict(TINY_CONFIGS[arch], **NO_DROPOUT[arch])},
            "tokenizer": {"vocab_size": 120},
            "data": {"path": str(toy_data_dir), "source_field": "en", "target_field": "es",
                     "max_source_tokens": 16, "max_target_tokens": 8, "test_split": None},
            "xent": {"batch_size": 8}, "schedule": schedule,
            "reinforce": {"batch_size": 4, "chunk_sources": chunk, **reinforce,
                          "candidates": {"num_samples": 2, **reinforce.get("candidates", {})}},
            "rewards": [{"name": "bleu"}], "optim": {"lr": 3e-3, "warmup_steps": 1},
            "eval": {"every": 0, "max_new_tokens": 8, "max_examples": 4},
            "run": {"output_dir": str(tmp_path / f"chunk-{chunk}"), "seed": 2},
            "log": {"every": 1, "progress_bar": False},
        }
        (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
        seen.clear()
        assert main(["finetune", str(tmp_path / "r.yaml")]) == 0
        chunk_sizes[chunk] = set(seen)
        finals[chunk] = load_file(str(tmp_path / f"chunk-{chunk}" / "final" / "model.safetensors"))
    # 4 sources: in one pass, in chunks of 3 + 1, in chunks of 1
    assert chunk_sizes == {None: {4}, 1: {1}, 3: {3, 1}}, chunk_sizes
    for chunk in (1, 3):
        worst = max(float((finals[chunk][k] - finals[None][k]).abs().max()) for k in finals[None])
        assert worst < 1e-5, f"chunks of {chunk}: {worst}"  # (float order, as 2 processes against 1)
