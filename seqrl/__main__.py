"""`python -m seqrl ...` (so `accelerate launch -m seqrl finetune recipe.yaml` works)."""

import sys

from seqrl.cli import main

if __name__ == "__main__":
    sys.exit(main())
