"""The model directories a run writes besides its checkpoints, `best/` and `final/`: plain
transformers directories (model + tokenizer), whole even where training shards the weights, and
written atomically (a temporary directory renamed into place)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator

from seqrl import distributed
from seqrl.errors import disk_writes
from seqrl.modeling import TextModel, share_tied


def gathered_weights(accelerator: Accelerator, model: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The model's whole weights where the prepared model's own parameters may not be whole: under
    DeepSpeed (ZeRO-3 leaves empty placeholders in the unwrapped model) and FSDP (shards, whatever
    the state-dict type), gathered by accelerate's `get_state_dict`, tied names sharing one tensor
    again (`share_tied`). A collective: every process calls it, and the main process gets the
    weights (ZeRO-3 needs zero3_save_16bit_model, checked at set-up). None without sharding (one
    process, DDP): there the unwrapped model is saved as it is."""
    if not distributed.is_sharded(accelerator):
        return None
    weights = accelerator.get_state_dict(model)
    return share_tied(weights, accelerator.unwrap_model(model)) if weights else weights


def save_model_atomically(text_model: TextModel, model: torch.nn.Module, path: Path, info: dict | None = None,
                          card=None, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """`model` (unwrapped) + its tokenizer (+ `card(directory)`) to a temporary directory, then
    renamed over `path` (rank 0 only). `state_dict`: the whole weights from `gathered_weights`,
    saved instead of the model's own (None: those)."""
    tmp, old = path.with_name(f".tmp-{path.name}"), path.with_name(f".old-{path.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        with disk_writes(path):
            text_model.save(tmp, model, state_dict)
            if info is not None:
                (tmp / "best.json").write_text(json.dumps(info))
            if card is not None:
                card(tmp)
    except BaseException:  # a refused write, a Ctrl-C: the previous `path` stays whole
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if path.exists():
        path.rename(old)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
