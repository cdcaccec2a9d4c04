"""Checkpoints: written atomically, resumed exactly.

A checkpoint is accelerate's state (model, learned baseline, optimizer, learning-rate
schedule, RNG states of every process; the model in the layout of the run's set-up, `model_entry`:
`model.safetensors`, DeepSpeed's `pytorch_model/` or FSDP's `pytorch_model_fsdp*`) plus
`trainer_state.json` (step, epoch and batches consumed of the current loader, EMA baseline),
the recipe it was trained with, and, once sequence-level training has started with a KL penalty,
the frozen reference model. With LoRA, "model" means the adapters: what trains is what is saved
(`seqrl.lora`). Everything goes into a temporary directory that is renamed into place only when
complete, so a crash mid-save never leaves half a checkpoint. With the seedable data order and
seqrl's position-keyed sampling noise, a resumed run reproduces the uninterrupted one bit for bit.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object
from accelerate.utils.constants import FSDP_MODEL_NAME, MODEL_NAME, SAFE_WEIGHTS_NAME
from safetensors import safe_open

from seqrl.errors import DiskFull, SeqrlError, disk_writes, first_sentence, free_bytes, megabytes
from seqrl.lora import check_trained
from seqrl.reference import Reference
from seqrl.runlog import flatten
from seqrl.strict_yaml import parse_yaml

CHECKPOINT_DIR = "checkpoints"
STATE_FILE = "trainer_state.json"
MODEL_FILE = SAFE_WEIGHTS_NAME  # "model.safetensors": the first prepared model's weights, unsharded set-ups
RECIPE_FILE = "recipe.yaml"
# Settings a resume is expected to change: where it runs, and how far it goes.
RESUME_SETTINGS = ("run.resume", "run.overwrite", "run.output_dir", "run.max_steps", "run.max_minutes")


def save_checkpoint(accelerator: Accelerator, output_dir: Path, step: int, state: dict, keep: int,
                    reference: Reference | None = None, recipe: str | None = None, need: int | None = None) -> Path:
    """Save everything needed to continue after optimizer step `step` under checkpoints/step-N
    (with the resolved `recipe` it was trained with, to name what a resume changes). A write the
    filesystem refuses (full, over quota, read-only) removes the partial directory and raises
    `DiskFull` naming it and the space a checkpoint needs (the last one's size, else `need`);
    the earlier checkpoints stay."""
    root = output_dir / CHECKPOINT_DIR
    final = root / f"step-{step:08d}"
    tmp = root / f".tmp-step-{step:08d}"
    done = list_checkpoints(output_dir)
    need = directory_bytes(done[-1]) if done else need
    main = accelerator.is_main_process

    def make_room() -> None:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)

    def complete() -> None:
        if reference is not None:
            reference.save(tmp)
        if recipe is not None:
            (tmp / RECIPE_FILE).write_text(recipe, encoding="utf-8")
        (tmp / STATE_FILE).write_text(json.dumps({"step": step, **state}, indent=1))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    # A refused write is caught, not raised at once, so that every process reaches the same
    # barriers and raises the same error (unsharded set-ups write without collectives between).
    problem = _refused(make_room, tmp, need) if main else None
    accelerator.wait_for_everyone()
    problem = problem or _refused(lambda: accelerator.save_state(str(tmp)), tmp, need)
    problem = problem or (_refused(complete, tmp, need) if main else None)
    problem = next((p for p in gather_object([problem]) if p), None)
    if problem:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)  # (it holds the space the next try needs)
        raise DiskFull(problem)
    if accelerator.is_main_process:
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


def _refused(write, path: Path, need: int | None) -> str | None:
    """Run `write`; the one-line message when the filesystem refused it (None when it did not)."""
    try:
        with disk_writes(path, need):
            write()
    except DiskFull as err:
        return str(err)
    return None


def directory_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def estimate_bytes(model: torch.nn.Module, lora: bool, reference: Reference | None) -> int:
    """About what a checkpoint takes: the saved model (with LoRA its adapters), AdamW's two
    moments of every trained weight, and a frozen KL reference's copy of the model."""
    size = lambda tensors: sum(t.numel() * t.element_size() for t in tensors)  # noqa: E731
    trained = size(p for p in model.parameters() if p.requires_grad)
    whole = size(model.state_dict().values())
    copied = whole if reference is not None and not lora else 0
    return (trained if lora else whole) + 2 * trained + copied


def space_warning(output_dir: Path, need: int) -> str | None:
    """One line when `output_dir`'s filesystem has room for fewer than two checkpoints."""
    free = free_bytes(output_dir)
    if free >= 2 * need:
        return None
    return (f"{output_dir} has {megabytes(free)} free, less than two checkpoints (about {megabytes(need)} each); "
            f"free some space or move run.output_dir, or a checkpoint will fail for lack of space")


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first (temporary directories are never listed)."""
    root = Path(output_dir) / CHECKPOINT_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith("step-") and (p / STATE_FILE).is_file())


def resolve_resume(output_dir: Path, spec: str | None) -> Path | None:
    """`run.resume`: empty = start fresh; `auto` = newest checkpoint in output_dir (fresh if none)."""
    if spec is None:
        return None
    if spec == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not path.is_dir():
        raise SeqrlError(f"run.resume: checkpoint directory not found: {path}")
    if not (path / STATE_FILE).is_file():
        raise SeqrlError(f"run.resume: {path} is not a complete seqrl checkpoint (no {STATE_FILE})")
    return path


def changed_settings(path: Path, recipe: str, as_today=lambda text: text, limit: int = 6) -> str:
    """`a.b old -> new, ...` for the settings `recipe` changes from the checkpoint's own recipe
    (read through `as_today`: an older layout and its defaults), apart from RESUME_SETTINGS ('' when
    none, or the checkpoint predates recipes in checkpoints)."""
    saved = path / RECIPE_FILE
    if not saved.is_file():
        return ""
    old = flatten(parse_yaml(as_today(saved.read_text(encoding="utf-8"))))
    new = flatten(parse_yaml(recipe))
    keys = [k for k in dict.fromkeys([*old, *new]) if old.get(k) != new.get(k) and k not in RESUME_SETTINGS]
    shown = [f"{k} {old.get(k)!r} -> {new.get(k)!r}"[:80] for k in keys[:limit]]
    return ", ".join(shown) + (f" and {len(keys) - limit} more" if len(keys) > limit else "")


UNSHARDED = "no sharding (one process or DDP)"
_SETUPS = {"DEEPSPEED": "DeepSpeed", "FSDP": "FSDP"}


def setup_name(accelerator) -> str:
    """`DeepSpeed`, `FSDP`, or UNSHARDED: what decides the layout of a checkpoint's model."""
    kind = str(getattr(accelerator.distributed_type, "value", accelerator.distributed_type))
    return _SETUPS.get(kind, UNSHARDED)


def model_entry(accelerator) -> str:
    """The name under a checkpoint that accelerate 1.15's `load_state` reads this run's (first)
    model from, as its `save_state` wrote it (accelerator.py, utils/fsdp_utils.py): without
    sharding (one process, DDP) `model.safetensors`; under DeepSpeed the folder `pytorch_model`
    (DeepSpeed's `save_checkpoint` tag: `mp_rank_00_model_states.pt` and each rank's ZeRO
    partition); under FSDP by state-dict type the folder `pytorch_model_fsdp_0`
    (SHARDED_STATE_DICT, torch.distributed.checkpoint's), `pytorch_model_fsdp.bin`
    (FULL_STATE_DICT) or `pytorch_model_fsdp_rank{N}.bin` (LOCAL_STATE_DICT, one per process)."""
    setup = setup_name(accelerator)
    if setup == "DeepSpeed":
        return MODEL_NAME
    if setup == "FSDP":
        state_dict_type = accelerator.state.fsdp_plugin.state_dict_type
        state_dict_type = str(getattr(state_dict_type, "name", state_dict_type))
        if state_dict_type.endswith("SHARDED_STATE_DICT"):
            return f"{FSDP_MODEL_NAME}_0"
        if state_dict_type.endswith("LOCAL_STATE_DICT"):
            return f"{FSDP_MODEL_NAME}_rank{accelerator.process_index}.bin"
        return f"{FSDP_MODEL_NAME}.bin"
    return MODEL_FILE


def saved_layout(path: Path) -> tuple[str, str] | None:
    """(name, set-up) of the model weights accelerate wrote under checkpoint `path`, e.g.
    ("pytorch_model/", "DeepSpeed"); None when it holds none of its layouts."""
    if (path / MODEL_FILE).is_file():
        return MODEL_FILE, UNSHARDED
    if _deepspeed_states(path / MODEL_NAME):
        return f"{MODEL_NAME}/", "DeepSpeed"
    fsdp = sorted(path.glob(f"{FSDP_MODEL_NAME}*"))
    if fsdp:
        return fsdp[0].name + ("/" if fsdp[0].is_dir() else ""), "FSDP"
    return None


def _deepspeed_states(folder: Path) -> bool:
    """A DeepSpeed checkpoint folder with its model states (from one without, DeepSpeed's
    `load_checkpoint` loads nothing and returns None, which accelerate does not look at)."""
    return folder.is_dir() and any(folder.glob("*model_states.pt"))


def _has_model(path: Path, entry: str) -> bool:
    return _deepspeed_states(path / entry) if entry == MODEL_NAME else (path / entry).exists()


def _layout_problem(path: Path, entry: str, accelerator) -> str:
    """The one-line error for a checkpoint without the model weights this run's set-up loads."""
    shown = entry + ("/" if entry in (MODEL_NAME, f"{FSDP_MODEL_NAME}_0") else "")
    found = saved_layout(path)
    if found is None:
        return (f"run.resume: checkpoint {path} holds no model weights in a layout accelerate writes "
                f"({MODEL_FILE}, {MODEL_NAME}/ or {FSDP_MODEL_NAME}*; this run loads {shown}); it is damaged or "
                f"not a seqrl checkpoint")
    return (f"run.resume: checkpoint {path} holds {found[0]}, written by a run with {found[1]}, and this run, with "
            f"{setup_name(accelerator)}, loads {shown}; resume it with the accelerate config that wrote it")


def load_checkpoint(accelerator: Accelerator, path: Path, lora_model: torch.nn.Module | None = None) -> dict:
    """Restore accelerate's state from `path`; return trainer_state.json's contents. The model
    weights must be in the layout this run's set-up loads (`model_entry`; else a one-line error
    naming the checkpoint and the layout found). A LoRA model's checkpoint holds its adapters
    only: checked to be exactly this model's, then loaded into the model over its (frozen,
    unchanged) base weights. (Under DeepSpeed and FSDP accelerate saves and loads the whole
    model, and DeepSpeed or torch check the names.)"""
    try:
        state = json.loads((path / STATE_FILE).read_text())
        if not isinstance(state.get("step"), int):
            raise ValueError("no integer 'step'")
        entry = model_entry(accelerator)
        if not _has_model(path, entry):
            raise SeqrlError(_layout_problem(path, entry, accelerator))
        kwargs = {}
        if entry == MODEL_FILE:
            with safe_open(str(path / MODEL_FILE), framework="pt") as saved:
                keys = list(saved.keys())
            if lora_model is not None and keys and not any(".lora_" in k for k in keys):
                raise SeqrlError(f"run.resume: checkpoint {path} holds every weight of its model (a recipe without "
                                 f"model.lora), and this recipe trains LoRA adapters only (model.lora); use its "
                                 f"own recipe")
            if lora_model is not None:  # (the saved names are the unwrapped model's, without DDP's `module.`)
                check_trained(accelerator.unwrap_model(lora_model), keys)
                kwargs["strict"] = False  # (load_state passes it to the model's load_state_dict)
            elif any(".lora_" in k for k in keys):
                raise SeqrlError(f"run.resume: checkpoint {path} holds LoRA adapters only (a recipe with "
                                 f"model.lora), and this recipe trains every weight (no model.lora); use its own "
                                 f"recipe")
        accelerator.load_state(str(path), **kwargs)
    except SeqrlError:
        raise
    except Exception as err:  # corrupt JSON, truncated tensors, mismatched model: all end here
        text = " ".join(str(err).split())  # torch's messages span lines
        mismatch = _SIZE_MISMATCH.search(text)
        if mismatch:
            name, saved, wanted = mismatch.groups()
            shape = lambda text: [int(x) for x in text.split(",") if x.strip()]  # noqa: E731
            name = name.removeprefix("base_model.model.")  # (a LoRA model's names)
            raise SeqrlError(f"run.resume: checkpoint {path} does not fit this recipe's model: {name} is "
                             f"{shape(saved)} there, {shape(wanted)} here; use its own recipe") from None
        detail = first_sentence(text, 160)
        raise SeqrlError(f"run.resume: cannot load checkpoint {path} ({type(err).__name__}: {detail}); "
                         f"it is damaged or from another recipe") from None
    return state


_SIZE_MISMATCH = re.compile(r"size mismatch for ([\w.]+): copying a param with shape torch\.Size\(\[([\d, ]*)\]\) "
                            r"from checkpoint, the shape in current model is torch\.Size\(\[([\d, ]*)\]\)")
