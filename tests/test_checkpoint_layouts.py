"""Sharded set-ups without deepspeed or a GPU: the checkpoint layouts accelerate 1.15 writes under
DeepSpeed and FSDP are recognised on resume (a one-line error naming the checkpoint when the
layout is none of them, or another set-up's), and `final/` and `best/` are written from the
weights accelerate's `get_state_dict` gathers where the model's own parameters are sharded
(ZeRO-3 placeholders, FSDP shards), merged LoRA included. Stand-in accelerators throughout; the
real DeepSpeed runs are `scripts/sharded_check.py` on a GPU (README, "Tested where")."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType
from conftest import build_tiny
from safetensors.torch import load_file
from torch.distributed.fsdp import StateDictType

from seqrl import distributed, saving, train
from seqrl.checkpoint import load_checkpoint, model_entry
from seqrl.config import LoraSettings
from seqrl.errors import SeqrlError
from seqrl.lora import apply, keep_trained, merged_state_dict
from seqrl.modeling import share_tied


class StandIn:
    """What load_checkpoint and the final save read of an `Accelerator`; records the calls."""

    def __init__(self, kind: DistributedType, state_dict_type=None, main: bool = True, process_index: int = 0,
                 weights: dict | None = None, model=None):
        self.distributed_type, self.process_index, self.is_main_process = kind, process_index, main
        self.state = SimpleNamespace(fsdp_plugin=SimpleNamespace(state_dict_type=state_dict_type))
        self.weights, self.model = weights, model
        self.loaded, self.gathered, self.waited = [], 0, 0

    def load_state(self, input_dir: str, **kwargs) -> None:
        self.loaded.append((input_dir, kwargs))

    def get_state_dict(self, model) -> dict | None:
        self.gathered += 1
        return self.weights if self.is_main_process else None  # (ZeRO-3: None off the main process)

    def unwrap_model(self, model):
        return self.model if self.model is not None else model

    def wait_for_everyone(self) -> None:
        self.waited += 1


DEEPSPEED = DistributedType.DEEPSPEED
FSDP = DistributedType.FSDP


def checkpoint_dir(tmp_path: Path, *entries: str) -> Path:
    """A hand-made checkpoint: trainer_state.json and the given (empty) files; a name ending in
    `/` is a folder."""
    path = tmp_path / "checkpoints" / "step-00000002"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"step": 2, "phase": 0}))
    (path / "optimizer.bin").write_bytes(b"")
    for entry in entries:
        (path / entry).parent.mkdir(parents=True, exist_ok=True)
        if entry.endswith("/"):
            (path / entry).mkdir(exist_ok=True)
        else:
            (path / entry).write_bytes(b"")
    return path


def one_line(err: SeqrlError, *needles: str) -> str:
    text = str(err)
    assert "\n" not in text and len(text) < 400, text
    for needle in needles:
        assert needle in text, text
    return text


# -- which layout a run loads -----------------------------------------------------------------------


def test_model_entry_is_the_name_accelerate_saves_under():
    assert model_entry(StandIn(DistributedType.NO)) == "model.safetensors"
    assert model_entry(StandIn(DistributedType.MULTI_CPU)) == "model.safetensors"
    assert model_entry(StandIn(DistributedType.MULTI_GPU)) == "model.safetensors"
    assert model_entry(StandIn(DEEPSPEED)) == "pytorch_model"
    assert model_entry(StandIn(FSDP, StateDictType.SHARDED_STATE_DICT)) == "pytorch_model_fsdp_0"
    assert model_entry(StandIn(FSDP, StateDictType.FULL_STATE_DICT)) == "pytorch_model_fsdp.bin"
    assert model_entry(StandIn(FSDP, StateDictType.LOCAL_STATE_DICT, process_index=3)) == "pytorch_model_fsdp_rank3.bin"


# -- resume: recognised layouts go to accelerate's load_state ---------------------------------------


@pytest.mark.parametrize("lora", [False, True])
def test_deepspeed_checkpoint_is_loaded_by_accelerate(tmp_path, lora):
    # what DeepSpeed's save_checkpoint writes under accelerate's tag (ZeRO-2 names its model states
    # mp_rank_00_model_states.pt, ZeRO-3 zero_pp_rank_0_mp_rank_00_model_states.pt)
    path = checkpoint_dir(tmp_path, "latest", "pytorch_model/zero_pp_rank_0_mp_rank_00_model_states.pt",
                          "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    acc = StandIn(DEEPSPEED)
    state = load_checkpoint(acc, path, lora_model=torch.nn.Linear(2, 2) if lora else None)
    assert state["step"] == 2
    # no `strict`: accelerate passes load_state's keywords on to DeepSpeed's load_checkpoint
    assert acc.loaded == [(str(path), {})]


@pytest.mark.parametrize("state_dict_type, entry", [
    (StateDictType.SHARDED_STATE_DICT, "pytorch_model_fsdp_0/.metadata"),
    (StateDictType.FULL_STATE_DICT, "pytorch_model_fsdp.bin"),
])
def test_fsdp_checkpoint_is_loaded_by_accelerate(tmp_path, state_dict_type, entry):
    path = checkpoint_dir(tmp_path, entry, "optimizer_0/.metadata")
    acc = StandIn(FSDP, state_dict_type)
    assert load_checkpoint(acc, path)["step"] == 2
    assert acc.loaded == [(str(path), {})]


# -- resume: one-line errors --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [DistributedType.NO, DEEPSPEED])
def test_checkpoint_without_a_known_layout_is_a_one_line_error(tmp_path, kind):
    path = checkpoint_dir(tmp_path, "random_states_0.pkl", "weights.pt")
    acc = StandIn(kind)
    with pytest.raises(SeqrlError) as err:
        load_checkpoint(acc, path)
    one_line(err.value, f"run.resume: checkpoint {path} holds no model weights", "model.safetensors",
             "pytorch_model/", "pytorch_model_fsdp*", "damaged or not a seqrl checkpoint")
    assert acc.loaded == []


def test_deepspeed_folder_without_model_states_is_refused(tmp_path):
    # DeepSpeed's load_checkpoint would load nothing and return None, which accelerate ignores:
    # the run would continue from the freshly built weights
    path = checkpoint_dir(tmp_path, "pytorch_model/zero_pp_rank_0_mp_rank_00_optim_states.pt")
    acc = StandIn(DEEPSPEED)
    with pytest.raises(SeqrlError) as err:
        load_checkpoint(acc, path)
    one_line(err.value, str(path), "holds no model weights", "this run loads pytorch_model/")
    assert acc.loaded == []


def test_checkpoint_of_another_set_up_is_a_one_line_error(tmp_path):
    deepspeed = checkpoint_dir(tmp_path / "a", "pytorch_model/mp_rank_00_model_states.pt")
    acc = StandIn(DistributedType.MULTI_CPU)
    with pytest.raises(SeqrlError) as err:
        load_checkpoint(acc, deepspeed)
    one_line(err.value, str(deepspeed), "holds pytorch_model/, written by a run with DeepSpeed",
             "this run, with no sharding (one process or DDP), loads model.safetensors",
             "resume it with the accelerate config that wrote it")
    plain = checkpoint_dir(tmp_path / "b", "model.safetensors")
    for acc, wanted in ((StandIn(DEEPSPEED), "with DeepSpeed, loads pytorch_model/"),
                        (StandIn(FSDP, StateDictType.SHARDED_STATE_DICT), "with FSDP, loads pytorch_model_fsdp_0/")):
        with pytest.raises(SeqrlError) as err:
            load_checkpoint(acc, plain)
        one_line(err.value, "holds model.safetensors, written by a run with no sharding", wanted)
        assert acc.loaded == []


def test_zero3_without_gathered_saves_is_refused_at_set_up():
    def zero(stage: int, **settings) -> SimpleNamespace:
        config = {"zero_optimization": {"stage": stage, **settings}}
        return SimpleNamespace(distributed_type=DEEPSPEED, device=torch.device("cuda:0"), native_amp=False,
                               state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))

    with pytest.raises(SeqrlError) as err:
        distributed.check_process(zero(3), "no", env={})
    one_line(err.value, "ZeRO-3 without zero3_save_16bit_model", "final/ and best/", "deepspeed_zero3.yaml")
    with pytest.raises(SeqrlError):
        distributed.check_process(zero(3, stage3_gather_16bit_weights_on_model_save=False), "no", env={})
    assert distributed.check_process(zero(3, stage3_gather_16bit_weights_on_model_save=True), "no", env={}) == []
    assert distributed.check_process(zero(2), "no", env={}) == []


# -- final/ and best/ from the gathered weights -------------------------------------------------------


def known_weights(model: torch.nn.Module, seed: int = 7) -> dict[str, torch.Tensor]:
    """What a gather gives: every name of the model's state dict, each its own tensor (tied names
    as copies), values unlike the model's own."""
    generator = torch.Generator().manual_seed(seed)
    values = {}
    for name, tensor in model.state_dict().items():
        values[name] = (torch.randn(tensor.shape, generator=generator) if tensor.is_floating_point()
                        else tensor.clone())
    tied = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    for names in tied.values():  # tied names hold the same values, in separate tensors
        for name in names[1:]:
            values[name] = values[names[0]].clone()
    return values


