# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip==26.3
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/alfamix-jax run --config demo --workdir runs/demo

# Test processes (pytest-xdist). Each holds JAX with 8 CPU devices (3.5 GiB at its peak);
# two keep a 2-core machine busy while one waits on a subprocess, a file or a compile.
TEST_WORKERS ?= 2

test: $(STAMP)
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS)

lint: $(STAMP)
	$(BIN)/ruff check alfamix_jax tests experiments
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python experiments/benchmark_selection.py

clean:
	rm -rf $(VENV) .pytest_cache
