# Set-up and checks. Everything installs into .venv in the checkout; `make test` works on a fresh machine.
PYTHON ?= python3.11
# reproduce-table: SIZE=paper (the paper's models, GPU cluster with the hub) or small (offline, CPU);
# LAUNCHER=local (default) or slurm.
SIZE ?= paper
LAUNCHER ?= local
# reproduce-table: the output_root of your runs (runs/, unless your local config sets another)
RUNS ?= runs
# Installed before the project so that pip keeps this build (here: a CPU wheel on local disk)
# instead of resolving an unpinned, multi-GB CUDA torch.
TORCH_SPEC ?= torch==2.13.0

VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv model test demo lint bench-sweep bench bench-wheels reproduce-table alpha-sensitivity fidelity

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install '$(TORCH_SPEC)'
	$(BIN)/pip install -e '.[dev]'
	touch $@

model: venv
	$(BIN)/python -m infokv.hf.models smollm2-135m

test: venv model
	$(BIN)/pytest -q

demo: venv model
	$(BIN)/python -m infokv.eval.demo

lint: venv
	$(BIN)/ruff check

bench-sweep: venv model
	$(BIN)/python scripts/bench_sweep.py

# GPU speed and memory (scripts/bench.py), run on a CUDA machine with its own torch and transformers:
# `make bench-wheels` here (needs PyPI), carry .whl-kvpress to the GPU machine, then `make bench` there.
GPU_PYTHON ?= python3
KVPRESS_WHEELS := .whl-kvpress
KVPRESS_SPECS := kvpress==0.5.5 transformers==5.2.0 tokenizers==0.22.2 typer-slim==0.24.0 datasets==5.2.0 \
	dill==0.4.1 multiprocess==0.70.19 cachetools==5.5.2 fire==0.7.1 termcolor==3.3.0

bench-wheels:
	$(GPU_PYTHON) -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
		--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
		-d $(KVPRESS_WHEELS) $(KVPRESS_SPECS)

bench:
	PYTHONPATH=. $(GPU_PYTHON) scripts/bench.py

reproduce-table: venv model
	$(BIN)/infokv-run experiment=$(SIZE)_prefill launcher=$(LAUNCHER)
	$(BIN)/infokv-run experiment=$(SIZE)_decode launcher=$(LAUNCHER)
	if [ "$(SIZE)" = small ]; then $(BIN)/infokv-run experiment=small_headline launcher=$(LAUNCHER); fi
	$(BIN)/python experiments/reproduce_table.py --size $(SIZE) --runs $(RUNS)

# InfoKV - SnapKV across alpha and the entropy position on the embedded model (offline, CPU): runs,
# then results/alpha_sensitivity/ and results/figures/alpha_sensitivity.png.
alpha-sensitivity: venv model
	$(BIN)/infokv-run experiment=alpha_sensitivity launcher=$(LAUNCHER)
	$(BIN)/python experiments/alpha_sensitivity.py --runs $(RUNS)/alpha_sensitivity

# Fidelity to kvpress 0.5.5 (scripts/fidelity_kvpress.py): kvpress runs in its own env on the CPU, our
# methods in .venv, on the same token ids; writes results/fidelity/ and tests/data/kvpress_oracle.json.
KVPRESS_VENV := .venv-kvpress
KVPRESS_CPU_SPECS := kvpress==0.5.5 transformers==5.2.0

$(KVPRESS_VENV)/.installed:
	test -x $(KVPRESS_VENV)/bin/python || $(PYTHON) -m venv $(KVPRESS_VENV)
	$(KVPRESS_VENV)/bin/pip install '$(TORCH_SPEC)'
	$(KVPRESS_VENV)/bin/pip install $(KVPRESS_CPU_SPECS)
	touch $@

fidelity: venv model $(KVPRESS_VENV)/.installed
	$(BIN)/python scripts/fidelity_kvpress.py --kvpress-python $(KVPRESS_VENV)/bin/python