def stand_in_run(tmp_path: Path, text_model, acc: StandIn) -> SimpleNamespace:
    return SimpleNamespace(accelerator=acc, model=object(), text_model=text_model, out=tmp_path)


def test_sharded_final_save_writes_the_gathered_weights(tmp_path):
    text_model = build_tiny("bart")
    model = text_model.model
    weights = known_weights(model)
    acc = StandIn(DEEPSPEED, weights=weights, model=model)
    run = stand_in_run(tmp_path, text_model, acc)
    gathered = saving.gathered_weights(run.accelerator, run.model)
    assert acc.gathered == 1
    saving.save_model_atomically(text_model, acc.unwrap_model(run.model), tmp_path / "final", state_dict=gathered)
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    # the same file as saving a model that holds those weights itself (tied names written once)
    model.load_state_dict(weights)
    text_model.save(tmp_path / "reference")
    reference = load_file(str(tmp_path / "reference" / "model.safetensors"))
    assert saved.keys() == reference.keys()
    assert all(torch.equal(saved[k], reference[k]) for k in reference)
    assert all(torch.equal(saved[k], weights[k]) for k in saved)


def test_unsharded_final_save_is_the_models_own(tmp_path):
    text_model = build_tiny("bart")
    acc = StandIn(DistributedType.MULTI_CPU, weights={"never": torch.zeros(1)}, model=text_model.model)
    run = stand_in_run(tmp_path, text_model, acc)
    assert saving.gathered_weights(run.accelerator, run.model) is None and acc.gathered == 0
    saving.save_model_atomically(text_model, acc.unwrap_model(run.model), tmp_path / "final")
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    own = text_model.model.state_dict()
    assert all(torch.equal(saved[k], own[k]) for k in saved)


