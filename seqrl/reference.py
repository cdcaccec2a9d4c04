"""The KL penalty's reference policy and its weight, built once in set-up (when
`reinforce.kl_coef` > 0).

- `FrozenCopy` (full fine-tuning): a frozen copy of the policy as sequence-level training
  begins, saved with each checkpoint so that a resumed run penalizes against the same one.
- `AdaptersOff` (LoRA): the same model with its adapters disabled, which is the pretrained base;
  no copy, nothing to save. With LoRA the reference is therefore the model before fine-tuning,
  not the model after the XENT stage.

`build` refuses a frozen copy where each process holds only part of the weights (FSDP, ZeRO-3):
it would copy that part, or ZeRO-3's empty placeholders, not the policy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import torch

from seqrl.errors import SeqrlError
from seqrl.modeling import frozen_copy
from seqrl.rollout import Rollout, rollout_logits

REFERENCE_FILE = "reference_model.pt"


class Reference(Protocol):
    coef: float
    """The penalty's weight (`reinforce.kl_coef`)."""

    def begin(self, policy: torch.nn.Module) -> None: ...
    def logits(self, ro: Rollout, is_seq2seq: bool) -> torch.Tensor: ...
    def save(self, directory: Path) -> None: ...
    def load(self, directory: Path, policy: torch.nn.Module) -> None: ...


class FrozenCopy:
    def __init__(self, coef: float):
        self.coef, self.model = coef, None

    def begin(self, policy: torch.nn.Module) -> None:
        """Take the copy, once: the policy as sequence-level training begins."""
        if self.model is None:
            self.model = frozen_copy(policy)

    @torch.no_grad()
    def logits(self, ro: Rollout, is_seq2seq: bool) -> torch.Tensor:
        return rollout_logits(self.model, ro, is_seq2seq=is_seq2seq)[0]

    def save(self, directory: Path) -> None:
        if self.model is not None:
            torch.save(self.model.state_dict(), directory / REFERENCE_FILE)

    def load(self, directory: Path, policy: torch.nn.Module) -> None:
        file = directory / REFERENCE_FILE
        if file.is_file():
            self.model = frozen_copy(policy)
            self.model.load_state_dict(torch.load(file, map_location="cpu", weights_only=True))


class AdaptersOff:
    def __init__(self, policy: torch.nn.Module, coef: float):
        self.policy, self.coef = policy, coef  # (the unwrapped peft model)

    def begin(self, policy: torch.nn.Module) -> None:
        pass

    @torch.no_grad()
    def logits(self, ro: Rollout, is_seq2seq: bool) -> torch.Tensor:
        was_training = self.policy.training
        self.policy.eval()  # no dropout in the reference, as in a frozen copy
        try:
            with self.policy.disable_adapter():
                return rollout_logits(self.policy, ro, is_seq2seq=is_seq2seq)[0]
        finally:
            self.policy.train(was_training)

    def save(self, directory: Path) -> None:
        pass

    def load(self, directory: Path, policy: torch.nn.Module) -> None:
        pass


def build(policy: torch.nn.Module, lora: bool, partitioned: bool, coef: float) -> Reference:
    """The reference for `reinforce.kl_coef` > 0: the base with adapters off (LoRA), else a frozen
    copy taken when sequence-level training begins."""
    if lora:
        return AdaptersOff(policy, coef)
    if partitioned:
        raise SeqrlError("reinforce.kl_coef > 0 with full fine-tuning under FSDP or DeepSpeed ZeRO-3: the frozen "
                         "reference copy would hold this process's part of the weights only; use model.lora (the "
                         "reference is then the base with adapters off), ZeRO-2 or DDP, or set kl_coef: 0")
    return FrozenCopy(coef)
