# The two commands: `make demo` and `make test`. Both set up .venv/ first when needed.
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
export DVC_NO_ANALYTICS := 1
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export HF_HUB_OFFLINE := 1
export PREFECT_HOME := $(CURDIR)/.prefect

.PHONY: setup demo test test-all clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## sample raw data -> ingest of every dataset -> catalog -> stats, via dvc repro
demo: setup
	dvc repro
	fer stats --catalog data/catalog.duckdb
	@echo "catalog: $(CURDIR)/data/catalog.duckdb   parquet: $(CURDIR)/data/catalog/"

test: setup
	pytest -q

## the slow cases too (CI)
test-all: setup
	pytest -q -m ''

clean:
	rm -rf data .prefect .pytest_cache
