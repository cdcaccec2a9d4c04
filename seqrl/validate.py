"""`seqrl validate`: check everything a run needs without training, and say what was checked."""

from __future__ import annotations

from transformers import AutoConfig

from seqrl import data, modeling, rewards
from seqrl.config import RecipeConfig
from seqrl.errors import SeqrlError
from seqrl.runlog import check_trackers


def validate(cfg: RecipeConfig) -> list[str]:
    """Load the data and the model's config (and a pretrained tokenizer); return report lines.

    A tokenizer that the run would train is not trained here; the data it would see is loaded.
    """
    lines = ["recipe: ok"]
    check_trackers(cfg.log.trackers)
    if cfg.schedule.kind != "xent":
        names = [r.name for r in rewards.build(cfg.rewards)]
        lines.append(f"rewards: {', '.join(names)} load")
    splits = [s for s in dict.fromkeys([cfg.data.train_split, cfg.data.eval_split, cfg.data.test_split]) if s]
    raw = data.load_raw(cfg.data, splits)
    for split, ds in raw.items():
        empty = sum(1 for t in list(ds[cfg.data.target_field]) if not (isinstance(t, str) and t.strip()))
        lines.append(f"data[{split}]: {len(ds)} examples, {empty} empty targets, columns {ds.column_names}")
    if cfg.model.name_or_path is not None:
        text_model = modeling.build(cfg.model, cfg.tokenizer, cfg.data)
        kind = "encoder-decoder" if text_model.is_seq2seq else "decoder-only"
        lines.append(f"model: {cfg.model.name_or_path} loads ({kind}, vocab {len(text_model.tokenizer)})")
    else:
        try:
            config = AutoConfig.for_model(cfg.model.architecture, **cfg.model.config)
        except (ValueError, TypeError) as err:
            raise SeqrlError(f"model.architecture '{cfg.model.architecture}' / model.config: "
                             f"{str(err).splitlines()[0]}") from None
        kind = "encoder-decoder" if config.is_encoder_decoder else "decoder-only"
        lines.append(f"model: {cfg.model.architecture} config builds ({kind}); tokenizer trained at run start")
    return lines
