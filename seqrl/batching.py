"""Training batches read from the tokenized Arrow table: the data order, and what a batch holds.

The order is a function of (seed, epoch) only, never of the number of processes: accelerate's
seedable sampler shuffles, or with `data.group_by_length` the `LengthGroupedSampler` below, which
cuts the shuffled rows into global batches of similar length. accelerate then deals each global
batch out to the processes, so 1 process and N processes with the same global batch see the same
rows, and a resume (same epoch, batches skipped) continues the same order.
"""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
from datasets import Dataset
from torch.utils.data import DataLoader, Sampler

from seqrl.config import DataConfig
from seqrl.modeling import TextModel

MEGABATCH = 50
"""Global batches per megabatch: rows are sorted by length within this many, so a batch is of
rows of similar length, drawn from a random 50-batch window of the epoch."""


def train_loader(dataset: Dataset, batch_size: int, cfg: DataConfig, seed: int, num_processes: int,
                 collate) -> DataLoader:
    """Shuffled batches of `batch_size` rows per process (length-grouped with `data.group_by_length`)."""
    if not cfg.group_by_length:  # accelerate makes the shuffle seedable (use_seedable_sampler)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, collate_fn=collate)
    sampler = LengthGroupedSampler(row_lengths(dataset), batch_size * num_processes, seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, collate_fn=collate)


def row_lengths(dataset: Dataset) -> np.ndarray:
    """Source plus target ids of each row, from the Arrow lists' offsets (no row is read)."""
    table = dataset.data
    return (pc.list_value_length(table.column("source_ids")).to_numpy()
            + pc.list_value_length(table.column("target_ids")).to_numpy())


class LengthGroupedSampler(Sampler[int]):
    """Row indices for global batches of similar length: the rows shuffled, cut into megabatches
    of `MEGABATCH` global batches, each sorted by length and cut into global batches, and those
    batches shuffled (a last, short one stays last, so that every other batch stays whole).
    A function of (seed, epoch): accelerate calls `set_epoch`."""

    def __init__(self, lengths: np.ndarray, global_batch: int, seed: int):
        self.lengths, self.global_batch, self.seed, self.epoch = np.asarray(lengths), global_batch, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        return iter(self.order().tolist())

    def order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        order = rng.permutation(len(self.lengths))
        mega = self.global_batch * MEGABATCH
        for start in range(0, len(order), mega):
            chunk = order[start:start + mega]
            order[start:start + mega] = chunk[np.argsort(-self.lengths[chunk], kind="stable")]
        batches = [order[i:i + self.global_batch] for i in range(0, len(order), self.global_batch)]
        whole = len(batches) - (len(order) % self.global_batch != 0)
        shuffled = [batches[i] for i in rng.permutation(whole)] + batches[whole:]
        return np.concatenate(shuffled) if shuffled else order


class TrainCollator:
    """Training batches: model inputs for teacher forcing, plus what a REINFORCE step needs:
    the ids as lists (prefix/rollout) and the raw columns, under the reward contract's names
    (`prompts` = sources, `references` = targets) and under their own."""

    def __init__(self, text_model: TextModel, cfg: DataConfig):
        self.text_model, self.cfg = text_model, cfg

    def __call__(self, features: list[dict]) -> dict:
        return {"model_inputs": self.text_model.collate(features),
                "source_ids_list": [f["source_ids"] for f in features],
                "target_ids_list": [f["target_ids"] for f in features],
                "columns": reward_columns(features, self.cfg)}


def reward_columns(features: list[dict], cfg: DataConfig) -> dict[str, list]:
    """The rows' columns for rewards: `prompts` and `references`, and every column by its own name
    (as TRL passes them)."""
    columns = {"prompts": [f[cfg.source_field] for f in features],
               "references": [f[cfg.target_field] for f in features]}
    for name in features[0]:
        if name not in ("source_ids", "target_ids"):
            columns[name] = [f[name] for f in features]
    return columns


def probe_batch(text_model: TextModel, raw_rows: list[dict], cfg: DataConfig) -> dict:
    """What a reward sees of these rows (loaded, not yet tokenized), for the set-up probe."""
    targets = [r[cfg.target_field] for r in raw_rows]  # (None: a reference-free row)
    return {"target_ids_list": [text_model.encode_targets([t])[0] if t is not None else [] for t in targets],
            "columns": reward_columns(raw_rows, cfg)}
