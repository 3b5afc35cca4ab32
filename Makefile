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

$(STAMP): pyproject.toml setup.py pipelines/_native.c
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

train: $(STAMP) ## Whole path on synthetic logs: generate, ingest, features, apply, materialize, train, evaluate, register
	$(BIN)/xinterest train --source synthetic

retrain: $(STAMP) ## Ingest the feedback log, rebuild features, train a challenger, run the promotion gate
	$(BIN)/xinterest retrain

deploy: $(STAMP) ## Build the Bento (labelled with the champion) and serve it on port 3000
	$(BIN)/bentoml build -f bentofile.yaml --label champion=$$($(BIN)/xinterest champion) .
	XINTEREST_WORKDIR=$(abspath $(XINTEREST_WORKDIR)) $(BIN)/bentoml serve xinterest:latest --port 3000

ui: $(STAMP) ## MLflow UI on the work directory's tracking store (http://127.0.0.1:5000)
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(abspath $(XINTEREST_WORKDIR))/mlflow.db --port 5000

bench-ingest: $(STAMP) ## Ingest throughput for 1M synthetic events vs the pyarrow read+write floor
	$(BIN)/python -m bench.ingest

bench-features: $(STAMP) ## Materialization rate and online read latency: ours vs feast serve vs raw store (local, prod)
	$(BIN)/python -m bench.features

bench-quality: $(STAMP) ## Models vs baselines on Douban, Taobao, MovieLens (+ cross-platform lift, retraining)
	$(BIN)/python -m bench.quality

bench-serving: $(STAMP) ## /recommend throughput and latency at concurrency 1/8/32 vs the in-process floor
	$(BIN)/python -m bench.serving

bench: bench-ingest bench-features bench-quality bench-serving ## Run every benchmark (figures to bench/results/*.json, MLflow, README)
	$(BIN)/python -m bench.readme

clean: ## Remove run state (work directory, benchmark work folders); keeps .venv
	rm -rf $(XINTEREST_WORKDIR) bench/.work
