#!/usr/bin/env bash
# Wheels for the GPU machine, which reaches no network and has its own torch (with CUDA) but not
# every package seqrl needs at the versions it is tested with. Run here, from the repository root;
# scripts/gpu_checks.sh installs them there into /tmp/site (never over its torch).
#   bash scripts/gpu_wheels.sh            # -> .whl/ (ignored by git; carried to the device)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"; grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl && mkdir -p .whl
PY=${PYTHON:-.venv/bin/python}
platforms=()
for n in 2_28 2_27 2_24 2_17 2014 1; do
  [[ $n == 2014 || $n == 1 ]] && platforms+=(--platform "manylinux${n}_x86_64") || platforms+=(--platform "manylinux_${n}_x86_64")
done
download() {  # binary wheels for the device's Python 3.12
  $PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platforms[@]}" -d .whl "$@"
}
# the versions this repository is tested with (.venv), pure-Python or cp312 wheels
download transformers==5.24.0 tokenizers==0.23.3 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 \
  nltk==3.10.4 trl==1.16.0 huggingface_hub==2.4.0
# deepspeed's own needs that the device image lacks
download pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2 hjson==3.1.0
# published as source only: built here into pure-Python wheels
$PY -m pip wheel -q --no-deps --no-build-isolation -w .whl rouge-score==0.1.2
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed || \
  echo "gpu_wheels: deepspeed did not build here; the ZeRO rows will say it is not installed"
du -sh .whl && ls .whl
