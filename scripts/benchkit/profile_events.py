"""scripts/profile_step.py's reading of a step: the regions seqrl marks (record_function), what a
rollout did (RolloutProbe: decoding iterations, model calls, tokens), and from the profiler's
events each part's host and device time and the rollout's kernel launches and syncs."""

from __future__ import annotations

from collections import defaultdict

from torch.autograd import DeviceType
from torch.profiler import record_function

PARTS = {  # region -> part, in the order they run
    "xent": {"seqrl/forward": "forward", "seqrl/backward": "backward", "seqrl/optimizer": "optimizer"},
    "mixer": {"seqrl/rollout": "rollout (decoding)", "seqrl/reward": "reward",
              "seqrl/forward": "teacher-forced forward", "seqrl/backward": "backward",
              "seqrl/optimizer": "optimizer"},
}
MODEL_CALL = "profile_step/model_call"
COMPILED = "Torch-Compiled Region"  # (torch.compile's own profiler region around a compiled call)
LAUNCHES = {"cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
            "cudaLaunchCooperativeKernel", "cudaGraphLaunch"}
HOST_WAITS = {"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy"}
# leaf ops that launch no kernel on a GPU (views, allocations, metadata): left out of "compute ops"
NO_KERNEL = {"aten::view", "aten::as_strided", "aten::_reshape_alias", "aten::_unsafe_view", "aten::alias",
             "aten::slice", "aten::select", "aten::narrow", "aten::transpose", "aten::t", "aten::permute",
             "aten::expand", "aten::unsqueeze", "aten::squeeze", "aten::detach", "aten::lift_fresh",
             "aten::empty", "aten::empty_strided", "aten::resize_", "aten::set_", "aten::is_same_size",
             "aten::resolve_conj", "aten::resolve_neg", "aten::result_type", "aten::size", "aten::stride",
             "aten::_local_scalar_dense"}
SYNC_OPS = {"aten::_local_scalar_dense", "aten::item", "aten::is_nonzero", "aten::equal", "aten::allclose",
            "aten::nonzero", "aten::masked_select", "aten::unique", "aten::_unique", "aten::_unique2",
            "aten::unique_dim", "aten::unique_consecutive", "aten::resolve_neg"}  # (resolve_neg: top-level only)


class RolloutProbe:
    """While active, wraps the sampled rollout a MIXER step makes (`seqrl.candidates` calls
    `seqrl.rollout.rollout`; `seqrl.steps` called it before) and records, for each rollout: its decoding
    iterations (the loop's token draws, `seqrl.rollout.sample`: one per iteration whatever runs the
    model), the policy's forward calls (a forward hook, which also marks each call as a
    `profile_step/model_call` region; a compiled step bypasses it) and what the rollout produced."""

    DRAWS = ("sample", "_sample")  # (the draw's name in seqrl.rollout, now and before)

    def __init__(self):
        self.calls: list[dict] = []
        self.draws = 0

    def __enter__(self):
        from seqrl import candidates
        from seqrl import rollout as rollout_module
        # the sampled rollout a step's candidates come from (one per decode chunk)
        self.steps, self.entry = candidates, "rollout"
        self.original = getattr(candidates, self.entry)
        setattr(candidates, self.entry, self._rollout)
        self.module, self.draw = rollout_module, next((n for n in self.DRAWS if hasattr(rollout_module, n)), None)
        if self.draw:
            original_draw = getattr(rollout_module, self.draw)

            def counting_draw(*args, **kwargs):
                self.draws += 1
                return original_draw(*args, **kwargs)

            self.original_draw = original_draw
            setattr(rollout_module, self.draw, counting_draw)
        return self

    def __exit__(self, *exc):
        setattr(self.steps, self.entry, self.original)
        if self.draw:
            setattr(self.module, self.draw, self.original_draw)

    def _rollout(self, text_model, model, *args, **kwargs):
        open_regions, calls = [], [0]
        self.draws = 0

        def before(module, inputs):
            calls[0] += 1
            region = record_function(MODEL_CALL)
            region.__enter__()
            open_regions.append(region)

        def after(module, inputs, output):
            open_regions.pop().__exit__(None, None, None)

        hooks = [model.register_forward_pre_hook(before), model.register_forward_hook(after)]
        try:
            ro = self.original(text_model, model, *args, **kwargs)
        finally:
            for hook in hooks:
                hook.remove()
            while open_regions:
                open_regions.pop().__exit__(None, None, None)
        lengths, prefix = ro.lengths.cpu(), ro.prefix_len.cpu()
        self.calls.append({"rows": int(lengths.numel()), "model_calls": calls[0],
                           "draws": self.draws if self.draw else None,
                           "positions": max(int(lengths.max()) - int(prefix.min()), 1),
                           "sampled_tokens": int((lengths - prefix).clamp(min=0).sum()),
                           "max_len": int(ro.sequences.shape[1])})
        return ro