def test_finish_gathers_on_every_process_and_saves_on_the_main_one(tmp_path, monkeypatch):
    saves = []
    monkeypatch.setattr(train, "save_model_atomically", lambda text_model, model, path, **kw: saves.append((path, kw)))
    cfg = SimpleNamespace(data=SimpleNamespace(test_split=None))
    loop = SimpleNamespace(step=4, validated_at=4)
    other = StandIn(DEEPSPEED, main=False)
    run = SimpleNamespace(cfg=cfg, accelerator=other, model=object(), out=tmp_path)
    assert train.finish(run, loop) is None
    assert other.gathered == 1 and other.waited == 1 and saves == []  # the collective, and no write


def test_track_best_gathers_on_every_process(tmp_path, monkeypatch):
    saves = []
    monkeypatch.setattr(train, "save_model_atomically", lambda *a, **kw: saves.append(kw))
    monkeypatch.setattr(train, "_agreed", lambda run, decision: True)  # rank 0's decision: a new best
    monkeypatch.setattr(train, "broadcast_object_list", lambda values: [30.0])
    cfg = SimpleNamespace(eval=SimpleNamespace(best_metric="bleu", patience=0, select_window=1))
    loop = SimpleNamespace(step=2, best=None, evals_since_best=0, stop=None, recent=[])
    weights = {"w": torch.ones(1)}
    for acc in (StandIn(DEEPSPEED, main=False), StandIn(DEEPSPEED, weights=weights)):
        acc.num_processes = 2
        run = SimpleNamespace(cfg=cfg, accelerator=acc, model=torch.nn.Linear(1, 1), out=tmp_path, text_model=None)
        train.track_best(run, loop, {})
        assert acc.gathered == 1 and acc.waited == 1
    assert len(saves) == 1 and saves[0]["state_dict"] is not None


