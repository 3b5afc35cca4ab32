# xinterest — `make help` lists every target.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export XINTEREST_WORKDIR ?= .xinterest

.DEFAULT_GOAL := help
.PHONY: help setup test test-fast lint train deploy retrain bench bench-ingest bench-features bench-quality bench-serving ui clean

help: ## List the targets with one line each
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[1m%-16s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv (if missing) and install the project with its dev tools

test: $(STAMP) ## Run the whole test suite
	$(BIN)/pytest

test-fast: $(STAMP) ## Run the tests, without the slow end-to-end ones
	$(BIN)/pytest -m "not slow"

lint: $(STAMP) ## Lint and check formatting
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench-ingest: $(STAMP) ## Ingest throughput for 1M synthetic events vs the pyarrow read+write floor
	$(BIN)/python -m bench.ingest

bench: bench-ingest ## Run every benchmark (figures to bench/results/*.json and MLflow)

clean: ## Remove run state (work directory, benchmark work folders); keeps .venv
	rm -rf $(XINTEREST_WORKDIR) bench/.work