# -- reading the profile ---------------------------------------------------------------------------
def _inside(e, region) -> bool:
    return region.time_range.start <= e.time_range.start and e.time_range.end <= region.time_range.end


def _duration_ms(e) -> float:
    return (e.time_range.end - e.time_range.start) / 1000


def part_times(events, kind: str, wall_s: float, device: str) -> dict:
    """ms per part: each region's own host time, without the seqrl/* regions nested in it (a MIXER
    step's rollout and reward lie inside its forward); on CUDA also the device time of the kernels
    its ops launched (by time, whatever the thread: the backward runs on autograd's own)."""
    host = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    regions = [e for e in host if e.name.startswith("seqrl/")]
    missing = [name for name in PARTS[kind] if name not in {r.name for r in regions}]
    if missing:
        raise SystemExit(f"profile_step: no {', '.join(missing)} region in the {kind} step's profile "
                         f"(seqrl/train.py and seqrl/steps.py mark them with torch.profiler.record_function)")
    ms, device_ms = defaultdict(float), defaultdict(float)
    top_level = 0.0
    for r in regions:
        inner = [q for q in regions if q is not r and _inside(q, r)]
        direct = [q for q in inner if not any(o is not q and _inside(q, o) for o in inner)]
        ms[r.name] += _duration_ms(r) - sum(_duration_ms(q) for q in direct)
        if not any(o is not r and _inside(r, o) for o in regions):
            top_level += _duration_ms(r)
    if device == "cuda":
        for e in host:
            if e.kernels and not e.name.startswith("seqrl/"):
                around = [r for r in regions if _inside(e, r)]
                innermost = min(around, key=_duration_ms).name if around else "other"
                device_ms[innermost] += sum(k.duration for k in e.kernels) / 1000
    parts = {label: {"ms": ms[name], **({"device_ms": device_ms[name]} if device == "cuda" else {})}
             for name, label in PARTS[kind].items()}
    parts["other"] = {"ms": max(1000 * wall_s - top_level, 0.0),
                      **({"device_ms": device_ms["other"]} if device == "cuda" else {})}
    return {"parts": parts, "step_ms": 1000 * wall_s}


