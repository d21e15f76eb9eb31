# The README's two commands: `make demo` (set up + run the pipeline on the embedded synthetic
# HDMAP) and `make test` (set up + run the test suite). Both create .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch/torchvision pins: on the project's build machines these install from local disk.
TORCH_SPEC ?= torch==2.14.1 torchvision==0.29.1
CORES ?= all

.PHONY: install demo test lint clean-work

$(BIN)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q $(TORCH_SPEC)
	$(BIN)/python -m pip install -q -e '.[pipeline,dev]'
	touch $@

install: $(BIN)/.installed

demo: install
	PATH=$(abspath $(BIN)):$$PATH snakemake --cores $(CORES) --profile profiles/default all
	@echo "metrics: results/metrics.json and results/domain*_*.json"

test: install
	PATH=$(abspath $(BIN)):$$PATH python -m pytest -q

lint: install
	$(BIN)/ruff check src tests benchmarks

clean-work:
	rm -rf work results/*.json .snakemake
