#!/usr/bin/env bash
# scripts/bench_quality.py for one task, 3 seeds, with the pieces of each seed run side by side:
# for a machine with a GPU and many cores (the 2-core CPU machine runs pieces one at a time).
#
#   bash scripts/bench_quality_parallel.sh translation 8 7    # task, XENT cap, arm budget (minutes)
#   bash scripts/bench_quality_parallel.sh translation 8 7 --set ...   # more bench_quality.py options
#
# Per seed: the XENT piece; when it has finished, arms A, A-restart, C, B and B-final-stage-to-budget
# (MIXER running its last stage until the budget ends), and on seed 0 every other ablation, start
# together, so that the arms of a seed, which are compared at equal wall-clock budgets, share the
# machine alike; each run assesses itself (test score and guards); then the table.
# Logs: bench/logs/TASK/. Set MACHINE to describe the machine in results.md and the plots.
set -euo pipefail
cd "$(dirname "$0")/.."
task=$1 xent_minutes=$2 budget_minutes=$3
shift 3
extra=("$@")
seeds=(0 1 2)
logs=bench/logs/$task
mkdir -p "$logs"
export OMP_NUM_THREADS=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1
python=${PYTHON:-python3}
bq() { "$python" scripts/bench_quality.py --task "$task" --xent-minutes "$xent_minutes" --budget-minutes "$budget_minutes" "$@" "${extra[@]}"; }
ablations=$("$python" -c 'import sys; sys.path.insert(0, "scripts"); import bench_quality; print(*bench_quality.ABLATIONS)')

for seed in "${seeds[@]}"; do
  (
    bq --seeds "$seed" --pieces xent >"$logs/seed$seed-xent.log" 2>&1
    arms="A A-restart C B B-final-stage-to-budget"
    [ "$seed" = 0 ] && arms="$arms ${ablations/B-final-stage-to-budget/}"
    bq --seeds "$seed" --pieces xent assess >"$logs/seed$seed-xent-assess.log" 2>&1 &  # xent is cached by now
    for arm in $arms; do
      bq --seeds "$seed" --pieces "$arm" assess >"$logs/seed$seed-$arm.log" 2>&1 &
    done
    wait
  ) &
done
wait
bq --seeds "${seeds[@]}" --pieces table ${MACHINE:+--machine "$MACHINE"} | tee "$logs/table.log"
