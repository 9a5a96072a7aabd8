# Two commands do all the set-up: `make demo` and `make test` create (or reuse) .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1

.PHONY: venv demo test bench lint format clean

venv: $(STAMP)

# Every install goes through constraints.txt, which pins torch to the CPU wheel on disk.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/fedgin demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

# Speed, memory and scaling figures (about an hour on 2 CPU cores, most of it 3 runs of each federation;
# run it on an otherwise idle machine):
# one table, benchmarks/results/<machine>.json and .txt.
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

clean:
	rm -rf runs .pytest_cache .ruff_cache
