# The two README commands: `make quickstart` (set up + run the default recipe) and `make test`.
# Set-up is a local virtual environment; torch 2.13.0 goes in first so that no other torch
# (and its gigabytes of CUDA wheels) is pulled in by the package's dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup lint quickstart test test-slow clean

setup: $(VENV)/.installed

# constraints.txt pins every package to the versions the README's numbers were measured with.
$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

lint: setup
	$(BIN)/ruff check seqrl tests scripts

# Two threads whatever the machine: the run is deterministic for a thread count (and the versions of
# constraints.txt), so the README's numbers are reproduced exactly, not approximately.
quickstart: setup
	OMP_NUM_THREADS=2 MKL_NUM_THREADS=2 $(BIN)/seqrl finetune recipes/quickstart.yaml --set run.overwrite=true

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
