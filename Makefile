# Two commands do all the set-up on a fresh machine (see README):
#   make run    set up, then run the main job
#   make test   set up, then lint, type-check and run the tests
# Both create and reuse .venv. torch==2.13.0 is installed before the project: a bare
# `torch` requirement with no torch installed pulls the newest CUDA build (gigabytes).

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.dtmem-installed

.PHONY: setup run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/dtmem experiment run pipelines/experiments/quickstart.yaml

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy dtmem

test: lint
	$(BIN)/python -m pytest -q

bench: setup
	$(BIN)/python benchmarks/bench_memory.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