def _counted_events(inside: list, device: str) -> dict[str, list]:
    """The rollout's events by what they count: leaf aten ops (all, and those that launch a kernel),
    top-level aten ops, sync-forcing calls (each once), and on CUDA the launches, host waits,
    copies and kernels."""

    def aten_ancestor(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name.startswith("aten::"):
                return True
            p = p.cpu_parent
        return False

    def sync_ancestor(e) -> bool:
        p = e.cpu_parent
        while p is not None:
            if p.name in SYNC_OPS:
                return True
            p = p.cpu_parent
        return False

    memo: dict[int, bool] = {}

    def has_aten_below(e) -> bool:
        if id(e) not in memo:
            memo[id(e)] = any(c.name.startswith("aten::") or has_aten_below(c) for c in e.cpu_children)
        return memo[id(e)]

    counted: dict[str, list] = {
        "leaf_aten_ops": [e for e in inside if e.name.startswith("aten::") and not has_aten_below(e)],
        "leaf_compute_ops": [e for e in inside if e.name.startswith("aten::") and not has_aten_below(e)
                             and e.name not in NO_KERNEL],
        "top_level_aten_ops": [e for e in inside if e.name.startswith("aten::") and not aten_ancestor(e)],
        # each sync-forcing call once: bool(t) is is_nonzero > item > _local_scalar_dense
        "sync_ops": [e for e in inside if e.name in SYNC_OPS and not sync_ancestor(e)
                     and (e.name != "aten::resolve_neg" or not aten_ancestor(e))],
    }
    if device == "cuda":
        counted["kernel_launches"] = [e for e in inside if e.name in LAUNCHES]
        counted["host_waits"] = [e for e in inside if e.name in HOST_WAITS]
        counted["memcpy_calls"] = [e for e in inside if e.name.startswith(("cudaMemcpy", "cudaMemset"))]
        kernels = [(e, k.name) for e in inside for k in e.kernels]
        counted["device_kernels"] = [e for e, name in kernels if not name.startswith(("Memcpy", "Memset"))]
        counted["d2h_copies"] = [e for e, name in kernels if "DtoH" in name]  # ("Memcpy DtoH (Device -> ...)")
    return counted


def _ops_by_self_time(events: list, device: str) -> list[tuple[str, dict]]:
    """(op name, calls and self time) of the events, the most self time first."""
    ops = defaultdict(lambda: {"calls": 0, "self_ms": 0.0, "self_device_ms": 0.0})
    for e in events:
        row = ops[e.name]
        row["calls"] += 1
        row["self_ms"] += e.self_cpu_time_total / 1000
        if device == "cuda":
            row["self_device_ms"] += e.self_device_time_total / 1000
    return sorted(ops.items(), key=lambda kv: -kv[1]["self_ms"])


def rollout_counts(events, probe_calls: list[dict], device: str, top: int = 15) -> dict:
    """Kernel launches and syncs inside the seqrl/rollout region(s), per decoding iteration, and
    the ops with the most self time there."""
    host = [e for e in events if e.device_type == DeviceType.CPU and not e.is_async]
    regions = [e for e in host if e.name == "seqrl/rollout"]
    if not regions:
        raise SystemExit("profile_step: no seqrl/rollout region in the MIXER step's profile")
    inside = [e for e in host if any(_inside(e, r) for r in regions) and e.name != "seqrl/rollout"]
    # the model's forward calls: the hook's regions, and torch.compile's (a compiled step bypasses hooks)
    marked = [e for e in inside if e.name == MODEL_CALL or e.name.startswith(COMPILED)]
    model_regions = [e for e in marked if not any(o is not e and _inside(e, o) for o in marked)]
    model_calls = len(model_regions)
    positions = sum(c["positions"] for c in probe_calls)
    # iterations: the loop's token draws (past the last row's end too, until its next "all ended?"
    # check); without a draw to count, the model calls or the positions
    draws = [c["draws"] for c in probe_calls]
    if draws and None not in draws and sum(draws):
        iterations, source = sum(draws), "token draws in the loop"
    else:
        iterations, source = max(model_calls, positions), "model calls or positions (no draw seen)"

    def in_model(e) -> bool:
        return any(_inside(e, m) for m in model_regions)

    counted = _counted_events(inside, device)
    totals = {key: len(v) for key, v in counted.items()}
    per_iteration = {key: n / iterations for key, n in totals.items()}
    split = {key: {"in_model": sum(map(in_model, v)) / iterations,
                   "outside_model": sum(not in_model(e) for e in v) / iterations} for key, v in counted.items()}
    sync_names = defaultdict(int)
    for e in counted["sync_ops"]:
        sync_names[e.name] += 1
    # headline numbers: on CUDA the real launches and host waits; on CPU their analogues
    kernels_key, syncs_key = ("kernel_launches", "host_waits") if device == "cuda" else ("leaf_aten_ops", "sync_ops")
    rollout_ms = sum(_duration_ms(r) for r in regions)
    ranked = _ops_by_self_time(inside + regions, device)[:top]
    return {
        "iterations": iterations, "model_calls": model_calls, "positions": positions,
        "iterations_from": source,
        "rows": sum(c["rows"] for c in probe_calls), "sampled_tokens": sum(c["sampled_tokens"] for c in probe_calls),
        "rollouts": len(probe_calls), "rollout_ms": rollout_ms,
        "model_ms": sum(_duration_ms(m) for m in model_regions),
        "kernels_per_token": per_iteration[kernels_key], "syncs_per_token": per_iteration[syncs_key],
        "kernels_measure": kernels_key, "syncs_measure": syncs_key,
        "totals": totals, "per_iteration": per_iteration, "split_per_iteration": split,
        "sync_ops_by_name": dict(sync_names),
        "top_ops": [{"op": name, "calls": row["calls"], "calls_per_iteration": row["calls"] / iterations,
                     "self_ms": row["self_ms"], "share_of_rollout": row["self_ms"] / rollout_ms,
                     **({"self_device_ms": row["self_device_ms"]} if device == "cuda" else {})}
                    for name, row in ranked],
    }


# -- the steps -----------------------------------------------------------------------------------
