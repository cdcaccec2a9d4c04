"""seqrl: fine-tune sequence generators with cross-entropy, then MIXER/REINFORCE on sequence rewards."""

__version__ = "0.1.0"
