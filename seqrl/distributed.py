"""What a run's processes really run, said in the run header (`describe`), and the set-ups this
hardware cannot give, refused before anything starts (`check_launch`, `check_hardware`, `check_process`).

Measured with accelerate 1.15 and torch 2.13 on a machine without GPUs: accelerate selects FSDP
or DeepSpeed only on GPU-like devices. Asked for FSDP on the CPU, its processes quietly run plain
DDP over gloo; asked for DeepSpeed, its launcher stops with an ImportError (deepspeed missing) or
the processes run plain DDP (deepspeed installed, `cpu=True`); fp16 on the CPU quietly trains in
fp32. (torch's own FSDP2, `fully_shard`, does run on the CPU over gloo; accelerate never picks it
there.) So these are one-line errors here, never a silent substitute.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path

from seqrl.errors import SeqrlError

SHARDED = {"FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}
"""accelerate's distributed types that shard, and the names users know them by."""

ON_CPU = {"FSDP": "it quietly runs plain DDP, nothing sharded",
          "DEEPSPEED": "it stops in its launcher, or quietly runs plain DDP with deepspeed installed"}
"""What accelerate 1.15 does instead when asked for each on the CPU (measured)."""

ZERO_STAGES = {0: "nothing sharded", 1: "optimizer states sharded", 2: "optimizer states and gradients sharded",
               3: "parameters, gradients and optimizer states sharded"}


# -- the header line --------------------------------------------------------------------------------


def describe(accelerator) -> str:
    """One line: the distributed type accelerate set up, its sharding, and the mixed precision in
    force, e.g. `parallelism: DDP, 2 processes on cpu over gloo (accelerate MULTI_CPU), weights
    replicated; mixed precision: no (fp32)`. Reads only attributes, so any stand-in will do."""
    return f"parallelism: {_scheme(accelerator)}; mixed precision: {_precision(accelerator)}"


def _type(accelerator) -> str:
    kind = accelerator.distributed_type
    return str(getattr(kind, "value", kind))


def is_sharded(accelerator) -> bool:
    """FSDP or DeepSpeed: the prepared model's own parameters may not be whole (ZeRO-3's empty
    placeholders, FSDP's shards), and accelerate saves checkpoints in their own layouts."""
    return _type(accelerator) in SHARDED


def summed(accelerator):
    """A function summing a tensor over the processes (a collective), on the accelerator's device
    and back to where the tensor was."""
    return lambda t: accelerator.reduce(t.to(accelerator.device), "sum").to(t.device)


def partitioned(accelerator, model) -> bool:
    """Whether a process holds only part of the model's weights: FSDP, or DeepSpeed ZeRO-3; not
    ZeRO-1 or 2, whose weights are whole on every process."""
    return _type(accelerator) == "FSDP" or any(local_part(p) is not None for p in model.parameters())


def local_part(p):
    """This process's part of a partitioned parameter (ZeRO-3's `ds_tensor` behind its empty
    placeholder, an FSDP2 DTensor's local shard), or None where it holds the whole."""
    if hasattr(p, "ds_tensor"):
        return p.ds_tensor
    from torch.distributed.tensor import DTensor

    return p.to_local() if isinstance(p, DTensor) else None


def _scheme(accelerator) -> str:
    kind, n, state = _type(accelerator), accelerator.num_processes, accelerator.state
    where = f"{n} process{'es' if n != 1 else ''} on {accelerator.device.type}"
    if state.backend:
        where += f" over {state.backend}"
    if kind == "NO":
        return f"none, {where}"
    if kind == "FSDP":
        return f"FSDP v{state.fsdp_plugin.fsdp_version}, {where}, {_fsdp(state.fsdp_plugin)}"
    if kind == "DEEPSPEED":
        return f"DeepSpeed {_deepspeed(state.deepspeed_plugin)}, {where}"
    if kind.startswith("MULTI_"):
        return f"DDP, {where} (accelerate {kind}), weights replicated"
    return f"{kind}, {where}"


def _fsdp(plugin) -> str:
    if plugin.fsdp_version == 1:
        strategy = getattr(plugin.sharding_strategy, "name", plugin.sharding_strategy)
        sharding = f"sharding {strategy}"
        offloaded = getattr(plugin.cpu_offload, "offload_params", False)
    else:  # FSDP2 shards parameters, gradients and optimizer states; this decides when it re-gathers
        sharding = (f"parameters, gradients and optimizer states sharded "
                    f"(reshard_after_forward {str(plugin.reshard_after_forward).lower()})")
        offloaded = type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy"
    state_dict = getattr(plugin.state_dict_type, "name", plugin.state_dict_type)
    return f"{sharding}, state dict {state_dict}, offload {'parameters to cpu' if offloaded else 'none'}"


def _deepspeed(plugin) -> str:
    zero = plugin.deepspeed_config.get("zero_optimization", {})
    stage = int(zero.get("stage", 0))
    offload = [f"{what} to {zero.get(key, {}).get('device')}" for what, key in
               (("optimizer", "offload_optimizer"), ("parameters", "offload_param"))
               if zero.get(key, {}).get("device") not in (None, "none")]
    return f"ZeRO-{stage} ({ZERO_STAGES.get(stage, 'stage ' + str(stage))}, offload {', '.join(offload) or 'none'})"


