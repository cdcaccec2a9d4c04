#!/usr/bin/env bash
# Issue 20's GPU checks in one command, under 10 minutes on one GPU (limits sum to 590 s); every table goes to
# $OUT/gpu_checks.md, every error to $OUT/gpu_checks.log.
#
#   here (network):   bash scripts/gpu_wheels.sh        # -> .whl/: transformers, datasets, trl, deepspeed, ...
#   on the GPU:       bash scripts/gpu_checks.sh        # (device tool: carry [".whl"], timeout_s 600)
#
# The device has torch with CUDA but not every package at the versions seqrl is tested with; the
# wheels go to /tmp/site, ahead of its own on PYTHONPATH, never over its torch. Each check has its
# own time limit, so one that hangs costs only its share and the others still report.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
report=$OUT/gpu_checks.md log=$OUT/gpu_checks.log
if [[ -d .whl ]]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    >>"$log" 2>&1 || { echo "gpu_checks: installing .whl failed (see $log)"; exit 1; }
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
{
  echo "# GPU checks, $(date -u +%F)"
  echo
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/device: /'
  python3 -c "import torch, transformers, accelerate; print(f'torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}')"
} >"$report" 2>>"$log"

check() {  # check NAME SECONDS COMMAND...: its stdout into the report, its stderr into the log
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  printf '\n## %s\n\n`%s`\n\n' "$name" "$*" >>"$report"
  echo "== $name" >>"$log"
  timeout "$limit" "$@" >>"$report" 2>>"$log"
  local rc=$?
  printf '\n(exit %s, %s s)\n' "$rc" "$((SECONDS - start))" >>"$report"
  echo "$name: exit $rc, $((SECONDS - start)) s"
}

check "device: CUDA, versions, imports" 30 python3 scripts/sharded_check.py --device-check
check "profile: bench model (encoder-decoder, 1.5M)" 40 python3 scripts/profile_step.py --device cuda --arch bart
check "profile: t5-small shape (46M with this vocabulary, from a config)" 50 python3 scripts/profile_step.py --device cuda --arch bart --size t5-small
check "step: bench translation recipe, encoder-decoder" 45 python3 scripts/bench_step.py --device cuda --arch bart
check "step: t5-small size, encoder-decoder" 50 python3 scripts/bench_step.py --device cuda --arch bart --size t5-small
check "step: decoder-only 2 x 128, with TRL RLOO" 50 python3 scripts/bench_step.py --device cuda --arch gpt2
check "step: GPT-2-small size, with TRL RLOO" 55 python3 scripts/bench_step.py --device cuda --arch gpt2 --size gpt2-small
check "sharded: DDP, FSDP, ZeRO-2, ZeRO-3, 20 MIXER steps each" 160 python3 scripts/sharded_check.py --budget 150 --out "$OUT/sharded"
check "sharded with LoRA: DDP and ZeRO-3, the resume's base-weight fingerprint" 110 python3 scripts/sharded_check.py --configs zero3 --lora 8 --budget 100 --out "$OUT/sharded-lora"
echo "tables: $report; errors: $log"
