# Set-up and checks. Everything installs into .venv in the checkout; `make test` works on a fresh machine.
PYTHON ?= python3.11
# reproduce-table: SIZE=paper (the paper's models, GPU cluster with the hub) or small (offline, CPU);
# LAUNCHER=local (default) or slurm.
SIZE ?= paper
LAUNCHER ?= local
# Installed before the project so that pip keeps this build (here: a CPU wheel on local disk)
# instead of resolving an unpinned, multi-GB CUDA torch.
TORCH_SPEC ?= torch==2.13.0

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv model test demo lint bench-sweep reproduce-table

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install '$(TORCH_SPEC)'
	$(BIN)/pip install -e '.[dev]'
	touch $@

model: venv
	$(BIN)/python -m infokv.models smollm2-135m

test: venv model
	$(BIN)/pytest -q

demo: venv model
	$(BIN)/python -m infokv.demo

lint: venv
	$(BIN)/ruff check

bench-sweep: venv model
	$(BIN)/python scripts/bench_sweep.py

reproduce-table: venv model
	$(BIN)/infokv-run experiment=$(SIZE)_prefill launcher=$(LAUNCHER)
	$(BIN)/infokv-run experiment=$(SIZE)_decode launcher=$(LAUNCHER)
	$(BIN)/python experiments/reproduce_table.py --size $(SIZE)
