"""`seqrl plot RUN_DIR`: PNG curves of a run's metrics.jsonl against step, stages marked.

One figure per group (training loss, rewards, evaluation metrics); a vertical line at each
`stage_start` line of the metrics file, labelled with the stage's sampled-suffix length Δ.
"""

from __future__ import annotations

from pathlib import Path

from seqrl.errors import SeqrlError
from seqrl.runlog import METRICS_FILE, read_metrics

GROUPS = {  # a key is plotted in a group when it equals or starts with one of its entries
    "loss": ("train/loss", "train/xent", "train/reinforce"),
    "rewards": ("reward/",),
    "eval": ("eval/",),
}


def plot_run(run_dir: str | Path) -> list[Path]:
    """Write `plots/<group>.png` for each group with data; return the files written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    if not (run_dir / METRICS_FILE).is_file():
        raise SeqrlError(f"{run_dir} has no {METRICS_FILE}; is it a seqrl run directory?")
    lines = read_metrics(run_dir)
    stages = [(m["step"], int(m["stage"]), int(m["delta"])) for m in lines if m.get("stage_start")]
    out_dir = run_dir / "plots"
    out_dir.mkdir(exist_ok=True)
    written = []
    for group, prefixes in GROUPS.items():
        series = _series(lines, prefixes)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4))
        for name, (steps, values) in sorted(series.items()):
            ax.plot(steps, values, label=name, marker="o" if len(steps) < 30 else None, markersize=3)
        for step, stage, delta in stages:
            ax.axvline(step, color="grey", linestyle=":", linewidth=1)
            ax.annotate("XENT" if stage == 0 else f"Δ={delta}", (step, 1), xycoords=("data", "axes fraction"),
                        fontsize=7, rotation=90, va="top", ha="right", color="grey")
        ax.set_xlabel("optimizer step")
        ax.set_title(f"{run_dir.name}: {group}")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        path = out_dir / f"{group}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def _series(lines: list[dict], prefixes: tuple[str, ...]) -> dict[str, tuple[list, list]]:
    series: dict[str, tuple[list, list]] = {}
    for m in lines:
        for key, value in m.items():
            wanted = any(key == p or (p.endswith("/") and key.startswith(p)) for p in prefixes)
            if wanted and isinstance(value, (int, float)) and not key.endswith(("seconds", "/std")):
                steps, values = series.setdefault(key, ([], []))
                steps.append(m["step"])
                values.append(value)
    return series
