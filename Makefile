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

.PHONY: setup demo test test-all bench ui serve clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## sample raw data -> ingest of every dataset -> catalog -> train -> metrics, via dvc repro against one
## Prefect server for the whole run (started here unless one answers; runs stay visible in `make ui`)
demo: setup
	scripts/with-prefect-server dvc repro
	fer stats --catalog data/catalog.duckdb
	dvc metrics show runs/*/metrics.json runs/pe_clip/ferv39k/metrics.json metrics/auformer_folds.json metrics/pe_clip_folds.json
	@echo "catalog: $(CURDIR)/data/catalog.duckdb  (Parquet: data/catalog/)"
	@echo "shards:  $(CURDIR)/data/ingest/<dataset>/shards/"
	@echo "plots:   $(CURDIR)/runs/<experiment>/plots/png/*.png  (dvc plots show for HTML)"

## every benchmark side by side -> benchmarks/results.{json,md,png} (~10 min on 2 cores); BENCH_ARGS=--quick: smoke run
bench: setup
	python benchmarks/report.py $(BENCH_ARGS)

## the Prefect UI at http://127.0.0.1:4200 (then `make serve` in another terminal)
ui: setup
	prefect server start --host 127.0.0.1

serve: setup
	PREFECT_API_URL=http://127.0.0.1:4200/api fer serve

test: setup
	pytest -q

## the slow cases too (CI)
test-all: setup
	pytest -q -m ''

clean:
	rm -rf data .prefect .pytest_cache