def _precision(accelerator) -> str:
    precision, device = accelerator.mixed_precision, accelerator.device.type
    if precision == "no":
        return "no (fp32)"
    if _type(accelerator) == "DEEPSPEED":
        return f"{precision} (DeepSpeed's own)"
    if not accelerator.native_amp:
        return f"{precision} asked for, not applied on {device}: fp32"
    text = f"{precision} (autocast on {device}" + (", gradients scaled" if accelerator.scaler is not None else "")
    policy = getattr(accelerator.state, "fsdp_plugin", None) if _type(accelerator) == "FSDP" else None
    policy = getattr(policy, "mixed_precision_policy", None)
    if policy is not None:
        text += f"; FSDP parameters {_dtype(policy.param_dtype)}, gradients reduced in {_dtype(policy.reduce_dtype)}"
    return text + ")"


def _dtype(dtype) -> str:
    return str(dtype).removeprefix("torch.") if dtype is not None else "fp32"


# -- what cannot run here -----------------------------------------------------------------------


def refusal(requested: str | None, mixed_precision: str, on_cpu: bool, source: str) -> str | None:
    """Why this set-up cannot run on this hardware (accelerate would run something else in its
    place), or None. `requested`: accelerate's distributed type asked for; `source`: who asked."""
    if on_cpu and requested in SHARDED:
        return (f"{source} asks for {SHARDED[requested]}, which accelerate runs only on GPUs (on the CPU "
                f"{ON_CPU[requested]}); on the CPU use recipes/accelerate/ddp.yaml")
    if on_cpu and mixed_precision == "fp16":
        return ("run.mixed_precision: fp16 is not applied on the CPU (accelerate would train in fp32); "
                "set it to bf16 (autocast on the CPU) or no")
    return None


def requested_type(env: Mapping[str, str]) -> str | None:
    """The sharded distributed type `accelerate launch` asked its processes for, if any."""
    for kind in SHARDED:
        if env.get(f"ACCELERATE_USE_{kind}", "false").lower() == "true":
            return kind
    return None


def precision_note(asked: str | None, used: str, source: str) -> str | None:
    """A warning when the launcher asks for a mixed precision the recipe does not use (the
    recipe's `run.mixed_precision` is what accelerate is given)."""
    if asked is None or str(asked).lower() in ("no", used):
        return None
    return (f"{source} sets mixed precision {str(asked).lower()}, the recipe run.mixed_precision {used!r}: the "
            f"recipe's is used (--set run.mixed_precision={str(asked).lower()} to change it)")


def check_launch(config_file: str | None, mixed_precision: str, cpu: bool) -> list[str]:
    """Before `seqrl finetune --num-processes/--accelerate-config` starts any process: raise
    SeqrlError for a set-up this machine cannot give; return warnings to print."""
    config = _read_config(config_file) if config_file else {}
    requested = config.get("distributed_type")
    source = f"--accelerate-config {config_file}"
    if requested in SHARDED or mixed_precision == "fp16":
        import torch

        problem = refusal(requested, mixed_precision, cpu or bool(config.get("use_cpu"))
                          or not torch.cuda.is_available(), source)
        if problem:
            raise SeqrlError(problem)
    if requested == "DEEPSPEED" and importlib.util.find_spec("deepspeed") is None:
        raise SeqrlError(f"{source} asks for DeepSpeed, which is not installed: pip install deepspeed")
    note = precision_note(config.get("mixed_precision"), mixed_precision, source)
    return [note] if note else []


def _read_config(path: str) -> dict:
    import yaml

    if not Path(path).is_file():
        raise SeqrlError(f"--accelerate-config file not found: {path}")
    try:
        config = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise SeqrlError(f"--accelerate-config {path} is not a YAML file: {str(err).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise SeqrlError(f"--accelerate-config {path} is not an accelerate config (a YAML mapping)")
    return config


def check_hardware(mixed_precision: str, on_cpu: bool, env: Mapping[str, str] = os.environ) -> None:
    """In each process, before accelerate's state exists: raise SeqrlError for a set-up the
    launcher (`env`) and recipe ask for that this hardware cannot give."""
    problem = refusal(requested_type(env), mixed_precision, on_cpu, "the accelerate launcher")
    if problem:
        raise SeqrlError(problem)


def check_process(accelerator, mixed_precision: str, env: Mapping[str, str] = os.environ) -> list[str]:
    """In each process, once accelerate has set up: raise SeqrlError where it set up something
    other than what was asked for; return warnings to print (the main process prints them)."""
    requested, actual, device = requested_type(env), _type(accelerator), accelerator.device.type
    if requested is not None and actual != requested:
        raise SeqrlError(f"the accelerate launcher asks for {SHARDED[requested]}, but accelerate set up {actual} "
                         f"on {device}; use a config this machine supports (recipes/accelerate/ddp.yaml)")
    if actual == "DEEPSPEED":
        zero = accelerator.state.deepspeed_plugin.deepspeed_config.get("zero_optimization", {})
        gathers = zero.get("stage3_gather_16bit_weights_on_model_save") not in (None, False)
        if int(zero.get("stage", 0)) == 3 and not gathers:
            raise SeqrlError("DeepSpeed ZeRO-3 without zero3_save_16bit_model: final/ and best/ need the whole "
                             "weights, which ZeRO-3 gathers only with it; set zero3_save_16bit_model: true in the "
                             "accelerate config's deepspeed_config (recipes/accelerate/deepspeed_zero3.yaml has it)")
    if mixed_precision != "no" and actual != "DEEPSPEED" and not accelerator.native_amp:
        raise SeqrlError(f"run.mixed_precision: {mixed_precision} is not applied on {device} (accelerate would "
                         f"train in fp32); set it to no")
    note = precision_note(env.get("ACCELERATE_MIXED_PRECISION"), mixed_precision, "the accelerate launcher")
    return [note] if note else []
