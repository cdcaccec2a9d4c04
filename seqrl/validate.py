"""`seqrl validate`: check everything a run needs without training, and say what was checked."""

from __future__ import annotations

import torch
from datasets import DatasetDict

from seqrl import data, lora, modeling, rewards
from seqrl.config import RecipeConfig
from seqrl.evaluate import trial_decode
from seqrl.languages import recipe_languages
from seqrl.mbr import build_utility
from seqrl.rewards.inputs import check_reference_free, probe
from seqrl.run import check_lengths, describe
from seqrl.runlog import check_trackers
from seqrl.tokenizer import load_tokenizer


def validate(cfg: RecipeConfig) -> list[str]:
    """Load the data and the model's config (and a pretrained tokenizer); return report lines.

    A tokenizer that the run would train is not trained here (only a small one on 1,000 targets,
    for the rewards' trial call and the model's trial decode); the data it would see is loaded.
    """
    lines = ["recipe: ok"]
    check_trackers(cfg.log.trackers)
    reward_fns = (rewards.build(cfg.rewards, target_language=recipe_languages(cfg.tokenizer)[1])
                  if cfg.schedule.samples() else [])
    if cfg.data.reference_free:
        check_reference_free(reward_fns)
    if cfg.eval.decode == "mbr" or (cfg.reinforce.estimator.kind == "mbr" and cfg.schedule.samples()):
        build_utility(cfg.mbr)
        lines.append(f"mbr: utility {cfg.mbr.utility} loads")
    raw = data.load_raw(cfg.data, data.needed_splits(cfg.data))
    carved = data.carve_note(cfg.data, raw)
    lines += [carved] if carved else []
    for split, ds in raw.items():
        empty = sum(1 for batch in ds.select_columns([cfg.data.target_field]).iter(batch_size=1000)  # (no whole column)
                    for t in batch[cfg.data.target_field] if not (isinstance(t, str) and t.strip()))
        lines.append(f"data[{split}]: {len(ds)} examples, {empty} empty targets, columns {ds.column_names}")
    if cfg.model.name_or_path is not None:
        text_model = modeling.build(cfg.model, cfg.tokenizer, cfg.data)
        is_seq2seq, positions = text_model.is_seq2seq, text_model.max_positions
        lines.append(f"model: {cfg.model.name_or_path} loads (vocab {len(text_model.tokenizer)})")
        if cfg.model.lora:
            adapted = lora.apply(text_model.model, cfg.model.lora, text_model.new_weights)
            lines.append(f"model: {describe(adapted, cfg.model, text_model.new_weights)}")
    else:
        config = modeling.architecture_config(cfg.model)
        is_seq2seq, positions = config.is_encoder_decoder, getattr(config, "max_position_embeddings", None)
        texts = None
        if cfg.tokenizer.name_or_path is not None:
            vocab = len(load_tokenizer(cfg.tokenizer.name_or_path))
            lines.append(f"tokenizer: {cfg.tokenizer.name_or_path} loads (vocab {vocab})")
        else:  # (only for the trial calls below: the run trains its own on all the data)
            texts = [t for t in list(raw[cfg.data.train_split].select(range(min(1000, len(raw[cfg.data.train_split]))))
                                     [cfg.data.target_field]) if t]
        text_model = modeling.build(cfg.model, cfg.tokenizer, cfg.data, training_texts=texts)
        lines.append(f"model: {cfg.model.architecture} config builds; "
                     f"{'tokenizer given' if cfg.tokenizer.name_or_path else 'tokenizer trained at run start'}")
    if reward_fns:  # called once, as training's set-up does, on two training rows
        train = raw[cfg.data.train_split]
        rows = [train[i] for i in range(min(2, len(train)))]
        for reward in reward_fns:
            reward.setup(torch.device("cpu"), train[cfg.data.target_field])
        probe(text_model, reward_fns, data.probe_batch(text_model, rows, cfg.data))
        lines.append(f"rewards: {', '.join(r.name for r in reward_fns)} load and score two training rows")
    check_lengths(cfg, is_seq2seq, positions)
    lines.append(f"lengths: fit the model's {positions} positions "
                 f"({'encoder-decoder' if is_seq2seq else 'decoder-only'})")
    split = cfg.data.eval_split if cfg.data.eval_split in raw else cfg.data.train_split
    two = DatasetDict({split: raw[split].select(range(min(2, len(raw[split]))))})
    trial_decode(text_model, text_model.model, data.tokenize(two, text_model, cfg.data)[0][split], cfg.eval, split)
    lines.append(f"generation: two {split} rows decode as evaluation decodes them")
    return lines
