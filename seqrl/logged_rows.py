"""Sampled outputs during training, as rows to read: source, reference, the sampled output, each
reward's value, the total, the advantage, and any column a reward added with `log_extra`.
`seqrl.runlog.RunLog.write_samples` puts them in `samples.jsonl` and the trackers."""

from __future__ import annotations

import torch

SAMPLE_COLUMNS = ("step", "stage", "delta", "source", "reference", "sample", "reward", "advantage")


def sample_rows(text_model, batch: dict, rows: list[list[int]], k: int, R: torch.Tensor, parts: dict,
                advantage: torch.Tensor, sample_mask: torch.Tensor, extra: dict, n: int) -> list[dict]:
    """The first `n` rows of this process's step (each source's k samples are consecutive)."""
    n = min(n, len(rows))
    eos = text_model.tokenizer.eos_token_id
    texts = text_model.decode([r[:-1] if r and r[-1] == eos else r for r in rows[:n]])
    if advantage.dim() == 2:  # per position (learned baseline): its mean over the sampled tokens
        advantage = (advantage * sample_mask).sum(1) / sample_mask.sum(1).clamp(min=1)
    out = []
    for i in range(n):
        row = {"source": batch["columns"]["prompts"][i // k], "reference": batch["columns"]["references"][i // k],
               "sample": texts[i], "reward": round(float(R[i]), 6), "advantage": round(float(advantage[i]), 6)}
        row.update({f"reward/{name}": values[i] for name, values in parts.items()})
        row.update({name: values[i] for name, values in extra.items() if i < len(values)})
        out.append(row)
    return out
