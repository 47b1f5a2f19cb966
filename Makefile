# The README's commands. Everything installs into .venv from pyproject.toml.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PORT ?= 8000
# llama.cpp's native build compiles but crashes on some CPUs at the first decode: build for AVX2.
LLAMA_CMAKE_ARGS ?= -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=OFF -DGGML_OPENMP=OFF

.PHONY: install run test test-postgres lint bench bench-short clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	CMAKE_ARGS="$(LLAMA_CMAKE_ARGS)" $(BIN)/python -m pip install --quiet -e '.[local,test]'
	touch $@

run: install
	$(BIN)/python -m chatsite.devserver --port $(PORT)

test: install
	$(BIN)/python -m pytest

# The whole suite on PostgreSQL (127.0.0.1:5432, trust auth, database `postgres`).
test-postgres: install
	DATABASE_URL=$${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/postgres} $(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) staticfiles test-results .pytest_cache .ruff_cache

# The relay against going direct and against a bare relay, the floor (issue 7), then one daphne
# against two behind a local HAProxy on PostgreSQL and Redis (issue 8): prints the tables,
# writes bench/results/latest.json.
bench: install
	$(BIN)/python -m bench.relay --bare

# Concurrency 10 only (the scale-out rows too), under a minute: CI runs it to keep the harness
# working (bench/results/short.json).
bench-short: install
	$(BIN)/python -m bench.relay --short --bare
