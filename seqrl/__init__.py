"""seqrl: fine-tune sequence generators with cross-entropy, then MIXER/REINFORCE on sequence rewards."""

__version__ = "0.1.0"

from seqrl.api import FinetuneResult, finetune  # noqa: E402
from seqrl.config import RecipeConfig, load_recipe  # noqa: E402

__all__ = ["FinetuneResult", "RecipeConfig", "__version__", "finetune", "load_recipe"]
