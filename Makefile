# The two commands in the README: `make demo` and `make test`. Both work on a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint unit integration bench bench-beam clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,beam]'
	touch $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff format --check src tests scripts examples
	$(BIN)/ruff check src tests scripts examples
	$(BIN)/mypy

test: lint
	$(BIN)/python -m pytest tests

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit

integration: $(STAMP)
	$(BIN)/python -m pytest tests/integration

demo: $(STAMP)
	$(BIN)/python scripts/demo.py

bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(BENCH_FLAGS)

bench-beam: $(STAMP)
	$(BIN)/python scripts/bench_beam.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
