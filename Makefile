# The two README commands: `make quickstart` (set up + run the default recipe) and `make test`.
# Set-up is a local virtual environment; torch 2.13.0 goes in first so that no other torch
# (and its gigabytes of CUDA wheels) is pulled in by the package's dependencies.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

.PHONY: setup quickstart test test-slow clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $@

quickstart: setup
	$(BIN)/seqrl finetune recipes/quickstart.yaml --set run.overwrite=true

test: setup
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

clean:
	rm -rf $(VENV) runs
