"""`seqrl validate`: check everything a run needs without training, and say what was checked."""

from __future__ import annotations

from seqrl import data, lora, modeling, rewards
from seqrl.config import RecipeConfig
from seqrl.run import check_lengths, describe
from seqrl.runlog import check_trackers
from seqrl.tokenizer import load_tokenizer


def validate(cfg: RecipeConfig) -> list[str]:
    """Load the data and the model's config (and a pretrained tokenizer); return report lines.

    A tokenizer that the run would train is not trained here; the data it would see is loaded.
    """
    lines = ["recipe: ok"]
    check_trackers(cfg.log.trackers)
    if cfg.schedule.kind != "xent":
        names = [r.name for r in rewards.build(cfg.rewards)]
        lines.append(f"rewards: {', '.join(names)} load")
    raw = data.load_raw(cfg.data, data.needed_splits(cfg.data))
    carved = data.carve_note(cfg.data, raw)
    lines += [carved] if carved else []
    for split, ds in raw.items():
        empty = sum(1 for t in list(ds[cfg.data.target_field]) if not (isinstance(t, str) and t.strip()))
        lines.append(f"data[{split}]: {len(ds)} examples, {empty} empty targets, columns {ds.column_names}")
    if cfg.model.name_or_path is not None:
        text_model = modeling.build(cfg.model, cfg.tokenizer, cfg.data)
        is_seq2seq, positions = text_model.is_seq2seq, text_model.max_positions
        lines.append(f"model: {cfg.model.name_or_path} loads (vocab {len(text_model.tokenizer)})")
        if cfg.model.lora:
            lines.append(f"model: {describe(lora.apply(text_model.model, cfg.model.lora), cfg.model)}")
    else:
        config = modeling.architecture_config(cfg.model)
        is_seq2seq, positions = config.is_encoder_decoder, getattr(config, "max_position_embeddings", None)
        if cfg.tokenizer.name_or_path is not None:
            tokenizer = load_tokenizer(cfg.tokenizer.name_or_path)
            lines.append(f"tokenizer: {cfg.tokenizer.name_or_path} loads (vocab {len(tokenizer)})")
        lines.append(f"model: {cfg.model.architecture} config builds; "
                     f"{'tokenizer given' if cfg.tokenizer.name_or_path else 'tokenizer trained at run start'}")
    check_lengths(cfg, is_seq2seq, positions)
    lines.append(f"lengths: fit the model's {positions} positions "
                 f"({'encoder-decoder' if is_seq2seq else 'decoder-only'})")
    return lines
