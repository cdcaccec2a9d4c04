"""seqrl: fine-tune sequence generators with cross-entropy, then MIXER/REINFORCE on sequence rewards.

The API loads on first use (PEP 562): `seqrl` on the command line starts without torch, so that
its stop-signal handler is in place from the first moment, not after seconds of imports."""

import importlib

__version__ = "0.1.0"

_API = {"FinetuneResult": "seqrl.api", "finetune": "seqrl.api", "RecipeConfig": "seqrl.config",
        "load_recipe": "seqrl.config"}

__all__ = ["FinetuneResult", "RecipeConfig", "__version__", "finetune", "load_recipe"]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'seqrl' has no attribute {name!r}")
