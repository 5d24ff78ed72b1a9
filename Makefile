# The two commands: `make demo` and `make test`. Both set up .venv/ first when needed.
SHELL := /bin/bash
VENV := .venv
BIN := $(CURDIR)/$(VENV)/bin
STAMP := $(VENV)/.installed
export PATH := $(BIN):$(PATH)
# for the tools recipes call directly (dvc); `fer` and the Prefect recipes take the project's settings
# from fer_cli/env.py (`fer env`: PREFECT_HOME=.prefect, the API's auth string and guards)
export DVC_NO_ANALYTICS := 1
export HF_HUB_OFFLINE := 1

.PHONY: setup demo test test-all bench ui serve shell clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

setup: $(STAMP)

## sample raw data -> ingest of every dataset -> catalog -> train -> metrics, via dvc repro against one
## Prefect server for the whole run (started here unless one answers; runs stay visible in `make ui`);
## fer repro: dvc repro with independent stages side by side, one per core (DEMO_JOBS=1: one at a time)
demo: setup
	scripts/with-prefect-server fer repro $(if $(DEMO_JOBS),--jobs $(DEMO_JOBS))
	@echo "catalog: $(CURDIR)/data/catalog/ (Parquet; fer sql/stats read data/catalog.duckdb, built from it)"
	@echo "shards:  $(CURDIR)/data/ingest/<dataset>/shards/"
	fer report --readme README.md
	@echo "plots:   $(CURDIR)/runs/<run>/plots/png/, metrics/plots/, metrics/cross_dataset/ (HTML: dvc plots show)"

## every benchmark side by side -> benchmarks/results.{json,md,png} (~10 min on 2 cores); BENCH_ARGS=--quick: smoke run
bench: setup
	python benchmarks/report.py $(BENCH_ARGS)

## the Prefect UI at http://127.0.0.1:4200, 127.0.0.1 only; it asks for the auth string in .prefect/api-auth-string
ui: setup
	eval "$$(fer env)" && echo "UI log-in: the auth string in $$PREFECT_HOME/api-auth-string" && \
	  exec prefect server start --host 127.0.0.1

## the deployments `preprocess` and `train` (fer serve), on the server of `make ui` or one started for them
serve: setup
	scripts/with-prefect-server fer serve

## a shell with the venv and the settings `fer` runs with (eval "$$(fer env)" does the same in yours)
shell: setup
	eval "$$(fer env)" && exec "$${SHELL:-bash}" -i

test: setup
	pytest -q

## the slow cases too (CI)
test-all: setup
	pytest -q -m ''

clean:
	rm -rf data .prefect .pytest_cache
