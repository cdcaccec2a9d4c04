#!/usr/bin/env bash
# Wheels for the GPU machine, which reaches no network and has its own torch (with CUDA) but not
# every package seqrl needs, nor at the versions it is tested with here. Run here, from the
# repository root, where the package registry is reachable; scripts/gpu_checks.sh installs them
# there into /tmp/site (never over its torch).
#   bash scripts/gpu_wheels.sh            # -> .whl/ (git-ignored; the device tool carries it)
set -euo pipefail
cd "$(dirname "$0")/.."
exclude=$(git rev-parse --git-path info/exclude)
mkdir -p "$(dirname "$exclude")"; grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
rm -rf .whl && mkdir -p .whl
PY=${PYTHON:-.venv/bin/python}
pin() {  # NAME==VERSION as installed in this checkout's environment (the versions the tests ran with)
  for name in "$@"; do echo "$name==$($PY -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$name")"; done
}
platforms=()
for tag in manylinux_2_28 manylinux_2_27 manylinux_2_24 manylinux_2_17 manylinux2014 manylinux1; do
  platforms+=(--platform "${tag}_x86_64")
done
# binary wheels for the device's Python 3.12: what it lacks, and what it has at other versions
$PY -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" -d .whl \
  $(pin transformers tokenizers huggingface_hub peft datasets dill multiprocess nltk trl) \
  pydantic==2.12.5 pydantic-core==2.41.5 annotated-types==0.7.0 typing-inspection==0.4.2 hjson==3.1.0  # (deepspeed's)
# published as source only: built here into pure-Python wheels (deepspeed without compiled ops:
# seqrl's optimizer is torch's AdamW)
$PY -m pip wheel -q --no-deps --no-build-isolation -w .whl rouge-score==0.1.2
DS_BUILD_OPS=0 $PY -m pip wheel -q --no-deps --no-build-isolation -w .whl deepspeed==0.19.8 || \
  echo "gpu_wheels: deepspeed did not build here; the ZeRO rows will say it is not installed"
du -sh .whl && ls .whl