def test_share_tied_makes_tied_names_one_tensor_again():
    model = build_tiny("bart").model
    weights = known_weights(model)
    assert weights["lm_head.weight"].data_ptr() != weights["model.shared.weight"].data_ptr()
    shared = share_tied(weights, model)
    assert shared["lm_head.weight"] is shared["model.shared.weight"] is shared["model.encoder.embed_tokens.weight"]
    assert shared["model.encoder.layers.0.fc1.weight"] is weights["model.encoder.layers.0.fc1.weight"]
    assert shared.keys() == weights.keys()


# -- LoRA: merged from the gathered weights -------------------------------------------------------------


@pytest.mark.parametrize("architecture, targets", [("bart", ["q_proj", "v_proj", "fc1"]), ("gpt2", None)])
def test_lora_merge_from_gathered_weights_is_peft_merge(architecture, targets):
    model = apply(build_tiny(architecture).model, LoraSettings(rank=4, target_modules=targets))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # B starts at zero: give the adapters something to merge
            p.data.normal_()
    own = merged_state_dict(model)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    assert all(k.startswith("base_model.model.") for k in gathered)
    # the same as merging the model's own tensors, bit for bit (gpt2: Conv1D, fan_in_fan_out)
    from_gathered = merged_state_dict(model, gathered)
    assert from_gathered.keys() == own.keys()
    assert all(torch.equal(from_gathered[k], own[k]) for k in own)
    # and the gathered tensors are what count: the live ones (ZeRO-3's placeholders) do not
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    from_gathered = merged_state_dict(model, gathered)
    assert all(torch.equal(from_gathered[k], own[k]) for k in own)


def test_lora_sharded_save_writes_merged_and_adapter_from_gathered(tmp_path):
    text_model = build_tiny("bart")
    model = apply(text_model.model, LoraSettings(rank=4))
    torch.manual_seed(0)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            p.data.normal_()
    expected = merged_state_dict(model)
    gathered = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():  # the live weights as ZeRO-3 leaves them: nothing usable
        for p in model.parameters():
            p.zero_()
    text_model.save(tmp_path / "final", model, gathered)
    saved = load_file(str(tmp_path / "final" / "model.safetensors"))
    assert saved and all(torch.equal(saved[k], expected[k]) for k in saved)
    adapter = load_file(str(tmp_path / "final" / "adapter" / "adapter_model.safetensors"))
    lora_a = "base_model.model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight"
    assert torch.equal(adapter[lora_a], gathered[lora_a.replace("lora_A.weight", "lora_A.default.weight")])
    assert any(v.abs().sum() > 0 for v in adapter.values())


def test_lora_save_hook_leaves_sharded_saves_alone():
    # accelerate's save_state hands its hook no weights under DeepSpeed and FSDP (it saves those
    # models itself, whole): the hook once failed there with an IndexError
    model = apply(build_tiny("bart").model, LoraSettings(rank=4))
    weights = []
    keep_trained([model], weights, "unused")
    assert weights == []
    weights = [model.state_dict()]  # without sharding: the adapters only
    keep_trained([model], weights, "unused")
    assert weights[0] and all(".lora_" in k for k in weights[0])


def test_the_header_counts_zero3_placeholders_at_their_full_size():
    from seqrl.config import ModelConfig
    from seqrl.run import describe
    model = torch.nn.Linear(1000, 1000)  # 1,001,000 parameters; as ZeRO-3 leaves them on a rank: empty, with ds_numel
    for p in model.parameters():
        p.ds_numel = p.numel()
        p.data = torch.empty(0)
    assert describe(model, ModelConfig()) == "Linear, 1.00M parameters"  # (0.00M before)
