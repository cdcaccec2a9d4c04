"""Print a run's test scores after the XENT stage and at the end, with wall time, as a table.

    python scripts/report_run.py runs/quickstart
"""

from __future__ import annotations

import argparse

from seqrl.runlog import read_metrics


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    args = parser.parse_args()
    lines = read_metrics(args.run_dir)
    stage_starts = {int(m["stage"]): m["step"] for m in lines if m.get("stage_start")}
    tests = [m for m in lines if any(k.startswith("test/") for k in m)]
    names = [k.split("/")[1] for k in tests[-1] if k.startswith("test/") and not k.endswith("seconds")]
    print(f"run: {args.run_dir}")
    print("| after | step | elapsed (min) | " + " | ".join(f"test {n}" for n in names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for m in tests:
        label = "XENT stage" if m["step"] == stage_starts.get(1) else "end of run"
        values = " | ".join(f"{m[f'test/{n}']:.2f}" for n in names)
        print(f"| {label} | {m['step']} | {m['time/elapsed_s'] / 60:.1f} | {values} |")


if __name__ == "__main__":
    main()
