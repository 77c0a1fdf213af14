# Two commands do all the set-up on a fresh machine (see README):
#   make run    set up, then run the main job
#   make test   set up, then lint, type-check and run the tests
# Both create and reuse .venv. torch==2.13.0 is installed before the project: a bare
# `torch` requirement with no torch installed pulls the newest CUDA build (gigabytes).

SHELL  := /bin/bash
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

# Every figure of issue 16, each benchmark's BENCH lines last (about 10 minutes on 2 cores).
# The others (bench_train, bench_train_poll, bench_sampler, bench_rollout, bench_experiment,
# param_counts, and bench_gpu on a CUDA machine) run on their own:
# `.venv/bin/python benchmarks/NAME.py`.
BENCHES := bench_memory bench_dt_vs_hf bench_first_step bench_evaluate bench_collect bench_sweep

bench: setup
	rm -f bench.log
	set -o pipefail; for b in $(BENCHES); do echo "== $$b" | tee -a bench.log; \
	  $(BIN)/python benchmarks/$$b.py 2>&1 | tee -a bench.log || exit 1; done
	@echo "== summary"; grep '^BENCH ' bench.log

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
