"""LoRA through `peft`: only the adapters train (and a learned baseline, which is not part of the
model), for users who cannot fit the optimizer state of every weight.

- `apply` wraps the model with `peft.get_peft_model(model, LoraConfig(...))`. Target modules are
  the recipe's, else peft's default for the model type, else the attention projections of the
  families peft has no default for (Marian, mBART, NLLB/M2M100, Pegasus, bert2bert).
- `merged_state_dict` gives plain transformers weights: each adapted layer's base weight plus
  peft's own `get_delta_weight`, computed into new tensors, so `final/` and `best/` can be written
  mid-run without touching the live model (merging and unmerging in place would change the base
  weights by rounding, and with them the rest of the run).
- Checkpoints hold the trained tensors only (`keep_trained`, an accelerate save hook); a resume
  checks that the checkpoint holds exactly this model's adapters (`check_trained`), trained on
  these base weights and buffers (`base_fingerprint`, `buffers_fingerprint`, saved with the
  checkpoint).
- The KL reference is the same model with its adapters disabled (`seqrl.reference`).
- Weights the checkpoint did not hold (initialised at load: a warm-started bert2bert's
  cross-attention) would stay random under LoRA; `new_modules` finds the largest modules made
  of them only, which train in full as peft's `modules_to_save` (peft adapts no layer inside
  them; its disabled-adapter model, the KL reference, keeps their starting copy), and `describe`
  says which in the run header, and which new weights stay frozen (in a module that also holds
  loaded weights, or with `model.lora.train_new_weights: false`).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig, PeftModel, TaskType, get_peft_model
from peft.tuners.lora import Linear as LoraLinear
from peft.tuners.lora import LoraLayer
from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

from seqrl import distributed
from seqrl.config import LoraSettings
from seqrl.errors import SeqrlError, first_sentence

OWN_DEFAULTS = {"marian": ["q_proj", "v_proj"], "mbart": ["q_proj", "v_proj"], "m2m_100": ["q_proj", "v_proj"],
                "pegasus": ["q_proj", "v_proj"], "encoder-decoder": ["query", "value"]}
ADAPTER_DIR = "adapter"


def default_targets(model_type: str) -> list[str] | None:
    targets = PEFT_DEFAULTS.get(model_type) or OWN_DEFAULTS.get(model_type)
    return list(targets) if targets else None


def apply(model: torch.nn.Module, settings: LoraSettings, new_weights: Iterable[str] = ()) -> PeftModel:
    """The model with LoRA adapters; only they require gradients, and the modules made only of
    `new_weights` (parameters initialised at load) with `settings.train_new_weights`."""
    model_type = model.config.model_type
    targets = list(settings.target_modules) if settings.target_modules else default_targets(model_type)
    if not targets:
        raise SeqrlError(f"model.lora.target_modules: no default for model type '{model_type}'; name the "
                         f"linear layers to adapt (e.g. [q_proj, v_proj]; the model has {_linear_names(model)})")
    task = TaskType.SEQ_2_SEQ_LM if model.config.is_encoder_decoder else TaskType.CAUSAL_LM
    in_full = new_modules(model, new_weights) if settings.train_new_weights else []
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, task_type=task, modules_to_save=in_full or None)
    try:
        return get_peft_model(model, config)
    except ValueError as err:  # peft: "Target modules {...} not found in the base model"
        raise SeqrlError(f"model.lora.target_modules {targets} match no layer of the model "
                         f"({first_sentence(err, 100)}); it has {_linear_names(model)}") from None


def new_modules(model: torch.nn.Module, new_weights: Iterable[str]) -> list[str]:
    """The largest modules (not the whole model) whose every parameter is in `new_weights`; a new
    parameter beside loaded ones in its module (BERT's LM-head bias beside the tied embedding)
    is in none."""
    names = set(new_weights)
    new_ids = {id(p) for n, p in model.named_parameters(remove_duplicate=False) if n in names}
    if not new_ids:
        return []
    whole = {name for name, module in model.named_modules() if name
             and (params := list(module.parameters())) and all(id(p) in new_ids for p in params)}
    return sorted(name for name in whole if name.rpartition(".")[0] not in whole)


def describe(model: PeftModel, rank: int, new_weights: Iterable[str]) -> str:
    """What trains, for the run header: the adapters' targets, the modules trained in full, and
    the new weights left frozen."""
    config = model.peft_config["default"]
    text = f"LoRA rank {rank} on {', '.join(sorted(config.target_modules))}"
    if config.modules_to_save:
        text += f"; in full, new at load: {_grouped(config.modules_to_save)}"
    frozen = [n for n in new_weights if not _in_any(n, config.modules_to_save or [])]
    if frozen:
        text += f"; new at load but frozen (model.lora.train_new_weights, or beside loaded weights): {_grouped(frozen)}"
    return text


def _in_any(name: str, modules: list[str]) -> bool:
    return any(name.startswith(module + ".") for module in modules)


def _grouped(names: Iterable[str]) -> str:
    """Names with their layer numbers folded (`decoder.layer.*.crossattention x6`): one line for any depth."""
    counts = Counter(re.sub(r"\.\d+\.", ".*.", name) for name in names)
    return ", ".join(f"{name} x{n}" if n > 1 else name for name, n in sorted(counts.items()))


def _linear_names(model: torch.nn.Module) -> str:
    names = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D"})
    return ", ".join(names[:8]) + (", ..." if len(names) > 8 else "")


def is_lora(model: torch.nn.Module) -> bool:
    return isinstance(extract_model_from_parallel(model), PeftModel)


@torch.no_grad()
def merged_state_dict(model: PeftModel, state_dict: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The base model's state dict with every adapter merged in, under the base model's own names
    (what `merge_and_unload().state_dict()` gives), on the CPU; the model is not changed.
    `state_dict`: the whole peft model's weights (its own names, `base_model.model.` first) where
    its parameters are sharded and hold placeholders (ZeRO-3, FSDP: gathered by accelerate's
    `get_state_dict`), merged instead of the model's own by peft's formula for its linear layers."""
    base = model.get_base_model()
    if state_dict is None:
        tensors = base.state_dict()
        deltas = {name: module.get_delta_weight(adapter)
                  for name, module in base.named_modules() if isinstance(module, LoraLayer)
                  for adapter in module.active_adapters if adapter in module.lora_A}
    else:
        tensors = {k.removeprefix(PEFT_PREFIX): v for k, v in state_dict.items()}
        deltas = {name: _delta_weight(module, name, adapter, tensors)
                  for name, module in base.named_modules() if isinstance(module, LoraLayer)
                  for adapter in module.active_adapters if adapter in module.lora_A}
    merged = {}
    for key, tensor in tensors.items():
        if ".lora_" in key or ".original_module." in key:  # (a module trained in full: its trained copy is kept)
            continue
        name = re.sub(r"\.modules_to_save\.[^.]+\.", ".", key.replace(".base_layer.", "."))
        module = key.rsplit(".base_layer.", 1)[0] if ".base_layer." in key else None
        if module in deltas and key.endswith(".base_layer.weight"):
            tensor = tensor + deltas[module].to(tensor.dtype)
        merged[name] = tensor.detach().to("cpu", copy=True)
    return merged


PEFT_PREFIX = "base_model.model."
"""What a peft model's state dict puts before the base model's names."""


def _delta_weight(module: LoraLayer, name: str, adapter: str, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    """peft's `Linear.get_delta_weight` (peft 0.21: transpose(B @ A, fan_in_fan_out) * scaling,
    in fp32 for half precision on the CPU) from the tensors of `tensors` instead of the module's."""
    if not isinstance(module, LoraLinear):
        raise SeqrlError(f"model.lora: the adapter of {name} ({type(module).__name__}) cannot be merged from gathered "
                         f"weights (sharded training saves merged linear layers only); adapt linear layers")
    weight_a, weight_b = tensors[f"{name}.lora_A.{adapter}.weight"], tensors[f"{name}.lora_B.{adapter}.weight"]
    dtype = weight_b.dtype
    cast_to_fp32 = weight_b.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16)
    if cast_to_fp32:
        weight_a, weight_b = weight_a.float(), weight_b.float()
    delta = weight_b @ weight_a
    delta = (delta.T if module.fan_in_fan_out else delta) * module.scaling[adapter]
    return delta.to(dtype) if cast_to_fp32 else delta


def save_merged(model: PeftModel, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """`directory`: merged weights that plain transformers loads; the adapter in `adapter/` for peft.
    `state_dict`: the peft model's gathered weights, as for `merged_state_dict`."""
    base = model.get_base_model()
    base.save_pretrained(directory, state_dict=merged_state_dict(model, state_dict))
    model.save_pretrained(directory / ADAPTER_DIR, **({} if state_dict is None else {"state_dict": state_dict}))


@torch.no_grad()
def base_fingerprint(model: torch.nn.Module, sum_over_processes=lambda t: t) -> float:
    """A number that changes with the frozen base weights (their sum of squares, in float64):
    a LoRA checkpoint's adapters are only meaningful on the base they were trained on.

    Where a process holds only its part of a weight (ZeRO-3's `ds_tensor` partition behind an
    empty placeholder, an FSDP2 DTensor's local shard), the parts' sums are added over the
    processes by `sum_over_processes` (a collective: every process calls it; their padding is
    zeros), so the number is the whole model's on any number of processes."""
    whole, parts, partitioned = torch.zeros((), dtype=torch.float64), torch.zeros((), dtype=torch.float64), False
    for p in model.parameters():
        if p.requires_grad:
            continue
        local = distributed.local_part(p)
        if local is None:
            whole += p.detach().double().square().sum().cpu()
        else:
            parts += local.detach().double().square().sum().cpu()
            partitioned = True
    return float(whole + sum_over_processes(parts)) if partitioned else float(whole)


@torch.no_grad()
def buffers_fingerprint(model: torch.nn.Module) -> float:
    """The same for the model's floating-point buffers (Marian's and mBART's `final_logits_bias`):
    base weights too, though not parameters. (Neither ZeRO-3 nor FSDP partitions buffers: every
    process holds them whole.)"""
    total = torch.zeros((), dtype=torch.float64)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            total += buffer.detach().double().square().sum().cpu()
    return float(total)


def trained_names(model: torch.nn.Module) -> list[str]:
    return [name for name, p in model.named_parameters() if p.requires_grad]


def keep_trained(models: list, weights: list, output_dir: str) -> None:
    """accelerate save hook: the LoRA model's checkpoint holds its trained tensors only. (Under
    DeepSpeed and FSDP accelerate saves the models in their own layouts, whole, and hands the
    hook no weights.)"""
    if len(weights) != len(models):
        return
    for i, model in enumerate(models):
        if is_lora(model):
            keep = set(trained_names(model))
            weights[i] = {k: v for k, v in weights[i].items() if k in keep}


def check_trained(model: torch.nn.Module, saved: list[str]) -> None:
    """A LoRA checkpoint must hold exactly the model's trained tensors (else it is another run's)."""
    expected = set(trained_names(model))
    if set(saved) != expected:
        extra, missing = sorted(set(saved) - expected), sorted(expected - set(saved))
        what = f"holds {len(extra)} tensors this model does not train (e.g. {extra[0]})" if extra else \
            f"lacks {len(missing)} of its adapter tensors (e.g. {missing[0]})"
        raise ValueError(f"it {what}")
